"""Timings of the analyses on the bundled MiniLM: `cluster` over 1,000 texts, `rollout` on 512 tokens.

Run: PYTHONPATH=src .venv/bin/python benchmarks/analyses.py [--texts 1000] [--tokens 512] [--threads 2]

cluster   attnviz.analyses.cluster.cluster_texts on generated English sentences (5-40 words):
          extraction (forward passes recording every head) and the head-distance pass (72 x 72
          Jensen-Shannon divergences per text, numpy) are timed apart, plus the figures
          (seaborn clustermap, MDS scatter) written to a temporary folder.
rollout   one text of exactly --tokens tokens (the model's limit by default): extraction, then the
          rollout product (6 layers, float64), and the figure.
norm      norm weighting on the same text: extraction with value vectors, then the value norms.

Wall time and process CPU time are printed for each step; the machine may be shared, so quote the
CPU times and the ratios. Prints one JSON object at the end.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

WORDS = {
    "det": ["the", "a", "this", "every", "my", "their", "some"],
    "adj": ["old", "young", "small", "large", "quiet", "bright", "green", "careful", "strange", "tired"],
    "noun": ["cat", "dog", "teacher", "city", "river", "book", "garden", "doctor", "train", "letter"],
    "name": ["Emily", "Paris", "John", "Maria", "London", "Anna", "Berlin"],
    "verb": ["saw", "found", "visited", "painted", "followed", "wrote", "carried", "watched"],
    "prep": ["in", "near", "behind", "with", "after", "under", "across"],
    "link": ["and", "but", "because", "while", "so", "when"],
}


def sentence(rng: random.Random, n_words: int) -> str:
    pick = lambda kind: rng.choice(WORDS[kind])  # noqa: E731
    out: list[str] = []
    while len(out) < n_words:
        subject = pick("name") if rng.random() < 0.3 else f"{pick('det')} {pick('noun')}"
        clause = f"{subject} {pick('verb')} {pick('det')} {pick('adj')} {pick('noun')}"
        if rng.random() < 0.5:
            clause += f" {pick('prep')} {pick('det')} {pick('noun')}"
        out += ([pick("link")] if out else []) + clause.split()
    text = " ".join(out[:n_words])
    return text[0].upper() + text[1:] + "."


def corpus(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [sentence(rng, rng.randint(5, 40)) for _ in range(n)]


def timed(fn: Callable[[], Any]) -> tuple[Any, float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - wall, time.process_time() - cpu


def text_of(tokenizer: Any, tokens: int) -> str:
    """A text that tokenises to exactly `tokens` tokens, special tokens included."""
    words = corpus(400, seed=1)
    text = " ".join(words)
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    extra = len(tokenizer("x")["input_ids"]) - len(tokenizer("x", add_special_tokens=False)["input_ids"])
    return tokenizer.decode(ids[: tokens - extra])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--texts", type=int, default=1000)
    parser.add_argument("--tokens", type=int, default=512)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    from attnviz.analyses.cluster import cluster_texts, pairwise_js
    from attnviz.analyses.norms import norm_weighted
    from attnviz.analyses.rollout import rollout
    from attnviz.extraction import extract, extract_batch
    from attnviz.models.loading import load_model
    from attnviz.plots import save
    from attnviz.plots.analyses import cluster_map, embedding_figure, rollout_figure, save_clustermap

    loaded, wall, cpu = timed(lambda: load_model("minilm", device="cpu"))
    report: dict[str, Any] = {"threads": args.threads, "load": {"wall_s": wall, "cpu_s": cpu}}
    print(f"load minilm: {wall:.1f} s wall, {cpu:.1f} s CPU", file=sys.stderr)

    # -- cluster
    texts = corpus(args.texts)
    atts, wall_x, cpu_x = timed(lambda: extract_batch(texts, loaded, batch_size=args.batch_size))
    n_tokens = sum(a.n_tokens for a in atts)

    def distances(extracted: list[Any]) -> None:
        for a in extracted:
            pairwise_js(a.attn.reshape(-1, a.n_tokens, a.n_tokens))

    _, wall_d, cpu_d = timed(lambda: distances(atts))
    atts = []
    dist, wall_c, cpu_c = timed(lambda: cluster_texts(texts, loaded, batch_size=args.batch_size))
    with tempfile.TemporaryDirectory() as tmp:
        _, wall_f, _ = timed(
            lambda: (
                dist.to_csv(Path(tmp) / "d.csv"),
                save_clustermap(cluster_map(dist), Path(tmp) / "c.png"),
                save(embedding_figure(dist), Path(tmp) / "e.png"),
            )
        )
    report["cluster"] = {
        "texts": args.texts,
        "mean_tokens": n_tokens / args.texts,
        "extract_wall_s": wall_x,
        "extract_cpu_s": cpu_x,
        "distances_wall_s": wall_d,
        "distances_cpu_s": cpu_d,
        "cluster_texts_wall_s": wall_c,
        "cluster_texts_cpu_s": cpu_c,
        "figures_wall_s": wall_f,
        "texts_per_s": args.texts / wall_c,
    }
    print(
        f"cluster {args.texts} texts ({n_tokens / args.texts:.1f} tokens on average): "
        f"{wall_c:.1f} s wall ({cpu_c:.1f} s CPU) = extraction {wall_x:.1f} s + distances {wall_d:.1f} s "
        f"(+ pattern roles); figures {wall_f:.1f} s",
        file=sys.stderr,
    )

    # -- rollout and norm weighting on a long text
    text = text_of(loaded.tokenizer, args.tokens)
    att, wall_x, cpu_x = timed(lambda: extract(text, loaded))
    ro, wall_r, cpu_r = timed(lambda: rollout(att))
    with tempfile.TemporaryDirectory() as tmp:
        _, wall_f, _ = timed(lambda: save(rollout_figure(ro, 0), Path(tmp) / "r.png"))
    _, wall_n, cpu_n = timed(lambda: norm_weighted(text, loaded))
    report["rollout"] = {
        "tokens": att.n_tokens,
        "extract_wall_s": wall_x,
        "extract_cpu_s": cpu_x,
        "rollout_wall_s": wall_r,
        "rollout_cpu_s": cpu_r,
        "figure_wall_s": wall_f,
        "norm_weighted_wall_s": wall_n,
        "norm_weighted_cpu_s": cpu_n,
    }
    print(
        f"rollout on {att.n_tokens} tokens: extraction {wall_x:.2f} s, rollout {wall_r * 1000:.0f} ms, "
        f"figure {wall_f:.1f} s; norm weighting (extraction with vectors + norms) {wall_n:.2f} s",
        file=sys.stderr,
    )
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
