"""What an `attnviz view` page costs in memory, against `extract` alone, and its size against the estimate.

    PYTHONPATH=src .venv/bin/python benchmarks/page_memory.py [--model smollm2] [--tokens 512,1882]
        [--src /path/to/another/checkout/src]

For each length, two fresh processes load the model and extract the same text (every layer and
head, float32): one stops there (`extract`), the other then builds the page (`render_html`, no
size limit) and writes it (`page`). Each prints one JSON line:

  peak_mb     the process's peak resident memory (getrusage), model and attention included
  seconds     wall-clock seconds of the measured part (extract; or extract + page)
  page_mb     the page's size (page only), and estimate_mb what `estimate_bytes` said beforehand
  ratio       page's peak / extract's peak (on the page line)

`--src` runs the same with another checkout's code (e.g. the code before the page was encoded a head
at a time), for a before/after comparison; the page's size is the same either way.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SENTENCES = [
    "Emily always wanted to visit Paris, so she took French lessons every {i}th evening.",
    "The cat sat on mat number {i} and watched the birds that sang in the garden.",
    "In chapter {i}, the committee argued about the budget until the lights went out.",
    "Transformers attend to tokens; head {i} may look back at the previous word.",
]


def text_of(model, n_tokens: int) -> str:
    """A text of exactly `n_tokens` tokens (special ones included) for this model's tokenizer."""
    from attnviz.extraction import tokenize

    parts, i = [], 0
    while len(model.tokenizer(" ".join(parts))["input_ids"]) < n_tokens + 8:
        parts.append(SENTENCES[i % len(SENTENCES)].format(i=i))
        i += 1
    ids = model.tokenizer(" ".join(parts), add_special_tokens=False)["input_ids"]
    special = tokenize(model, ["x"]).lengths[0] - len(
        model.tokenizer("x", add_special_tokens=False)["input_ids"]
    )
    text = model.tokenizer.decode(ids[: n_tokens - special])
    while tokenize(model, [text]).lengths[0] > n_tokens:  # a decode may re-tokenise a little longer
        text = text[: text.rstrip().rfind(" ")]
    return text


def worker(mode: str, model_name: str, n_tokens: int) -> dict[str, object]:
    import resource
    import time

    from attnviz.extraction import extract
    from attnviz.models.loading import load_model

    model = load_model(model_name, device="cpu")
    text = text_of(model, n_tokens)
    start = time.perf_counter()
    att = extract(text, model)
    out: dict[str, object] = {"mode": mode, "model": model_name, "tokens": att.n_tokens}
    if mode == "page":
        from attnviz.views.html import estimate_bytes, render_html

        estimate = estimate_bytes(att)
        page = render_html(att, max_mb=None)
        with tempfile.TemporaryDirectory() as tmp:
            Path(tmp, "page.html").write_text(page, encoding="utf-8")
        out.update(page_mb=round(len(page.encode()) / 1e6, 2), estimate_mb=round(estimate / 1e6, 2))
    out["seconds"] = round(time.perf_counter() - start, 1)
    out["peak_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    return out


def run(mode: str, model: str, n: int, src: Path) -> dict[str, object]:
    env = {**os.environ, "PYTHONPATH": str(src)}
    args = [sys.executable, __file__, "--worker", mode, "--model", model, "--tokens", str(n)]
    done = subprocess.run(args, env=env, capture_output=True, text=True, check=False)
    if done.returncode:
        raise SystemExit(f"{mode} at {n} tokens failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--tokens", default="512,1882")
    parser.add_argument("--src", type=Path, default=ROOT / "src")
    parser.add_argument("--worker", choices=("extract", "page"))
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.model, int(args.tokens))))
        return
    for n in (int(x) for x in args.tokens.split(",")):
        base = run("extract", args.model, n, args.src)
        print(json.dumps({**base, "src": str(args.src)}), flush=True)
        page = run("page", args.model, n, args.src)
        ratio = round(int(page["peak_mb"]) / int(base["peak_mb"]), 2)  # type: ignore[call-overload]
        print(json.dumps({**page, "ratio": ratio, "src": str(args.src)}), flush=True)


if __name__ == "__main__":
    main()
