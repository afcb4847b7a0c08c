#!/usr/bin/env bash
# Build kobako and the static guest agent. PROFILE=dev|release (default release).
set -euo pipefail
cd "$(dirname "$0")/.."
PROFILE=${PROFILE:-release}

# The web UI: web/dist is embedded into kobako (crates/web). npm packages come from the
# registry through a cache in /var/cache/kobako/npm; `npm ci` runs only when package-lock.json
# changed and the Vite build only when a source did, so a second run costs a few checksums.
if [ "${KOBAKO_SKIP_WEB:-0}" != 1 ]; then
  npm_cache=${KOBAKO_CACHE:-/var/cache/kobako}/npm
  mkdir -p "$npm_cache"
  lock=$(sha256sum web/package-lock.json | cut -c1-64)
  if [ "$(cat web/node_modules/.kobako-lock 2>/dev/null)" != "$lock" ]; then
    echo "build: npm ci (web UI dependencies)"
    npm --prefix web ci --cache "$npm_cache" --prefer-offline --no-audit --no-fund --loglevel=error
    echo "$lock" >web/node_modules/.kobako-lock
  fi
  src=$(cd web && find src index.html package-lock.json tsconfig.json vite.config.ts -type f -print0 |
    sort -z | xargs -0 sha256sum | sha256sum | cut -c1-64)
  if [ "$(cat web/dist/.kobako-src 2>/dev/null)" != "$src" ]; then
    echo "build: web UI (tsc --noEmit, vite build)"
    npm --prefix web run build --silent >/tmp/kobako-web-build.log 2>&1 || {
      cat /tmp/kobako-web-build.log >&2
      exit 1
    }
    echo "$src" >web/dist/.kobako-src
  fi
fi
# The agent runs as PID 1 in images without a libc: link it statically. --target keeps
# RUSTFLAGS away from build scripts and proc macros.
RUSTFLAGS="-C target-feature=+crt-static" \
  cargo build -q --profile agent -p kobako-agent --target x86_64-unknown-linux-gnu
# kobako-vmm, the VM process of `--runtime vmm`, is its own small executable next to kobako
# (the runtime falls back to `kobako vmm` without it); release builds it with the vmm profile,
# statically linked like the agent (no dynamic loader at each VM start; less resident).
if [ "$PROFILE" = release ]; then
  cargo build -q --release -p kobako
  dir=target/release
  RUSTFLAGS="-C target-feature=+crt-static" \
    cargo build -q --profile vmm -p kobako-vmm --target x86_64-unknown-linux-gnu
  cp -f target/x86_64-unknown-linux-gnu/vmm/kobako-vmm "$dir/kobako-vmm"
else
  cargo build -q -p kobako -p kobako-vmm
  dir=target/debug
fi
cp -f target/x86_64-unknown-linux-gnu/agent/kobako-agent "$dir/kobako-agent"
echo "build: $dir/kobako, $dir/kobako-vmm and $dir/kobako-agent"
