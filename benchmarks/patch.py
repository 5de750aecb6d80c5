"""How long `attnviz patch` takes on SmolLM2 (270 heads, all positions) against 270 separate forwards.

Run: PYTHONPATH=src python benchmarks/patch.py [--model smollm2] [--device cpu] [--batch-size 64]
Both variants run in this one process, on the indirect-object prompt, through the same hooks: the
head map as rows of batched forwards (`patch`, what the command runs), and the same 270 patches
one forward each (`batch_size=1`); then 270 plain forwards of one text (the naive loop's floor).
Prints the seconds of each, the ratio (target <= 0.2) and that both give the same map.
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
    args = parser.parse_args()

    import numpy as np
    import torch

    from attnviz.heads.patching import for_patching, patch
    from attnviz.models.loading import load_model

    torch.set_grad_enabled(False)
    loaded = for_patching(load_model(args.model, device=args.device))
    kwargs = {"answer": "Mary", "wrong": "John"}
    ids = loaded.tokenizer(CLEAN, return_tensors="pt").to(loaded.device)
    with torch.inference_mode():
        loaded.model(**ids)  # warm-up
    start = time.perf_counter()
    batched = patch(CLEAN, CORRUPT, loaded, batch_size=args.batch_size, **kwargs)
    batched_s = time.perf_counter() - start
    start = time.perf_counter()
    single = patch(CLEAN, CORRUPT, loaded, batch_size=1, **kwargs)
    single_s = time.perf_counter() - start
    with torch.inference_mode():
        start = time.perf_counter()
        for _ in range(batched.patched.size):
            loaded.model(**ids, logits_to_keep=1)
        plain_s = time.perf_counter() - start
    same = float(np.abs(batched.patched - single.patched).max())
    print(
        f"{loaded.name} on {loaded.device}: {batched.patched.size} heads, {ids['input_ids'].shape[1]} tokens"
    )
    print(
        f"head map, batched ({args.batch_size} rows): {batched_s:.2f} s; 270 separate patched forwards:"
        f" {single_s:.2f} s; ratio {batched_s / single_s:.3f}; 270 plain forwards: {plain_s:.2f} s"
    )
    print(f"largest difference between the two maps: {same:.2e} (logit difference)")
    top = ", ".join(f"L{i[0]}H{i[1]} {e:+.2f}" for i, e in batched.top(5))
    print(f"clean {batched.clean:.3f}, corrupt {batched.corrupt:.3f}; top heads by effect: {top}")


if __name__ == "__main__":
    main()
