"""attnviz.generate against inseq's attention attribution of the same continuation: numbers and time.

inseq is not a dependency of attnviz: install it in a throwaway folder outside the repository and
put that folder on PYTHONPATH for this script only (docs/generate.md has the exact steps):

    .venv/bin/pip install --no-deps --target /tmp/inseq-site inseq captum "typeguard<=2.13.3" \\
        jaxtyping wadler_lindig treescope
    PYTHONPATH=src:/tmp/inseq-site .venv/bin/python benchmarks/generate_inseq.py [--new 16]

inseq reads `output_attentions`, which transformers 5 returns only under `eager` attention, so the
model is switched to eager for inseq's run. inseq re-runs the model over the whole prefix at every
step (no KV cache) and keeps the last position's attention; we keep the same row from the cached
step. Both record every head of every layer: the script prints the largest difference and the
time of each, after checking that both continued the prompt with the same ids.
"""

from __future__ import annotations

import argparse
import json
import time

PROMPT = "The capital of France is"


def main() -> None:
    import inseq
    import numpy as np
    import torch

    from attnviz.generation.run import generate, load_for_generation

    parser = argparse.ArgumentParser()
    parser.add_argument("--new", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    loaded = load_for_generation("smollm2", device="cpu")
    generate(PROMPT, loaded, max_new_tokens=2)  # warm up
    t0 = time.perf_counter()
    gen = generate(PROMPT, loaded, max_new_tokens=args.new, min_new_tokens=args.new)
    ours = time.perf_counter() - t0
    loaded.model.set_attn_implementation("eager")
    try:
        model = inseq.load_model(loaded.model, "attention", tokenizer=loaded.tokenizer)
        t0 = time.perf_counter()
        out = model.attribute(
            PROMPT,
            generation_args={"max_new_tokens": args.new, "min_new_tokens": args.new, "do_sample": False},
            show_progress=False,
        )
        theirs = time.perf_counter() - t0
    finally:
        loaded.model.set_attn_implementation("attnviz")
    seq = out.sequence_attributions[0]
    ids = [t.id for t in seq.target]
    assert ids == list(gen.token_ids), f"inseq continued with other ids: {ids} vs {list(gen.token_ids)}"
    target = seq.target_attributions.float().numpy()  # [context, steps, layers, heads]
    p = gen.prompt_length
    worst = 0.0
    for t in range(gen.n_new):
        mine = gen.attn[:, :, t, : p + t]  # [layers, heads, keys]
        inseq_row = np.moveaxis(target[: p + t, t], 0, -1)  # [layers, heads, keys]
        worst = max(worst, float(np.abs(mine - inseq_row).max()))
    row = {
        "new_tokens": gen.n_new,
        "max_abs_diff": worst,
        "attnviz_s": round(ours, 2),
        "inseq_s": round(theirs, 2),
    }
    row["inseq_vs_attnviz"] = round(theirs / ours, 1)
    print(json.dumps(row))


if __name__ == "__main__":
    main()
