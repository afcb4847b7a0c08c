#!/usr/bin/env bash
# The main job: install what is missing, build kobako, the guest kernel and the tiny image
# (all cached: a second run takes seconds), boot a tiny microVM and report.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
scripts/build.sh
K=target/release/kobako
$K image kernel
$K image tiny
# Replace a demo VM left from an earlier run.
$K vm rm -f demo >/dev/null 2>&1 || true
echo
$K vm run -d --name demo --vcpus 1 --memory 128M
echo
echo "inside the guest:"
$K vm exec demo -- sh -c 'echo "  kernel  $(uname -r)"; echo "  cpus    $(nproc)"; echo "  memory  $(free -m | awk "/Mem:/{print \$2}") MiB"; echo "  uptime  $(cut -d" " -f1 /proc/uptime) s"'
echo
$K vm ls
cat <<MSG

The microVM 'demo' is running. Try:
  $K vm exec demo -- uname -a        run a command in it
  $K vm console demo                 its serial console (Ctrl-] d detaches)
  $K vm stop demo                    power it off and remove it
  $K bench boot --runs 10            boot time vs raw QEMU
MSG
