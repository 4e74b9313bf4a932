#!/bin/sh
# Session 7 "wal" final figures: usage wal-final.sh NEW BASE [DIR] > log; bench/scripts/wal-rounds.py log
# NEW = a release ringkv-bench with the ringkv-wake-first and handoff engines, BASE = an older one (main 337f70e).
NEW=${1:?NEW bench binary}; BASE=${2:?BASE bench binary}; D=${3:-/work/benchdata}
run() { echo "## $(date -u +%H:%M:%S) load $(cut -d' ' -f1-3 /proc/loadavg): $*"; timeout 400 "$@" 2>&1; }
for i in 1 2 3; do
  echo "=== rep $i"
  run $NEW  disk wal --dir $D --io std   --engines ringkv,ringkv-wake-first,raft-engine,raw --writers 64 --record-size 256 --seconds 10 --rounds 5 --json
  run $BASE disk wal --dir $D --io std   --engines ringkv,raft-engine,raw --writers 64 --record-size 256 --seconds 6 --rounds 3 --json
  run $NEW  disk wal --dir $D --io uring --engines ringkv,ringkv-wake-first,raft-engine,raw --writers 64 --record-size 256 --seconds 10 --rounds 5 --json
  run $NEW  disk wal --dir $D --io std   --engines ringkv,ringkv-wake-first,raw --writers 1 --record-size 256 --seconds 5 --rounds 5 --json
  run $NEW  disk wal --dir $D --io uring --engines ringkv,raw --writers 1 --record-size 256 --seconds 5 --rounds 5 --json
done
echo "=== bound"
for i in 1 2; do
  run $NEW disk wal --dir $D --io std --engines ringkv,raft-engine,handoff,handoff-sync --writers 64 --record-size 256 --seconds 8 --rounds 4 --json
done
echo "=== end $(date -u +%H:%M:%S) load $(cut -d' ' -f1-3 /proc/loadavg)"
