"""Generation: time and memory of `attnviz.generate` against plain `model.generate`.

Run: PYTHONPATH=src .venv/bin/python benchmarks/generate.py [--new 64,512] [--rounds 2] [--device cpu]
     PYTHONPATH=src .venv/bin/python benchmarks/generate.py --memory [--new 512]
     PYTHONPATH=src .venv/bin/python benchmarks/generate.py --new 512 --variants head   (one variant)

On a machine too loaded for the interleaved rounds to finish, start one process per variant at
the same time (`--variants plain`, `head`, `all`): they run under the same load.

Model: the bundled SmolLM2 (30 layers x 9 heads) with its LM head, float32, greedy, one prompt.
Every run is forced to its full length (`min_new_tokens`), so all variants produce the same
number of tokens. Variants, interleaved round by round in one process so the ratios compare runs
made under the same machine load:

  plain   model.generate with transformers' `sdpa` attention, nothing recorded (the baseline)
  head    attnviz.generate(layers=[18], heads=[6])    one head of one layer
  all     attnviz.generate()                          every head of every layer (one round at 512)

Time is wall-clock seconds of the call, the minimum over rounds. The ids of every variant are
checked against the baseline's. Memory (`--memory`) is measured apart, each variant in a fresh
process (model loaded, then the peak mark reset): the peak resident set during the call above the
resident set before it (VmHWM after `clear_refs` reset it; on CUDA, the peak allocated bytes above
those before), next to the size of the recorded result. In one long-lived process freed memory is
reused, which would hide the peaks.
"""

from __future__ import annotations

import gc
import json
import time
from functools import partial
from pathlib import Path

VARIANTS = ("plain", "head", "all")
PROMPT = "Once upon a time, in a small village by the sea, there lived an old fisherman who"


def _rss_peak_reset() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _status(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    return 0


def measure(fn, device: str) -> tuple[float, int, object]:
    """(seconds, peak extra bytes, result) of one call."""
    import torch

    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    else:
        _rss_peak_reset()
        before = _status("VmRSS")
    t0 = time.perf_counter()
    result = fn()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    peak = torch.cuda.max_memory_allocated() if device.startswith("cuda") else _status("VmHWM")
    return seconds, max(0, peak - before), result


def variants(loaded, device: str):
    """plain(n) and recorded(n, one_head): the calls measured."""
    import torch

    from attnviz.generation.run import generate, generate_kwargs

    model, tok = loaded.model, loaded.tokenizer
    ids = torch.tensor([tok(PROMPT)["input_ids"]], device=device)

    def plain(n: int) -> list[int]:
        model.set_attn_implementation("sdpa")
        try:
            kwargs = generate_kwargs(loaded, {"max_new_tokens": n, "min_new_tokens": n})
            with torch.inference_mode():
                out = model.generate(ids, attention_mask=torch.ones_like(ids), **kwargs)
            return out[0].tolist()
        finally:
            model.set_attn_implementation("attnviz")

    def recorded(n: int, one_head: bool):
        sel = {"layers": [18], "heads": [6]} if one_head else {}
        return generate(PROMPT, loaded, max_new_tokens=n, min_new_tokens=n, **sel)

    return plain, recorded


def child(variant: str, n: int, device: str) -> None:
    """One measured call in this fresh process (for memory)."""
    from attnviz.generation.run import load_for_generation

    loaded = load_for_generation("smollm2", device=device)
    plain, recorded = variants(loaded, device)
    plain(2)  # first-call costs
    fn = partial(plain, n) if variant == "plain" else partial(recorded, n, variant == "head")
    seconds, extra, result = measure(fn, device)
    size = 0 if variant == "plain" else int(result.attn.nbytes)
    row = {"new_tokens": n, "variant": variant, "peak_extra_mb": round(extra / 1e6, 1)}
    row.update(result_mb=round(size / 1e6, 1), seconds=round(seconds, 3))
    print(json.dumps(row), flush=True)


def timing(loaded, news: list[int], rounds: int, device: str, names: tuple[str, ...] = VARIANTS) -> None:
    """Interleaved rounds in this process; the minimum time of each variant, and its ratio to plain."""
    plain, recorded = variants(loaded, device)
    plain(4)  # warm up: first-call costs are not the method's
    recorded(4, True)
    if names != VARIANTS:  # one variant of a concurrent run: its times only, ratios by hand
        for n in news:
            for variant in names:
                fn = partial(plain, n) if variant == "plain" else partial(recorded, n, variant == "head")
                seconds, _, _ = measure(fn, device)
                print(
                    json.dumps({"new_tokens": n, "variant": variant, "seconds": round(seconds, 3)}),
                    flush=True,
                )
        return
    for n in news:
        best: dict[str, float] = {}
        reference = None
        for r in range(rounds):
            for variant in ("plain", "head", "all"):
                if variant == "all" and n >= 512 and r > 0:
                    continue  # every head at 512 tokens: once (the machine is shared)
                fn = partial(plain, n) if variant == "plain" else partial(recorded, n, variant == "head")
                seconds, _, result = measure(fn, device)
                got = result if variant == "plain" else list(result.token_ids)
                reference = reference or got
                assert got == reference, f"{variant} generated other ids than plain generate"
                best[variant] = min(best.get(variant, float("inf")), seconds)
                print(
                    json.dumps(
                        {"new_tokens": n, "round": r, "variant": variant, "seconds": round(seconds, 3)}
                    )
                )
        for variant in ("plain", "head", "all"):
            row = {"new_tokens": n, "variant": variant, "seconds": round(best[variant], 3)}
            row["vs_plain"] = round(best[variant] / best["plain"], 3)
            print(json.dumps(row), flush=True)


def main() -> None:
    import argparse
    import os
    import subprocess
    import sys

    import torch

    parser = argparse.ArgumentParser()
    parser.add_argument("--new", default="64,512")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=int(os.environ.get("BENCH_THREADS", "2")))
    parser.add_argument("--memory", action="store_true", help="peak memory, each variant in a fresh process")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--variants", default=",".join(VARIANTS), help="a subset, for concurrent runs")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    news = [int(x) for x in args.new.split(",")]
    if args.child:
        child(args.child, news[0], args.device)
    elif args.memory:
        for n in news:
            for variant in ("plain", "head", "all"):
                cmd = [sys.executable, __file__, "--child", variant, "--new", str(n), "--device", args.device]
                subprocess.run(cmd, check=True)
    else:
        from attnviz.generation.run import load_for_generation

        names = tuple(args.variants.split(","))
        timing(load_for_generation("smollm2", device=args.device), news, args.rounds, args.device, names)
    print(f"device {args.device}, threads {args.threads}, rounds {args.rounds}")


if __name__ == "__main__":
    main()
