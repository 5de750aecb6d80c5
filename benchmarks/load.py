"""Model load times: SmolLM2 from its GGUF file (de-quantised) vs from attnviz's safetensors cache.

Run: .venv/bin/python benchmarks/load.py
Uses a fresh temporary cache, so the first load really de-quantises. Each load runs in its own
process, as a user's commands would.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile

CODE = (
    "import time; t=time.perf_counter(); import attnviz; m=attnviz.load_model('{model}', device='cpu'); "
    "print(f'{{time.perf_counter()-t:.2f}} {{m.load_seconds:.2f}} {{m.from_cache}}')"
)


def load(model: str, env: dict[str, str]) -> tuple[float, float, str]:
    out = subprocess.run(
        [sys.executable, "-c", CODE.format(model=model)], env=env, capture_output=True, text=True, check=True
    )
    total, inner, cached = out.stdout.split()
    return float(total), float(inner), cached


def main() -> None:
    with tempfile.TemporaryDirectory() as cache:
        env = {**os.environ, "ATTNVIZ_CACHE": cache}
        rows = [
            ("minilm (folder)", *load("minilm", env)),
            ("smollm2, first load (GGUF)", *load("smollm2", env)),
            ("smollm2, second load (cache)", *load("smollm2", env)),
        ]
    print(f"{'load':<30}{'process s':>10}{'load_model s':>14}  from cache")
    for name, total, inner, cached in rows:
        print(f"{name:<30}{total:>10.2f}{inner:>14.2f}  {cached}")
    print(f"GGUF cache speed-up: {rows[1][2] / rows[2][2]:.1f}x (load_model time)")


if __name__ == "__main__":
    main()
