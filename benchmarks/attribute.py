"""Direct logit attribution and the logit lens: their cost against a plain forward and the unembedding.

Run: PYTHONPATH=src .venv/bin/python benchmarks/attribute.py [--rounds 5] [--device cpu] [--json]
     [--old PATH/src/attnviz/analyses/lens.py]

Model: the bundled SmolLM2 (30 layers x 9 heads) with its LM head, float32, on the indirect-object
prompt (15 tokens) and a longer text (about 120 tokens). Variants, interleaved round by round in
one process so the ratios compare runs made under the same machine load:

  forward    model(**inputs) under inference_mode: one plain forward with its logits (the baseline)
  forward_last  the same with logits_to_keep=1: the forward the lens runs (its own logits at the
             last position only), without the lens's hooks
  attribute  attnviz.attribute(text, answer="Mary", wrong="John"): one recorded forward, then
             every component through the frozen final norm (the path traced once, before the rounds)
  lens       attnviz.lens(text, k=5): one recorded forward, then 31 stages x every position through
             the final norm, the unembedding, a log-sum-exp and a top-k
  lens_answer  the same with answer="Mary" (adds the answer's rank and probability)
  unembed    the lens's unembedding matmuls alone: the same [31 x positions, 576] rows times the
             [49152, 576] unembedding; the faster of the lens's blocks and one call over every row
  old_lens   with --old: the lens module at PATH (an earlier version), on this checkout's residual.py

Time is wall-clock seconds, the minimum over rounds; the process's CPU seconds (all its threads,
also the minimum over rounds) are given too: on a machine others keep busy they swing less than
wall-clock time, most of all with --threads 1. Targets (issue 29): attribute <= 1.5 x forward;
lens <= 1.2 x unembed. The lens needs its own forward pass too, so it is also given against
forward_last + unembed, and what it costs beyond its forward (lens - forward_last) against unembed.
"""

from __future__ import annotations

import argparse
import json
import os
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
    ap.add_argument("--old", default=None, help="an earlier lens.py to time beside this one")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (1: CPU time is the work's own)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    old_lens = _module(args.old).lens if args.old else None
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

        def unembed(stages=stages, rows=_ROWS):
            flat = stages.reshape(-1, stages.shape[-1])
            for s in range(0, flat.shape[0], rows):
                p.unembed(flat[s : s + rows])

        variants = {
            "forward": lambda inputs=inputs: plain(inputs),
            "forward_last": lambda inputs=inputs: plain({**inputs, "logits_to_keep": 1}),
            "attribute": lambda text=text: attribute(text, loaded, answer="Mary", wrong="John"),
            "lens": lambda text=text: lens(text, loaded, k=5),
            "lens_answer": lambda text=text: lens(text, loaded, k=5, answer="Mary"),
            "unembed_blocks": unembed,
            "unembed_one": lambda stages=stages: unembed(stages, rows=stages.shape[0] * stages.shape[1]),
        }
        if old_lens is not None:
            variants["old_lens"] = lambda text=text: old_lens(text, loaded, k=5)
        best = {v: float("inf") for v in variants}
        cpu = {v: float("inf") for v in variants}
        for _ in range(args.rounds):
            for v, fn in variants.items():
                sync()
                t, c = time.perf_counter(), time.process_time()
                fn()
                sync()
                best[v] = min(best[v], time.perf_counter() - t)
                cpu[v] = min(cpu[v], time.process_time() - c)
        best["unembed"] = un = min(best["unembed_blocks"], best["unembed_one"])
        cpu["unembed"] = min(cpu["unembed_blocks"], cpu["unembed_one"])
        results[name] = {
            "tokens": n,
            **{f"{v}_s": round(s, 4) for v, s in best.items()},
            "cpu_s": {v: round(s, 4) for v, s in cpu.items()},
            "cpu_lens_over_unembed": round(cpu["lens"] / cpu["unembed"], 3),
            "cpu_forward_last_over_unembed": round(cpu["forward_last"] / cpu["unembed"], 3),
            "cpu_lens_minus_forward_last_over_unembed": round(
                (cpu["lens"] - cpu["forward_last"]) / cpu["unembed"], 3
            ),
            "cpu_attribute_over_forward": round(cpu["attribute"] / cpu["forward"], 3),
            **(
                {"cpu_old_lens_over_unembed": round(cpu["old_lens"] / cpu["unembed"], 3)}
                if "old_lens" in cpu
                else {}
            ),
            "attribute_over_forward": round(best["attribute"] / best["forward"], 3),
            "lens_over_unembed": round(best["lens"] / un, 3),
            "lens_answer_over_unembed": round(best["lens_answer"] / un, 3),
            "forward_last_over_unembed": round(best["forward_last"] / un, 3),
            "lens_over_forward_last_plus_unembed": round(best["lens"] / (best["forward_last"] + un), 3),
            "lens_minus_forward_last_over_unembed": round((best["lens"] - best["forward_last"]) / un, 3),
            **({"old_lens_over_unembed": round(best["old_lens"] / un, 3)} if "old_lens" in best else {}),
        }
    out = {
        "device": args.device,
        "threads": torch.get_num_threads(),
        "load_average": [round(v, 2) for v in os.getloadavg()],
        "first_attribute_s": round(first, 2),
        **results,
    }
    if args.json:
        print(json.dumps(out, indent=1))
        return
    print(
        f"SmolLM2 on {args.device} ({out['threads']} threads; load average {out['load_average']} at the end);"
        f" first attribute (traces the path): {first:.2f} s"
    )
    for name, r in results.items():
        times = ", ".join(f"{v[:-2]} {t:.3f} s" for v, t in r.items() if v.endswith("_s") and v != "cpu_s")
        times += "\n  CPU: " + ", ".join(f"{v} {t:.3f} s" for v, t in r["cpu_s"].items())
        ratios = ", ".join(f"{v} {x:.2f}" for v, x in r.items() if "_over_" in v)
        print(f"{name} ({r['tokens']} tokens): {times}\n  {ratios}")


def _module(path: str):
    """An earlier lens.py loaded under its own name (it imports this checkout's attnviz)."""
    import importlib.util
    import sys

    spec = importlib.util.spec_from_file_location("old_lens", path)
    module = sys.modules["old_lens"] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


if __name__ == "__main__":
    main()
