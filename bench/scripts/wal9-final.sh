#!/bin/sh
# Session 9 "wal" figures: usage wal9-final.sh NEW [REPS] [DIR] > log; bench/scripts/wal9-rounds.py log
# NEW = a release ringkv-bench with the engines ringkv-gather (WalOptions::wake_gather, session 9) and
# handoff-sync; ringkv is the default (overlapped) order.
NEW=${1:?NEW bench binary}; REPS=${2:-2}; D=${3:-/work/benchdata}
run() { echo "## $(date -u +%H:%M:%S) load $(cut -d' ' -f1-3 /proc/loadavg): $*"; timeout 400 "$@" 2>&1; }
for i in $(seq "$REPS"); do
  echo "=== rep $i"
  run $NEW disk wal --dir $D --io std   --engines ringkv,ringkv-gather,raft-engine,raw,handoff-sync --writers 64 --record-size 256 --seconds 6 --rounds 6 --json
  run $NEW disk wal --dir $D --io uring --engines ringkv,ringkv-gather,raft-engine,raw --writers 64 --record-size 256 --seconds 6 --rounds 6 --json
  run $NEW disk wal --dir $D --io std   --engines ringkv,ringkv-gather,raft-engine,raw --writers 1 --record-size 256 --seconds 5 --rounds 5 --json
  run $NEW disk wal --dir $D --io uring --engines ringkv,raft-engine,raw --writers 1 --record-size 256 --seconds 5 --rounds 5 --json
done
echo "=== end $(date -u +%H:%M:%S) load $(cut -d' ' -f1-3 /proc/loadavg)"
