"""Direct logit attribution and the logit lens: their cost against a plain forward and the unembedding.

Run: PYTHONPATH=src .venv/bin/python benchmarks/attribute.py [--rounds 5] [--device cpu] [--json]

Model: the bundled SmolLM2 (30 layers x 9 heads) with its LM head, float32, on the indirect-object
prompt (15 tokens) and a longer text (about 120 tokens). Variants, interleaved round by round in
one process so the ratios compare runs made under the same machine load:

  forward    model(**inputs) under inference_mode: one plain forward with its logits (the baseline)
  attribute  attnviz.attribute(text, answer="Mary", wrong="John"): one recorded forward, then
             every component through the frozen final norm (the path traced once, before the rounds)
  lens       attnviz.lens(text, k=5): one recorded forward, then 31 stages x every position through
             the final norm, the unembedding, a softmax and a top-k
  unembed    the lens's unembedding matmuls alone: the same [31 x positions, 576] rows times the
             [49152, 576] unembedding, in the same blocks (the baseline of `lens`)

Time is wall-clock seconds, the minimum over rounds. Targets (issue 29): attribute <= 1.5 x forward;
lens <= 1.2 x unembed. The lens needs its own forward pass too, so it is also given against
forward + unembed, and what it costs beyond its forward against unembed.
"""

from __future__ import annotations

import argparse
import json
import time

IOI = "When Mary and John went to the store, John gave a drink to"
LONG = " ".join(
    [
        "The history of the city begins with a small settlement on the river, where traders met to",
        "exchange salt, grain and cloth. Over the centuries the market grew into a town, the town into",
        "a city, and the city into the capital of a province whose roads reached the mountains in the",
        "north and the sea in the south. Its people built bridges, schools and a great library, and",
        "when the library burned they built it again, larger, with a reading room open to everyone who",
        "came, scholars and farmers alike, and",
    ]
)


def main() -> None:
    import torch

    from attnviz.analyses.attribution import attribute
    from attnviz.analyses.lens import _ROWS, lens
    from attnviz.analyses.residual import plan, tokenized, with_head
    from attnviz.models.loading import load_model

    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    torch.set_grad_enabled(False)
    loaded = with_head(load_model("smollm2", device=args.device), "benchmark")
    t0 = time.perf_counter()
    attribute(IOI, loaded, answer="Mary", wrong="John")  # traces the path once (kept per model)
    first = time.perf_counter() - t0
    p = plan(loaded, "benchmark")
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)
    results = {}

    def plain(inputs):  # as attribute and lens run theirs: under inference_mode
        with torch.inference_mode():
            return loaded.model(**inputs)

    for name, text in (("ioi", IOI), ("long", LONG)):
        inputs, enc = tokenized(loaded, text)
        n = enc.lengths[0]
        stages = torch.randn(loaded.num_layers + 1, n, loaded.model.config.hidden_size, device=loaded.device)

        def unembed(stages=stages):
            flat = stages.reshape(-1, stages.shape[-1])
            for s in range(0, flat.shape[0], _ROWS):
                p.unembed(flat[s : s + _ROWS])

        variants = {
            "forward": lambda inputs=inputs: plain(inputs),
            "attribute": lambda text=text: attribute(text, loaded, answer="Mary", wrong="John"),
            "lens": lambda text=text: lens(text, loaded, k=5),
            "unembed": unembed,
        }
        best = {v: float("inf") for v in variants}
        for _ in range(args.rounds):
            for v, fn in variants.items():
                sync()
                t = time.perf_counter()
                fn()
                sync()
                best[v] = min(best[v], time.perf_counter() - t)
        results[name] = {
            "tokens": n,
            **{f"{v}_s": round(s, 4) for v, s in best.items()},
            "attribute_over_forward": round(best["attribute"] / best["forward"], 3),
            "lens_over_unembed": round(best["lens"] / best["unembed"], 3),
            "lens_over_forward_plus_unembed": round(best["lens"] / (best["forward"] + best["unembed"]), 3),
            "lens_minus_forward_over_unembed": round((best["lens"] - best["forward"]) / best["unembed"], 3),
        }
    out = {
        "device": args.device,
        "threads": torch.get_num_threads(),
        "first_attribute_s": round(first, 2),
        **results,
    }
    if args.json:
        print(json.dumps(out, indent=1))
        return
    print(
        f"SmolLM2 on {args.device} ({out['threads']} threads);"
        f" first attribute (traces the path): {first:.2f} s"
    )
    for name, r in results.items():
        print(
            f"{name:>5} ({r['tokens']} tokens): forward {r['forward_s']:.3f} s,"
            f" attribute {r['attribute_s']:.3f} s"
            f" ({r['attribute_over_forward']:.2f}x), lens {r['lens_s']:.3f} s, unembed {r['unembed_s']:.3f} s"
            f" ({r['lens_over_unembed']:.2f}x; {r['lens_over_forward_plus_unembed']:.2f}x forward + unembed;"
            f" beyond its forward {r['lens_minus_forward_over_unembed']:.2f}x unembed)"
        )


if __name__ == "__main__":
    main()
