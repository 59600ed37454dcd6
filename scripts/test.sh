#!/usr/bin/env bash
# Set up a virtual environment from scratch (CPU torch, test extras) and run the whole test suite.
set -euo pipefail
EXTRAS=test source "$(dirname "$0")/venv.sh"
# The metrics tests run a real Prometheus: Debian's package.
if ! command -v prometheus >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq prometheus >/dev/null
  else
    echo "scripts/test.sh: install Debian's prometheus package (sudo apt-get install prometheus)" >&2
  fi
fi
exec .venv/bin/python -m pytest -q "$@"
