"""`attnviz generate`: the continuation on stdout, the files it writes, and its one-line errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
from helpers import one_line_error
from typer.testing import CliRunner

from attnviz.cli import app
from attnviz.generation.run import Generation

runner = CliRunner()


def test_prints_the_continuation_and_writes_every_file(tiny_model_path, tmp_path, figures):
    model = str(tiny_model_path("llama"))
    data, page = tmp_path / "g.safetensors", tmp_path / "g.html"
    args = [
        "generate",
        "the cat sat",
        "-m",
        model,
        "--max-new-tokens",
        "4",
        "-o",
        str(data),
        "--plot",
        str(tmp_path / "g.png"),
    ]
    result = runner.invoke(app, [*args, "--view", str(page), "--layers", "1", "--heads", "2"])
    assert result.exit_code == 0, result.output
    gen = Generation.load(data)
    assert result.stdout.strip() == gen.text.strip()
    assert gen.attn.shape == (1, 1, 4, gen.prompt_length + 4)
    assert gen.layers == (1,) and gen.heads == (2,)
    fig, path = figures[0]
    ax = fig.axes[0]
    assert path.name == "g.png" and ax.get_ylabel().startswith("new token")
    drawn = ax.images[0].get_array()
    np.testing.assert_allclose(np.ma.filled(drawn, 0), gen.attn[0, 0], atol=1e-6)
    assert [t.get_text() for t in ax.get_yticklabels()] == gen.new_labels
    assert any(line.get_xdata()[0] == gen.prompt_length - 0.5 for line in ax.lines)
    html = page.read_text()
    assert 'id="attnviz-generation"' in html and "<script>" in html


def test_json_and_pooling(tiny_model_path):
    model = str(tiny_model_path("t5"))
    result = runner.invoke(
        app, ["generate", "the cat sat", "-m", model, "--max-new-tokens", "3", "--json", "--aggregate", "max"]
    )
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert {"model", "prompt", "generated", "tokens", "prompt_length", "output"} <= set(out)
    assert out["shapes"]["self"][:2] == [2, 1] and out["shapes"]["cross"][1] == 1
    assert out["notes"] == ["max of heads 0-3"]


def test_cross_attention_plot(tiny_model_path, tmp_path, figures):
    model = str(tiny_model_path("t5"))
    args = [
        "generate",
        "the cat sat",
        "-m",
        model,
        "--max-new-tokens",
        "3",
        "--plot",
        str(tmp_path / "c.png"),
        "--stream",
        "cross",
    ]
    result = runner.invoke(app, [*args, "--layers", "0", "--heads", "1"])
    assert result.exit_code == 0, result.output
    ax = figures[0][0].axes[0]
    assert ax.get_xlabel().startswith("source token")
    assert ax.images[0].get_array().shape[1] == len(ax.get_xticklabels())


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--max-new-tokens", "0"], "--max-new-tokens must be at least 1"),
        (["--temperature", "0.5"], "add --sample"),
        (["--sample", "--top-p", "2"], "--top-p"),
        (["--stream", "sideways"], "unknown --stream"),
        (["-o", "x.txt"], "unknown output format"),
        (["--view", "x.png"], "--view x.png should end with .html"),
        (["--aggregate", "median"], "unknown --aggregate"),
        (["-m", "minilm"], "is an encoder"),
    ],
)
def test_bad_input_is_one_line_before_loading(args, needle):
    one_line_error(runner.invoke(app, ["generate", "hello", *args]), needle)


def test_chat_needs_a_template(tiny_model_path):
    result = runner.invoke(app, ["generate", "hi", "-m", str(tiny_model_path("gpt2")), "--chat"])
    one_line_error(result, "no chat template: drop --chat")


def test_rollout(tiny_model_path):
    model = str(tiny_model_path("gpt2"))
    result = runner.invoke(
        app, ["generate", "the cat", "-m", model, "--max-new-tokens", "2", "--rollout", "--json"]
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["notes"][-1].startswith("attention rollout over layers 0, 1")
    one_line_error(runner.invoke(app, ["generate", "x", "--rollout", "--heads", "1"]), "--rollout fuses")
