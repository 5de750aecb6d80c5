"""Long inputs: time and peak resident memory of head-sliced capture against a plain sdpa forward.

Run: PYTHONPATH=src .venv/bin/python benchmarks/long.py [--lengths 2048,8192] [--rounds 1] [--no-before]

Model: the bundled SmolLM2 (30 layers x 9 heads, 3 KV heads), CPU, float32. Every variant runs in a
fresh process (model loaded, input tokenised, then the peak-RSS mark is reset, see below, and only
the measured call runs), and the variants of one length are interleaved round by round, so ratios
compare runs made under the same machine load. Variants:

  plain      the same model switched to transformers' `sdpa`, one forward (the baseline)
  head       extract(layers=[18], heads=[6])            one head of one layer
  head16     the same with store="float16"               (half the n^2 result, rounded)
  layer      extract(layers=[18])                       the 9 heads of one layer
  all        extract() of all 30 x 9 heads, float32     (2,048 tokens only: the result is 4.5 GB)
  all16      extract(store="float16")                   the same, half the result, rounded
  before-*   `head` and `all` with the code before head-sliced capture (commit 4b64209), for
             comparison (skipped with --no-before)

Peak memory is the process's VmHWM after `clear_refs` reset it once the model was loaded, so it is
the peak resident set *during* the call; time is wall-clock and CPU (user + system) seconds of
the call, the minimum over rounds (model weights included, loading spikes excluded); where
the kernel refuses the reset it falls back to the whole-process peak (getrusage), which it says.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BEFORE = "4b64209"  # the last commit that ran eager attention for every head of a recorded layer
SENTENCES = [
    "Emily always wanted to visit Paris, so she took French lessons every {i}th evening.",
    "The cat sat on mat number {i} and watched the birds that sang in the garden.",
    "In chapter {i}, the committee argued about the budget until the lights went out.",
    "Transformers attend to tokens; head {i} may look back at the previous word.",
]


def _text(words_needed: int) -> str:
    parts, i = [], 0
    while len(" ".join(parts).split()) < words_needed:
        parts.append(SENTENCES[i % len(SENTENCES)].format(i=i))
        i += 1
    return " ".join(parts)


def worker(variant: str, n: int) -> dict[str, object]:
    """Runs in the child process: load, tokenise, reset the peak mark, run one variant, measure."""
    import gc
    import resource
    import time

    import torch

    from attnviz.extraction import extract, tokenize
    from attnviz.models.loading import load_model

    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "2")))
    loaded = load_model("smollm2", device="cpu")
    text = _text(n)  # about 1.3 tokens a word: more than n tokens, cut to exactly n below
    enc = tokenize(loaded, [text], True, True, n)
    assert enc.lengths[0] == n, enc.lengths
    if variant == "plain":
        loaded.model.set_attn_implementation("sdpa")
    gc.collect()
    reset = True
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        reset = False
    kind = variant.removeprefix("before-")
    t0, c0 = time.perf_counter(), time.process_time()
    result_bytes = 0
    if kind == "plain":
        with torch.inference_mode():
            loaded.model(input_ids=enc.input_ids, attention_mask=enc.attention_mask)
    else:
        kwargs: dict[str, object] = {"truncate": True, "max_length": n}
        if kind in ("head", "head16"):
            kwargs.update(layers=[18], heads=[6])
            if kind == "head16":
                kwargs.update(store="float16")
        elif kind == "layer":
            kwargs.update(layers=[18])
        elif kind == "all16":
            kwargs.update(store="float16")
        att = extract(text, loaded, **kwargs)
        assert att.n_tokens == n
        result_bytes = int(att.attn.nbytes)
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    peak = None
    if reset:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                peak = int(line.split()[1]) * 1024
    if peak is None:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"seconds": seconds, "cpu": cpu, "peak": peak, "result": result_bytes, "reset": reset}


def run(variant: str, n: int, src: Path) -> dict[str, object]:
    env = {**os.environ, "PYTHONPATH": str(src)}
    out = subprocess.run(
        [sys.executable, __file__, "--worker", variant, str(n)], env=env, capture_output=True, text=True
    )
    if out.returncode != 0:
        return {"error": (out.stderr.strip().splitlines() or ["?"])[-1]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def _old_source(tmp: Path) -> Path:
    archive = tmp / "before.tar"
    subprocess.run(["git", "-C", str(ROOT), "archive", "-o", str(archive), BEFORE, "src"], check=True)
    with tarfile.open(archive) as tar:
        tar.extractall(tmp, filter="data")
    return tmp / "src"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--lengths", default="2048,8192")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--no-before", action="store_true")
    parser.add_argument("--variants", help="comma-separated subset, e.g. plain,head,head16")
    parser.add_argument("--worker", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker[0], int(args.worker[1]))))
        return
    lengths = [int(x) for x in args.lengths.split(",")]
    results: dict[tuple[str, int], list[dict[str, object]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        old = None if args.no_before else _old_source(Path(tmp))
        for n in lengths:
            variants = ["plain", "head", "head16", "layer"]
            if n <= 2048:
                variants += ["all", "all16"] + ([] if old is None else ["before-head", "before-all"])
            if args.variants:
                variants = [v for v in variants if v in args.variants.split(",")]
            for _ in range(args.rounds):
                for v in variants:
                    res = run(v, n, old if v.startswith("before-") and old else ROOT / "src")
                    results.setdefault((v, n), []).append(res)
                    print(f"  {n:>6} {v:<12} {res}", file=sys.stderr, flush=True)
    head = ("seconds", "x plain", "cpu s", "x plain", "peak GB", "x plain", "result GB")
    print(f"\n{'tokens':>6}  {'variant':<12}" + "".join(f"{h:>10}" for h in head))
    base: dict[int, tuple[float, float, float]] = {}
    for (v, n), runs in results.items():
        ok = [r for r in runs if "error" not in r]
        if not ok:
            print(f"{n:>6}  {v:<12}  failed: {runs[0]['error']}")
            continue
        sec = min(float(r["seconds"]) for r in ok)
        cpu = min(float(r["cpu"]) for r in ok)
        peak = min(float(r["peak"]) for r in ok) / 1e9
        if v == "plain":
            base[n] = (sec, cpu, peak)
        bs, bc, bp = base.get(n, (sec, cpu, peak))
        res_gb = float(ok[0]["result"]) / 1e9
        cells = (sec, sec / bs, cpu, cpu / bc, peak, peak / bp, res_gb)
        print(f"{n:>6}  {v:<12}" + "".join(f"{c:>10.2f}" for c in cells))
    if not all(r.get("reset", True) for runs in results.values() for r in runs):
        print("note: peak is the whole process's (the kernel refused to reset VmHWM)")
    _extrapolate(results, lengths)


def _extrapolate(results: dict[tuple[str, int], list[dict[str, object]]], lengths: list[int]) -> None:
    """Largest length in 24 GB, by a line through the plain forward's peaks plus the exact n^2 result.

    SmolLM2 takes at most 8,192 tokens: lengths beyond are an extrapolation for a model like it.
    """
    if len(lengths) < 2:
        return
    lo, hi = min(lengths), max(lengths)

    def peak(v: str, n: int) -> float | None:
        ok = [float(r["peak"]) for r in results.get((v, n), []) if "error" not in r]
        return min(ok) if ok else None

    p_lo, p_hi = peak("plain", lo), peak("plain", hi)
    if p_lo is None or p_hi is None:
        return
    slope = (p_hi - p_lo) / (hi - lo)  # bytes per token of the plain forward (activations grow linearly)
    budget = 24e9
    print("\nlargest length in 24 GB (extrapolated from the line above; SmolLM2 itself stops at 8,192):")
    for v, heads in (("head", 1), ("layer", 9)):
        p = peak(v, hi)
        if p is None:
            continue
        extra = p - p_hi - heads * hi * hi * 4  # what the recorded layer costs beyond its result
        n = hi
        while p_hi + slope * (n - hi) + extra + heads * n * n * 4 <= budget:
            n += 256
        print(f"  {v:<6} ~{n - 256:,} tokens ({heads} x n^2 float32 weights; float16 store: more)")


if __name__ == "__main__":
    main()
