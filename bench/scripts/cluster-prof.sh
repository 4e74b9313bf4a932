#!/bin/bash
# Write-latency profile of a 3-member ringkv cluster (BENCHMARKS.md "3-member write path", branch cluster).
# usage: bench/scripts/cluster-prof.sh BIN [ringkv flags]   env: BENCH (ringkv-bench path), CLIENTS, CONNS, DUR,
#        SCHED=1 (perf sched record -a for 1 s, then perf sched latency + timehist of one put).
# Prints the bench summary (puts go to the leader), CPU ticks (10 ms) and voluntary/involuntary context
# switches per put per thread name and member during the run, and the stage sums from each member's /metrics. Data dirs under /tmp/cprof (removed unless SCHED=1).
mkdir -p /tmp/cprof
BIN=$1; shift
D=$(mktemp -d /tmp/cprof/d.XXXX)
BASE=$((25000 + RANDOM % 1000))
IC=""
for i in 0 1 2; do IC="$IC${IC:+,}m$i=http://127.0.0.1:$((BASE+1000+i))"; done
PIDS=()
for i in 0 1 2; do
  $BIN --name m$i --data-dir $D/m$i --listen-client-urls http://127.0.0.1:$((BASE+i)) \
    --advertise-client-urls http://127.0.0.1:$((BASE+i)) --listen-peer-urls http://127.0.0.1:$((BASE+1000+i)) \
    --initial-advertise-peer-urls http://127.0.0.1:$((BASE+1000+i)) --initial-cluster $IC \
    --initial-cluster-state new --initial-cluster-token cprof "$@" > $D/m$i.log 2>&1 &
  PIDS+=($!)
done
sleep 3
EPS="127.0.0.1:$BASE,127.0.0.1:$((BASE+1)),127.0.0.1:$((BASE+2))"
# per thread name (numbered suffixes folded): CPU ticks, voluntary and involuntary context switches
snap() { for t in /proc/$1/task/*; do echo "$(sed 's/-[0-9]*$//' $t/comm) $(awk '{print $14+$15}' $t/stat) $(awk '/^voluntary_ctxt/{v=$2} /^nonvoluntary_ctxt/{n=$2} END{print v, n}' $t/status)"; done | awk '{a[$1]+=$2; v[$1]+=$3; n[$1]+=$4} END{for(k in a) print k, a[k], v[k], n[k]}' | sort; }
for i in 0 1 2; do snap ${PIDS[$i]} > $D/before$i; done
${BENCH:-target/release/ringkv-bench} --endpoints=$EPS --target-leader --clients ${CLIENTS:-1} --conns ${CONNS:-1} put --duration ${DUR:-4s} --key-space-size 100000 --val-size 256 > $D/bench 2>&1 &
BP=$!
if [ -n "$SCHED" ]; then sleep 1.5; perf sched record -a -o $D/sched.data -- sleep 1 >/dev/null 2>&1; fi
wait $BP
for i in 0 1 2; do snap ${PIDS[$i]} > $D/after$i; done
grep -iE "ops|p50|p99|total" $D/bench | head -12
OPS=$(grep -oE 'Total: +[0-9]+' $D/bench | grep -oE '[0-9]+$')
echo "per member: thread cpu_ticks vol_cs/op invol_cs/op (ops $OPS)"
for i in 0 1 2; do
  echo "== m$i (pid ${PIDS[$i]})"
  join $D/before$i $D/after$i | awk -v ops=$OPS '$5-$2>0 || $6-$3>0 {printf "   %s %d %.2f %.2f\n", $1, $5-$2, ($6-$3)/ops, ($7-$4)/ops; v+=$6-$3; n+=$7-$4} END{printf "   all-threads - %.2f %.2f\n", v/ops, n/ops}'
  curl -s http://127.0.0.1:$((BASE+i))/metrics | grep -E '^ringkv_proposal_.*(sum|count)|^etcd_disk_wal_fsync_duration_seconds_(sum|count)' | sed 's/^/   /'
done
kill ${PIDS[@]}; wait ${PIDS[@]} 2>/dev/null
if [ -n "$SCHED" ]; then echo DIR $D; else rm -rf $D; fi
