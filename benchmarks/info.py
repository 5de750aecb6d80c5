"""`attnviz info` (config and weight headers read) against loading the model, as info used to.

Run: PYTHONPATH=src python benchmarks/info.py [--runs 3] [--models minilm smollm2]
Each variant runs in a fresh process, interleaved in the same run, so the ratios hold on a noisy
machine. SmolLM2 is loaded once first so its GGUF cache entry exists (later loads read it).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

INFO = "import sys; from attnviz.cli import main; sys.argv = ['attnviz', 'info', {model!r}]; main()"
LOAD = (
    "import attnviz; from attnviz.models.info import model_info; "
    "print(model_info(attnviz.load_model({model!r}, device='cpu')))"
)


def _seconds(code: str) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--models", nargs="+", default=["minilm", "smollm2"])
    args = parser.parse_args()
    for model in args.models:
        _seconds(LOAD.format(model=model))  # warm-up: the GGUF cache entry, the file system cache
    times: dict[tuple[str, str], list[float]] = {}
    for _ in range(args.runs):
        for model in args.models:
            for name, code in (("info", INFO), ("load", LOAD)):
                times.setdefault((model, name), []).append(_seconds(code.format(model=model)))
    for model in args.models:
        info, load = (statistics.median(times[model, name]) for name in ("info", "load"))
        print(
            f"{model:<8} attnviz info {info:6.2f} s   load_model + model_info {load:6.2f} s   "
            f"{load / info:5.1f}x faster  (medians of {args.runs})"
        )


if __name__ == "__main__":
    main()
