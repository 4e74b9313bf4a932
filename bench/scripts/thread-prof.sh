#!/bin/bash
# usage: bench/scripts/thread-prof.sh BIN THREADNAME — perf record with dwarf call graphs of one thread of
# the node (e.g. ringkv-apply, ringkv-front-0) under put-1000; prints the directory holding perf.data
BIN=$1; T=$2
mkdir -p /tmp/putw
D=$(mktemp -d /tmp/putw/p.XXXX)
PORT=$((26000 + RANDOM % 1000))
$BIN --data-dir $D/data --listen-client-urls http://127.0.0.1:$PORT --advertise-client-urls http://127.0.0.1:$PORT \
  --listen-peer-urls http://127.0.0.1:$((PORT+1000)) --initial-advertise-peer-urls http://127.0.0.1:$((PORT+1000)) \
  --initial-cluster default=http://127.0.0.1:$((PORT+1000)) > $D/log 2>&1 &
PID=$!
sleep 1.5
${BENCH:-/tmp/ringkv-bench-s6base} --endpoints=127.0.0.1:$PORT --clients 1000 --conns 100 --server-pid $PID put --key-space-size 100000 --val-size 256 --duration 5s > $D/bench 2>&1 &
BP=$!
sleep 1.5
TID=$(for t in /proc/$PID/task/*; do [ "$(cat $t/comm)" = "$T" ] && basename $t; done | head -1)
perf record -F 1999 --call-graph dwarf,16384 -t $TID -o $D/perf.data -- sleep 1.5 >/dev/null 2>&1
wait $BP
kill $PID; wait $PID
rm -rf $D/data
echo $D
