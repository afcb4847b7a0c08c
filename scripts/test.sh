#!/usr/bin/env bash
# The whole test suite: installs what is missing, builds the guest kernel and images once
# (cached under /var/cache/kobako), checks formatting and lints, runs every test (real guests,
# real namespaces, real /dev/kvm).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
PROFILE=dev scripts/build.sh
target/debug/kobako image kernel
target/debug/kobako image tiny
echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy -q --workspace --all-targets -- -D warnings
echo "== cargo test"
cargo test --workspace --no-fail-fast -- --test-threads=2
echo "== API fuzz (schemathesis against the OpenAPI document)"
scripts/api-fuzz.sh target/debug/kobako
