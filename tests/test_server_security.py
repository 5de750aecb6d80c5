"""`attnviz serve` against a hostile browser or client, and work a client gave up (issues 30 and 31).

Where an item is about real HTTP (a foreign Host, a body that streams, idle connections, a client
that goes away, signals), it runs against a real uvicorn on a free 127.0.0.1 port, in a thread or
in a real `attnviz serve` process, through raw sockets; every loop is bounded and stops by itself.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from starlette.testclient import TestClient
from typer.testing import CliRunner

import attnviz
from attnviz.cli import app as cli_app
from attnviz.models.loading import load_model
from attnviz.server.app import MAX_BODY_BYTES, create_app, uvicorn_server

TEXT = "Emily always wanted to visit Paris so she took some French lessons."
WAIT = 10.0  # seconds: the most any one answer may take here
SRC = str(Path(attnviz.__file__).resolve().parents[1])  # the attnviz under test, for subprocesses


@pytest.fixture(scope="module")
def models(tiny_model_path):
    return {"bert": load_model(str(tiny_model_path("bert")), device="cpu")}


@pytest.fixture(scope="module")
def start():
    """Factory: a real uvicorn over an app on a free loopback port, in a thread -> the port.
    Every server started is stopped after the module."""
    running = []

    def run(app, **kwargs) -> int:
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        sock.listen(128)  # connections queue here until uvicorn accepts them: no start-up race
        port = sock.getsockname()[1]
        server = uvicorn_server(app, "127.0.0.1", port, **kwargs)
        thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
        thread.start()
        running.append((server, thread, sock))
        return port

    yield run
    for server, _, _ in running:
        server.should_exit = True
    for _, thread, sock in running:
        thread.join(WAIT)
        sock.close()
        assert not thread.is_alive()


@pytest.fixture(scope="module")
def port(start, models) -> int:
    return start(create_app(models))


def ask(port: int, method: str, path: str, headers: dict[str, str], body: bytes | None = None):
    """One request with exactly these headers (Host included) -> (status, headers, JSON or text)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=WAIT)
    try:
        conn.request(method, path, body=body, headers={"Host": f"127.0.0.1:{port}", **headers})
        r = conn.getresponse()
        raw = r.read()
        got = {k.lower(): v for k, v in r.getheaders()}
        data = json.loads(raw) if "json" in got.get("content-type", "") else raw
        return r.status, got, data
    finally:
        conn.close()


