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
    """What the page holds: the weights through its encoding (any leading dimensions)."""
    from attnviz.views.html import decode_weights, encode_weights

    a = np.asarray(a, dtype=np.float32)
    flat = a.reshape(1, -1, *a.shape[-2:])
    return decode_weights(encode_weights(flat), flat.shape).reshape(a.shape)


def names(labels) -> list[str]:
    """Labels as the page writes them: with their positions."""
    return [f"{t}#{i}" for i, t in enumerate(labels)]


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
    for h in range(3):  # 3 keys listed per head, best first, with their positions
        best = int(np.argmax(half(att.attn[0, h])[3]))
        assert keys[3 * h] == f"{att.labels[best]}#{best}"
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
    assert labels == names(att.labels)
    # hovering a cell shows its value; a masked cell says so
    canvas = driver.find_element(By.CSS_SELECTOR, "canvas.av-matrix")
    cs = int(canvas.get_attribute("data-cell"))
    for a, b in ((4, 2), (1, 5)):
        x, y = b * cs + cs // 2 - n * cs // 2, a * cs + cs // 2 - n * cs // 2
        ActionChains(driver).move_to_element_with_offset(canvas, x, y).perform()
        tip = js(driver, "return document.querySelector('.av-tip').textContent")
        value = "masked (future token)" if b > a else f"{half(att.attn[0, 0])[a, b]:.3f}"
        assert tip == f"{att.labels[a]}#{a} → {att.labels[b]}#{b}: {value}"
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
    merged = att.to_words()
    assert labels == names(merged.labels)
    assert js(driver, "return document.getElementById('attnviz-root').dataset.level") == "word"
    words = np.array(
        js(driver, "return Array.from(document.getElementById('attnviz-root').attnviz.matrix(1, 2))")
    )
    np.testing.assert_allclose(words.reshape(merged.attn.shape[-2:]), merged.attn[1, 2], atol=0.02)


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


def test_the_notebook_iframe_decodes_and_draws_in_its_sandbox(driver, tmp_path):
    """A sandboxed srcdoc iframe has an opaque origin: the page still inflates its weights there."""
    from selenium.webdriver.common.by import By

    from attnviz.views.notebook import iframe

    att = synthetic()
    path = tmp_path / "notebook.html"
    path.write_text(f"<!DOCTYPE html><html><body>{iframe(render_html(att, view='matrix'))}</body></html>")
    driver.get(path.as_uri())
    driver.switch_to.frame(driver.find_element(By.TAG_NAME, "iframe"))
    try:
        wait(driver, lambda d: d.execute_script("return !!document.querySelector('canvas.av-matrix')"))
        assert js(driver, "return +document.querySelector('canvas.av-matrix').dataset.cells") == 49
    finally:
        driver.switch_to.default_content()
    assert not errors(driver)


# -- long texts ---------------------------------------------------------------------------------
def long_page(n: int, causal: bool = False, seed: int = 1, sink: float = 5.0):
    """An n-token Attention (1 layer, 2 heads) shaped like a model's: a sink column, strong keys."""
    from dataclasses import replace

    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(1, 2, n, n)).astype(np.float32) * 2.5
    logits[..., 0] += sink
    if causal:
        logits = np.where(np.tril(np.ones((n, n), dtype=bool)), logits, -np.inf)
    attn = np.exp(logits - logits.max(-1, keepdims=True))
    words = [f"w{i}" for i in range(n - 2)]
    text = " ".join(words)
    spans, at = [], 0
    for w in words:
        spans.append((at, at + len(w)))
        at += len(w) + 1
    return replace(
        synthetic(causal=causal),
        text=text,
        tokens=("[CLS]", *words, "[SEP]"),
        spans=((0, 0), *spans, (0, 0)),
        word_ids=(None, *range(n - 2), None),
        words=tuple(words),
        special=(True, *([False] * (n - 2)), True),
        layers=(0,),
        heads=(0, 1),
        attn=(attn / attn.sum(-1, keepdims=True)).astype(np.float32),
    )


def root_attr(d, name: str) -> str:
    return js(d, f"return document.getElementById('attnviz-root').dataset.{name}")


