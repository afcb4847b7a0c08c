#!/usr/bin/env bash
# Install the Debian packages kobako needs on this host. Idempotent: only missing packages are
# installed, so a second run costs a few dpkg-query calls.
set -euo pipefail

PACKAGES=(
  # runtime
  qemu-system-x86 qemu-utils
  # tiny image
  busybox-static e2fsprogs cpio
  # guest kernel build (kobako image kernel)
  linux-source build-essential bc bison flex libelf-dev libssl-dev xz-utils
  # host networking tests and capture checks
  iproute2 nftables tshark iputils-ping
  # web UI end-to-end test (headless, driven by playwright-core from npm) and its curl checks
  chromium curl
  # the WASM step example's rebuild check (examples/scenarios/wasm/*/build.sh): Debian's rustc
  # with its wasm32 std (rustup's toolchain stays first in PATH for everything else) and the
  # linker rustc uses for wasm32 (rust-lld, from lld-14: only recommended, so named here)
  rustc libstd-rust-dev-wasm32 lld-14
  # lints of the shell scripts (scripts/test.sh)
  shellcheck
)
# The web UI's build (web/): Debian's nodejs and npm, unless a node is already installed.
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
  PACKAGES+=(nodejs npm)
fi

# Python tools from PyPI, each in its own venv under /var/cache/kobako; skipped when present
# with the same requirement list (kept in the venv's .kobako-req).
# py_venv NAME DIR BIN REQUIREMENTS: BIN (under DIR/bin) proves an install.
py_venv() {
  local name=$1 v=$2 bin=$3 req=$4
  [ -x "$v/bin/$bin" ] && [ "$(cat "$v/.kobako-req" 2>/dev/null)" = "$req" ] && return 0
  echo "setup: $name venv in $v"
  mkdir -p /var/cache/kobako
  rm -rf "$v"
  python3 -m venv "$v" >/tmp/kobako-venv.log 2>&1 || {
    apt-get install -y -q --no-install-recommends python3-venv >>/tmp/kobako-venv.log 2>&1
    python3 -m venv "$v" >>/tmp/kobako-venv.log 2>&1
  }
  # shellcheck disable=SC2086 # the requirement list is split on purpose
  "$v/bin/pip" install -q $req >>/tmp/kobako-venv.log 2>&1 || {
    echo "setup: pip install $name failed; see /tmp/kobako-venv.log" >&2
    rm -rf "$v"
    return 1
  }
  echo "$req" >"$v/.kobako-req"
}
# schemathesis for scripts/api-fuzz.sh. Pinned: a fuzz run is only comparable with the same
# generator (and newer releases brought their own internal errors into our CI).
API_FUZZ_REQ="schemathesis==4.32.5 hypothesis==6.170.17"
py_venv schemathesis /var/cache/kobako/venv-api st "$API_FUZZ_REQ"
# A third-party Firecracker API client (crates/vmm/tests/fc_client.rs drives kobako-vmm with
# it). Pinned: the test checks this version; the package pins its own dependencies exactly.
FC_CLIENT_REQ="firecracker-python==0.0.5"
py_venv firecracker-python /var/cache/kobako/venv-fcclient python "$FC_CLIENT_REQ"

missing_packages() {
  missing=()
  for p in "${PACKAGES[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
      missing+=("$p")
    fi
  done
}
install_missing() {
  echo "setup: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  if ! apt-get install -y -q --no-install-recommends "${missing[@]}" >>/tmp/kobako-apt.log 2>&1; then
    apt-get update -q >>/tmp/kobako-apt.log 2>&1
    apt-get install -y -q --no-install-recommends "${missing[@]}" >>/tmp/kobako-apt.log 2>&1 || {
      echo "setup: apt-get install failed; see /tmp/kobako-apt.log" >&2
      exit 1
    }
  fi
}

: >/tmp/kobako-apt.log

# QEMU 8.2 or later: warm clones map their snapshot's memory copy-on-write
# (memory-backend-file with readonly=on,rom=off), so clones share the pages they do not write.
# Debian 12 ships QEMU 7.2; its backports carry a current one. Elsewhere, or when that fails,
# kobako still works with an older QEMU (each clone then reads its memory from a stream).
qemu_maps_files() {
  qemu-system-x86_64 -object memory-backend-file,help 2>/dev/null | grep -q '^ *rom='
}
if ! qemu_maps_files && grep -qx "VERSION_CODENAME=bookworm" /etc/os-release; then
  echo "setup: installing QEMU from bookworm-backports (8.2 or later)"
  echo "deb http://deb.debian.org/debian bookworm-backports main" \
    >/etc/apt/sources.list.d/kobako-backports.list
  export DEBIAN_FRONTEND=noninteractive
  if ! { apt-get update -q && apt-get install -y -q --no-install-recommends -t bookworm-backports \
    qemu-system-x86 qemu-system-data qemu-utils; } >>/tmp/kobako-apt.log 2>&1; then
    echo "setup: QEMU from bookworm-backports failed (see /tmp/kobako-apt.log); using Debian's" >&2
  fi
fi
if [ -x /usr/bin/qemu-system-x86_64 ] && ! qemu_maps_files; then
  echo "setup: warning: $(qemu-system-x86_64 --version | head -1) is older than 8.2: warm clones will not share memory" >&2
fi

missing_packages
if [ ${#missing[@]} -eq 0 ]; then
  echo "setup: all host packages present"
  exit 0
fi
install_missing
# An install can remove a package already there that conflicts with a new one (a machine
# with a backported qemu-utils loses it when Debian's qemu-system-x86 comes in): check again.
# (The backports step above installs both from the same release, so they agree.)
missing_packages
if [ ${#missing[@]} -ne 0 ]; then
  install_missing
  missing_packages
  if [ ${#missing[@]} -ne 0 ]; then
    echo "setup: still missing after install: ${missing[*]}; see /tmp/kobako-apt.log" >&2
    exit 1
  fi
fi
echo "setup: done"
