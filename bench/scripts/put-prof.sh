#!/bin/bash
# Put profile of one ringkv binary at 1000 clients / 100 conns (BENCHMARKS.md "put", session 4).
# usage: bench/scripts/put-prof.sh BIN [ringkv flags]   env: BENCH (ringkv-bench, default /tmp/ringkv-bench-s4base),
#   CLIENTS, CONNS, DUR, WL (workload args), ENVS (environment of the node, e.g. MIMALLOC_PURGE_DELAY=-1),
#   PERFARGS (perf record arguments; the perf.data directory is kept and printed). Data dirs under /tmp/putw.
BIN=$1; shift
mkdir -p /tmp/putw
D=$(mktemp -d /tmp/putw/d.XXXX)
PORT=$((24000 + RANDOM % 1000))
env $ENVS $BIN --data-dir $D/data --listen-client-urls http://127.0.0.1:$PORT --advertise-client-urls http://127.0.0.1:$PORT \
  --listen-peer-urls http://127.0.0.1:$((PORT+1000)) --initial-advertise-peer-urls http://127.0.0.1:$((PORT+1000)) \
  --initial-cluster default=http://127.0.0.1:$((PORT+1000)) "$@" > $D/log 2>&1 &
PID=$!
sleep 1.5
snap() { for t in /proc/$PID/task/*; do echo "$(cat $t/comm | sed 's/-[0-9]*$//') $(awk '{print $14+$15}' $t/stat)"; done | awk '{a[$1]+=$2} END{for(k in a) print k, a[k]}' | sort; }
snap > $D/before
${BENCH:-/tmp/ringkv-bench-s4base} --endpoints=127.0.0.1:$PORT --clients ${CLIENTS:-1000} --conns ${CONNS:-100} --server-pid $PID ${WL:-put --key-space-size 100000 --val-size 256} --duration ${DUR:-4s} > $D/bench 2>&1 &
BP=$!
if [ -n "$PERFARGS" ]; then sleep 1; perf record $PERFARGS -p $PID -o $D/perf.data -- sleep 2 >/dev/null 2>&1; fi
wait $BP
snap > $D/after
grep -iE "Throughput|CPU" $D/bench
join $D/before $D/after | awk '{printf "%s %d  ", $1, $3-$2} END{print ""}'
curl -s http://127.0.0.1:$PORT/metrics | grep -E '^ringkv_proposal_.*(sum|count)|^etcd_disk_wal_fsync_duration_seconds_(sum|count)|^etcd_disk_backend_commit_duration_seconds_(sum|count)' | tr '\n' ' '; echo
kill $PID; wait $PID
if [ -n "$PERFARGS" ]; then echo DIR $D; else rm -rf $D; fi