def test_matrix_zooms_pans_labels_and_focuses_a_long_text(driver, tmp_path):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.actions.wheel_input import ScrollOrigin
    from selenium.webdriver.common.by import By

    att = long_page(300)
    open_page(driver, tmp_path, att, view="matrix")
    canvas = driver.find_element(By.CSS_SELECTOR, "canvas.av-matrix")
    assert canvas.get_attribute("data-span") == "300"
    assert js(driver, "return document.querySelectorAll('.av-rows div').length") == 0  # 1-px cells: no labels
    # the wheel zooms in around the pointer, the buttons zoom, a drag pans
    ActionChains(driver).scroll_from_origin(ScrollOrigin.from_element(canvas), 0, -200).perform()
    wait(
        driver,
        lambda d: int(d.find_element(By.CSS_SELECTOR, "canvas.av-matrix").get_attribute("data-span")) < 300,
    )
    js(driver, "document.getElementById('attnviz-root').attnviz.zoomTo(100, 120, 40)")
    canvas = driver.find_element(By.CSS_SELECTOR, "canvas.av-matrix")
    assert [canvas.get_attribute(k) for k in ("data-r0", "data-c0", "data-span")] == ["100", "120", "40"]
    rows = js(driver, "return [...document.querySelectorAll('.av-rows div')].map(d => d.textContent)")
    cols = js(driver, "return [...document.querySelectorAll('.av-cols div')].map(d => d.textContent)")
    assert rows == names(att.labels)[100:140] and cols == names(att.labels)[120:160]
    cells = cell_colours(driver).sum(-1)  # the zoomed window, cell by cell
    window = half(att.attn[0, 0])[100:140, 120:160]
    np.testing.assert_array_equal(cells.argmax(axis=1), window.argmax(axis=1))
    ActionChains(driver).click_and_hold(canvas).move_by_offset(-140, -70).release().perform()
    canvas = driver.find_element(By.CSS_SELECTOR, "canvas.av-matrix")
    assert int(canvas.get_attribute("data-r0")) > 100 and int(canvas.get_attribute("data-c0")) > 120
    driver.find_element(By.CSS_SELECTOR, ".av-zoom button[data-zoom=reset]").click()
    assert driver.find_element(By.CSS_SELECTOR, "canvas.av-matrix").get_attribute("data-span") == "300"
    # focus: a row label's weights as bars, best first, with tokens and positions
    js(driver, "document.getElementById('attnviz-root').attnviz.zoomTo(0, 0, 30)")
    driver.find_element(By.CSS_SELECTOR, ".av-rows div[data-i='7']").click()
    bars = js(
        driver,
        "return [...document.querySelectorAll('.av-barrow')].map(r => [r.children[0].textContent,"
        " +r.children[2].textContent])",
    )
    row = half(att.attn[0, 0])[7]
    best = np.argsort(-row, kind="stable")[:20]
    assert [b[0] for b in bars] == [f"{att.labels[j]}#{j}" for j in best]
    np.testing.assert_allclose([b[1] for b in bars], row[best], atol=5e-4)
    driver.find_element(By.CSS_SELECTOR, ".av-cols div[data-i='3']").click()
    assert js(driver, "return document.querySelector('.av-bars').dataset.axis") == "k"
    col = half(att.attn[0, 0])[:, 3]
    first = js(driver, "return document.querySelector('.av-barrow').children[0].textContent")
    assert first == f"{att.labels[int(col.argmax())]}#{int(col.argmax())}"
    # the head view of 300 tokens draws all of a hovered token's lines, with positions in the list
    driver.find_element(By.CSS_SELECTOR, "button[data-view=head]").click()
    assert js(driver, "return document.querySelector('svg.av-headview').dataset.lines") == "strongest"
    token = driver.find_element(By.CSS_SELECTOR, "text.av-tok[data-col=q][data-i='5']")
    ActionChains(driver).move_to_element(token).perform()
    drawn = js(driver, "return [...document.querySelectorAll('svg.av-headview line')].map(l => +l.dataset.q)")
    assert set(drawn) == {5} and len(drawn) == lines_expected(att.attn[0], range(2), query=5)
    keys = js(
        driver, "return [...document.querySelectorAll('.av-topkeys td.av-key')].map(t => t.textContent)"
    )
    best = int(np.argmax(half(att.attn[0, 0])[5]))
    assert keys[0] == f"{att.labels[best]}#{best}"
    # the model view: thumbnails capped at 64 px, max-pooled, drawn lazily
    driver.find_element(By.CSS_SELECTOR, "button[data-view=model]").click()
    wait(
        driver,
        lambda d: d.execute_script("return document.getElementById('attnviz-root').dataset.thumbs") == "2",
    )
    assert js(driver, "return [...document.querySelectorAll('.av-thumb canvas')].map(c => c.width)") == [
        64,
        64,
    ]
    assert not errors(driver)


