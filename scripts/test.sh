#!/usr/bin/env bash
# The whole test suite: installs what is missing, builds the guest kernel and images once
# (cached under /var/cache/kobako), checks formatting and lints, runs every test (real guests,
# real namespaces, real /dev/kvm).
set -euo pipefail
cd "$(dirname "$0")/.."
# A CI run builds everything once: incremental caches would only cost disk (~14 GB) and time.
if [ "${CI:-}" = true ]; then export CARGO_INCREMENTAL=0; fi
scripts/setup.sh
PROFILE=dev scripts/build.sh
target/debug/kobako image kernel
target/debug/kobako image tiny
echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy -q --workspace --all-targets -- -D warnings
echo "== shellcheck"
shellcheck scripts/*.sh .ci/run crates/vmm/guest-pvm/build.sh examples/scenarios/wasm/*/build.sh
echo "== cargo test"
cargo test --workspace --no-run -q
# Linux through our own VMM on this host's /dev/kvm. On PVM hosts (no VT-x/AMD-V: /dev/kvm is
# kvm_pvm) only the PVM-tolerant kernel boots, and every kernel instruction is emulated, so
# this one boot takes minutes of one core: it runs beside the rest of the suite.
pvm=
if [ -e /sys/module/kvm_pvm ]; then
  crates/vmm/guest-pvm/build.sh >/dev/null
  # The boots one after the other: the userspace marker, then ext4 on a qcow2 overlay, a
  # ping over a tap, /dev/hwrng and the agent over vsock (needs the static agent: built above)
  # with a snapshot restored into a new VMM process, then `vm snapshot`/`vm restore` of a
  # `--runtime vmm` VM through the whole runtime (its own boot: ~4-8 min here).
  ( (KOBAKO_PVM_TIMEOUT=1800 KOBAKO_PVM_CMDLINE_EXTRA=quiet cargo test -q -p kobako-vmm --test linux_pvm -- --ignored \
    --nocapture --test-threads=1 &&
    cargo test -q -p kobako --test vmm_snapshot -- --ignored --nocapture) > target/linux-pvm.log 2>&1) &
  pvm=$!
  # When the suite fails early (set -e), the background boots must still end on their own: a
  # test killed half-way leaves its VM processes running (they are not our children).
  trap '[ -n "$pvm" ] && { echo "test.sh: waiting for the background Linux boots to finish and clean up"; wait "$pvm" || true; }' EXIT
else
  echo "linux_pvm: SKIPPED: /dev/kvm here is not kvm_pvm (the vm_boot tests boot Linux on it)"
fi
cargo test --workspace --no-fail-fast -- --test-threads=2
if [ -n "$pvm" ]; then
  echo "== Linux on kobako-vmm (PVM host)"
  rc=0
  wait "$pvm" || rc=$?
  pvm=
  if [ "$rc" != 0 ]; then tail -n 40 target/linux-pvm.log; exit 1; fi
  grep -E "Guest-boot-time|exit code|KOBAKO-|snapshot:|vmm runtime:|test result" target/linux-pvm.log | grep -v KOBAKO-TICK
fi
echo "== API fuzz (schemathesis against the OpenAPI document)"
scripts/api-fuzz.sh target/debug/kobako
scripts/soak.sh --short --bin target/debug/kobako
