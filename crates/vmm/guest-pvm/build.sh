#!/bin/sh
# Builds the PVM-tolerant guest kernel: Debian's linux-source 6.1 + pvm-tolerant.patch,
# configured as allnoconfig + guest/kernel/microvm.config + pvm.config, into
# ${OUT:-/var/cache/kobako/kernel-pvm}/vmlinux (uncompressed ELF with the PVH note).
# Only for hosts whose /dev/kvm is kvm_pvm; the normal kernel stays unpatched.
# About 5 minutes with make -j2 on an idle 2-core machine.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../../.." && pwd)
out=${OUT:-/var/cache/kobako/kernel-pvm}
tarball=/usr/src/linux-source-6.1.tar.xz
[ -f "$tarball" ] || { echo "need $tarball: apt-get install linux-source-6.1" >&2; exit 1; }
mkdir -p "$out"
# .patched holds the checksum of the patch the tree carries: a changed patch re-extracts it.
want=$(sha256sum < "$here/pvm-tolerant.patch" | cut -d' ' -f1)
if [ "$(cat "$out/src/.patched" 2>/dev/null)" != "$want" ]; then
  rm -rf "$out/src"
  mkdir -p "$out/src"
  tar -xJf "$tarball" -C "$out/src" --strip-components=1
  (cd "$out/src" && patch -p1 < "$here/pvm-tolerant.patch")
  echo "$want" > "$out/src/.patched"
fi
cat "$repo/guest/kernel/microvm.config" "$here/pvm.config" > "$out/fragment.config"
make -C "$out/src" O="$out/build" allnoconfig KCONFIG_ALLCONFIG="$out/fragment.config" >/dev/null
make -C "$out/src" O="$out/build" -j"${JOBS:-2}" vmlinux > "$out/build.log" 2>&1 || {
  tail -n 30 "$out/build.log" >&2; exit 1; }
cp "$out/build/vmlinux" "$out/vmlinux"
echo "$out/vmlinux"
