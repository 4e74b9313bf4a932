#!/bin/bash
# Median timeline of a 1-client put across the client and the node's threads, from syscall
# tracepoints (perf record -e raw_syscalls:*, 1 s in the middle of a put run; bench/scripts/put-trace.py).
# usage: bench/scripts/put-trace.sh BIN [ringkv flags]   env: BENCH (ringkv-bench path), MEMBERS (1 or 3),
#        DUR (bench run, default 4s). Data dirs under /tmp/ptrace (removed).
# The tracing itself costs ~1-2 µs per syscall: read the steps between events, not the total.
mkdir -p /tmp/ptrace
BIN=$1; shift
D=$(mktemp -d /tmp/ptrace/d.XXXX)
BASE=$((26000 + RANDOM % 1000))
N=${MEMBERS:-1}
IC=""
for i in $(seq 0 $((N-1))); do IC="$IC${IC:+,}m$i=http://127.0.0.1:$((BASE+1000+i))"; done
PIDS=()
for i in $(seq 0 $((N-1))); do
  $BIN --name m$i --data-dir $D/m$i --listen-client-urls http://127.0.0.1:$((BASE+i)) \
    --advertise-client-urls http://127.0.0.1:$((BASE+i)) --listen-peer-urls http://127.0.0.1:$((BASE+1000+i)) \
    --initial-advertise-peer-urls http://127.0.0.1:$((BASE+1000+i)) --initial-cluster $IC \
    --initial-cluster-state new --initial-cluster-token ptrace "$@" > $D/m$i.log 2>&1 &
  PIDS+=($!)
done
sleep 3
EPS=""
for i in $(seq 0 $((N-1))); do EPS="$EPS${EPS:+,}127.0.0.1:$((BASE+i))"; done
${BENCH:-target/release/ringkv-bench} --endpoints=$EPS --target-leader --clients 1 --conns 1 put \
  --duration ${DUR:-4s} --key-space-size 100000 --val-size 256 > $D/bench 2>&1 &
BP=$!
sleep 1.5
# the leader's label: the member whose front end talks to the client (first in the recording's timeline)
P=$(IFS=,; echo "${PIDS[*]}"),$BP
perf record -q -e raw_syscalls:sys_enter -e raw_syscalls:sys_exit -p $P -o /dev/shm/ptrace.$$.data -- sleep 1 >/dev/null 2>&1
wait $BP
grep -iE "p50|Total" $D/bench
LBL=""
for i in $(seq 0 $((N-1))); do LBL="$LBL ${PIDS[$i]}=m$i"; done
perf script -F pid,tid,comm,time,event,trace -i /dev/shm/ptrace.$$.data 2>/dev/null | python3 $(dirname $0)/put-trace.py $BP $LBL
kill ${PIDS[@]}; wait ${PIDS[@]} 2>/dev/null
rm -rf $D /dev/shm/ptrace.$$.data
