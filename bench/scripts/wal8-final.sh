#!/bin/sh
# Session 8 "wal" figures: usage wal8-final.sh NEW [REPS] [DIR] > log; bench/scripts/wal-rounds.py log
# NEW = a release ringkv-bench with the ringkv-relay engine (relay_wake: true; session 8 had it as the default
# and the other side as ringkv-leader-wakes) and handoff-sync.
NEW=${1:?NEW bench binary}; REPS=${2:-2}; D=${3:-/work/benchdata}
run() { echo "## $(date -u +%H:%M:%S) load $(cut -d' ' -f1-3 /proc/loadavg): $*"; timeout 400 "$@" 2>&1; }
for i in $(seq "$REPS"); do
  echo "=== rep $i"
  run $NEW disk wal --dir $D --io std   --engines ringkv,ringkv-relay,raft-engine,raw,handoff-sync --writers 64 --record-size 256 --seconds 10 --rounds 5 --json
  run $NEW disk wal --dir $D --io uring --engines ringkv,ringkv-relay,raft-engine,raw --writers 64 --record-size 256 --seconds 8 --rounds 5 --json
  run $NEW disk wal --dir $D --io std   --engines ringkv,raft-engine,raw --writers 1 --record-size 256 --seconds 5 --rounds 5 --json
  run $NEW disk wal --dir $D --io uring --engines ringkv,raft-engine,raw --writers 1 --record-size 256 --seconds 5 --rounds 5 --json
done
echo "=== end $(date -u +%H:%M:%S) load $(cut -d' ' -f1-3 /proc/loadavg)"
