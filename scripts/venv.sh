# Sourced by demo.sh and test.sh: create .venv if needed and install the project with the extras in
# $EXTRAS. torch is pinned in pyproject.toml, so a CPU machine gets the CPU build.
cd "$(dirname "${BASH_SOURCE[0]}")/.."
[ -x .venv/bin/python ] || "${PYTHON:-python3}" -m venv .venv
# llama-cpp-python (the llama.cpp backend, in both extras used here) is a source package: pip compiles
# llama.cpp with this machine's compiler, for this CPU (-march=native). Done first and on its own, so
# that a new user sees it happening and how long it took; pip keeps the wheel for later installs.
if ! .venv/bin/python -c "import llama_cpp" 2>/dev/null; then
  LLAMA_REQ=$(grep -o 'llama-cpp-python==[0-9.]*' pyproject.toml | head -1)
  echo "rstitch setup: building llama.cpp from source for ${LLAMA_REQ} (the llama.cpp backend; about 5 minutes on 2 cores, once)" >&2
  start=$(date +%s)
  # The multimodal library (mtmd) is not used by rstitch: skipping it saves a third of the build.
  CMAKE_ARGS="${CMAKE_ARGS:--DLLAVA_BUILD=OFF}" .venv/bin/pip install --quiet --disable-pip-version-check "${LLAMA_REQ}"
  echo "rstitch setup: llama.cpp built and installed in $(( $(date +%s) - start )) s" >&2
fi
.venv/bin/pip install --quiet --disable-pip-version-check -e ".[${EXTRAS}]"
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
