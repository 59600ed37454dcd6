# Sourced by demo.sh and test.sh: create .venv if needed and install the project with the extras in
# $EXTRAS. torch is pinned in pyproject.toml, so a CPU machine gets the CPU build.
cd "$(dirname "${BASH_SOURCE[0]}")/.."
[ -x .venv/bin/python ] || "${PYTHON:-python3}" -m venv .venv
.venv/bin/pip install --quiet --disable-pip-version-check -e ".[${EXTRAS}]"
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
