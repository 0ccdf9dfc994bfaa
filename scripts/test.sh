#!/usr/bin/env bash
# The test command (README): installs what the tests need, then runs every test.
#  1. a small virtualenv (.venv-test) with onnxruntime (whose shared library the `ort` crate
#     loads), onnx (its checker) and numpy; no torch;
#  2. Debian's Chromium, when missing (the HTML heatmap is checked in a headless browser);
#  3. cargo test: compiler, references, tract and ONNX Runtime, onnx.checker, CLI;
#  4. both deployment examples on a bundled fixture, so they never rot.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=.venv-test
if [ ! -x "$VENV/bin/python" ]; then
    python3 -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -r scripts/requirements-test.txt

ORT_DYLIB_PATH="$(ls "$PWD"/$VENV/lib/python3*/site-packages/onnxruntime/capi/libonnxruntime.so.* | head -n 1)"
export ORT_DYLIB_PATH
export MAMBALRP_PYTHON="$PWD/$VENV/bin/python"

# Debian's Chromium for the HTML heatmap's headless-browser test (tests/html_in_browser.rs,
# which fails when the browser is missing). Installing needs root, or a sudo without password.
if ! command -v chromium >/dev/null 2>&1 && [ -z "${MAMBALRP_CHROMIUM:-}" ]; then
    echo "== installing Debian's chromium (for the headless-browser test)"
    sudo_cmd=""
    if [ "$(id -u)" != 0 ]; then sudo_cmd="sudo -n"; fi
    export DEBIAN_FRONTEND=noninteractive
    $sudo_cmd apt-get install -y -qq --no-install-recommends chromium >/dev/null ||
        { $sudo_cmd apt-get update -qq && $sudo_cmd apt-get install -y -qq --no-install-recommends chromium >/dev/null; } ||
        echo "== could not install chromium: tests/html_in_browser.rs will fail"
fi

cargo test --locked

echo "== examples on the bundled tiny model"
out=target/examples-check
mkdir -p "$out"
cargo run --locked --quiet -- models/fixtures/tiny_convbias.onnx -o "$out/tiny_convbias_lrp.onnx" --verify-runtime ort
"$MAMBALRP_PYTHON" examples/python_onnxruntime.py "$out/tiny_convbias_lrp.onnx"
cargo run --locked --quiet --example ort_explain -- "$out/tiny_convbias_lrp.onnx"
echo "examples: 2 passed, 0 failed"
