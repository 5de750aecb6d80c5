"""Cold start of the CLI: `attnviz --help` against a bare interpreter and `import torch`.

Run: .venv/bin/python benchmarks/startup.py [--runs 10]
All three are measured in the same run, interleaved, so the ratios hold on a noisy machine.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

CASES = {
    "python -c pass": [sys.executable, "-c", "pass"],
    "attnviz --help": [
        sys.executable,
        "-c",
        "from attnviz.cli import main; import sys; sys.argv=['attnviz','--help']; main()",
    ],
    "import torch, transformers": [sys.executable, "-c", "import torch, transformers"],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=10)
    args = parser.parse_args()
    times: dict[str, list[float]] = {name: [] for name in CASES}
    for _ in range(args.runs):
        for name, cmd in CASES.items():
            start = time.perf_counter()
            subprocess.run(cmd, check=True, capture_output=True)
            times[name].append(time.perf_counter() - start)
    base = statistics.median(times["python -c pass"])
    help_t = statistics.median(times["attnviz --help"])
    heavy = statistics.median(times["import torch, transformers"])
    for name, values in times.items():
        print(f"{name:<28} median {statistics.median(values) * 1000:7.0f} ms  (min {min(values) * 1000:.0f})")
    print(
        f"attnviz --help costs {help_t - base:.3f} s over a bare interpreter; "
        f"{heavy / help_t:.1f}x faster than importing torch + transformers"
    )


if __name__ == "__main__":
    main()
