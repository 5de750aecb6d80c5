"""`attnviz batch` texts/s: the local engine against the Ray engine with 1 and 2 workers.

Run: .venv/bin/python benchmarks/batch_ray.py [--texts 1000] [--model minilm] [--batch-size 32]

On benchmarks/batch.py's generated corpus (English sentences of 5-40 words), one run of each:

  local-1t    --engine local --threads 1
  local-Nt    --engine local --threads N (N: the CPUs of this machine)
  ray-1w      --engine ray --workers 1 --threads 1 (a local Ray instance started by the run)
  ray-2w      --engine ray --workers 2 --threads 1

`texts/s` is texts over the run's own seconds (`BatchRun.seconds`: reading, analysis, parts,
summary; model loading and, for Ray, starting the instance and its workers are left out);
`wall s` is the whole call, start-up included; `busy` is the seconds spent analysing and writing
(summed over the workers) over the run's seconds: how many workers were at work at once.
`per worker` is texts/s divided by the workers (threads for local): the figure to size a cluster
with (docs/batch.md, "Sizing a cluster"). On a shared machine quote the ratios of one run, not the
absolute rates.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from batch import corpus  # the same generated corpus as benchmarks/batch.py


def run(name: str, texts_file: Path, out: Path, **settings) -> dict:
    from attnviz.batch import run_batch_analysis
    from attnviz.batch.config import make_config

    cfg = make_config(plots=False, **settings)
    start = time.perf_counter()
    result = run_batch_analysis(texts_file, cfg, out / name)
    wall = time.perf_counter() - start
    workers = settings.get("workers") or settings.get("threads") or 1
    return {
        "variant": name,
        "texts": result.processed,
        "seconds": round(result.seconds, 2),
        "wall_s": round(wall, 2),
        "texts_per_s": round(result.texts_per_second, 1),
        "per_worker": round(result.texts_per_second / workers, 1),
        # seconds the workers spent analysing and writing, over the run's: how many were busy at once
        "busy": round(sum(v for k, v in result.timings.items() if k != "read") / result.seconds, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--texts", type=int, default=1000)
    parser.add_argument("--model", default="minilm")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--json", action="store_true", help="print the rows as JSON")
    args = parser.parse_args()
    cpus = os.cpu_count() or 1
    common = {"model": args.model, "batch_size": args.batch_size, "texts_per_part": 256}
    variants = [
        ("local-1t", {"threads": 1}),
        (f"local-{cpus}t", {"threads": cpus}),
        ("ray-1w", {"engine": "ray", "workers": 1, "threads": 1}),
        ("ray-2w", {"engine": "ray", "workers": 2, "threads": 1}),
    ]
    with tempfile.TemporaryDirectory() as tmp:
        texts_file = Path(tmp) / "corpus.txt"
        texts_file.write_text("\n".join(corpus(args.texts)) + "\n", encoding="utf-8")
        rows = [run(name, texts_file, Path(tmp), **common, **extra) for name, extra in variants]
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"{args.texts} texts, {args.model}, batch size {args.batch_size}, {cpus} CPUs, load {load} after")
    print(f"{'variant':<10} {'texts/s':>8} {'per worker':>11} {'run s':>7} {'wall s':>7} {'busy':>5}")
    for r in rows:
        rate, per, secs, wall = r["texts_per_s"], r["per_worker"], r["seconds"], r["wall_s"]
        print(f"{r['variant']:<10} {rate:>8} {per:>11} {secs:>7} {wall:>7} {r['busy']:>5}")
    one = next(r for r in rows if r["variant"] == "ray-1w")["texts_per_s"]
    two = next(r for r in rows if r["variant"] == "ray-2w")["texts_per_s"]
    if one:
        print(f"ray-2w / ray-1w = {two / one:.2f} (scaling efficiency {two / one / 2:.0%})")


if __name__ == "__main__":
    main()
