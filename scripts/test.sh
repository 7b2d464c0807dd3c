#!/usr/bin/env bash
# Build the bovw wheel (abi3, manylinux_2_28, as shipped), install it with its
# test dependencies into ./.venv, then run the Rust unit tests and the Python
# test suite (parity against OpenCV, scikit-learn and Spark on real Fruits-360
# images; Spark local and standalone cluster, S3 on a local server, the
# notebooks, the wheel in a fresh virtualenv). This is the README's test
# command and what .ci/run calls. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
# maturin finds zig (the ziglang wheel) through the python on PATH
export VIRTUAL_ENV="$PWD/.venv" PATH="$PWD/.venv/bin:$PATH"
.venv/bin/python -m pip install -q --upgrade pip "maturin>=1.8,<2" ziglang
rm -rf dist
.venv/bin/maturin build --release --zig --compatibility manylinux_2_28 --out dist
WHEEL=$(ls dist/bovw-*.whl)
.venv/bin/python -m pip install -q "${WHEEL}[test]"
.venv/bin/python -m pip install -q --force-reinstall --no-deps "$WHEEL"
cargo test --release --quiet  # release: reuses the dependencies maturin just built
.venv/bin/python scripts/gen_stubs.py --check
.venv/bin/python -m mypy.stubtest bovw._bovw --mypy-config-file pyproject.toml
.venv/bin/python -m mypy  # python/bovw, with pyproject.toml's [tool.mypy]
# tests/test_wheel.py installs this same wheel into a fresh virtualenv
export BOVW_WHEEL="$PWD/$WHEEL"
.venv/bin/python -m pytest "$@"
