#!/usr/bin/env bash
# Set up a virtual environment from scratch (CPU torch, test extras) and run the whole test suite.
set -euo pipefail
EXTRAS=test source "$(dirname "$0")/venv.sh"
exec .venv/bin/python -m pytest -q "$@"
