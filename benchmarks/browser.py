"""The explorer in headless Chromium (selenium, network blocked, as tests/test_browser.py drives it).

    PYTHONPATH=src .venv/bin/python benchmarks/browser.py [--lengths 14,256,512] [--served 2048,8192]

For each MiniLM text (every layer and head, `attnviz view`'s page) and each SmolLM2 text served by
`attnviz serve` (heads fetched one at a time), prints one JSON line:

  bytes         the page (a file), or the page's data (served: /api/view and one /api/head answer)
  first_paint   ms from navigation to the first contentful paint (the browser's own entry)
  drawn         ms from navigation (file), or from the model's answer read by the page (served), to
                the first view drawn (the page's own clock)
  hover         ms for a matrix-view mousemove to update the tooltip, and to the next frame (median
                of 30 cells)
  switch        ms for a click on a view tab to the next frame, per view (median of 3; the model view's
                thumbnails are drawn after that, lazily: `thumbs_visible` is until those in sight are drawn)
  answer        served: seconds from the request to the model's answer (one head-sliced forward pass)

The figures in docs/views.md come from one run of this script; ratios between pages are meaningful,
absolute numbers move with the machine's load.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
SEED = "Emily always wanted to visit Paris so she took some French lessons"
SENTENCES = [
    "Emily always wanted to visit Paris, so she took French lessons every {i}th evening.",
    "The cat sat on mat number {i} and watched the birds that sang in the garden.",
    "In chapter {i} the committee argued about budgets, bridges and the price of bread.",
]
VIEWS = ("matrix", "text", "model", "matrix")

HOVER = """
const done = arguments[arguments.length - 1];
const c = document.querySelector('canvas.av-matrix'), r = c.getBoundingClientRect();
const sync = [], frame = [];
let k = 0;
function one() {
  if (k === 30) { done([sync, frame]); return; }
  const x = r.left + ((k * 37) % 97 + 1) / 100 * r.width, y = r.top + ((k * 53) % 89 + 1) / 92 * r.height;
  const t0 = performance.now();
  c.dispatchEvent(new MouseEvent('mousemove', {clientX: x, clientY: y, bubbles: true}));
  sync.push(performance.now() - t0);
  requestAnimationFrame(() => { frame.push(performance.now() - t0); k++; setTimeout(one, 0); });
}
one();
"""
SWITCH = """
const done = arguments[arguments.length - 1], view = arguments[0];
const t0 = performance.now();
document.querySelector('button[data-view=' + view + ']').click();
const sync = performance.now() - t0;
requestAnimationFrame(() => done([sync, performance.now() - t0]));
"""


def text_of(n_words: int) -> str:
    words, i = [], 0
    while len(words) < n_words:
        words += SENTENCES[i % len(SENTENCES)].format(i=i).split()
        i += 1
    return " ".join(words[:n_words])


def median(xs: list[float]) -> float:
    return round(statistics.median(xs), 2)


def interact(d) -> dict:
    """Hover and view-switch latencies on the page open in `d` (its matrix view drawn)."""
    from selenium.webdriver.support.ui import WebDriverWait

    d.set_script_timeout(600)
    d.execute_async_script(SWITCH, "matrix")
    sync, frame = d.execute_async_script(HOVER)
    switch: dict[str, list[float]] = {}
    for _ in range(3):
        for view in VIEWS:
            switch.setdefault(view, []).append(d.execute_async_script(SWITCH, view)[1])
    d.execute_async_script(SWITCH, "matrix")
    d.execute_script("document.getElementById('attnviz-root').removeAttribute('data-thumbs')")
    t0 = time.perf_counter()
    d.execute_async_script(SWITCH, "model")
    WebDriverWait(d, 120, poll_frequency=0.02).until(
        lambda d: d.execute_script("return document.getElementById('attnviz-root').dataset.thumbs")
    )
    thumbs = (time.perf_counter() - t0) * 1000
    return {
        "hover": {"handler": median(sync), "next_frame": median(frame)},
        "switch": {view: median(ms) for view, ms in switch.items()},
        "thumbs_visible": round(thumbs, 1),
    }


def paint(d) -> float | None:
    """The browser's first contentful paint (ms from navigation), once it is recorded."""
    for _ in range(50):
        entry = d.execute_script(
            "return performance.getEntriesByName('first-contentful-paint').map(e => e.startTime)[0]"
        )
        if entry is not None:
            return round(entry, 1)
        time.sleep(0.05)
    return None


