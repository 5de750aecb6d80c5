"""Many threads at once get exactly what each would get alone (issue 30, part 1).

The recorder and editor of a forward pass are per call (context variables), so threads running one
model, two models, `generate` beside `extract`, or the server's thread pool with one model under
two names, never see each other's weights. Every result here is compared bit for bit with the same
call made alone.
"""

from __future__ import annotations

import random
import socket
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

import numpy as np
import pytest

from attnviz.extraction import extract
from attnviz.models.loading import load_model

TEXTS = [
    "Emily always wanted to visit Paris so she took some French lessons.",
    "The cat sat on the mat, and the cat slept.",
    "Transformers are great; transformers attend to tokens.",
    "A dog chased the cat across the garden while the bird sang.",
    "Attention is a weighted average of value vectors.",
    "one two three",
    "The quick brown fox jumps over the lazy dog again and again and again.",
    "Mary and John went to the store; John gave a drink to Mary.",
]
LONG = "the cat sat on the mat " * 40  # over the tiny models' 64 tokens: truncated
WAIT = 60


@pytest.fixture(scope="module")
def models(tiny_model_path):
    archs = ("bert", "gpt2", "t5", "deberta")  # deberta: its own attention code, edited at W_O's input
    return {arch: load_model(str(tiny_model_path(arch)), device="cpu") for arch in archs}


def _same(a: Any, b: Any) -> bool:
    """Bit-for-bit equality of results (arrays, tuples of them, or error texts)."""
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return isinstance(a, np.ndarray) and isinstance(b, np.ndarray) and np.array_equal(a, b)
    if isinstance(a, tuple) and isinstance(b, tuple):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return type(a) is type(b) and a == b


def _outcome(call: Callable[[], Any]) -> Any:
    try:
        return call()
    except Exception as exc:  # a wrong "no attention weights" is an outcome to compare, not a crash
        return f"{type(exc).__name__}: {exc}"


def _check_together(calls: Sequence[Callable[[], Any]], threads: int, repeat: int) -> None:
    """Each call alone, then all of them `repeat` times over `threads` threads: the same results."""
    alone = [_outcome(c) for c in calls]
    jobs = [i for _ in range(repeat) for i in range(len(calls))]
    random.Random(0).shuffle(jobs)
    start = threading.Barrier(threads)

    def run(worker: int) -> list[tuple[int, Any]]:
        start.wait(WAIT)
        return [(i, _outcome(calls[i])) for i in jobs[worker::threads]]

    with ThreadPoolExecutor(threads) as pool:
        together = [r for rs in pool.map(run, range(threads)) for r in rs]
    wrong = [(i, got) for i, got in together if not _same(got, alone[i])]
    assert not wrong, f"{len(wrong)} of {len(together)} results differ from alone, e.g. {wrong[0]}"


def _attn(text: str, loaded: Any, **kw: Any) -> Callable[[], Any]:
    def call() -> Any:
        att = extract(text, loaded, **kw)
        parts = [att.attn, att.tokens]
        if att.decoder is not None:
            parts += [att.decoder.attn, att.cross]
        if att.qkv is not None:
            parts += [v for layer in sorted(att.qkv) for v in (att.qkv[layer].q, att.qkv[layer].v)]
        return tuple(parts)

    return call


def test_four_threads_on_one_model_each_get_their_own_weights(models):
    bert = models["bert"]
    calls = [_attn(t, bert) for t in TEXTS]
    calls += [_attn(t, bert, layers=[1], heads=[2]) for t in TEXTS[:3]]
    calls += [_attn(TEXTS[0], bert, qkv=True), _attn(LONG, bert, truncate=True), _attn(LONG, bert)]
    _check_together(calls, threads=4, repeat=4)


def test_two_models_and_an_encoder_decoder_at_once(models):
    calls = [_attn(t, models[arch]) for t in TEXTS[:5] for arch in ("bert", "gpt2", "t5")]
    calls += [_attn(t, models["gpt2"], layers=[0], heads=[1, 3]) for t in TEXTS[5:]]
    _check_together(calls, threads=4, repeat=3)


def test_generate_beside_extract_and_two_generations_at_once(models, tiny_model_path):
    from attnviz.generation.run import generate, load_for_generation

    lm = load_for_generation(models["gpt2"])

    def gen(prompt: str, **kw: Any) -> Callable[[], Any]:
        def call() -> Any:
            g = generate(prompt, lm, max_new_tokens=6, prompt_rows=True, **kw)
            return (np.array(g.token_ids), g.attn, g.prompt_attn)

        return call

    calls = [gen(TEXTS[1]), gen(TEXTS[4], layers=[1], heads=[0])]
    calls += [gen(TEXTS[2], sample=True, seed=7), gen(TEXTS[2], sample=True, seed=8)]
    calls += [_attn(t, models["gpt2"]) for t in TEXTS[:4]]
    calls += [_attn(t, lm) for t in TEXTS[4:6]]  # the very model generating, extracted meanwhile
    _check_together(calls, threads=4, repeat=3)


