#!/bin/sh
# Builds delay_probe.wasm from src/ (the built module is checked in beside this script, so
# nothing needs to build it to run the scenario).
#
# Toolchain: Debian 12's rustc with its WebAssembly std, no rustup and no network needed:
#   apt-get install rustc libstd-rust-dev-wasm32     # /usr/bin/rustc 1.63
# (With rustup and `rustup target add wasm32-unknown-unknown`, `cargo build --release
# --target wasm32-unknown-unknown` on the Cargo.toml here gives an equivalent module.)
#
#   ./build.sh [OUT]    # OUT defaults to delay_probe.wasm beside this script
set -eu
cd "$(dirname "$0")"
RUSTC=${RUSTC:-/usr/bin/rustc}
OUT=${1:-delay_probe.wasm}
exec "$RUSTC" --edition 2021 --crate-name delay_probe --crate-type cdylib \
  --target wasm32-unknown-unknown -C opt-level=s -C lto -C panic=abort -C strip=symbols \
  -C codegen-units=1 --remap-path-prefix "$(pwd)=." -o "$OUT" src/lib.rs
