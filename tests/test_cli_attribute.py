"""`attnviz attribute` and `attnviz lens`: JSON as promised, pictures and files, on the tiny GPT-2."""

from __future__ import annotations

import json

import numpy as np
import torch
from helpers import cli_ok, figure_text, image_values

TEXT = "The cat sat on the mat, and the"


def test_attribute_json_adds_up(gpt2):
    out = json.loads(
        cli_ok(["attribute", TEXT, "--answer", "cat", "--wrong", "the", "-m", gpt2, "--json"]).stdout
    )
    assert set(out) == {"model", "answer", "wrong", "logit", "components"}
    assert out["answer"] == "cat" and out["wrong"] == "the"
    names = [c["name"] for c in out["components"]]
    assert (
        names[0] == "embeddings" and "L1H3" in names and "L0MLP" in names and names[-2:] == ["bias", "rest"]
    )
    assert abs(sum(c["value"] for c in out["components"]) - out["logit"]) < 1e-3


def test_attribute_json_adds_up_on_a_post_norm_masked_lm(tiny_model_path):
    """A tiny RoBERTa folder (post-norm): the CLI needs nothing of its own, the library freezes every norm."""
    text = f"{TEXT} <mask>"
    args = ["attribute", text, "--answer", "cat", "--wrong", "the", "-m", str(tiny_model_path("roberta"))]
    out = json.loads(cli_ok([*args, "--json"]).stdout)
    names = [c["name"] for c in out["components"]]
    assert "L1H3" in names and "L1MLP" in names and names[-2:] == ["bias", "rest"]
    assert abs(sum(c["value"] for c in out["components"]) - out["logit"]) < 1e-3


def test_attribute_text_plot_and_file(gpt2, tmp_path, figures):
    from attnviz.analyses.attribution import Attribution

    plot, data = tmp_path / "a.png", tmp_path / "a.safetensors"
    result = cli_ok(["attribute", TEXT, "--answer", "cat", "-m", gpt2, "--plot", str(plot), "-o", str(data)])
    assert "logit" in result.stdout and f"wrote {plot}" in result.stdout and plot.stat().st_size > 0
    saved = Attribution.load(data)
    np.testing.assert_allclose(image_values(figures["a.png"]), saved.head_map())
    assert "direct logit attribution of 'cat'" in figure_text(figures["a.png"])


def test_lens_json_last_row_is_the_models_argmax(gpt2, tmp_path):
    from attnviz.analyses.residual import tokenized, with_head

    out = json.loads(cli_ok(["lens", TEXT, "-k", "3", "--answer", "cat", "-m", gpt2, "--json"]).stdout)
    loaded = with_head(gpt2, "lens", device="cpu")
    inputs, _ = tokenized(loaded, TEXT)
    with torch.no_grad():
        argmax = loaded.model(**inputs).logits[0].argmax(-1).tolist()
    assert len(out["top_ids"]) == len(out["stages"]) == 3 and out["stages"][0] == "embeddings"
    assert out["top_ids"][-1] == argmax
    assert len(out["top"][0]) == 3 and len(out["answer_rank"]) == 3 and out["answer"] == "cat"


def test_lens_text_and_plot(gpt2, tmp_path, figures):
    plot = tmp_path / "lens.png"
    result = cli_ok(["lens", TEXT, "--answer", "cat", "-m", gpt2, "--plot", str(plot)])
    assert "embeddings" in result.stdout and "rank" in result.stdout
    fig = figures["lens.png"]
    values = image_values(fig)
    assert values.shape[0] == 3 and np.nanmax(values) <= 1.0  # stages x positions of probabilities
    assert "logit lens" in figure_text(fig)
