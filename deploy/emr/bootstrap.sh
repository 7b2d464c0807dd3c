#!/usr/bin/env bash
# EMR bootstrap action: install the bovw wheel on every node, into the Python
# interpreter that Spark uses (PYSPARK_PYTHON; /usr/bin/python3 on EMR 7.x).
#
# Usage (as a bootstrap action, runs as user hadoop on every node before Spark starts):
#   bootstrap.sh s3://BUCKET/bovw/bovw-0.1.0-cp39-abi3-manylinux_2_28_x86_64.whl [more pip args]
#   bootstrap.sh s3://BUCKET/bovw/wheelhouse/            # a prefix: every wheel in it, installed
#                                                       # offline (--no-index), for clusters without internet
#
# Environment (optional; defaults suit EMR):
#   BOVW_PYTHON           interpreter to install into          (default /usr/bin/python3)
#   BOVW_AWS_CLI          the aws command                      (default aws)
#   BOVW_S3_ENDPOINT_URL  S3-compatible endpoint for the copy  (default AWS S3)
#   BOVW_SUDO             prefix for pip install               (default "sudo" unless already root or
#                                                               BOVW_PYTHON is in a virtualenv; "" to disable)
#   BOVW_PIP_ARGS         extra pip install arguments          (e.g. "--no-deps")
set -euo pipefail

SRC="${1:?usage: bootstrap.sh s3://bucket/path/bovw-*.whl | s3://bucket/wheelhouse/ [pip args]}"
shift || true
PYTHON="${BOVW_PYTHON:-/usr/bin/python3}"
AWS="${BOVW_AWS_CLI:-aws}"
ENDPOINT=()
if [ -n "${BOVW_S3_ENDPOINT_URL:-}" ]; then
    ENDPOINT=(--endpoint-url "$BOVW_S3_ENDPOINT_URL")
fi
if [ -z "${BOVW_SUDO+x}" ]; then
    if [ "$(id -u)" = "0" ] || "$PYTHON" -c 'import sys; sys.exit(0 if sys.prefix != sys.base_prefix else 1)'; then
        BOVW_SUDO=""
    else
        BOVW_SUDO="sudo"
    fi
fi

WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT

PIP_EXTRA=()
if [[ "$SRC" == */ ]]; then
    "$AWS" "${ENDPOINT[@]}" s3 cp --recursive --exclude '*' --include '*.whl' "$SRC" "$WORK/"
    PIP_EXTRA=(--no-index --find-links "$WORK")
    TARGET="bovw"
else
    "$AWS" "${ENDPOINT[@]}" s3 cp "$SRC" "$WORK/"
    TARGET="$WORK/$(basename "$SRC")"
fi

# shellcheck disable=SC2086
$BOVW_SUDO "$PYTHON" -m pip install --quiet --disable-pip-version-check ${BOVW_PIP_ARGS:-} \
    "${PIP_EXTRA[@]}" "$TARGET" "$@"

# fail the bootstrap (and the cluster) now rather than in the first Spark task
"$PYTHON" -c 'import bovw, bovw.spark; print("bovw", bovw.__version__, "installed for", __import__("sys").executable)'
