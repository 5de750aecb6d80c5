"""Take the docs' screenshots of the explorer: docs/view-{head,matrix,model,serve}.png, and a long
text (512 tokens, every layer): docs/view-long-{matrix,text,model}.png.

    PYTHONPATH=src .venv/bin/python scripts/screenshots.py

The seed sentence on MiniLM, in Debian's headless Chromium with the network disabled, as the
browser tests run it; `attnviz serve` runs in a thread on a free loopback port.
"""

from __future__ import annotations

import sys
import tempfile
import threading
from pathlib import Path

SEED = "Emily always wanted to visit Paris so she took some French lessons"
STORY = (
    "Emily always wanted to visit Paris, so she took French lessons every evening after work. "
    "Her teacher, a retired engineer from Lyon, made her read one newspaper article a day and "
    "explain it back to him in French. "
)
DOCS = Path(__file__).resolve().parents[1] / "docs"


def driver(width: int, height: int):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = "/usr/bin/chromium"
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--proxy-server=http://127.0.0.1:9",
        "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
        f"--window-size={width},{height}",
        "--hide-scrollbars",
    ):
        opts.add_argument(arg)
    return webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=opts)


def main() -> None:
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from attnviz.extraction import extract
    from attnviz.heads.search import find_heads
    from attnviz.models.loading import load_model
    from attnviz.server.app import bind, create_app, uvicorn_server
    from attnviz.views.html import render_html

    model = load_model("minilm", device="cpu")
    att = extract(SEED, model)
    best = find_heads(att, "paris", "french", top=1).best
    page = Path(tempfile.mkdtemp()) / "seed.html"
    page.write_text(render_html(att), encoding="utf-8")
    d = driver(1000, 760)
    try:
        d.get(page.as_uri())
        root = d.find_element(By.ID, "attnviz-root")
        for b in d.find_elements(By.CSS_SELECTOR, ".av-heads button")[4:]:
            b.click()  # heads 0-3 only: a readable picture
        token = d.find_element(By.XPATH, "//*[name()='text' and @data-col='q' and text()='paris']")
        ActionChains(d).move_to_element(token).perform()
        root.screenshot(str(DOCS / "view-head.png"))
        ActionChains(d).move_by_offset(400, 0).perform()
        d.execute_script(
            "arguments[0].attnviz.select(arguments[1], arguments[2])", root, best.layer, best.head
        )
        root.screenshot(str(DOCS / "view-matrix.png"))
        d.find_element(By.CSS_SELECTOR, "button[data-view=model]").click()
        root.screenshot(str(DOCS / "view-model.png"))

        sock = bind("127.0.0.1", 0)
        server = uvicorn_server(create_app({"minilm": model}), "127.0.0.1", sock.getsockname()[1])
        thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
        thread.start()
        d.get(f"http://127.0.0.1:{sock.getsockname()[1]}/")
        WebDriverWait(d, 30).until(lambda d: d.execute_script("return document.body.dataset.models"))
        d.find_element(By.ID, "av-submit").click()
        WebDriverWait(d, 60).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#av-text span.av-word"))
        words = {w.text.lower(): w for w in d.find_elements(By.CSS_SELECTOR, "#av-text span.av-word")}
        words["paris"].click()
        words["french"].click()
        WebDriverWait(d, 60).until(lambda d: d.find_elements(By.CSS_SELECTOR, "tr.av-row"))
        d.find_elements(By.CSS_SELECTOR, "tr.av-row")[0].click()
        d.set_window_size(1000, 1100)
        d.save_screenshot(str(DOCS / "view-serve.png"))
        server.should_exit = True
        thread.join(30)
    finally:
        d.quit()
    long_text(model)
    for name in ("head", "matrix", "model", "serve", "long-matrix", "long-text", "long-model"):
        print(DOCS / f"view-{name}.png", file=sys.stderr)


def long_text(model) -> None:
    """A 512-token text with every layer (the default page, about 4 MB): the matrix zoomed in with a
    row's focus bars, the text view, and the model view's pooled thumbnails."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from attnviz.extraction import extract
    from attnviz.views.html import render_html

    ids = model.tokenizer(STORY * 12, add_special_tokens=False)["input_ids"][:510]
    att = extract(model.tokenizer.decode(ids), model)
    page = Path(tempfile.mkdtemp()) / "long.html"
    page.write_text(render_html(att, view="matrix"), encoding="utf-8")
    d = driver(1200, 900)
    try:
        d.get(page.as_uri())
        WebDriverWait(d, 60).until(
            lambda d: d.execute_script("return document.querySelector('canvas.av-matrix')")
        )
        root = d.find_element(By.ID, "attnviz-root")
        d.execute_script("arguments[0].attnviz.set({layer: 2, head: 0})", root)
        d.execute_script("arguments[0].attnviz.zoomTo(20, 0, 40)", root)
        d.find_element(By.CSS_SELECTOR, ".av-rows div[data-i='37']").click()
        root.screenshot(str(DOCS / "view-long-matrix.png"))
        d.find_element(By.CSS_SELECTOR, "button[data-view=text]").click()
        d.find_element(By.CSS_SELECTOR, ".av-t[data-j='37']").click()
        d.set_window_size(1200, 1500)
        root.screenshot(str(DOCS / "view-long-text.png"))
        d.set_window_size(1200, 900)
        d.find_element(By.CSS_SELECTOR, "button[data-view=model]").click()
        WebDriverWait(d, 60).until(
            lambda d: d.execute_script("return document.getElementById('attnviz-root').dataset.thumbs")
        )
        root.screenshot(str(DOCS / "view-long-model.png"))
    finally:
        d.quit()


if __name__ == "__main__":
    main()
