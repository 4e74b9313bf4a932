#!/bin/bash
# Write-latency profile of one ringkv binary (BENCHMARKS.md "Write latency", branch lat).
# usage: bench/scripts/lat-prof.sh BIN [ringkv flags]   env: BENCH (ringkv-bench path), CLIENTS, CONNS, DUR,
#        PERF=1 (perf record -g for 2 s), STRACE=1 (strace -f -c for 2 s). Prints the bench summary, CPU ticks
#        (10 ms) per thread name during the run, and the stage/fsync sums from /metrics. Data dir under /tmp/lat.
mkdir -p /tmp/lat
BIN=$1; shift
D=$(mktemp -d /tmp/lat/d.XXXX)
PORT=$((24000 + RANDOM % 1000))
$BIN --data-dir $D/data --listen-client-urls http://127.0.0.1:$PORT --advertise-client-urls http://127.0.0.1:$PORT \
  --listen-peer-urls http://127.0.0.1:$((PORT+1000)) --initial-advertise-peer-urls http://127.0.0.1:$((PORT+1000)) \
  --initial-cluster default=http://127.0.0.1:$((PORT+1000)) "$@" > $D/log 2>&1 &
PID=$!
sleep 1.5
# per thread name (iou-wrk-N counted as iou-wrk): CPU ticks, voluntary and involuntary context switches
snap() { for t in /proc/$PID/task/*; do echo "$(sed 's/-[0-9]*$//' $t/comm) $(awk '{print $14+$15}' $t/stat) $(awk '/^voluntary_ctxt/{v=$2} /^nonvoluntary_ctxt/{n=$2} END{print v, n}' $t/status)"; done | awk '{a[$1]+=$2; v[$1]+=$3; n[$1]+=$4} END{for(k in a) print k, a[k], v[k], n[k]}' | sort; }
snap > $D/before
${BENCH:-target/release/ringkv-bench} --endpoints=127.0.0.1:$PORT --clients ${CLIENTS:-1} --conns ${CONNS:-1} --server-pid $PID put --duration ${DUR:-4s} --key-space-size 100000 --val-size 256 > $D/bench 2>&1 &
BP=$!
if [ -n "$PERF" ]; then sleep 1; perf record -g -p $PID -o $D/perf.data -- sleep 2 >/dev/null 2>&1; fi
if [ -n "$STRACE" ]; then sleep 1; timeout 2 strace -f -c -p $PID -o $D/strace.txt >/dev/null 2>&1; fi
wait $BP
snap > $D/after
cat $D/bench | grep -iE "ops|p50|p99|cpu|total" | head -20
OPS=$(grep -oE 'Total: +[0-9]+' $D/bench | grep -oE '[0-9]+$')
echo "thread cpu_ticks vol_cs/op invol_cs/op (ops $OPS)"
join $D/before $D/after | awk -v ops=$OPS '{printf "%s %d %.2f %.2f\n", $1, $5-$2, ($6-$3)/ops, ($7-$4)/ops; v+=$6-$3; n+=$7-$4} END{printf "all-threads - %.2f %.2f\n", v/ops, n/ops}'
curl -s http://127.0.0.1:$PORT/metrics | grep -E '^ringkv_proposal_.*(sum|count)|^etcd_disk_wal_fsync_duration_seconds_(sum|count)'
kill $PID; wait $PID
if [ -n "$PERF$STRACE" ]; then echo DIR $D; else rm -rf $D; fi
