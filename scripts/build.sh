#!/usr/bin/env bash
# Build kobako and the static guest agent. PROFILE=dev|release (default release).
set -euo pipefail
cd "$(dirname "$0")/.."
PROFILE=${PROFILE:-release}
# The agent runs as PID 1 in images without a libc: link it statically. --target keeps
# RUSTFLAGS away from build scripts and proc macros.
RUSTFLAGS="-C target-feature=+crt-static" \
  cargo build -q --profile agent -p kobako-agent --target x86_64-unknown-linux-gnu
if [ "$PROFILE" = release ]; then
  cargo build -q --release -p kobako
  dir=target/release
else
  cargo build -q -p kobako
  dir=target/debug
fi
cp -f target/x86_64-unknown-linux-gnu/agent/kobako-agent "$dir/kobako-agent"
echo "build: $dir/kobako and $dir/kobako-agent"
