"""The `attnviz serve` app, in-process (Starlette's TestClient) over tiny random models."""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import subprocess
import sys
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from starlette.testclient import TestClient
from typer.testing import CliRunner

from attnviz.cli import app as cli_app
from attnviz.extraction import extract
from attnviz.heads.search import find_heads
from attnviz.models.loading import load_model
from attnviz.server.app import MAX_TEXT_CHARS, create_app

TEXT = "Emily always wanted to visit Paris so she took some French lessons."


@pytest.fixture(scope="module")
def models(tiny_model_path):
    return {
        "bert": load_model(str(tiny_model_path("bert")), device="cpu"),
        "gpt2": load_model(str(tiny_model_path("gpt2")), device="cpu"),
    }


@pytest.fixture(scope="module")
def client(models):
    with TestClient(create_app(models), raise_server_exceptions=False) as c:
        yield c


def test_one_head_equals_extract(client, models):
    r = client.get("/api/attention", params={"text": TEXT, "layer": 1, "head": 2})
    assert r.status_code == 200, r.text
    body = r.json()
    att = extract(TEXT, models["bert"])
    assert body["model"] == att.model and body["tokens"] == list(att.tokens)
    assert (body["layer"], body["head"]) == (1, 2)
    np.testing.assert_allclose(np.array(body["attention"]), att.head(1, 2), atol=1e-6)


def test_every_head_and_the_other_model_and_words(client, models):
    body = client.get("/api/attention", params={"text": TEXT, "model": "gpt2"}).json()
    att = extract(TEXT, models["gpt2"])
    assert body["layers"] == [0, 1] and body["heads"] == [0, 1, 2, 3]
    np.testing.assert_allclose(np.array(body["attention"]), att.attn, atol=1e-6)
    words = client.get("/api/attention", params={"text": TEXT, "layer": -1, "head": 0, "words": 1}).json()
    merged = extract(TEXT, models["bert"], words=True)
    assert words["tokens"] == list(merged.tokens) and words["layer"] == 1
    np.testing.assert_allclose(np.array(words["attention"]), merged.head(1, 0), atol=1e-6)


def test_the_server_builds_the_options_the_command_line_builds(client, models):
    """Issue 28: /api/attention builds `ExtractOptions` and gets `extract_shown`'s attention; a bad
    combination is refused by `ExtractOptions.check` in the API's words, before any forward pass."""
    from attnviz.analyses.transform import ExtractOptions, ViewOptions, extract_shown

    q = {"text": TEXT, "words": 1, "aggregate": "max", "over": "layers", "special": 0}
    body = client.get("/api/attention", params=q).json()
    view = ViewOptions(hide_special=True, aggregate="max", over="layers")
    att = extract_shown(TEXT, models["bert"], ExtractOptions(words=True, view=view))
    assert body["tokens"] == list(att.tokens) and body["notes"] == list(att.notes)
    np.testing.assert_allclose(np.array(body["attention"]), att.attn, atol=1e-6)
    bad = client.get("/api/attention", params={"text": TEXT, "over": "rows"})
    assert bad.status_code == 400 and bad.json()["error"].startswith("unknown parameter over 'rows'")


def test_find_head_rows_equal_the_library(client, models):
    r = client.get("/api/find-head", params={"text": TEXT, "a": "paris", "b": "french", "top": 3})
    assert r.status_code == 200, r.text
    expected = find_heads(extract(TEXT, models["bert"]), "paris", "french", top=3)
    assert r.json() == [h.as_dict() for h in expected.ranking]


def test_heatmap_png_is_the_heatmap_figure(client, models):
    from PIL import Image

    from attnviz.plots import attention_figure

    r = client.get("/api/heatmap.png", params={"text": TEXT, "layer": 0, "head": 1})
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    image = Image.open(io.BytesIO(r.content))
    fig = attention_figure(extract(TEXT, models["bert"], layers=[0], heads=[1]))
    width, height = fig.get_size_inches() * fig.dpi
    assert image.size == (round(width), round(height))


def test_view_data_and_models(client, models):
    data = client.get("/api/view", params={"text": TEXT, "layers": "1", "heads": "0,3"}).json()
    assert data["layers"] == [1] and data["heads"] == [0, 3]
    assert len(data["weights"]["top"]) == 2 and "lazy" not in data
    assert data["tokens"] == extract(TEXT, models["bert"]).labels
    listed = client.get("/api/models").json()
    assert [m["name"] for m in listed] == ["bert", "gpt2"] and listed[0]["layers"] == 2


