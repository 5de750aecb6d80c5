"""Model load times: SmolLM2 from its GGUF file (de-quantised) vs from attnviz's safetensors cache.

Run: .venv/bin/python benchmarks/load.py
Uses a fresh temporary cache, so the first load really de-quantises. Each load runs in its own
process, as a user's commands would. Also times the content hash that keys the cache: computed
once per file version, then remembered.
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


HASH = (
    "import time, pathlib; from attnviz import gguf_cache, models;"
    "p=pathlib.Path(models.resolve_model('smollm2').path);"
    "t=time.perf_counter(); gguf_cache.file_digest(p); a=time.perf_counter()-t;"
    "t=time.perf_counter(); gguf_cache.file_digest(p); b=time.perf_counter()-t; print(f'{a:.3f} {b:.4f}')"
)


def main() -> None:
    with tempfile.TemporaryDirectory() as cache:
        env = {**os.environ, "ATTNVIZ_CACHE": cache}
        out = subprocess.run(
            [sys.executable, "-c", HASH], env=env, capture_output=True, text=True, check=True
        )
        first_hash, memo_hash = (float(x) for x in out.stdout.split())
        rows = [
            ("minilm (folder)", *load("minilm", env)),
            ("smollm2, first load (GGUF)", *load("smollm2", env)),
            ("smollm2, second load (cache)", *load("smollm2", env)),
        ]
    print(f"{'load':<30}{'process s':>10}{'load_model s':>14}  from cache")
    for name, total, inner, cached in rows:
        print(f"{name:<30}{total:>10.2f}{inner:>14.2f}  {cached}")
    print(f"GGUF cache speed-up: {rows[1][2] / rows[2][2]:.1f}x (load_model time)")
    print(f"content hash of the GGUF file: {first_hash:.3f} s the first time, {memo_hash:.4f} s remembered")


if __name__ == "__main__":
    main()