def read_answer(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """An HTTP answer from a raw socket (headers, then content-length bytes)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    while len(body) < int(headers.get("content-length", 0)):
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return int(lines[0].split()[1]), headers, body


def closed_by_server(sock: socket.socket, within: float) -> bool:
    """Whether the server closes this connection within `within` seconds (reading what comes)."""
    sock.settimeout(0.2)
    end = time.monotonic() + within
    while time.monotonic() < end:
        try:
            if sock.recv(4096) == b"":
                return True
        except TimeoutError:
            continue
        except OSError:  # reset
            return True
    return False


# -- who may ask -------------------------------------------------------------------------------------
@pytest.mark.parametrize("path", ["/", "/api/models", "/api/attention?text=hi&layer=0&head=0"])
def test_a_foreign_host_header_is_refused_dns_rebinding(port, path):
    """After DNS rebinding, a page of evil.example talks to this server under its own name."""
    status, _, data = ask(port, "GET", path, {"Host": f"evil.example:{port}"})
    assert status == 400, data
    assert set(data) == {"error"} and "host 'evil.example:" in data["error"] and "\n" not in data["error"]
    assert "tiny" not in json.dumps(data)  # no model path, no page
    for host in (f"127.0.0.1:{port}", f"localhost:{port}", f"[::1]:{port}", "LOCALHOST."):
        assert ask(port, "GET", path, {"Host": host})[0] == 200, host


def test_the_host_given_is_accepted_and_a_wildcard_takes_addresses_not_names(start, models):
    from attnviz.server.web import allowed_hosts, refusal

    named = start(create_app(models), hosts=["attnviz.test"])
    assert ask(named, "GET", "/api/models", {"Host": f"attnviz.test:{named}"})[0] == 200
    assert ask(named, "GET", "/api/models", {"Host": f"other.test:{named}"})[0] == 400
    names, wildcard = allowed_hosts("0.0.0.0")
    scope = {"type": "http", "path": "/", "headers": [(b"host", b"192.168.1.7:8000")]}
    assert refusal(scope, names, wildcard) is None
    scope["headers"] = [(b"host", b"rebound.evil.example:8000")]
    assert refusal(scope, names, wildcard)[0] == 400
    assert refusal(scope | {"headers": []}, names, wildcard)[0] == 400  # no Host at all


def test_a_request_from_another_origin_is_refused(port):
    """A form POST from any page needs no CORS preflight: the Origin header is the only tell."""
    form = b"text=hello+world&layer=0&head=0"
    kinds = {"Content-Type": "application/x-www-form-urlencoded"}
    for origin in ("http://evil.example", f"http://evil.example:{port}", "null", f"http://localhost:{port}"):
        status, _, data = ask(port, "POST", "/api/attention", {**kinds, "Origin": origin}, form)
        assert status == 403 and "another site" in data["error"], (origin, data)
    own = ask(port, "POST", "/api/attention", {**kinds, "Origin": f"http://127.0.0.1:{port}"}, form)
    assert own[0] == 200 and own[2]["layer"] == 0
    assert ask(port, "POST", "/api/attention", kinds, form)[0] == 200  # curl, scripts: no Origin


def test_a_cross_site_fetch_of_the_api_is_refused_but_a_link_to_the_page_opens(port):
    """An <img src> to /api/heatmap.png from another site sends no Origin; browsers say Sec-Fetch-Site."""
    path = "/api/heatmap.png?text=hello&layer=0&head=0"
    for site in ("cross-site", "same-site"):
        assert ask(port, "GET", path, {"Sec-Fetch-Site": site})[0] == 403
    assert ask(port, "GET", path, {"Sec-Fetch-Site": "same-origin"})[0] == 200
    assert ask(port, "GET", path, {"Sec-Fetch-Site": "none"})[0] == 200  # typed in the address bar
    assert ask(port, "GET", "/", {"Sec-Fetch-Site": "cross-site"})[0] == 200  # a link to the page


_HOSTILE = """<!doctype html><html><body>
<iframe name="sink"></iframe>
<form id="f" method="POST" action="{base}/api/attention" target="sink">
<input name="text" value="hello world"><input name="layer" value="0"><input name="head" value="0"></form>
<img src="{base}/api/heatmap.png?text=hello&layer=0&head=0">
<script>
document.getElementById("f").submit();
fetch("{base}/api/attention", {{method: "POST", mode: "no-cors", body: "text=hi&layer=0&head=0",
  headers: {{"Content-Type": "application/x-www-form-urlencoded"}}}}).catch(function () {{}});
</script></body></html>"""


@pytest.mark.browser
def test_a_page_of_another_origin_in_chromium_cannot_run_the_model(port, caplog):
    """A real page on another origin (here 127.0.0.1 on another port: Chromium reaches only loopback)
    posts a form, fetches with no-cors and loads an image from the API: all three refused, none run."""
    import http.server

    from test_browser import CHROMEDRIVER, CHROMIUM, chrome_options

    if not all(Path(p).exists() for p in (CHROMIUM, CHROMEDRIVER)):
        pytest.skip("needs Chromium and chromedriver (bash scripts/setup.sh installs them)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.support.ui import WebDriverWait

    page = _HOSTILE.format(base=f"http://127.0.0.1:{port}").encode()

    class Evil(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(page)))
            self.end_headers()
            self.wfile.write(page)

        def log_message(self, *args) -> None:
            pass

    evil = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Evil)
    threading.Thread(target=evil.serve_forever, daemon=True).start()
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=chrome_options())
    try:
        with caplog.at_level(logging.INFO, logger="attnviz.serve"):
            driver.get(f"http://127.0.0.1:{evil.server_address[1]}/")

            def api_lines(_) -> list[str]:
                lines = [r.getMessage() for r in caplog.records if r.name == "attnviz.serve"]
                return [line for line in lines if " /api/" in line]

            WebDriverWait(driver, WAIT).until(lambda d: len(api_lines(d)) >= 3)
            time.sleep(0.5)  # anything else the page sent has arrived
            lines = api_lines(driver)
    finally:
        driver.quit()
        evil.shutdown()
    assert len(lines) == 3, lines
    assert all(" 403 refused: requests from another site" in line for line in lines), lines


# -- the body ------------------------------------------------------------------------------------------
def _chunked_head(port: int) -> bytes:
    return (
        f"POST /api/attention HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
        "Transfer-Encoding: chunked\r\n\r\n"
    ).encode()


def _chunk(size: int) -> bytes:
    return f"{size:x}\r\n".encode() + b" " * size + b"\r\n"


def test_a_chunked_body_over_the_limit_is_refused_before_it_ends(port):
    """1.2 MB of a body with no announced size, then nothing more: the 413 comes now, not at the end."""
    with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as sock:
        sock.sendall(_chunked_head(port))
        for _ in range(20):
            try:
                sock.sendall(_chunk(60_000))
            except (BrokenPipeError, ConnectionResetError):  # answered and closed before the last chunk
                break
        try:
            status, headers, body = read_answer(sock)
        except TimeoutError:
            pytest.fail("no answer: the server waits for the whole body before counting it")
    assert status == 413 and headers.get("connection") == "close"
    assert json.loads(body) == {"error": f"the request body is over {MAX_BODY_BYTES} bytes"}


def test_a_100_mb_chunked_body_is_not_read_to_its_end(port):
    """The server stops reading at the limit and closes: the sender is cut off long before 100 MB."""
    sent, size = 0, 1 << 16
    with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as sock:
        sock.sendall(_chunked_head(port))
        piece = _chunk(size)
        try:
            while sent < 100_000_000:  # bounded: 100 MB at most
                sock.sendall(piece)
                sent += size
        except TimeoutError:
            pytest.fail(f"the server neither read nor closed after {sent} bytes")
        except OSError:  # the server closed: broken pipe or reset
            pass
    assert sent < 30_000_000, f"the server read {sent} bytes of a body it refuses past {MAX_BODY_BYTES}"


def test_a_body_that_never_ends_times_out(start, models, monkeypatch):
    import attnviz.server.web

    monkeypatch.setattr(attnviz.server.web, "BODY_SECONDS", 1.0)
    slow = start(create_app(models))
    with socket.create_connection(("127.0.0.1", slow), timeout=WAIT) as sock:
        sock.sendall(_chunked_head(slow) + _chunk(10))
        status, _, body = read_answer(sock)
    assert status == 408 and "took over 1 s" in json.loads(body)["error"]


def test_a_client_gone_in_the_middle_of_its_body_is_one_cancelled_line(port, caplog):
    with caplog.at_level(logging.INFO, logger="attnviz.serve"):
        with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as sock:
            head = f"POST /api/attention HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 5000\r\n\r\n"
            sock.sendall(head.encode() + b'{"text": "he')
            time.sleep(0.3)
        end = time.monotonic() + WAIT
        while time.monotonic() < end and not any("/api/attention" in r.getMessage() for r in caplog.records):
            time.sleep(0.05)
    records = [r for r in caplog.records if r.name == "attnviz.serve"]
    assert [r.getMessage().split(" after ")[0] for r in records] == ["POST /api/attention cancelled"]
    assert "the client went away" in records[0].getMessage() and not records[0].exc_info


# -- idle connections ---------------------------------------------------------------------------------
def test_idle_connections_cannot_lock_out_the_users_browser(port):
    """80 connections that say nothing, or half a request, then the user's request: answered at once."""
    idle = []
    try:
        for i in range(80):
            sock = socket.create_connection(("127.0.0.1", port), timeout=WAIT)
            if i % 2:
                sock.sendall(f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n".encode())  # never ends
            idle.append(sock)
        time.sleep(0.5)  # the server has accepted them all
        start = time.monotonic()
        status, _, data = ask(port, "GET", "/api/models", {})
        assert status == 200, data
        assert time.monotonic() - start < 5
    finally:
        for sock in idle:
            sock.close()


def test_a_connection_must_send_its_request_within_seconds_even_a_byte_at_a_time(start, models):
    quick = start(create_app(models), request_seconds=1.0)
    with (
        socket.create_connection(("127.0.0.1", quick), timeout=WAIT) as silent,
        socket.create_connection(("127.0.0.1", quick), timeout=WAIT) as trickle,
    ):
        request = f"GET /api/models HTTP/1.1\r\nHost: 127.0.0.1:{quick}\r\n".encode()
        closed = False
        for i in range(len(request)):  # one byte every 0.1 s: 5 s at most, bounded by the request
            try:
                trickle.sendall(request[i : i + 1])
            except OSError:
                closed = True
                break
            time.sleep(0.1)
        assert closed or closed_by_server(trickle, 2.0), "a client sending a byte at a time held its slot"
        assert closed_by_server(silent, 2.0), "a silent connection was kept"
    assert ask(quick, "GET", "/api/models", {})[0] == 200  # answered ones are not cut


# -- the JSON body -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def client(models):
    with TestClient(create_app(models), raise_server_exceptions=False) as c:
        yield c


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
        ('{"text": ' + "[" * 100_000 + "]" * 100_000 + "}", "nested too deeply"),
        ('{"text": null, "layer": 0, "head": 0}', "parameter 'text' must be a string, not null"),
        ('{"text": {"a": 1}, "layer": 0, "head": 0}', "parameter 'text' must be a string, not an object"),
        ('{"text": 42, "layer": 0, "head": 0}', "parameter 'text' must be a string, not a number"),
        ('{"text": true}', "parameter 'text' must be a string, not a boolean"),
        ('{"text": "hi", "layer": [0], "head": 0}', "parameter 'layer' must be a string, a number or a"),
        (
            '{"text": "hi", "model": null}',
            "parameter 'model' must be a string, a number or a boolean, not null",
        ),
    ],
)
def test_a_json_body_that_is_not_parameters_is_one_400_line(client, body, needle):
    r = client.post("/api/attention", content=body.encode(), headers={"content-type": "application/json"})
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert needle in error and "\n" not in error


