"""How long `attnviz ablate --scan` takes on SmolLM2 (270 heads), against 270 plain forward passes.

Run: PYTHONPATH=src python benchmarks/ablation.py [--model smollm2] [--device cpu] [--batch-size 64]
Prints the scan's seconds, the seconds of 270 one-text forward passes (the naive loop's floor), their
ratio, and the repeat-loss scan of `heads --induction --ablate` with its top-10 overlap.
"""

from __future__ import annotations

import argparse
import time

TEXT = "Emily always wanted to visit Paris so she took some French lessons before her trip to France"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--seq-len", type=int, default=20, help="induction: random tokens per copy")
    parser.add_argument("--batch", type=int, default=2, help="induction: random sequences")
    parser.add_argument("--skip-induction", action="store_true")
    args = parser.parse_args()

    import torch

    from attnviz.heads.ablation import ablate, for_ablation, repeat_loss_scan, scan_heads, top_overlap
    from attnviz.heads.induction import induction_scores
    from attnviz.models.loading import load_model

    torch.set_grad_enabled(False)
    loaded = for_ablation(load_model(args.model, device=args.device))
    n_heads = loaded.capture.num_layers * loaded.capture.num_heads
    ids = loaded.tokenizer(TEXT, return_tensors="pt").to(loaded.device)
    print(
        f"{loaded.name} ({loaded.task}) on {loaded.device}:"
        f" {ids['input_ids'].shape[1]} tokens, {n_heads} heads"
    )
    ablate(loaded, TEXT, [(0, 0)])  # warm-up
    start = time.perf_counter()
    found = scan_heads(loaded, TEXT, batch_size=args.batch_size)
    scan_s = time.perf_counter() - start
    with torch.inference_mode():
        loaded.model(**ids)
        start = time.perf_counter()
        for _ in range(n_heads):
            loaded.model(**ids)
        plain_s = time.perf_counter() - start
    print(
        f"scan: {scan_s:.2f} s; {n_heads} plain forward passes of one text: {plain_s:.2f} s;"
        f" ratio {scan_s / plain_s:.2f}"
    )
    top = ", ".join(f"L{r.layer}H{r.head} {r.delta:+.3f}" for r in found.ranking(5))
    print(f"measure {found.measure} of '{found.target}': before {found.before:.3f}; largest changes: {top}")
    if args.skip_induction or not loaded.causal:
        return
    ind = induction_scores(loaded, seq_len=args.seq_len, batch=args.batch)
    start = time.perf_counter()
    loss = repeat_loss_scan(loaded, seq_len=args.seq_len, batch=args.batch, batch_size=args.batch_size)
    loss_s = time.perf_counter() - start
    overlap, k = top_overlap(ind.induction, loss.delta, 10)
    by_ind = ", ".join(f"L{r.layer}H{r.head}" for r in ind.ranking("induction", 10))
    by_loss = ", ".join(f"L{r.layer}H{r.head} {r.delta:+.3f}" for r in loss.ranking(10))
    print(
        f"repeat loss ({args.batch} x {args.seq_len} random tokens, twice): {loss.before:.3f};"
        f" scan {loss_s:.1f} s"
    )
    print(f"top-10 by induction score: {by_ind}")
    print(f"top-10 by loss rise: {by_loss}")
    print(f"top-{k} overlap: {overlap} of {k}")


if __name__ == "__main__":
    main()
