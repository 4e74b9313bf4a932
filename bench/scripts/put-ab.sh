#!/bin/bash
# usage: bench/scripts/put-ab.sh N BIN...  (env BENCH, DUR) — alternating put-prof.sh runs, N rounds;
# prints ops/s, server µs/put and µs/put per thread (ticks ÷ applied proposals) with the load average
N=$1; shift
for i in $(seq $N); do for b in "$@"; do
  out=$(cd "$(dirname "$0")/../.." && BENCH=${BENCH:-/tmp/ringkv-bench-s6base} DUR=${DUR:-4s} bench/scripts/put-prof.sh $b 2>&1)
  ops=$(echo "$out" | grep Throughput | awk '{print $2}')
  srv=$(echo "$out" | grep "CPU" | awk '{print $6}')
  cnt=$(echo "$out" | grep -o 'ringkv_proposal_apply_duration_seconds_count [0-9]*' | awk '{print $2}')
  thr=$(echo "$out" | grep "ringkv-front" | awk -v n=$cnt '{for(i=1;i<=NF;i+=2){ if($(i+1)>0) printf "%s %.2f  ", $i, $(i+1)*10000/n }}')
  echo "$(basename $b) ops=$ops srv=$srv puts=$cnt | $thr | load $(cut -d' ' -f1 /proc/loadavg)"
done; done
