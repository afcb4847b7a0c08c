#!/usr/bin/env bash
# Runs each cargo-fuzz target for a bounded time (default 60 s each) when a nightly toolchain
# and cargo-fuzz are installed; otherwise says so and succeeds (the stable randomized test
# crates/vmm/tests/fuzz_stable.rs covers the same bodies in every test run).
set -euo pipefail
cd "$(dirname "$0")"
secs="${1:-60}"
if ! rustup toolchain list 2>/dev/null | grep -q nightly || ! cargo +nightly fuzz --version >/dev/null 2>&1; then
  echo "fuzz: nightly or cargo-fuzz missing (cargo install cargo-fuzz); skipped"
  exit 0
fi
for t in descriptor_chains qcow2_image vsock_packets; do
  echo "== fuzz $t (${secs}s)"
  cargo +nightly fuzz run "$t" -- -max_total_time="$secs"
done