def test_ablation_and_norm_weighting_beside_extract(models):
    """The editor of an ablation and the hooks of the output-projection trace stay in their call, on
    a model through the attention interface and on one with its own attention code."""
    from attnviz.analyses.norms import norm_weighted
    from attnviz.heads.ablation import ablate, for_ablation

    lm = for_ablation(models["gpt2"])

    own = for_ablation(models["deberta"])

    def ablated(text: str, heads: list[tuple[int, int]], model: Any = lm) -> Callable[[], Any]:
        return lambda: (lambda a: (a.before, a.after))(ablate(model, text, heads))

    calls = [ablated(TEXTS[0], [(0, 1)]), ablated(TEXTS[3], [(1, 2), (0, 0)])]
    calls += [ablated(TEXTS[1], [(1, 3)], own), ablated(TEXTS[2], [(0, 2)], own)]
    calls += [lambda: (norm_weighted(TEXTS[2], models["bert"]).attn,)]
    calls += [lambda t=t: (norm_weighted(t, models["deberta"]).attn,) for t in TEXTS[4:7]]
    calls += [_attn(t, m) for t in TEXTS[:3] for m in (lm, models["bert"], models["deberta"])]
    _check_together(calls, threads=4, repeat=3)


# -- the server, on the real uvicorn and its thread pool -------------------------------------------


@contextmanager
def _serving(models: dict[str, Any], cache_bytes: int) -> Iterator[tuple[str, Any]]:
    """The real uvicorn server on a free loopback port, in a thread: (base url, the app's pool)."""
    from attnviz.server.app import create_app, uvicorn_server

    app = create_app(models, cache_bytes=cache_bytes)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    server = uvicorn_server(app, "127.0.0.1", sock.getsockname()[1])
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}", app.state.pool
    finally:
        server.should_exit = True
        thread.join(WAIT)
        sock.close()


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=WAIT) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def _requests(names: Sequence[str], generating: Sequence[str]) -> list[str]:
    out = []
    for name in names:
        for text in TEXTS:
            q = {"model": name, "text": text}
            out.append("/api/attention?" + urllib.parse.urlencode(q))
            out.append("/api/attention?" + urllib.parse.urlencode({**q, "layer": 1, "head": 2}))
        out.append("/api/attention?" + urllib.parse.urlencode({"model": name, "text": LONG, "truncate": 1}))
    for name in generating:
        for text in TEXTS[:2]:
            q = {"model": name, "text": text, "max_new_tokens": 4}
            out.append("/api/generate?" + urllib.parse.urlencode(q))
    return out


def _storm(base: str, paths: list[str], alone: dict[str, tuple[int, bytes]], clients: int) -> None:
    """`clients` clients at once, each sending every request in its own order: answers as alone."""
    start = threading.Barrier(clients)

    def client(i: int) -> list[str]:
        order = list(paths)
        random.Random(i).shuffle(order)
        start.wait(WAIT)
        return [p for p in order if _get(base + p) != alone[p]]

    with ThreadPoolExecutor(clients) as pool:
        wrong = [p for ps in pool.map(client, range(clients)) for p in ps]
    assert not wrong, f"{len(wrong)} of {clients * len(paths)} answers differ from alone, e.g. {wrong[0]}"


@pytest.mark.parametrize(
    "names",
    [("bert", "gpt2"), ("gpt2", "GPT2")],
    ids=["two models", "one model under two names"],
)
def test_served_answers_under_ten_clients_equal_the_same_request_alone(models, names):
    served = {name: models[name.lower()] for name in names}
    generating = [n for n in names if n.lower() == "gpt2"]
    paths = _requests(names, generating)
    one = models["bert"].num_layers * 4 * 40 * 40 * 4  # every head of a short text
    with _serving(served, cache_bytes=one * 6) as (base, pool):  # a few texts: most are run again
        alone = {}
        for p in paths:
            alone[p] = _get(base + p)
            assert alone[p][0] == 200, (p, alone[p])
            with pool.cache_lock:
                pool.cache.clear()  # alone: each answer from its own forward pass
        _storm(base, paths, alone, clients=10)
        # the cache keeps no wrong answer: what it holds is what extract gives alone, and asked
        # again (now from the cache) every request still answers as alone
        with pool.cache_lock:
            kept = dict(pool.cache)
        assert kept
        for key, att in kept.items():
            name, text, truncate = key[:3]
            assert np.array_equal(att.attn, extract(text, served[name], truncate=truncate).attn), key
        assert [p for p in paths if _get(base + p) != alone[p]] == []


def test_truncating_leaves_the_shared_tokenizer_as_it_was(models):
    """A fast tokenizer keeps its truncation setting: set on the shared one, it would cut (or break,
    "Already borrowed") what other threads tokenise meanwhile."""
    from attnviz.extraction import tokenize

    bert = models["bert"]
    enc = tokenize(bert, [LONG], truncate=True)
    assert enc.lengths == [bert.max_length] and enc.truncated[0] > 0
    assert bert.tokenizer.backend_tokenizer.truncation is None
    assert len(bert.tokenizer(LONG)["input_ids"]) > bert.max_length


def test_threads_loading_one_model_at_once_share_one_copy(tiny_model_path, empty_model_cache):
    path = str(tiny_model_path("llama"))
    start = threading.Barrier(4)

    def load(_: int) -> Any:
        start.wait(WAIT)
        return load_model(path, device="cpu")

    with ThreadPoolExecutor(4) as pool:
        copies = list(pool.map(load, range(4)))
    assert all(c is copies[0] for c in copies)
