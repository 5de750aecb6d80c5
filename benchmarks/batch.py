"""`attnviz batch` against a plain forward pass and the seed tutorial's one-text-at-a-time way.

Run: .venv/bin/python benchmarks/batch.py [--texts 2000] [--batch-size 32] [--repeat 2] [--memory]

On a generated corpus of English sentences (5-40 words) and the bundled MiniLM, in one run:

  floor-sdpa   plain batched forward, sdpa attention, no weights returned (length-bucketed too)
  floor-eager  the same with eager attention (on a CPU eager is about as fast); the floor is the
               faster of the two
  b1-loop      a careful loop: model loaded once, one text at a time, output_attentions=True,
               the same statistics in numpy per text
  b2-seed      the seed tutorial as written: tokenizer and model loaded for every text (measured
               on --seed-texts texts; its per-text rate is extrapolated)
  c-batch      attnviz.batch.run_batch_analysis on the corpus file: reading, bucketing, statistics,
               Parquet parts, summary, plots and run.json (the model already loaded, as for all)

Every variant runs with torch.set_num_threads(--threads). Other processes on a shared machine slow
whatever runs at that moment, so variants are interleaved `--repeat` times and the best time of
each is kept; throughput per CPU-second (process CPU time) is reported as well, which time slices
lost to other processes do not count (threads spinning while they wait still do). Quote the
ratios, not the absolute rates.

--statistics times the statistics step alone (CPU ms for one batch of 32 texts, one thread).

--memory [N] runs `attnviz batch` in fresh child processes on N and 10 x N texts (N: 2000) and
compares their peak resident memory (VmHWM), its growth after the model was loaded, and the
peak of Python-level allocations (tracemalloc: numpy and pyarrow included, torch's own not).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

DETERMINERS = ["the", "a", "this", "that", "every", "my", "our", "their", "some", "one"]
ADJECTIVES = [
    "old",
    "young",
    "small",
    "large",
    "quiet",
    "bright",
    "green",
    "careful",
    "happy",
    "strange",
    "early",
    "late",
    "tired",
    "busy",
]
NOUNS = [
    "teacher",
    "student",
    "city",
    "river",
    "window",
    "garden",
    "doctor",
    "letter",
    "house",
    "morning",
    "train",
    "book",
    "company",
    "friend",
    "child",
    "market",
    "story",
    "question",
    "engineer",
    "painter",
    "village",
    "road",
    "computer",
    "scientist",
    "dog",
    "cat",
    "trophy",
    "suitcase",
    "museum",
    "kitchen",
    "country",
    "song",
    "report",
]
NAMES = ["Emily", "Paris", "John", "Maria", "London", "Anna", "David", "Berlin"]
VERBS = [
    "saw",
    "opened",
    "visited",
    "wrote",
    "found",
    "carried",
    "liked",
    "followed",
    "painted",
    "answered",
    "closed",
    "built",
    "remembered",
    "watched",
    "cleaned",
    "described",
]
ADVERBS = ["quickly", "slowly", "carefully", "yesterday", "again", "often", "never", "finally"]
PREPOSITIONS = ["in", "near", "behind", "with", "after", "before", "under", "across"]
LINKS = ["and", "but", "because", "while", "so", "although", "when"]


def sentence(rng: random.Random, n_words: int) -> str:
    """An English-looking sentence of exactly `n_words` words."""
    words: list[str] = []

    def noun_phrase() -> list[str]:
        if rng.random() < 0.2:
            return [rng.choice(NAMES)]
        phrase = [rng.choice(DETERMINERS)]
        if rng.random() < 0.5:
            phrase.append(rng.choice(ADJECTIVES))
        return [*phrase, rng.choice(NOUNS)]

    while len(words) < n_words:
        if words:
            words[-1] += "," if rng.random() < 0.3 else ""
            words.append(rng.choice(LINKS))
        clause = noun_phrase()
        if rng.random() < 0.3:
            clause.append(rng.choice(ADVERBS))
        clause += [rng.choice(VERBS), *noun_phrase()]
        if rng.random() < 0.4:
            clause += [rng.choice(PREPOSITIONS), *noun_phrase()]
        words += clause
    words = words[:n_words]
    words[-1] = words[-1].rstrip(",")
    if words[-1] in LINKS + PREPOSITIONS + DETERMINERS:
        words[-1] = rng.choice(NOUNS)
    words[0] = words[0][:1].upper() + words[0][1:]
    return " ".join(words) + rng.choice([".", ".", ".", "!", "?"])


def corpus(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [sentence(rng, rng.randint(5, 40)) for _ in range(n)]


# -- the variants -------------------------------------------------------------------------------
def bucketed(tokenizer, texts: list[str], batch_size: int):
    """Sorted by token length, then cut into batches: the floor gets the same help as attnviz."""
    lengths = [len(x) for x in tokenizer(texts)["input_ids"]]
    order = sorted(range(len(texts)), key=lengths.__getitem__)
    for s in range(0, len(order), batch_size):
        yield tokenizer([texts[i] for i in order[s : s + batch_size]], padding=True, return_tensors="pt")


def floor(model, tokenizer, texts: list[str], batch_size: int) -> None:
    import torch

    with torch.inference_mode():
        for enc in bucketed(tokenizer, texts, batch_size):
            model(**enc)


def python_statistics(attentions, special: list[bool], tokens: list[str]) -> dict[str, np.ndarray]:
    """The statistics attnviz batch records, per text in numpy (what a careful notebook would do)."""
    from attnviz.heads.patterns import pattern_scores, row_entropy

    a = np.stack([x[0].float().numpy() for x in attentions])  # [layers, heads, n, n]
    spec = np.asarray(special, dtype=bool)
    out = {
        "entropy": row_entropy(a).mean(-1),
        "max_weight": a.max(axis=(-1, -2)),
        "mean_row_max": a.max(-1).mean(-1),
        "special": a[..., spec].sum(-1).mean(-1),
    }
    out.update(pattern_scores(a, special, tokens, causal=False))
    return out


def careful_loop(model, tokenizer, texts: list[str]) -> None:
    """b1: the model loaded once; one text at a time with output_attentions."""
    import torch

    with torch.inference_mode():
        for text in texts:
            enc = tokenizer(text, return_tensors="pt", return_special_tokens_mask=True)
            special = enc.pop("special_tokens_mask")[0].bool().tolist()
            out = model(**enc, output_attentions=True)
            tokens = tokenizer.convert_ids_to_tokens(enc["input_ids"][0])
            python_statistics(out.attentions, special, tokens)


def seed_as_written(path: str, texts: list[str]) -> None:
    """b2: the seed tutorial's get_attention_maps: tokenizer, config and model loaded per text."""
    import torch
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    for text in texts:
        tokenizer = AutoTokenizer.from_pretrained(path)
        config = AutoConfig.from_pretrained(path)
        config.output_attentions = True
        model = AutoModel.from_pretrained(path, config=config, attn_implementation="eager")
        model.eval()
        enc = tokenizer(text, return_tensors="pt", return_special_tokens_mask=True)
        special = enc.pop("special_tokens_mask")[0].bool().tolist()
        with torch.no_grad():
            out = model(**enc)
        tokens = tokenizer.convert_ids_to_tokens(enc["input_ids"][0])
        python_statistics(out.attentions, special, tokens)