def test_json_numbers_and_booleans_still_read_as_before(client):
    by_query = client.get("/api/attention", params={"text": TEXT, "layer": 1, "head": 2, "words": 1}).json()
    assert (
        client.post("/api/attention", json={"text": TEXT, "layer": 1, "head": 2.0, "words": True}).json()
        == by_query
    )
    assert client.post("/api/view", json={"text": TEXT, "lazy": False}).status_code == 200


# -- work given up -----------------------------------------------------------------------------------
def test_a_client_that_goes_away_drops_its_queued_head_work(start, models, monkeypatch, caplog):
    """Closing the browser while 8 heads are queued: the one running finishes, the others never run."""
    import attnviz.extraction

    real, runs = attnviz.extraction.extract, []

    def slow(*args, **kwargs):
        runs.append(kwargs.get("heads"))
        time.sleep(0.5)
        return real(*args, **kwargs)

    monkeypatch.setattr(attnviz.extraction, "extract", slow)
    lazy = start(create_app(models, cache_bytes=1000))  # no text fits: each head is its own forward pass
    socks = []
    with caplog.at_level(logging.INFO, logger="attnviz.serve"):
        for head in range(8):
            body = json.dumps({"text": TEXT, "layer": head // 4, "head": head % 4}).encode()
            sock = socket.create_connection(("127.0.0.1", lazy), timeout=WAIT)
            sock.sendall(
                f"POST /api/head HTTP/1.1\r\nHost: 127.0.0.1:{lazy}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\n\r\n".encode()
                + body
            )
            socks.append(sock)
        time.sleep(0.3)  # the first runs, the others wait for the model
        for sock in socks:
            sock.close()
        time.sleep(2.5)  # 8 x 0.5 s of work if the queue were kept
        assert len(runs) <= 2, runs
        lines = [r.getMessage() for r in caplog.records if r.name == "attnviz.serve"]
        assert sum("cancelled" in line and "the client went away" in line for line in lines) >= 6, lines
    monkeypatch.undo()
    assert (
        ask(lazy, "POST", "/api/head", {}, json.dumps({"text": TEXT, "layer": 0, "head": 1}).encode())[0]
        == 200
    )


# -- stopping ------------------------------------------------------------------------------------------
_SLOW_SERVER = """
import logging, sys, time
import attnviz.extraction
from attnviz.models.loading import load_model
from attnviz.server.app import bind, create_app, log, serve

real = attnviz.extraction.extract
def slow(*args, **kwargs):
    time.sleep(1.0)
    return real(*args, **kwargs)
attnviz.extraction.extract = slow
handler = logging.StreamHandler(sys.stderr)
log.addHandler(handler)
log.setLevel(logging.INFO)
sock = bind("127.0.0.1", 0)
app = create_app({"bert": load_model(sys.argv[1], device="cpu")})
print("serving", sock.getsockname()[1], file=sys.stderr, flush=True)
try:
    serve(app, sock)
except KeyboardInterrupt:
    pass
print("stopped", file=sys.stderr, flush=True)
"""


def _spawn(args: list[str]) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": SRC}
    return subprocess.Popen([sys.executable, *args], env=env, stderr=subprocess.PIPE, text=True)


def _until(proc: subprocess.Popen, prefix: str) -> str:
    for line in proc.stderr:  # bounded by the process: it prints this or ends
        if line.startswith(prefix):
            return line
    raise AssertionError(f"never printed {prefix!r}")


def _post(port: int, text: str) -> None:
    body = json.dumps({"text": text, "layer": 0, "head": 0}).encode()
    with contextlib.suppress(OSError, http.client.HTTPException):  # cut off by the stop
        ask(port, "POST", "/api/attention", {"Content-Type": "application/json"}, body)


@pytest.mark.slow  # a real `attnviz serve` process: imports torch and loads a model
@pytest.mark.parametrize("signals", [[signal.SIGINT], [signal.SIGINT, signal.SIGINT]])
def test_stopping_with_requests_in_flight_is_quiet_and_prompt(tiny_model_path, signals):
    """8 requests of 1 s each, one at a time: a stop cancels the queue, one log line per request."""
    proc = _spawn(["-c", _SLOW_SERVER, str(tiny_model_path("bert"))])
    try:
        port = int(_until(proc, "serving").split()[1])
        clients = [threading.Thread(target=_post, args=(port, f"{TEXT} {i}"), daemon=True) for i in range(8)]
        for t in clients:
            t.start()
        time.sleep(1.5)  # one answered, one running, six waiting
        sent = time.monotonic()
        for sig in signals:
            proc.send_signal(sig)
            time.sleep(0.2)
        stopped_after, rest = None, []
        for line in proc.stderr:
            rest.append(line)
            if line.startswith("stopped"):
                stopped_after = time.monotonic() - sent
        proc.wait(WAIT)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, rest  # SIGTERM too: not killed by the signal
    assert stopped_after is not None and stopped_after < 5, (stopped_after, rest)  # not 6 s of queued work
    lines = [line for line in rest[:-1] if line.strip()]
    assert all(" /api/attention " in line for line in lines), rest  # no traceback, no uvicorn line
    assert sum("cancelled after" in line and "the server is stopping" in line for line in lines) >= 4, rest
    assert len(lines) <= 8


@pytest.mark.slow  # a real `attnviz serve` process: imports torch and loads a model
def test_sigterm_stops_attnviz_serve_as_ctrl_c_does(tiny_model_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    args = ["serve", "--model", str(tiny_model_path("bert")), "--port", str(port)]
    proc = _spawn(["-c", "from attnviz.cli import main; main()", *args])
    try:
        _until(proc, "serving on")
        assert ask(port, "GET", "/api/models", {})[0] == 200
        proc.send_signal(signal.SIGTERM)
        rest = proc.communicate(timeout=30)[1]
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, (proc.returncode, rest)
    assert rest.strip().endswith("stopped") and "Traceback" not in rest


def test_a_second_model_that_fails_to_load_is_the_one_line(tiny_model_path, tmp_path):
    args = ["serve", "-m", str(tiny_model_path("bert")), "-m", str(tmp_path / "missing"), "--port", "0"]
    result = CliRunner().invoke(cli_app, args)
    assert result.exit_code == 2, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "missing" in lines[0], result.stderr
