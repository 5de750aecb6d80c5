"""How long `attnviz patch` takes on SmolLM2 (270 heads, all positions) against 270 separate forwards.

Run: PYTHONPATH=src python benchmarks/patch.py [--model smollm2] [--device cpu] [--batch-size 64]
      [--rounds 3] [--threads N]
Every variant runs in this one process, on the indirect-object prompt, through the same hooks,
interleaved round by round (the minimum of each is kept, so the ratios compare runs made under
the same load):
  map        the head map as `patch` runs it: rows of batched forwards, whole layers together,
             the layers below each batch's lowest patch replayed from the corrupt run
  no-skip    the same batches computing every layer (the map before layer replay)
  separate   the same 270 patches one full forward each (`batch_size=1`, every layer computed):
             the baseline of the issue's target, map <= 0.2 x separate
  plain      270 plain forwards of one text (the naive loop's floor)
Prints the seconds of each, the ratios and that all maps agree.
"""

from __future__ import annotations

import argparse
import time

CLEAN = "When Mary and John went to the store, John gave a drink to"
CORRUPT = "When Mary and John went to the store, Mary gave a drink to"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args()

    from contextlib import nullcontext
    from unittest import mock

    import numpy as np
    import torch

    from attnviz.heads.patching import for_patching, patch
    from attnviz.heads.skipping import Skipper
    from attnviz.models.loading import load_model

    torch.set_grad_enabled(False)
    if args.threads:
        torch.set_num_threads(args.threads)  # 1 keeps a shared machine's load from stalling its threads
    loaded = for_patching(load_model(args.model, device=args.device))
    kwargs = {"answer": "Mary", "wrong": "John"}
    ids = loaded.tokenizer(CLEAN, return_tensors="pt").to(loaded.device)
    with torch.inference_mode():
        loaded.model(**ids)  # warm-up

    def every_layer():  # what the map computed before layer replay
        return mock.patch.object(Skipper, "check", lambda self, run: False)

    def plain():
        with torch.inference_mode():
            for _ in range(270):
                loaded.model(**ids, logits_to_keep=1)

    variants = {
        "map": (nullcontext, args.batch_size),
        "no-skip": (every_layer, args.batch_size),
        "separate": (every_layer, 1),
    }
    best = {name: float("inf") for name in [*variants, "plain"]}
    maps = {}
    for _ in range(args.rounds):
        for name, (context, size) in variants.items():
            with context():
                start = time.perf_counter()
                maps[name] = patch(CLEAN, CORRUPT, loaded, batch_size=size, **kwargs)
                best[name] = min(best[name], time.perf_counter() - start)
        start = time.perf_counter()
        plain()
        best["plain"] = min(best["plain"], time.perf_counter() - start)
    result = maps["map"]
    same = max(float(np.abs(result.patched - m.patched).max()) for m in maps.values())
    print(
        f"{loaded.name} on {loaded.device} ({torch.get_num_threads()} threads): {result.patched.size} heads,"
        f" {ids['input_ids'].shape[1]} tokens, min of {args.rounds} rounds"
    )
    print(
        f"head map {best['map']:.2f} s; without layer replay {best['no-skip']:.2f} s; 270 separate patched"
        f" forwards {best['separate']:.2f} s; 270 plain forwards {best['plain']:.2f} s"
    )
    print(
        f"map / separate {best['map'] / best['separate']:.3f} (target <= 0.2); no-skip / separate"
        f" {best['no-skip'] / best['separate']:.3f}; map / plain {best['map'] / best['plain']:.3f}"
    )
    print(f"largest difference between the maps: {same:.2e} (logit difference)")
    top = ", ".join(f"L{i[0]}H{i[1]} {e:+.2f}" for i, e in result.top(5))
    print(f"clean {result.clean:.3f}, corrupt {result.corrupt:.3f}; top heads by effect: {top}")


if __name__ == "__main__":
    main()