def attnviz_batch(loaded, corpus_file: Path, batch_size: int, outdir: Path) -> None:
    from attnviz.batch import run_batch_analysis
    from attnviz.batch.config import make_config

    cfg = make_config(batch_size=batch_size)
    run_batch_analysis(corpus_file, cfg, outdir, model=loaded, overwrite=True)


def timed(fn: Callable[[], None]) -> tuple[float, float]:
    """(wall seconds, process CPU seconds) of one call."""
    w0, c0 = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - w0, time.process_time() - c0


# -- memory -------------------------------------------------------------------------------------
def peak_rss_mib() -> float:
    """This process's peak resident memory: VmHWM (ru_maxrss would include the parent's, as
    execve keeps the high-water mark of the forking process)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def memory_child(n: int, threads: int, batch_size: int) -> None:
    """Print the peak memory of one `attnviz batch` run over n texts (run in a fresh process)."""
    import torch

    torch.set_num_threads(threads)
    import tracemalloc

    from attnviz.models.loading import load_model

    loaded = load_model("minilm", device="cpu")
    loaded.capture.run(dict(loaded.tokenizer(["warm up"], return_tensors="pt")), None, None)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "corpus.txt"
        path.write_text("\n".join(corpus(n, seed=1)) + "\n", encoding="utf-8")
        after_load = peak_rss_mib()
        tracemalloc.start()  # Python-level allocations (numpy and pyarrow included; torch's not)
        start = time.perf_counter()
        attnviz_batch(loaded, path, batch_size, Path(tmp) / "out")
        seconds = time.perf_counter() - start
        traced = tracemalloc.get_traced_memory()[1]
    record = {"texts": n, "after_load_mib": after_load, "peak_mib": peak_rss_mib()}
    print(json.dumps({**record, "python_peak_mib": traced / 2**20, "seconds": seconds}))


def memory(n: int, threads: int, batch_size: int) -> dict[str, dict[str, float]]:
    out = {}
    for size in (n, 10 * n):
        cmd = [sys.executable, __file__, "--memory-child", str(size), "--threads", str(threads)]
        cmd += ["--batch-size", str(batch_size)]
        res = subprocess.run(
            cmd, capture_output=True, text=True, check=True, env={**os.environ, "HF_HUB_OFFLINE": "1"}
        )
        out[str(size)] = json.loads(res.stdout.strip().splitlines()[-1])
    return out


def statistics_cost(texts: int, rounds: int = 15) -> dict[str, float]:
    """CPU milliseconds of the statistics step alone, for the largest batch of a window (MiniLM,
    every statistic and one probe, one thread): the part of `attnviz batch` that is ours to tune."""
    import torch

    from attnviz.batch import Analyzer, Item
    from attnviz.batch.bucketing import encode
    from attnviz.batch.config import make_config, parse_probe
    from attnviz.batch.statistics import Masks, batch_statistics, probe_masks
    from attnviz.models.loading import load_model

    torch.set_num_threads(1)
    loaded = load_model("minilm", device="cpu")
    cfg = make_config(plots=False, probes=(parse_probe("she:Emily"),))
    an = Analyzer(loaded, cfg)
    batch = max(an.bucket([Item(i, i + 1, t) for i, t in enumerate(corpus(texts))])[0], key=len)
    enc = encode(loaded, cfg, batch)
    recorded = an._forward(enc).weights
    weights = [recorded[(an.stream, layer)] for layer in an.layer_ids]
    best = float("inf")
    for _ in range(rounds):
        start = time.process_time()
        with torch.inference_mode():
            masks = Masks(enc, an.causal, weights[0].device, an._is_punct)
            batch_statistics(weights, masks, cfg, probe_masks(enc, cfg, weights[0].device))
        best = min(best, time.process_time() - start)
    out = {"batch": len(batch), "tokens": int(enc.input_ids.shape[1]), "cpu_ms": round(best * 1000, 2)}
    print(f"statistics: {out['cpu_ms']} CPU ms for a batch of {out['batch']} x {out['tokens']} tokens")
    return out


# -- main ---------------------------------------------------------------------------------------
def print_rates(
    rate: dict[str, tuple[float, float]],
) -> tuple[str, dict[str, tuple[float, float]]]:
    """The rates table and the ratios to the floor and the baselines; returns (floor, ratios)."""
    floor_name = max(("floor-sdpa", "floor-eager"), key=lambda k: rate[k][0])
    print()
    print(f"{'variant':<12} {'texts/s':>9} {'texts/CPU-s':>12}")
    for name in ("floor-sdpa", "floor-eager", "b1-loop", "b2-seed", "c-batch"):
        mark = "  <- floor" if name == floor_name else ""
        print(f"{name:<12} {rate[name][0]:9.1f} {rate[name][1]:12.1f}{mark}")
    c = rate["c-batch"]
    ratios = {
        "c/floor": (c[0] / rate[floor_name][0], c[1] / rate[floor_name][1]),
        "c/b1-loop": (c[0] / rate["b1-loop"][0], c[1] / rate["b1-loop"][1]),
        "c/b2-seed": (c[0] / rate["b2-seed"][0], c[1] / rate["b2-seed"][1]),
        "eager/sdpa": (
            rate["floor-eager"][0] / rate["floor-sdpa"][0],
            rate["floor-eager"][1] / rate["floor-sdpa"][1],
        ),
    }
    print()
    for name, (w, cp) in ratios.items():
        print(f"{name:<12} {w:6.2f}x wall   {cp:6.2f}x per CPU-second")
    return floor_name, ratios


def speed(args: argparse.Namespace) -> dict[str, object]:
    """The five variants, interleaved; prints the table and returns the figures."""
    import torch
    from transformers import AutoModel

    from attnviz.models.loading import load_model, quiet_transformers

    quiet_transformers()
    texts = corpus(args.texts)
    words = [len(t.split()) for t in texts]
    loaded = load_model("minilm", device="cpu")
    path = loaded.source.path
    tok = loaded.tokenizer
    tokens = sum(len(x) for x in tok(texts)["input_ids"])
    print(
        f"corpus: {len(texts)} sentences, {min(words)}-{max(words)} words (mean {np.mean(words):.1f}), "
        f"{tokens} tokens; minilm, {args.threads} threads, batch size {args.batch_size}, "
        f"torch {torch.__version__}"
    )
    sdpa = AutoModel.from_pretrained(path, attn_implementation="sdpa").eval()
    eager = AutoModel.from_pretrained(path, attn_implementation="eager").eval()
    loop_texts = texts[: args.loop_texts] if args.loop_texts else texts
    seed_texts = texts[: args.seed_texts]

    with tempfile.TemporaryDirectory() as tmp:
        corpus_file = Path(tmp) / "corpus.txt"
        corpus_file.write_text("\n".join(texts) + "\n", encoding="utf-8")
        variants: dict[str, tuple[int, Callable[[], None]]] = {
            "floor-sdpa": (len(texts), lambda: floor(sdpa, tok, texts, args.batch_size)),
            "floor-eager": (len(texts), lambda: floor(eager, tok, texts, args.batch_size)),
            "c-batch": (
                len(texts),
                lambda: attnviz_batch(loaded, corpus_file, args.batch_size, Path(tmp) / "out"),
            ),
            "b1-loop": (len(loop_texts), lambda: careful_loop(eager, tok, loop_texts)),
        }
        floor(sdpa, tok, texts[:64], args.batch_size)  # warm up every path once
        floor(eager, tok, texts[:64], args.batch_size)
        warm = corpus_file.with_name("warm.txt")
        warm.write_text("\n".join(texts[:64]) + "\n", encoding="utf-8")
        attnviz_batch(loaded, warm, args.batch_size, Path(tmp) / "warm")
        best: dict[str, tuple[float, float]] = {}
        for r in range(args.repeat):
            for name, (_, fn) in variants.items():
                wall, cpu = timed(fn)
                print(f"  round {r + 1}: {name:<12} {wall:7.2f} s wall, {cpu:7.2f} s CPU", flush=True)
                old = best.get(name)
                best[name] = (min(wall, old[0]), min(cpu, old[1])) if old else (wall, cpu)
        wall, cpu = timed(lambda: seed_as_written(path, seed_texts))
        print(f"  once:    {'b2-seed':<12} {wall:7.2f} s wall, {cpu:7.2f} s CPU ({len(seed_texts)} texts)")
        best["b2-seed"] = (wall, cpu)
        counts = {name: n for name, (n, _) in variants.items()} | {"b2-seed": len(seed_texts)}

    rate = {k: (counts[k] / w, counts[k] / c) for k, (w, c) in best.items()}  # texts/s, texts/CPU-s
    floor_name, ratios = print_rates(rate)
    return {
        "texts": len(texts),
        "tokens": tokens,
        "threads": args.threads,
        "batch_size": args.batch_size,
        "repeat": args.repeat,
        "floor": floor_name,
        "texts_per_s": {k: round(v[0], 2) for k, v in rate.items()},
        "texts_per_cpu_s": {k: round(v[1], 2) for k, v in rate.items()},
        "ratios_wall": {k: round(v[0], 3) for k, v in ratios.items()},
        "ratios_cpu": {k: round(v[1], 3) for k, v in ratios.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--texts", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed-texts", type=int, default=50, help="texts for b2 (seed as written)")
    parser.add_argument("--loop-texts", type=int, default=0, help="texts for b1 (0: all)")
    parser.add_argument("--repeat", type=int, default=1, help="interleaved rounds; the best of each is kept")
    parser.add_argument(
        "--memory",
        type=int,
        nargs="?",
        const=2000,
        default=0,
        help="peak memory on N vs 10 N texts (N: 2000)",
    )
    parser.add_argument("--no-speed", action="store_true", help="skip the throughput comparison")
    parser.add_argument(
        "--statistics", action="store_true", help="also time the statistics step alone (CPU ms per batch)"
    )
    parser.add_argument("--memory-child", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    import torch

    torch.set_num_threads(args.threads)
    if args.memory_child:
        memory_child(args.memory_child, args.threads, args.batch_size)
        return

    result: dict[str, object] = {} if args.no_speed else speed(args)
    if args.statistics:
        result["statistics"] = statistics_cost(64)
    if args.memory:
        mem = memory(args.memory, args.threads, args.batch_size)
        small, large = mem[str(args.memory)], mem[str(10 * args.memory)]
        print()
        for m in (small, large):
            print(
                f"memory: {m['texts']:>6} texts: peak {m['peak_mib']:.0f} MiB (after loading "
                f"{m['after_load_mib']:.0f} MiB, +{m['peak_mib'] - m['after_load_mib']:.0f} MiB for the run, "
                f"Python-level peak {m['python_peak_mib']:.0f} MiB, {m['seconds']:.0f} s)"
            )
        print(
            f"memory: 10x the texts -> peak x{large['peak_mib'] / small['peak_mib']:.3f} "
            f"({large['peak_mib'] - small['peak_mib']:+.0f} MiB)"
        )
        result["memory"] = mem
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
