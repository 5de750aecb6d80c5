"""`attnviz patch`: the JSON it promises, its files and pictures, and path patching."""

from __future__ import annotations

import json

import numpy as np
import pytest
from helpers import cli_ok

CLEAN = "The cat sat on the mat"
CORRUPT = "The mat sat on the cat"


def test_json_is_the_library_result(llama):
    from attnviz.heads.patching import patch

    out = cli_ok(["patch", CLEAN, CORRUPT, "--answer", "mat", "--wrong", "cat", "-m", llama, "--json"])
    data = json.loads(out.stdout)
    assert set(data) == {"model", "metric", "answer", "wrong", "clean", "corrupt", "patched", "effect"}
    assert data["metric"] == "logit-diff" and np.asarray(data["patched"]).shape == (2, 4)
    lib = patch(CLEAN, CORRUPT, llama, answer="mat", wrong="cat")
    np.testing.assert_allclose(data["patched"], lib.patched, atol=1e-9)
    eff = np.asarray(data["effect"])
    np.testing.assert_allclose(eff, (lib.patched - data["corrupt"]) / (data["clean"] - data["corrupt"]))


def test_table_plot_and_file(llama, tmp_path, figures):
    from attnviz.heads.patching import Patching

    plot, data = tmp_path / "map.png", tmp_path / "map.safetensors"
    out = cli_ok(["patch", CLEAN, CORRUPT, "--answer", "mat", "-m", llama, "--unit", "resid",
                  "--plot", str(plot), "-o", str(data)])  # fmt: skip
    assert "denoising" in out.stdout and "resid" in out.stdout and "log-prob" in out.stdout
    assert plot.exists() and Patching.load(data).patched.shape[0] == 3
    fig = figures[-1][0]
    image = fig.axes[0].images[0]
    low, high = image.get_clim()
    assert low == -high and image.get_cmap().name.startswith("RdBu")  # diverging, centred on 0
    assert "top units" in fig.axes[1].texts[0].get_text()


def test_path_patching_json(llama):
    out = cli_ok(["patch", CLEAN, CORRUPT, "--answer", "mat", "-m", llama, "--sender", "0.1",
                  "--receivers", "1.2,1.3", "--via", "k", "--json"])  # fmt: skip
    data = json.loads(out.stdout)
    assert data["sender"] == [0, 1] and data["receivers"] == [[1, 2], [1, 3]] and data["via"] == "k"
    assert "group 1 (heads 2-3)" in data["note"]


@pytest.mark.parametrize("unit", ["layer"])
def test_noising_positions(llama, unit):
    out = cli_ok(["patch", CLEAN, CORRUPT, "--answer", "mat", "-m", llama, "--unit", unit, "--positions",
                  "--noising", "--json"])  # fmt: skip
    assert np.asarray(json.loads(out.stdout)["patched"]).shape[:2] == (2, 2)


def test_serve_answers_api_patch(llama):
    from starlette.testclient import TestClient

    from attnviz.heads.patching import patch
    from attnviz.models.loading import load_model
    from attnviz.server.app import create_app

    with TestClient(
        create_app({"tiny": load_model(llama, device="cpu")}), raise_server_exceptions=False
    ) as c:
        q = {"clean": CLEAN, "corrupt": CORRUPT, "answer": "mat", "wrong": "cat"}
        data = c.get("/api/patch", params=q).json()
        lib = patch(CLEAN, CORRUPT, llama, answer="mat", wrong="cat")
        np.testing.assert_allclose(data["patched"], lib.patched, atol=1e-9)
        assert data["top"][0]["unit"].startswith("L") and data["columns"] == ["0", "1", "2", "3"]
        path = c.post("/api/patch", json={**q, "sender": "0.1", "receivers": "1.2", "via": "v"}).json()
        assert path["via"] == "v" and "group 1" in path["note"]
        bad = c.get("/api/patch", params={**q, "wrong": "mat"})
        assert bad.status_code == 400 and "same word" in bad.json()["error"]
        bad = c.get("/api/patch", params={**q, "sender": "1.0", "receivers": "0.1"})
        assert bad.status_code == 400 and "not upstream" in bad.json()["error"]
