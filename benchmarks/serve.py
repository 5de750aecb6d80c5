"""Measure `attnviz serve` warm latency and concurrency, and the size of `attnviz view` pages.

    PYTHONPATH=src .venv/bin/python benchmarks/serve.py [--model minilm] [--requests 100]

Prints one JSON object: the model's cold load time, the first request, the median and 90th
percentile of warm one-head /api/attention requests on the seed sentence (answered from the server's
cache of recent texts), the median for a new text each time (one forward pass each), 8 concurrent
clients x 50 requests (errors, wall time), and page sizes (seed sentence; a 512-token text whole and
one layer).
"""

from __future__ import annotations

import argparse
import json
import statistics
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor

SEED = "Emily always wanted to visit Paris so she took some French lessons"


def get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=60) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="minilm")
    parser.add_argument("--requests", type=int, default=100)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--per-client", type=int, default=50)
    args = parser.parse_args()

    from attnviz.errors import InputError
    from attnviz.extraction import extract
    from attnviz.models.loading import load_model
    from attnviz.server.app import bind, create_app, uvicorn_server
    from attnviz.views.html import render_html

    start = time.perf_counter()
    loaded = load_model(args.model, device="cpu")
    cold = time.perf_counter() - start

    sock = bind("127.0.0.1", 0)
    port = sock.getsockname()[1]
    server = uvicorn_server(create_app({args.model: loaded}), "127.0.0.1", port)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}/api/attention?" + urllib.parse.urlencode(
        {"text": SEED, "layer": 2, "head": 5}
    )

    t = time.perf_counter()
    status, _ = get(url)
    first = time.perf_counter() - t
    assert status == 200
    times = []
    for _ in range(args.requests):
        t = time.perf_counter()
        status, _ = get(url)
        times.append(time.perf_counter() - t)
        assert status == 200
    times.sort()
    fresh = []  # a new text each time (the seed sentence and a number): no cache, one forward each
    for i in range(args.requests // 2):
        q = urllib.parse.urlencode({"text": f"{SEED} {i}", "layer": 2, "head": 5})
        t = time.perf_counter()
        status, _ = get(f"http://127.0.0.1:{port}/api/attention?{q}")
        fresh.append(time.perf_counter() - t)
        assert status == 200

    def client(_: int) -> int:
        return sum(get(url)[0] != 200 for _ in range(args.per_client))

    t = time.perf_counter()
    with ThreadPoolExecutor(args.clients) as pool:
        errors = sum(pool.map(client, range(args.clients)))
    wall = time.perf_counter() - t
    server.should_exit = True
    thread.join(30)

    seed_page = len(render_html(extract(SEED, loaded)).encode())
    long_text = " ".join(["word"] * 600)
    try:
        render_html(extract(long_text, loaded, truncate=True))
        whole = "fits"
    except InputError as exc:
        whole = f"refused: {exc}"
    one_layer = len(render_html(extract(long_text, loaded, truncate=True, layers=[0])).encode())
    print(
        json.dumps(
            {
                "model": args.model,
                "cold_load_s": round(cold, 2),
                "first_request_ms": round(first * 1000, 1),
                "warm_one_head_ms": {
                    "requests": args.requests,
                    "median": round(statistics.median(times) * 1000, 1),
                    "p90": round(times[int(0.9 * len(times))] * 1000, 1),
                },
                "new_text_one_head_ms": {
                    "requests": len(fresh),
                    "median": round(statistics.median(fresh) * 1000, 1),
                },
                "concurrent": {
                    "clients": args.clients,
                    "requests_each": args.per_client,
                    "errors": errors,
                    "wall_s": round(wall, 2),
                    "requests_per_s": round(args.clients * args.per_client / wall, 1),
                },
                "page_bytes": {"seed_all_heads": seed_page, "512_tokens_layer_0": one_layer},
                "512_tokens_all_layers": whole,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
