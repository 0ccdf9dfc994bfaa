#!/usr/bin/env bash
# Fuzz load + compile, seeded with the bundled fixtures. Usage: bash fuzz/run.sh [SECONDS]
# Runs on the stable toolchain (RUSTC_BOOTSTRAP lets cargo-fuzz pass its -Z flags), without a
# sanitizer: we look for panics, overflows (debug assertions) and hangs in safe Rust.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-600}"
corpus=fuzz/corpus/load_and_compile
mkdir -p "$corpus"
cp models/fixtures/tiny_*.onnx "$corpus/"
RUSTC_BOOTSTRAP=1 cargo fuzz run --sanitizer none --debug-assertions load_and_compile "$corpus" -- \
    -max_total_time="$seconds" -max_len=400000 -timeout=20 -rss_limit_mb=4096