def test_sink_aware_auto_log_and_max_scales(driver, tmp_path):
    from dataclasses import replace

    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    n, rng = 40, np.random.default_rng(3)
    attn = np.zeros((1, 2, n, n), dtype=np.float32)
    attn[..., 0, 0] = 1.0
    for a in range(1, n):  # the first key takes 70% of every row, the rest is spread over the others
        attn[..., a, 0] = 0.7
        attn[..., a, 1 : a + 1] = 0.3 * rng.dirichlet(np.ones(a) * 0.3, size=2)
    att = replace(long_page(n, causal=True), attn=attn)
    open_page(driver, tmp_path, att, view="matrix")
    shown = half(att.attn[0, 0])
    masked = np.triu(np.ones(shown.shape, dtype=bool), 1)
    rest = np.where(masked, 0, shown)[:, 1:]
    vmax = float(js(driver, "return document.querySelector('canvas.av-matrix').dataset.vmax"))
    assert vmax == pytest.approx(rest.max(), abs=1e-4) and vmax < 0.9 * shown[:, 0].max()
    legend = js(driver, "return document.querySelector('.av-legend').textContent")
    assert "sink \u201c[CLS]#0\u201d left out" in legend
    # cells of the sink column above the top get the top colour; the rest spread over the scale
    cells = cell_colours(driver)
    assert (np.abs(cells[5:, 0] - [253, 231, 37]).max(axis=-1) <= 2).all()
    scale = Select(driver.find_element(By.CSS_SELECTOR, "select.av-scale"))
    scale.select_by_value("max")
    assert float(
        js(driver, "return document.querySelector('canvas.av-matrix').dataset.vmax")
    ) == pytest.approx(shown[~masked].max(), abs=1e-4)
    assert js(driver, "return document.querySelector('.av-legend').dataset.sink") == ""
    scale.select_by_value("log")
    assert "log scale" in js(driver, "return document.querySelector('.av-legend').textContent")
    lin = cell_colours(driver)
    assert lin.std() > 0
    # an encoder whose [CLS] holds the maximum is treated the same way; one whose [CLS] does not, not
    encoder = long_page(40)
    open_page(driver, tmp_path, encoder, view="matrix")
    assert js(driver, "return document.querySelector('.av-legend').dataset.sink") == "[CLS]#0"
    flat = encoder.attn.copy()
    flat[..., 0] = 0.001
    open_page(driver, tmp_path, replace(encoder, attn=flat / flat.sum(-1, keepdims=True)), view="matrix")
    assert js(driver, "return document.querySelector('.av-legend').dataset.sink") == ""
    assert not errors(driver)


def test_text_view_colours_each_token_by_the_selected_tokens_attention(driver, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    att = long_page(60)
    open_page(driver, tmp_path, att, view="text")
    box = driver.find_element(By.CSS_SELECTOR, ".av-textview")
    assert box.text.replace("[CLS]", "").replace("[SEP]", "").strip() == att.text
    driver.find_element(By.CSS_SELECTOR, ".av-t[data-j='12']").click()
    weights = js(driver, "return [...document.querySelectorAll('.av-t')].map(t => +t.dataset.w)")
    np.testing.assert_allclose(weights, half(att.attn[0, 0])[12], atol=5e-4)
    alpha = js(  # rgba(255, 140, 0, a); rgb(...) when a is 1
        driver,
        "return [...document.querySelectorAll('.av-t')].map(t => {"
        " const c = getComputedStyle(t).backgroundColor;"
        " return c.startsWith('rgba') ? +c.split(',')[3].replace(')', '') : 1; })",
    )
    row = half(att.attn[0, 0])[12][1:]  # without the sink, the darkest token is the row's best
    assert int(np.argmax(alpha[1:])) == int(np.argmax(row))
    Select(driver.find_element(By.CSS_SELECTOR, "select.av-axis")).select_by_value("k")
    weights = js(driver, "return [...document.querySelectorAll('.av-t')].map(t => +t.dataset.w)")
    np.testing.assert_allclose(weights, half(att.attn[0, 0])[:, 12], atol=5e-4)
    Select(driver.find_element(By.CSS_SELECTOR, "select.av-head")).select_by_value("1")
    weights = js(driver, "return [...document.querySelectorAll('.av-t')].map(t => +t.dataset.w)")
    np.testing.assert_allclose(weights, half(att.attn[0, 1])[:, 12], atol=5e-4)
    assert not errors(driver)


# -- attnviz serve ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def served(tiny_model_path):
    """The real uvicorn server on a free loopback port, in a thread; stopped after the module."""
    from attnviz.models.loading import load_model
    from attnviz.server.app import create_app, uvicorn_server

    models = {"bert": load_model(str(tiny_model_path("bert")), device="cpu")}
    # a cache of 60 kB holds every head of the short test text (2 layers x 4 heads), not of LONG

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)  # connections queue here until uvicorn accepts them: no start-up race
    server = uvicorn_server(create_app(models, cache_bytes=60_000), "127.0.0.1", sock.getsockname()[1])
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
    from attnviz.heads.search import find_heads

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


