#!/usr/bin/env bash
# Writes/s on a member while Maintenance.Snapshot copies its backend (the same copy a snapshot
# transfer to a peer makes), against the same member without snapshots, for two ringkv binaries
# alternated: usage  snapshot-stall.sh BENCH_BIN ROUNDS BIN_A BIN_B
# Each round and binary: a fresh single member on a temp dir, filled to ~200 MiB (50k × 4 KiB),
# then a 5 s put run (8 clients) without snapshots and a 5 s put run while `etcdctl snapshot
# save` runs back to back. Prints one line per run: put ops/s without and with snapshots, their
# ratio, and the p99 and max put latency with snapshots (a stall shows in the max).
set -euo pipefail
bench=$1 rounds=$2; shift 2
work=$(mktemp -d /tmp/snapshot-stall.XXXX)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT
port=23979
run() { # bin label
  local bin=$1 label=$2 dir="$work/data" ep="127.0.0.1:$port"
  rm -rf "$dir"
  "$bin" --data-dir "$dir" --listen-client-urls "http://$ep" --advertise-client-urls "http://$ep" \
    --listen-peer-urls "http://127.0.0.1:$((port + 1))" --initial-advertise-peer-urls "http://127.0.0.1:$((port + 1))" \
    --quota-backend-bytes 8589934592 >"$work/log" 2>&1 &
  local pid=$!
  for _ in $(seq 100); do etcdctl --endpoints "$ep" endpoint health >/dev/null 2>&1 && break; sleep 0.1; done
  "$bench" --endpoints "$ep" --conns 8 --clients 64 put --total 50000 --val-size 4096 --key-space-size 50000 --sequential-keys >/dev/null
  local base snap out
  field() { grep -o "\"$1\":[0-9.]*" | cut -d: -f2 | cut -d. -f1; }
  base=$("$bench" --endpoints "$ep" --conns 4 --clients 8 --json put --duration 5s --val-size 256 --key-space-size 50000 | field ops_per_sec)
  ( while :; do etcdctl --endpoints "$ep" snapshot save "$work/snap.db" >/dev/null 2>&1; rm -f "$work/snap.db" "$work/snap.db.part"; done ) &
  local saver=$!
  out=$("$bench" --endpoints "$ep" --conns 4 --clients 8 --json put --duration 5s --val-size 256 --key-space-size 50000)
  snap=$(echo "$out" | field ops_per_sec)
  kill $saver; wait $saver 2>/dev/null || true
  kill $pid; wait $pid 2>/dev/null || true
  echo "$label base_ops_s=$base during_snapshots_ops_s=$snap ratio=$(echo "scale=3; $snap / $base" | bc)" \
    "during_p99_us=$(echo "$out" | field p99_us) during_max_us=$(echo "$out" | field max_us)"
}
for r in $(seq "$rounds"); do
  run "$1" "A(round $r)"
  run "$2" "B(round $r)"
done
