#!/bin/bash
# Put throughput of ringkv with --snapshot-count 100 vs the default (100000), alternating runs.
# Usage: run.sh <ringkv binary> <ringkv-bench binary> <rounds>
set -u
BIN=$1; BENCH=$2; ROUNDS=${3:-3}
PORT=23950
for round in $(seq 1 "$ROUNDS"); do
  for count in 100 100000; do
    D=$(mktemp -d /tmp/snapbench-data.XXXXXX)
    "$BIN" --data-dir "$D/d" --listen-client-urls http://127.0.0.1:$PORT --advertise-client-urls http://127.0.0.1:$PORT \
      --listen-peer-urls http://127.0.0.1:$((PORT+1)) --initial-advertise-peer-urls http://127.0.0.1:$((PORT+1)) \
      --snapshot-count $count 2>"$D/log" &
    PID=$!
    for _ in $(seq 1 200); do curl -sf http://127.0.0.1:$PORT/health >/dev/null && break; sleep 0.05; done
    for w in "--clients 100 --conns 10 put --total 30000" "--clients 1 put --total 3000"; do
      R=$("$BENCH" --endpoints=127.0.0.1:$PORT --server-pid $PID $w --key-space-size 10000 --val-size 256 --json 2>/dev/null | tr -d '\n')
      echo "round=$round count=$count work=\"$w\" $R"
    done
    echo "round=$round count=$count snaps=$(ls "$D/d/member/snap" | grep -c '\.snap$') wal=$(ls "$D/d/member/wal" | grep -c '\.wal$')"
    kill -TERM $PID; wait $PID
    rm -rf "$D"
  done
done