@pytest.mark.parametrize(
    ("params", "status", "needle"),
    [
        ({"text": TEXT, "model": "nope"}, 404, "unknown model 'nope'"),
        ({"text": TEXT, "layer": 7, "head": 0}, 400, "layer 7 is out of range"),
        ({"text": TEXT, "layer": 0, "head": 9}, 400, "head 9 is out of range"),
        ({"text": TEXT, "layer": 0}, 400, "both 'layer' and 'head'"),
        ({"text": TEXT, "layer": "x", "head": 0}, 400, "must be an integer"),
        ({}, 400, "missing parameter 'text'"),
        ({"text": "   "}, 400, "missing parameter 'text'"),
        ({"text": "x " * 100}, 413, "takes at most 64; pass truncate=1 to cut it"),
        ({"text": "x" * (MAX_TEXT_CHARS + 1)}, 413, "at most"),
    ],
)
def test_bad_attention_requests_get_one_line_json(client, params, status, needle):
    # POST (a JSON body): the longest text does not fit a URL
    r = client.post("/api/attention", json=params)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert needle in error and "\n" not in error and "Traceback" not in r.text


def test_bad_find_head_and_heatmap_requests(client):
    r = client.get("/api/find-head", params={"text": TEXT, "a": "paris", "b": "london"})
    assert r.status_code == 404 and "london" in r.json()["error"]
    r = client.get("/api/find-head", params={"text": TEXT, "a": "paris"})
    assert r.status_code == 400 and "'b'" in r.json()["error"]
    r = client.get("/api/find-head", params={"text": TEXT, "a": "paris", "b": "french", "direction": "up"})
    assert r.status_code == 400
    r = client.get("/api/find-head", params={"text": TEXT, "a": "paris", "b": "french", "top": -1})
    assert r.status_code == 400 and r.json()["error"] == "bad parameter top -1: use 0 (all heads) or more"
    r = client.get("/api/heatmap.png", params={"text": TEXT})
    assert r.status_code == 400 and "layer" in r.json()["error"]


def test_long_query_strings_are_refused(models):
    with TestClient(create_app(models, max_query_bytes=1000)) as small:
        r = small.get("/api/attention", params={"text": "a" * 10, "pad": "y" * 2000})
        assert r.status_code == 414 and "1000 bytes" in r.json()["error"]


def test_unknown_paths_and_static_files_come_only_from_the_package(client):
    assert client.get("/nowhere").json() == {"error": "Not Found"}
    assert client.get("/static/..%2Fhtml.py").status_code == 404
    assert client.get("/static/server.py").status_code == 404
    js = client.get("/static/attnviz.js")
    assert js.status_code == 200 and "AttnViz" in js.text
    page = client.get("/")
    assert "default-src 'none'" in page.headers["content-security-policy"]
    assert '<script src="/static/serve.js">' in page.text
    for name in ("matrix.js", "overview.js"):
        assert f'<script src="/static/{name}">' in page.text
        assert client.get(f"/static/{name}").status_code == 200
    assert client.put("/api/attention").status_code == 405
    assert client.post("/").status_code == 405


def test_concurrent_requests_all_answer(client, models):
    expected = extract(TEXT, models["bert"]).head(1, 1)

    def one(_: int) -> float:
        r = client.get("/api/attention", params={"text": TEXT, "layer": 1, "head": 1})
        assert r.status_code == 200
        return float(np.abs(np.array(r.json()["attention"]) - expected).max())

    with ThreadPoolExecutor(8) as pool:
        assert max(pool.map(one, range(40))) < 1e-6


def test_serve_cli_fails_in_one_line_when_the_port_is_taken():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        result = CliRunner().invoke(cli_app, ["serve", "--port", str(port), "--model", "no/such"])
    assert result.exit_code == 2 and "another --port" in result.stderr


def test_bind_errors_name_the_keyword_and_the_cli_the_flag():
    from attnviz.errors import InputError, cli_terms
    from attnviz.server.app import bind

    with pytest.raises(InputError, match=r"^bad port 70000: use 1-65535") as info:
        bind("127.0.0.1", 70000)
    assert info.value.render(cli_terms).startswith("bad --port 70000: use 1-65535")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        with pytest.raises(InputError, match=r"; pass another port$") as info:
            bind("127.0.0.1", s.getsockname()[1])
    assert info.value.render(cli_terms).endswith("; pass another --port")


