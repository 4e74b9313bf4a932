#!/bin/sh
# Session 9 "wal" figures: usage wal9-final.sh NEW [REPS] [DIR] > log; bench/scripts/wal9-rounds.py log
# NEW = a release ringkv-bench whose default WAL order is wake-first with gathering (session 9), with the
# engines ringkv-overlap (the sessions 3-8 default) and handoff-sync.
NEW=${1:?NEW bench binary}; REPS=${2:-2}; D=${3:-/work/benchdata}
run() { echo "## $(date -u +%H:%M:%S) load $(cut -d' ' -f1-3 /proc/loadavg): $*"; timeout 400 "$@" 2>&1; }
for i in $(seq "$REPS"); do
  echo "=== rep $i"
  run $NEW disk wal --dir $D --io std   --engines ringkv,ringkv-overlap,raft-engine,raw,handoff-sync --writers 64 --record-size 256 --seconds 6 --rounds 6 --json
  run $NEW disk wal --dir $D --io uring --engines ringkv,ringkv-overlap,raft-engine,raw --writers 64 --record-size 256 --seconds 6 --rounds 6 --json
  run $NEW disk wal --dir $D --io std   --engines ringkv,ringkv-overlap,raft-engine,raw --writers 1 --record-size 256 --seconds 5 --rounds 5 --json
  run $NEW disk wal --dir $D --io uring --engines ringkv,raft-engine,raw --writers 1 --record-size 256 --seconds 5 --rounds 5 --json
done
echo "=== end $(date -u +%H:%M:%S) load $(cut -d' ' -f1-3 /proc/loadavg)"
