#!/usr/bin/env bash
# Install bovw with its test dependencies into ./.venv, then run the Rust unit
# tests and the Python test suite (parity against OpenCV, scikit-learn and
# Spark on real Fruits-360 images). This is the README's test command and
# what .ci/run calls.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e '.[test]'
cargo test --release --quiet  # release: reuses the dependencies maturin just built
.venv/bin/python scripts/gen_stubs.py --check
.venv/bin/python -m mypy.stubtest bovw._bovw
.venv/bin/python -m pytest "$@"