def cut(text: str, n: int, tokenizer) -> str:
    """The text cut to n tokens (without special tokens)."""
    return tokenizer.decode(tokenizer(text, add_special_tokens=False)["input_ids"][:n])


def file_page(d, loaded, n_words: int, tmp: Path) -> dict:
    from selenium.webdriver.support.ui import WebDriverWait

    from attnviz.extraction import extract
    from attnviz.views.html import render_html

    text = SEED if n_words <= 14 else cut(text_of(n_words), n_words - 2, loaded.tokenizer)
    att = extract(text, loaded, truncate=True)
    start = time.perf_counter()
    page = render_html(att, view="matrix")
    written = time.perf_counter() - start
    path = tmp / f"page-{att.n_tokens}.html"
    path.write_text(page, encoding="utf-8")
    d.get(path.as_uri())
    WebDriverWait(d, 600, poll_frequency=0.02).until(
        lambda d: d.execute_script("return document.getElementById('attnviz-root').dataset.drawnAt")
    )
    drawn = float(d.execute_script("return document.getElementById('attnviz-root').dataset.drawnAt"))
    out = {"model": "minilm", "tokens": att.n_tokens, "layers": len(att.layers), "bytes": len(page.encode())}
    out.update(write_s=round(written, 2), first_paint=paint(d), drawn=round(drawn, 1))
    return {**out, **interact(d)}


def served_page(d, base: str, n_tokens: int, tokenizer) -> dict:
    from selenium.webdriver.support.ui import WebDriverWait

    text = cut(text_of(n_tokens), n_tokens - 1, tokenizer)
    d.get(base + "/")
    WebDriverWait(d, 60).until(lambda d: d.execute_script("return document.body.dataset.models") == "1")
    d.execute_script("document.getElementById('av-input').value = arguments[0]", text)
    d.execute_script("document.getElementById('av-truncate').checked = true")
    start = time.perf_counter()
    d.find_element("id", "av-submit").click()
    WebDriverWait(d, 3600, poll_frequency=0.05).until(
        lambda d: d.execute_script(
            "return document.body.dataset.answered || document.querySelector('.av-error')"
        )
    )
    answer = time.perf_counter() - start
    WebDriverWait(d, 3600, poll_frequency=0.02).until(
        lambda d: d.execute_script("return !!document.querySelector('canvas.av-matrix')")
    )
    n = d.execute_script("return document.getElementById('attnviz-root').attnviz.data.n")
    drawn = d.execute_script(
        "return document.getElementById('attnviz-root').dataset.drawnAt - document.body.dataset.answeredAt"
    )
    out = {"model": "smollm2", "tokens": n, "served": True, "answer_s": round(answer, 2)}
    out.update(drawn=round(drawn, 1), first_paint=paint(d))
    out["bytes"] = d.execute_script(
        "return performance.getEntriesByType('resource').filter(e => e.name.includes('/api/'))"
        ".reduce((s, e) => s + e.encodedBodySize, 0)"
    )
    return {**out, **interact(d)}


def driver():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from test_browser import CHROMEDRIVER, chrome_options

    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=chrome_options(1400, 1000))


def serve(model: str):
    from attnviz.models.loading import load_model
    from attnviz.server.app import bind, create_app, uvicorn_server

    loaded = load_model(model, device="cpu")
    sock = bind("127.0.0.1", 0)
    server = uvicorn_server(create_app({model: loaded}), "127.0.0.1", sock.getsockname()[1])
    threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True).start()
    return f"http://127.0.0.1:{sock.getsockname()[1]}", loaded


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", default="14,256,512", help="MiniLM texts in tokens (14: the seed)")
    parser.add_argument("--served", default="2048,8192", help="SmolLM2 texts in tokens, through serve")
    args = parser.parse_args()
    from attnviz.models.loading import load_model

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    d = driver()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            if args.lengths:
                minilm = load_model("minilm", device="cpu")
                for n in (int(x) for x in args.lengths.split(",")):
                    print(json.dumps(file_page(d, minilm, n, Path(tmp))), flush=True)
            if args.served:
                base, smol = serve("smollm2")
                for n in (int(x) for x in args.served.split(",")):
                    print(json.dumps(served_page(d, base, n, smol.tokenizer)), flush=True)
    finally:
        d.quit()


if __name__ == "__main__":
    main()
