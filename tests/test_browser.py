"""The explorer in a real browser: Debian's headless Chromium through selenium, network disabled.

Never skipped in CI: without chromium and chromedriver these tests fail when CI is set (they are
skipped, with the reason, only on a developer machine that lacks them).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import threading
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from test_views import INJECTIONS, injected, synthetic

from attnviz.views.html import render_html

pytestmark = pytest.mark.browser
CHROMIUM = os.environ.get("ATTNVIZ_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("ATTNVIZ_CHROMEDRIVER", "/usr/bin/chromedriver")
TEXT = "Emily always wanted to visit Paris so she took some French lessons."
ROOT_STATE = (
    "const r = document.getElementById('attnviz-root');"
    " return [r.dataset.view, r.dataset.layer, r.dataset.head]"
)
WAIT = 30  # seconds, an upper bound: every wait returns as soon as its condition holds


def chrome_options(width: int = 1200, height: int = 900):
    """Headless Chromium that can reach nothing but loopback (which Chromium never proxies): every
    other request goes to a proxy on a closed port, and no host name resolves."""
    from selenium import webdriver

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in (
        "--headless=new",
        "--no-sandbox",  # CI runs as root
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--proxy-server=http://127.0.0.1:9",
        "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
        f"--window-size={width},{height}",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
    ):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return opts


@pytest.fixture(scope="session")
def driver():
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not (Path(p).exists() or shutil.which(p))]
    if missing:
        message = f"browser tests need {' and '.join(missing)} (bash scripts/setup.sh installs them)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    d = webdriver.Chrome(service=Service(CHROMEDRIVER), options=chrome_options())
    yield d
    d.quit()


def wait(d, condition):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(d, WAIT).until(condition)


def open_page(d, tmp_path: Path, att, **options) -> None:
    path = tmp_path / "view.html"
    path.write_text(render_html(att, **options), encoding="utf-8")
    d.get(path.as_uri())
    wait(d, lambda d: d.execute_script("return !!document.querySelector('#attnviz-root[data-view]')"))


def js(d, code: str, *args):
    return d.execute_script(code, *args)


def errors(d) -> list:
    return [e for e in d.get_log("browser") if e["level"] == "SEVERE"]


def half(a: np.ndarray) -> np.ndarray:
    """What the page holds: the weights through float16."""
    return a.astype(np.float16).astype(np.float32)


def lines_expected(attn_layer: np.ndarray, heads, causal: bool = False, query: int | None = None) -> int:
    n = attn_layer.shape[-1]
    keep = np.ones((n, n), dtype=bool) if not causal else np.tril(np.ones((n, n), dtype=bool))
    total = 0
    for h in heads:
        ok = (half(attn_layer[h]) >= 0.01) & keep
        total += int(ok[query].sum() if query is not None else ok.sum())
    return total


def cell_colours(d) -> np.ndarray:
    """The matrix canvas, sampled near the top-left corner of each cell: [rows, cols, rgb]."""
    data = js(
        d,
        """
        const c = document.querySelector('canvas.av-matrix'), cs = +c.dataset.cell, n = c.width / cs;
        const img = c.getContext('2d').getImageData(0, 0, c.width, c.height).data, out = [];
        for (let a = 0; a < n; a++) for (let b = 0; b < n; b++) {
          const i = ((a * cs + 3) * c.width + b * cs + 3) * 4; out.push([img[i], img[i + 1], img[i + 2]]);
        }
        return [n, out];""",
    )
    n, cells = data
    return np.array(cells).reshape(int(n), int(n), 3)


# -- the HTML file, offline -------------------------------------------------------------------
def test_head_view_draws_a_line_per_weight_and_asks_the_network_nothing(driver, tmp_path):
    att = synthetic()
    open_page(driver, tmp_path, att)
    assert js(driver, "return document.querySelectorAll('svg.av-headview line').length") == lines_expected(
        att.attn[0], range(3)
    )
    labels = js(
        driver, "return [...document.querySelectorAll('text.av-tok[data-col=q]')].map(t => t.textContent)"
    )
    assert labels == att.labels
    assert js(driver, "return performance.getEntriesByType('resource').length") == 0
    assert not errors(driver)


def test_hovering_a_token_shows_only_its_lines_and_top_keys(driver, tmp_path):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    att = synthetic()
    open_page(driver, tmp_path, att)
    token = driver.find_element(By.CSS_SELECTOR, "text.av-tok[data-col=q][data-i='3']")
    ActionChains(driver).move_to_element(token).perform()
    shown = js(
        driver,
        "return [...document.querySelectorAll('svg.av-headview line')]"
        ".filter(l => l.style.display !== 'none').map(l => +l.dataset.q)",
    )
    assert shown and set(shown) == {3} and len(shown) == lines_expected(att.attn[0], range(3), query=3)
    keys = js(
        driver, "return [...document.querySelectorAll('.av-topkeys td.av-key')].map(t => t.textContent)"
    )
    for h in range(3):  # 3 keys listed per head, best first
        assert keys[3 * h] == att.labels[int(np.argmax(att.attn[0, h, 3]))]
    # toggling heads off changes what is drawn
    driver.find_element(By.CSS_SELECTOR, ".av-heads button[data-head='0']").click()
    driver.find_element(By.CSS_SELECTOR, ".av-heads button[data-head='2']").click()
    heads = js(
        driver,
        "return [...new Set([...document.querySelectorAll('svg.av-headview line')]"
        ".map(l => l.dataset.head))]",
    )
    assert heads == ["1"]
    assert js(driver, "return document.querySelectorAll('svg.av-headview line').length") == lines_expected(
        att.attn[0], [1]
    )


def test_matrix_view_colours_every_cell_and_shows_the_causal_mask(driver, tmp_path):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    att = synthetic(causal=True)
    open_page(driver, tmp_path, att)
    driver.find_element(By.CSS_SELECTOR, "button[data-view=matrix]").click()
    n = att.n_tokens
    assert js(driver, "return +document.querySelector('canvas.av-matrix').dataset.cells") == n * n
    cells = cell_colours(driver)
    assert cells.shape == (n, n, 3)
    upper = np.triu(np.ones((n, n), dtype=bool), 1)
    assert (cells[upper] == [217, 217, 217]).all()  # masked, not drawn as zero
    lower = cells[~upper]
    assert not (lower == [217, 217, 217]).all(axis=1).any()
    # auto scale: the largest visible weight gets the top colour of viridis
    a, b = np.unravel_index(np.argmax(np.where(upper, -1, att.attn[0, 0])), (n, n))
    assert np.abs(cells[a, b] - [253, 231, 37]).max() <= 2
    labels = js(driver, "return [...document.querySelectorAll('.av-rows div')].map(d => d.textContent)")
    assert labels == att.labels
    # hovering a cell shows its value; a masked cell says so
    canvas = driver.find_element(By.CSS_SELECTOR, "canvas.av-matrix")
    cs = int(canvas.get_attribute("data-cell"))
    for a, b in ((4, 2), (1, 5)):
        x, y = b * cs + cs // 2 - n * cs // 2, a * cs + cs // 2 - n * cs // 2
        ActionChains(driver).move_to_element_with_offset(canvas, x, y).perform()
        tip = js(driver, "return document.querySelector('.av-tip').textContent")
        value = "masked (future token)" if b > a else f"{half(att.attn[0, 0])[a, b]:.3f}"
        assert tip == f"{att.labels[a]} → {att.labels[b]}: {value}"
    Select(driver.find_element(By.CSS_SELECTOR, "select.av-layer")).select_by_value("1")
    assert js(driver, "return document.getElementById('attnviz-root').dataset.layer") == "1"
    assert not np.array_equal(cell_colours(driver), cells)


def test_model_view_thumbnails_open_in_the_matrix_view(driver, tmp_path):
    from selenium.webdriver.common.by import By

    att = synthetic(layers=2, heads=3)
    open_page(driver, tmp_path, att, view="model")
    thumbs = js(
        driver,
        "return [...document.querySelectorAll('.av-thumb')].map(t => t.dataset.layer + ':' + t.dataset.head)",
    )
    assert thumbs == [f"{layer}:{head}" for layer in range(2) for head in range(3)]
    driver.find_element(By.CSS_SELECTOR, ".av-thumb[data-layer='1'][data-head='2']").click()
    root = js(driver, ROOT_STATE)
    assert root == ["matrix", "1", "2"]
    # the drawn cells follow that head's weights: the brightest cell of each row is its argmax
    cells = cell_colours(driver).sum(-1)
    brightest = cells.argmax(axis=1)
    np.testing.assert_array_equal(brightest, half(att.attn[1, 2]).argmax(axis=1))


def test_hiding_special_tokens_renormalises_and_words_merge(driver, tmp_path):
    from selenium.webdriver.common.by import By

    att = synthetic()
    open_page(driver, tmp_path, att, view="matrix")
    driver.find_element(By.CSS_SELECTOR, "input.av-special").click()
    assert js(driver, "return +document.querySelector('canvas.av-matrix').dataset.cells") == 25
    shown = np.array(
        js(
            driver,
            "const e = document.getElementById('attnviz-root').attnviz; return Array.from(e.matrix(0, 0))",
        )
    )
    inner = half(att.attn[0, 0])[1:-1, 1:-1]
    np.testing.assert_allclose(shown.reshape(5, 5), inner / inner.sum(1, keepdims=True), atol=1e-5)
    driver.find_element(By.CSS_SELECTOR, "input.av-special").click()
    driver.find_element(By.CSS_SELECTOR, "input.av-words").click()
    labels = js(driver, "return [...document.querySelectorAll('.av-rows div')].map(d => d.textContent)")
    assert labels == att.to_words().labels
    assert js(driver, "return document.getElementById('attnviz-root').dataset.level") == "word"


def test_injected_text_runs_nothing_and_shows_literally(driver, tmp_path):
    from selenium.common.exceptions import NoAlertPresentException

    att = injected()
    open_page(driver, tmp_path, att)
    with pytest.raises(NoAlertPresentException):
        driver.switch_to.alert.text  # noqa: B018
    assert driver.title == f"attnviz · {att.model} · {att.text[:60]}"  # not 'x'
    assert js(driver, "return document.querySelectorAll('img, iframe, b, i').length") == 0
    labels = js(
        driver, "return [...document.querySelectorAll('text.av-tok[data-col=q]')].map(t => t.textContent)"
    )
    assert labels == att.labels and INJECTIONS[0] in labels and INJECTIONS[1] in labels
    assert js(driver, "return document.querySelector('.av-title').textContent").startswith("<i>m</i>")
    assert js(driver, "return document.querySelectorAll('script').length") == 2
    assert not errors(driver)


# -- attnviz serve ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def served(tiny_model_path):
    """The real uvicorn server on a free loopback port, in a thread; stopped after the module."""
    from attnviz.models import load_model
    from attnviz.views.server import create_app, uvicorn_server

    models = {"bert": load_model(str(tiny_model_path("bert")), device="cpu")}
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)  # connections queue here until uvicorn accepts them: no start-up race
    server = uvicorn_server(create_app(models), "127.0.0.1", sock.getsockname()[1])
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{sock.getsockname()[1]}", models["bert"]
    server.should_exit = True
    thread.join(WAIT)
    sock.close()
    assert not thread.is_alive()


def get_json(url: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(url, timeout=WAIT) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_served_page_draws_a_typed_text_and_ranks_clicked_words(driver, served):
    from selenium.webdriver.common.by import By

    from attnviz.extraction import extract
    from attnviz.search import find_heads

    base, model = served
    driver.get(base + "/")
    wait(driver, lambda d: d.execute_script("return document.body.dataset.models") == "1")
    box = driver.find_element(By.ID, "av-input")
    box.clear()
    box.send_keys(TEXT)
    driver.find_element(By.ID, "av-submit").click()
    wait(
        driver,
        lambda d: d.execute_script("return document.querySelectorAll('svg.av-headview line').length") > 0,
    )
    att = extract(TEXT, model)
    labels = js(
        driver, "return [...document.querySelectorAll('text.av-tok[data-col=q]')].map(t => t.textContent)"
    )
    assert labels == att.labels
    assert js(driver, "return document.querySelectorAll('svg.av-headview line').length") == lines_expected(
        att.attn[0], range(4)
    )
    words = {w.text.lower(): w for w in driver.find_elements(By.CSS_SELECTOR, "#av-text span.av-word")}
    words["paris"].click()
    words["french"].click()
    wait(driver, lambda d: d.execute_script("return document.querySelectorAll('tr.av-row').length") > 0)
    best = find_heads(att, "paris", "french", top=10).ranking
    rows = js(
        driver,
        "return [...document.querySelectorAll('tr.av-row')].map(r => [...r.cells].map(c => c.textContent))",
    )
    assert [(int(r[1]), int(r[2])) for r in rows] == [(h.layer, h.head) for h in best]
    driver.find_elements(By.CSS_SELECTOR, "tr.av-row")[0].click()
    root = js(driver, ROOT_STATE)
    assert root == ["matrix", str(best[0].layer), str(best[0].head)]
    assert not errors(driver)


def test_served_api_equals_extract_and_refuses_bad_requests(served):
    from attnviz.extraction import extract

    base, model = served
    q = urllib.parse.urlencode({"text": TEXT, "layer": 1, "head": 3})
    status, body = get_json(f"{base}/api/attention?{q}")
    assert status == 200
    np.testing.assert_allclose(np.array(body["attention"]), extract(TEXT, model).head(1, 3), atol=1e-6)
    for params, code in (
        ({"text": TEXT, "layer": 9, "head": 0}, 400),
        ({"text": TEXT, "model": "gpt9"}, 404),
        ({"layer": 0, "head": 0}, 400),
    ):
        status, body = get_json(f"{base}/api/attention?{urllib.parse.urlencode(params)}")
        assert status == code and set(body) == {"error"} and "\n" not in body["error"]
    status, body = get_json(
        f"{base}/api/find-head?{urllib.parse.urlencode({'text': TEXT, 'a': 'rome', 'b': 'paris'})}"
    )
    assert status == 404 and "rome" in body["error"]