@pytest.mark.slow  # a real `attnviz serve` process: imports torch and loads a model
def test_serve_answers_and_stops_cleanly_on_ctrl_c(bert):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    src = str(Path(__file__).resolve().parents[1] / "src")
    env = {**os.environ, "PYTHONPATH": src}
    args = ["serve", "--model", bert, "--port", str(port)]
    proc = subprocess.Popen(
        [sys.executable, "-c", "from attnviz.cli import main; main()", *args],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        lines = []
        for line in proc.stderr:  # blocks until the server says it listens (the socket is bound by then)
            lines.append(line)
            if line.startswith("serving on"):
                break
        assert lines and lines[-1].startswith(f"serving on http://127.0.0.1:{port}/"), lines
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/models", timeout=30) as r:
            assert json.loads(r.read())[0]["layers"] == 2
        proc.send_signal(signal.SIGINT)
        rest = proc.communicate(timeout=30)[1]
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, rest
    assert rest.strip().endswith("stopped") and "Traceback" not in rest


def test_the_cache_runs_the_model_once_per_text_and_stays_bounded(models, monkeypatch):
    import attnviz.extraction
    from attnviz.server.app import Pool

    calls = []
    real = attnviz.extraction.extract
    monkeypatch.setattr(attnviz.extraction, "extract", lambda *a, **k: calls.append(a[0]) or real(*a, **k))
    pool = Pool(dict(models))
    one = pool.extract("bert", TEXT, layers=[1], heads=[2])
    two = pool.extract("bert", TEXT, layers=[-1], heads=[0, 3], words=True)
    assert calls == [TEXT] and one.layers == (1,) and two.heads == (0, 3) and two.level == "word"
    np.testing.assert_allclose(
        one.attn[0, 0], real(TEXT, models["bert"], layers=[1], heads=[2]).attn[0, 0], atol=1e-6
    )
    full = pool.cache["bert", TEXT, False].attn.nbytes
    small = Pool(dict(models), cache_bytes=int(full * 2.5))
    for i in range(4):
        small.extract("bert", f"{TEXT} {i}")
    assert [key[1] for key in small.cache] == [f"{TEXT} 2", f"{TEXT} 3"]  # the last two texts


def test_an_unexpected_failure_is_one_json_line_and_the_server_keeps_answering(models, monkeypatch):
    from attnviz.server.app import Pool

    def broken(self, *args, **kwargs):
        raise RuntimeError("boom\nTraceback (most recent call last): secret")

    with TestClient(create_app(models), raise_server_exceptions=False) as c:
        monkeypatch.setattr(Pool, "full", broken)
        r = c.get("/api/attention", params={"text": TEXT, "layer": 0, "head": 0})
        assert r.status_code == 500 and r.json() == {"error": "internal error (RuntimeError)"}
        monkeypatch.undo()
        assert c.get("/api/attention", params={"text": TEXT, "layer": 0, "head": 0}).status_code == 200


def test_post_bodies_carry_long_texts_as_json_or_form(client, models):
    got = client.get("/api/attention", params={"text": TEXT, "layer": 1, "head": 2}).json()
    assert client.post("/api/attention", json={"text": TEXT, "layer": 1, "head": 2}).json() == got
    form = client.post("/api/attention", data={"text": TEXT, "layer": "1", "head": "2"})
    assert form.json() == got
    bad = client.post("/api/attention", content=b"{nope", headers={"content-type": "application/json"})
    assert bad.status_code == 400 and "JSON" in bad.json()["error"]
    long = client.post("/api/view", json={"text": "x " * 100})
    assert long.status_code == 413 and "truncate=1" in long.json()["error"]
    assert "--" not in long.json()["error"]


def test_every_request_is_one_log_line(client, caplog):
    import logging

    with caplog.at_level(logging.INFO, logger="attnviz.serve"):
        client.get("/api/models")
        client.get("/nowhere")
    lines = [r.getMessage() for r in caplog.records if r.name == "attnviz.serve"]
    assert len(lines) == 2 and lines[0].startswith("GET /api/models 200 ") and lines[0].endswith(" ms")
    assert lines[1].startswith("GET /nowhere 404 ")


def test_a_text_too_long_for_one_page_is_served_one_head_at_a_time(models, monkeypatch):
    from attnviz.views.html import decode_weights

    calls = []
    import attnviz.extraction as extraction

    att = extract(TEXT, models["gpt2"])
    real = extraction.extract_batch

    def counting(*args, **kwargs):
        calls.append((kwargs.get("layers"), kwargs.get("heads")))
        return real(*args, **kwargs)

    monkeypatch.setattr(extraction, "extract_batch", counting)
    with TestClient(create_app(models, cache_bytes=1000)) as small:  # no whole text fits
        data = small.post("/api/view", json={"text": TEXT, "model": "gpt2", "lazy": 1}).json()
        assert data["lazy"] is True and "weights" not in data
        shape = [1, 1, data["n"], data["n"]]
        np.testing.assert_allclose(decode_weights(data["head0"], shape)[0, 0], att.head(0, 0), atol=0.01)
        assert data["tokens"] == att.labels and data["n"] == att.n_tokens and data["causal"] is True
        assert data["layers"] == [0, 1] and data["heads"] == [0, 1, 2, 3]
        one = small.post("/api/head", json={"text": TEXT, "model": "gpt2", "layer": 1, "head": 3}).json()
        assert one["layer"] == 1 and one["head"] == 3 and one["n"] == att.n_tokens
        back = decode_weights(one["weights"], [1, 1, att.n_tokens, att.n_tokens])[0, 0]
        np.testing.assert_allclose(back, att.head(1, 3), atol=0.5 / 63 + 1e-3)
    assert calls == [([0], [0]), ([1], [3])]  # one head per forward pass, never the whole text


def test_a_page_too_big_for_the_server_points_to_lazy_not_to_a_file_option(models):
    """The server's way out is `lazy=1` (one head at a time), not `max_mb` or `attnviz serve`."""
    with TestClient(create_app(models, max_page_mb=0.001), raise_server_exceptions=False) as small:
        r = small.post("/api/view", json={"text": TEXT, "model": "gpt2"})
    error = r.json()["error"]
    assert r.status_code == 400 and "narrow it with parameter layers (e.g. layers=0)" in error, error
    assert error.endswith("or ask for lazy=1 (the page then fetches one head at a time)"), error
    assert "max_mb" not in error and "--" not in error


def test_a_long_text_whose_whole_page_fits_is_served_whole(models, monkeypatch):
    """/api/view once guessed 0.22 bytes a weight before the forward pass (210 MB for a 1,882-token
    SmolLM2 page that is 19 MB) and sent such texts one head at a time; it now asks the page's rule."""
    from attnviz.server import app as server_app
    from attnviz.views.html import least_bytes

    n, loaded = 1882, models["gpt2"]  # the text length, on the tiny model's 2 x 4 heads
    limit = 4 * least_bytes(loaded.num_layers, loaded.capture.num_heads, n)
    assert n * n * loaded.num_layers * loaded.capture.num_heads * 0.22 > limit  # the old guess: too big
    monkeypatch.setattr(server_app.Pool, "length", lambda self, name, text, truncate: n)
    monkeypatch.setattr(server_app.Pool, "fits", lambda self, name, n: True)
    with TestClient(create_app(models, max_page_mb=limit / 1e6)) as client:
        data = client.post("/api/view", json={"text": TEXT, "model": "gpt2", "lazy": 1}).json()
    assert "lazy" not in data and "weights" in data  # the (short) text's whole page


def test_request_lines_go_to_the_stderr_of_the_moment(capsys):
    """A serve started under a runner whose captured stream is closed later must not log 'Logging
    error ... I/O operation on closed file' into every later test (it did, from test_concurrency)."""
    import io
    import logging
    import sys

    from attnviz.cli.serve import StderrHandler

    captured = io.StringIO()
    real, sys.stderr = sys.stderr, captured
    try:
        handler = StderrHandler()
    finally:
        sys.stderr = real
    captured.close()
    log = logging.getLogger("attnviz.test.stderr-handler")
    log.addHandler(handler)
    log.propagate = False
    try:
        log.warning("GET / 200")
    finally:
        log.removeHandler(handler)
    err = capsys.readouterr().err
    assert "GET / 200" in err and "Logging error" not in err