LONG = " ".join(f"Paris{i} is far" for i in range(20))  # over 60 tokens: cut to the tiny model's 64


def test_a_long_served_text_is_fetched_one_head_at_a_time(driver, served):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    from attnviz.extraction import extract

    base, model = served
    driver.get(base + "/")
    wait(driver, lambda d: d.execute_script("return document.body.dataset.models") == "1")
    driver.execute_script("document.getElementById('av-input').value = arguments[0]", LONG)
    driver.find_element(By.ID, "av-submit").click()
    status = lambda d: d.execute_script("return document.getElementById('av-status').textContent")  # noqa: E731
    wait(driver, lambda d: "tokens" in status(d) or "error" in status(d))
    assert "truncate=1" in status(driver)  # the tiny model takes 64 tokens: the API's own words
    driver.find_element(By.ID, "av-truncate").click()  # cut it to 64 tokens
    driver.find_element(By.ID, "av-submit").click()
    drawn = "return !!document.querySelector('canvas.av-matrix') || !!document.querySelector('.av-error')"
    wait(driver, lambda d: d.execute_script(drawn))
    assert "one at a time" in status(driver), status(driver)
    assert js(driver, "return document.querySelectorAll('.av-error').length") == 0, root_attr(driver, "view")
    att = extract(LONG, model, truncate=True)
    assert att.n_tokens * att.n_tokens * 4 * 8 > 60_000  # too big for the cache: served lazily
    ex = "document.getElementById('attnviz-root').attnviz"
    got = np.array(js(driver, f"return Array.from({ex}.matrix(0, 0))")).reshape(att.n_tokens, -1)
    np.testing.assert_allclose(got, half(att.attn[0, 0]), atol=1e-3)
    Select(driver.find_element(By.CSS_SELECTOR, "select.av-layer")).select_by_value("1")
    Select(driver.find_element(By.CSS_SELECTOR, "select.av-head")).select_by_value("3")
    wait(driver, lambda d: d.execute_script(f"return {ex}.store.has(1, 3)"))
    wait(driver, lambda d: d.execute_script("return !!document.querySelector('canvas.av-matrix')"))
    got = np.array(js(driver, f"return Array.from({ex}.matrix(1, 3))")).reshape(att.n_tokens, -1)
    np.testing.assert_allclose(got, half(att.attn[1, 3]), atol=1e-3)
    sent = js(driver, f"return {ex}.store.sent")  # what was fetched: the shown heads, and their layers
    assert "1,0" in sent and "1,3" in sent and {k.split(",")[0] for k in sent} == {"0", "1"}
    assert sent.index("1,0") < sent.index("1,3") and len(set(sent)) == len(sent)
    assert [e for e in errors(driver) if "status of 413" not in e["message"]] == []  # the 413 was ours


# -- text beyond ASCII: emoji (two UTF-16 units), CJK, combining marks ---------------------------
UNICODE_TEXT = "Smile 😀 then walk. 巴黎 Cafe\u0301 👩\u200d👧 ok"  # fits the tiny models' 64 tokens


def text_view_pieces(d) -> list[list]:
    """The text view's tokens as drawn: [index, text, boxed (a special or overlapping token)]."""
    return js(
        d,
        "return [...document.querySelectorAll('.av-textview .av-t')].map(t =>"
        " [+t.dataset.j, t.textContent, t.classList.contains('av-special-tok')])",
    )


