#!/usr/bin/env bash
# Runs ringkv's whole test suite: format, lints, every test of every crate.
# Test-only Debian packages (etcd-server and etcd-client for differential and etcdctl tests,
# protobuf-compiler for the etcd-client crate's build) are installed here when missing.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v etcd >/dev/null 2>&1 || need+=(etcd-server)
command -v etcdctl >/dev/null 2>&1 || need+=(etcd-client)
command -v protoc >/dev/null 2>&1 || need+=(protobuf-compiler)
if ((${#need[@]})); then
  echo "tests/run.sh: installing test dependencies: ${need[*]}"
  if [ "$(id -u)" = 0 ]; then sudo=""; elif command -v sudo >/dev/null 2>&1; then sudo="sudo -n"; else
    echo "tests/run.sh: need root (or sudo) to install: apt-get install ${need[*]}" >&2; exit 1
  fi
  if ! { $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need[@]}"; } >/tmp/ringkv-apt.log 2>&1; then
    echo "tests/run.sh: could not install ${need[*]} (log: /tmp/ringkv-apt.log); install them and re-run" >&2
    tail -5 /tmp/ringkv-apt.log >&2; exit 1
  fi
fi

# No incremental caches: a one-shot build does not reuse them and they double the target size.
export CARGO_INCREMENTAL=0
echo "== disk space for the build: $(df -h --output=avail . | tail -1 | tr -d ' ') free"
echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== build the ringkv binary the system tests start"
# The test harnesses (tests/src/ringkv.rs, bench/tests/integration/ringkv_bin.rs) run exactly this
# command; building it here, outside any test's clock, makes theirs a no-op. It is not the same
# artifact as the workspace build: with one package selected, cargo unifies features differently.
cargo build --locked -p ringkv-net --bin ringkv
echo "== tests"
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --locked --no-fail-fast
  cargo test --workspace --locked --doc
else
  echo "tests/run.sh: cargo-nextest not found, running cargo test (install it with: cargo install cargo-nextest)"
  cargo test --workspace --locked --no-fail-fast
fi

echo "== fuzz smoke (engine/fuzz, 10 s per target)"
if ! rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
  echo "tests/run.sh: WARNING: the fuzz smoke run needs a nightly toolchain (rustup toolchain install nightly); NOT RUN" >&2
else
  if ! command -v cargo-fuzz >/dev/null 2>&1; then
    echo "tests/run.sh: installing cargo-fuzz"
    cargo install cargo-fuzz --locked --quiet
  fi
  for target in $(cd engine/fuzz && cargo +nightly fuzz list); do
    (cd engine/fuzz && cargo +nightly fuzz run "$target" -- -max_total_time=10 -print_final_stats=1 2>&1 | tail -3)
  done
fi
