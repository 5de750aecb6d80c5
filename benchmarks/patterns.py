"""Cost of `pattern_scores` on one MiniLM-sized text (6 layers x 12 heads, 40 tokens).

Run: PYTHONPATH=src .venv/bin/python benchmarks/patterns.py [--runs 30]
Moved here from a timed test: wall-clock limits belong in benchmarks, not in the suite.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from attnviz.heads.patterns import pattern_scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--tokens", type=int, default=40)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    n = args.tokens
    attn = rng.random((6, 12, n, n)).astype(np.float32)  # [layers, heads, q, k]
    attn /= attn.sum(-1, keepdims=True)
    tokens = ["[CLS]", *(["w", ","] * ((n - 2) // 2)), *(["w"] * ((n - 2) % 2)), "[SEP]"]
    special = [True, *[False] * (n - 2), True]
    timings = []
    for _ in range(args.runs):
        start = time.perf_counter()
        pattern_scores(attn, special, tokens, causal=False)
        timings.append(time.perf_counter() - start)
    print(
        f"pattern_scores 6x12 heads, {n} tokens: fastest {min(timings) * 1e3:.3f} ms,"
        f" median {statistics.median(timings) * 1e3:.3f} ms over {args.runs} runs"
    )


if __name__ == "__main__":
    main()