def assert_text_view_reads_the_text(d, att) -> None:
    pieces = text_view_pieces(d)
    assert [p[0] for p in pieces] == list(range(att.n_tokens))
    drawn = [p for p in pieces if not p[2]]
    assert drawn, pieces
    for j, text, _ in drawn:  # each token shows exactly its own characters (spans count code points)
        start, end = att.spans[j]
        assert text == att.text[start:end], (j, text, att.tokens[j])
    box = js(
        d,
        "const b = document.querySelector('.av-textview').cloneNode(true);"
        " b.querySelectorAll('.av-special-tok').forEach(e => e.remove()); return b.textContent",
    )
    assert box == att.text
    assert "\ufffd" not in box


@pytest.mark.parametrize("arch", ["gpt2", "bert"])
def test_text_view_keeps_emoji_cjk_and_combining_marks_in_place(driver, tmp_path, tiny_model_path, arch):
    from attnviz.extraction import extract
    from attnviz.models.loading import load_model

    att = extract(UNICODE_TEXT, load_model(str(tiny_model_path(arch)), device="cpu"))
    open_page(driver, tmp_path, att, view="text")
    assert_text_view_reads_the_text(driver, att)
    assert not errors(driver)


def test_text_view_of_words_beyond_the_bmp(driver, tmp_path):
    """Word level too: the units' spans, merged from the tokens', land on the same characters."""
    from dataclasses import replace

    words = ("Smile", "😀", "then", "𠀀𠀁", "walk", "Cafe\u0301", "巴黎", "👩\u200d👧", "ok")
    text = " ".join(words)
    spans, at = [], 0
    for w in words:
        half_way = at + max(1, len(w) // 2)
        spans += [(at, half_way), (half_way, at + len(w))] if len(w) > 1 else [(at, at + 1)]
        at += len(w) + 1
    pieces = tuple(text[a:b] for a, b in spans)
    word_ids = tuple(i for i, w in enumerate(words) for _ in range(2 if len(w) > 1 else 1))
    att = synthetic(tokens=("[CLS]", *pieces, "[SEP]"), special=(True, *([False] * len(pieces)), True))
    att = replace(
        att,
        text=text,
        spans=((0, 0), *spans, (0, 0)),
        word_ids=(None, *word_ids, None),
        words=words,
    )
    open_page(driver, tmp_path, att, view="text")
    assert_text_view_reads_the_text(driver, att)
    from selenium.webdriver.common.by import By

    driver.find_element(By.CSS_SELECTOR, "input.av-words").click()
    got = [p[1] for p in text_view_pieces(driver) if not p[2]]
    assert got == list(words)
    assert not errors(driver)


# -- the generation page (`generate --view`) ------------------------------------------------------
CONTINUATION = (
    " The password is tiger, and the door opens at nine.\n\n"
    "Then:\n  1. walk to the park 😀\n  2. read 巴黎 in the café (Cafe\u0301)\n"
    "  3. https://example.org/a/very/long/path/without/any/spaces/at/all/to/break/the/line/on\n"
    "Done. The cat sat on the mat, and the cat slept while the bird sang in the garden."
)


def fake_generation(tokenizer, prompt: str, continuation: str, seed: int = 0):
    """A Generation built from a real tokenizer's pieces and random causal rows (no model runs)."""
    from attnviz.generation.run import Generation
    from attnviz.tokens import token_labels

    p_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    c_ids = tokenizer(continuation, add_special_tokens=False)["input_ids"]
    ids = [*p_ids, *c_ids]
    labels, _ = token_labels(tokenizer, ids)
    p, n, w = len(p_ids), len(c_ids), len(ids)
    rng = np.random.default_rng(seed)
    attn = rng.random((1, 2, n, w)).astype(np.float32) ** 3
    attn *= np.arange(w)[None, None, None, :] < (p + np.arange(n))[None, None, :, None]
    return Generation(
        model="fake",
        kind="decoder",
        prompt=prompt,
        text=tokenizer.decode(c_ids, skip_special_tokens=True),
        tokens=tuple(labels),
        token_ids=tuple(ids),
        special=tuple(False for _ in ids),
        prompt_length=p,
        layers=(0,),
        heads=(0, 1),
        attn=attn / attn.sum(-1, keepdims=True),
    )


def test_generation_page_keeps_the_texts_layout_and_fits_its_width(driver, tmp_path, tiny_model_path):
    from selenium.webdriver.common.by import By
    from transformers import AutoTokenizer

    from attnviz.views.generation import write_generation_html

    tokenizer = AutoTokenizer.from_pretrained(str(tiny_model_path("gpt2")))
    gen = fake_generation(tokenizer, "Emily said:", CONTINUATION)
    assert gen.n_new >= 100 and gen.text == CONTINUATION
    path = write_generation_html(gen, tmp_path / "gen.html")
    driver.get(path.as_uri())
    wait(driver, lambda d: d.execute_script("return document.querySelectorAll('.gen-tok').length") > 0)
    shown = js(
        driver,
        "const b = document.querySelectorAll('.gen-text')[0].cloneNode(true);"
        " b.querySelectorAll('.gen-box').forEach(e => e.remove()); return b.textContent",
    )
    assert shown == gen.prompt + gen.text  # spaces, line breaks, emoji and accents as written
    assert js(driver, "return document.querySelectorAll('.gen-box').length") == 0
    assert js(driver, "return document.querySelectorAll('.gen-tok').length") == len(gen.tokens)
    width = js(driver, "const s = document.scrollingElement; return [s.scrollWidth, s.clientWidth]")
    assert width[0] <= width[1], width  # wraps: no sideways scrolling
    lines = js(driver, "return document.querySelectorAll('.gen-text')[0].getClientRects()[0].height")
    assert lines > 8 * 15  # many lines, not one
    # hovering a new token still shows what its step read
    token = driver.find_elements(By.CSS_SELECTOR, ".gen-tok.gen-new")[40]
    token.click()
    assert "gen-query" in token.get_attribute("class")
    assert len(driver.find_elements(By.CSS_SELECTOR, ".gen-top li")) == 5
    assert not errors(driver)


# -- a long text opens on attention, and a served one draws each head as it comes -----------------
def strongest_lines(att, layer: int = 0, per_token: int = 2) -> set[tuple[int, int, int]]:
    """(head, query, key) of the lines a long head view draws at rest: each query's strongest key
    in each head, the first key (a sink) left out, the strongest per_token * n of those."""
    rows = []
    for h in range(att.attn.shape[1]):
        w = half(att.attn[layer, h]).copy()
        w[:, 0] = -1
        if att.causal:
            w[np.triu(np.ones(w.shape, dtype=bool), 1)] = -1
        for q in range(w.shape[0]):
            if w[q].max() >= 0.01:
                rows.append((float(w[q].max()), h, q, int(w[q].argmax())))
    rows.sort(key=lambda r: -r[0])
    return {r[1:] for r in rows[: per_token * att.n_tokens]}


@pytest.mark.parametrize("causal", [False, True])
def test_a_long_head_view_opens_on_its_strongest_lines(driver, tmp_path, causal):
    att = long_page(240, causal=causal)
    open_page(driver, tmp_path, att)  # the head view, as `attnviz view` opens by default
    drawn = js(
        driver,
        "return [...document.querySelectorAll('svg.av-headview line')]"
        ".map(l => [+l.dataset.head, +l.dataset.q, +l.dataset.k])",
    )
    assert drawn, "a long page opened on no line at all"
    expected = strongest_lines(att)
    assert len(drawn) == len(expected) and len({tuple(x) for x in drawn} ^ expected) <= 4  # ties
    assert all(k != 0 for _, _, k in drawn)  # the sink column is left out
    assert "strongest lines" in js(driver, "return document.querySelector('.av-side .av-note').textContent")
    assert not errors(driver)


def test_a_served_long_text_draws_the_shown_head_first_and_the_others_behind(driver, tmp_path):
    """The explorer as `serve` mounts it for a long text (no weights, the first head inline, the
    others from fetchHead), with fetches the test answers one by one."""
    from attnviz.views.html import encode_weights, page_meta

    att = replace_heads(long_page(150), 6)
    open_page(driver, tmp_path, att)
    data = {**page_meta(att), "lazy": True, "head0": encode_weights(att.attn[:1, :1]), "view": "matrix"}
    heads = {f"0,{h}": encode_weights(att.attn[:1, h : h + 1]) for h in range(6)}
    js(
        driver,
        "window.asked = []; window.answers = {};"
        " const root = document.createElement('div'); root.id = 'lazy'; document.body.appendChild(root);"
        " window.lazy = AttnViz.mount(root, arguments[0], {fetchHead: (l, h) => new Promise(ok => {"
        "   asked.push(l + ',' + h); answers[l + ',' + h] = ok; })});",
        data,
    )
    wait(driver, lambda d: d.execute_script("return !!document.querySelector('#lazy canvas.av-matrix')"))
    asked = lambda d: d.execute_script("return window.asked")  # noqa: E731

    def answer(key: str) -> None:
        js(driver, "answers[arguments[0]](arguments[1])", key, heads[key])

    wait(driver, lambda d: asked(d) == ["0,1"])  # the rest of the layer, one at a time, behind
    js(driver, "lazy.set({head: 4})")  # a head shown now goes before the background ones
    assert "loading layer 0, head 4" in js(driver, "return document.querySelector('#lazy').textContent")
    answer("0,1")
    wait(driver, lambda d: asked(d) == ["0,1", "0,4"])
    answer("0,4")
    wait(driver, lambda d: d.execute_script("return !!document.querySelector('#lazy canvas.av-matrix')"))
    got = np.array(js(driver, "return Array.from(lazy.matrix(0, 4))")).reshape(150, 150)
    np.testing.assert_allclose(got, half(att.attn[0, 4]), atol=1e-3)
    # the head view draws the heads it has (0, 1, 4) at once and says how many are still coming
    js(driver, "lazy.set({view: 'head'})")
    lines = js(
        driver, "return [...new Set([...document.querySelectorAll('#lazy line')].map(l => l.dataset.head))]"
    )
    assert sorted(lines) == ["0", "1", "4"]
    assert "loading 3 more heads of layer 0" in js(
        driver, "return document.querySelector('#lazy').textContent"
    )
    for key in ("0,2", "0,3", "0,5"):
        wait(driver, lambda d, key=key: asked(d)[-1] == key)
        answer(key)
    wait(
        driver,
        lambda d: d.execute_script("return document.querySelectorAll('#lazy .av-loading').length") == 0,
    )
    lines = js(
        driver, "return [...new Set([...document.querySelectorAll('#lazy line')].map(l => l.dataset.head))]"
    )
    assert sorted(lines) == [str(h) for h in range(6)]
    assert asked(driver) == ["0,1", "0,4", "0,2", "0,3", "0,5"]  # each head once
    # another text mounted in its place: the one it replaces sends no more requests
    js(
        driver,
        "window.asked2 = []; window.answers2 = {}; const root = document.getElementById('lazy');"
        " window.second = AttnViz.mount(root, arguments[0], {fetchHead: (l, h) => new Promise(ok => {"
        "   asked2.push(l + ',' + h); answers2[l + ',' + h] = ok; })});",
        data,
    )
    wait(driver, lambda d: d.execute_script("return window.asked2") == ["0,1"])
    js(
        driver,
        "AttnViz.mount(document.getElementById('lazy'), arguments[0],"
        " {fetchHead: () => new Promise(() => {})})",
        data,
    )
    js(driver, "answers2['0,1'](arguments[0])", heads["0,1"])
    js(driver, "return new Promise(ok => setTimeout(ok, 300))")
    assert js(driver, "return window.asked2") == ["0,1"]
    assert not errors(driver)


def replace_heads(att, n_heads: int):
    """`att` with n_heads heads: the first two repeated, rolled so that each head differs."""
    from dataclasses import replace

    attn = np.stack([np.roll(att.attn[0, h % 2], h // 2, axis=1) for h in range(n_heads)])[None]
    return replace(att, attn=attn / attn.sum(-1, keepdims=True), heads=tuple(range(n_heads)))


def test_served_text_view_keeps_emoji_in_place(driver, served):
    from selenium.webdriver.common.by import By

    from attnviz.extraction import extract

    base, model = served
    driver.get(base + "/")
    wait(driver, lambda d: d.execute_script("return document.body.dataset.models") == "1")
    driver.execute_script("document.getElementById('av-input').value = arguments[0]", UNICODE_TEXT)
    driver.find_element(By.ID, "av-submit").click()
    wait(driver, lambda d: d.execute_script("return document.body.dataset.ready"))
    driver.find_element(By.CSS_SELECTOR, "button[data-view=text]").click()
    assert_text_view_reads_the_text(driver, extract(UNICODE_TEXT, model))
    assert not errors(driver)
