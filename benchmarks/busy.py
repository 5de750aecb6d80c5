"""`attnviz batch` on a machine kept busy: the default threads against every explicit setting.

Run: .venv/bin/python benchmarks/busy.py [--texts 300] [--model minilm] [--spinners N] [--rounds 1]

Issue 20: with other work on the machine, torch's one intra-op thread per core made the default
`batch` 3-10x slower than `--threads 1`. This script measures, in one run and interleaved:

  as found   the machine as it is (other users' work included)
  busy       N extra processes spinning on the CPU (default: 2 per core), started a minute ahead
             so the 1-minute load average the default reads has caught up

and, in each condition, `--threads 1`, `--threads C` (C: this machine's CPUs) and the default (no
`--threads`: the CPUs the load leaves free, `batch.records.free_cpus`). Each variant is a fresh
`attnviz batch --json` process over benchmarks/batch.py's generated corpus; `texts/s` is the run's
own rate (model loading left out); `x best` is the variant's rate over the best of its condition.
The claim to check: the default is never much worse than the best explicit setting.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from batch import corpus  # the same generated corpus as benchmarks/batch.py


def spin() -> None:
    while True:
        pass


def batch(texts: Path, out: Path, model: str, threads: int | None) -> dict:
    """One `attnviz batch --json` in a fresh process: its rate and the threads it chose."""
    cmd = [
        sys.executable,
        "-c",
        "from attnviz.cli import main; main()",
        "batch",
        str(texts),
        "-o",
        str(out),
        "-m",
        model,
    ]
    cmd += ["--no-plots", "--json", *(["--threads", str(threads)] if threads else [])]
    start = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, check=True)
    wall = time.perf_counter() - start
    result = json.loads(done.stdout)
    run = json.loads((out / "_run.json").read_text(encoding="utf-8"))
    return {
        "texts_per_s": result["texts_per_second"],
        "seconds": result["seconds"],
        "wall_s": round(wall, 1),
        "threads": run.get("engine", {}).get("threads"),
    }


def warm_up(target: float, limit: float = 90.0) -> float:
    """Wait until the 1-minute load average reaches `target` (or `limit` seconds pass)."""
    start = time.monotonic()
    while os.getloadavg()[0] < target and time.monotonic() - start < limit:
        time.sleep(2)
    return os.getloadavg()[0]


def condition(name: str, texts: Path, tmp: Path, model: str, rounds: int) -> list[dict]:
    cpus = os.cpu_count() or 1
    variants: list[tuple[str, int | None]] = [
        ("--threads 1", 1),
        (f"--threads {cpus}", cpus),
        ("default", None),
    ]
    rows = {label: [] for label, _ in variants}
    for r in range(rounds):
        for label, threads in variants:  # interleaved: a swing in the load hits every variant
            out = tmp / f"{name}-{label.replace(' ', '')}-{r}"
            rows[label].append({**batch(texts, out, model, threads), "load": os.getloadavg()[0]})
    result = []
    for label, runs in rows.items():
        best = max(runs, key=lambda x: x["texts_per_s"])
        result.append({"condition": name, "variant": label, **best})
    top = max(x["texts_per_s"] for x in result)
    for x in result:
        x["x_best"] = round(x["texts_per_s"] / top, 2) if top else 0.0
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--texts", type=int, default=300)
    parser.add_argument("--model", default="minilm")
    parser.add_argument("--spinners", type=int, default=2 * (os.cpu_count() or 1))
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--json", action="store_true", help="print the rows as JSON")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        texts = tmp / "corpus.txt"
        texts.write_text("\n".join(corpus(args.texts)) + "\n", encoding="utf-8")
        rows += condition("as found", texts, tmp, args.model, args.rounds)
        spinners = [multiprocessing.Process(target=spin, daemon=True) for _ in range(args.spinners)]
        for p in spinners:
            p.start()
        try:
            warm_up(min(args.spinners, 2 * (os.cpu_count() or 1)) * 0.8)
            rows += condition("busy", texts, tmp, args.model, args.rounds)
        finally:
            for p in spinners:
                p.kill()
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    print(f"{args.texts} texts, {args.model}, {os.cpu_count()} CPUs, {args.spinners} spinners when busy")
    head = ("condition", "variant", "threads", "texts/s", "x best", "run s", "load")
    print("{:<9} {:<12} {:>7} {:>8} {:>6} {:>6} {:>5}".format(*head))
    for r in rows:
        print(
            f"{r['condition']:<9} {r['variant']:<12} {r['threads']!s:>7} {r['texts_per_s']:>8} "
            f"{r['x_best']:>6} {r['seconds']:>6} {r['load']:>5.1f}"
        )


if __name__ == "__main__":
    main()
