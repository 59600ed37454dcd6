#!/usr/bin/env bash
# Regenerate the Python gRPC code in gen/ from proto/ (run after editing any .proto; commit the result).
# Usage: scripts/gen_proto.sh [OUT_DIR]   (default: gen; tests regenerate into a temporary dir and compare)
# Needs grpcio-tools at the version pinned in pyproject.toml (the "test" extra); $PYTHON picks the interpreter.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
OUT="${1:-gen}"
PY="${PYTHON:-.venv/bin/python}"
[ -x "$PY" ] || command -v "$PY" >/dev/null || PY=python3
mkdir -p "$OUT"
"$PY" -m grpc_tools.protoc -I proto --python_out="$OUT" --grpc_python_out="$OUT" --pyi_out="$OUT" \
    proto/rstitch/v1/rstitch.proto
# protoc writes modules only; the package markers make gen/rstitch importable as `rstitch`.
echo '"""Generated from proto/rstitch by scripts/gen_proto.sh; do not edit."""' > "$OUT/rstitch/__init__.py"
echo '"""Generated from proto/rstitch/v1 by scripts/gen_proto.sh; do not edit."""' > "$OUT/rstitch/v1/__init__.py"
