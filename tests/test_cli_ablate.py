"""`attnviz ablate`, `find-head --ablate` and `heads --induction --ablate`: the library's numbers, printed."""

from __future__ import annotations

import json

import numpy as np
import pytest
from helpers import cli_ok, one_line_error
from typer.testing import CliRunner

from attnviz.cli import app

runner = CliRunner()
TEXT = "The cat sat on the mat, and the cat slept."


def _lm(path: str):
    from attnviz.heads.ablation import for_ablation
    from attnviz.models.loading import load_model

    return for_ablation(load_model(path, device="cpu"))


def test_ablate_json_is_the_library_result(gpt2):
    from attnviz.heads.ablation import ablate

    out = json.loads(
        cli_ok(["ablate", TEXT, "-l", "1", "--head", "2", "--target", "mat", "-m", gpt2, "--json"]).stdout
    )
    assert set(out) == {"model", "measure", "target", "position", "before", "after", "delta"}
    expected = ablate(_lm(gpt2), TEXT, [(1, 2)], target="mat").as_dict()
    assert out == pytest.approx(expected)
    assert out["measure"] == "log-prob" and out["target"] == "mat"
    both = json.loads(cli_ok(["ablate", TEXT, "--heads", "1:2,0:3", "-m", gpt2, "--json"]).stdout)
    assert both["delta"] == pytest.approx(ablate(_lm(gpt2), TEXT, [(1, 2), (0, 3)]).delta)


def test_ablate_text_says_which_measure_and_why(bert, gpt2):
    lines = cli_ok(["ablate", TEXT, "-l", "0", "--head", "1", "-m", bert]).stdout.splitlines()
    assert any(line.startswith("measure: embedding, because") and "no LM head" in line for line in lines)
    assert lines[-1].startswith("delta (after - before): ")
    lines = cli_ok(["ablate", TEXT, "-l", "0", "--head", "1", "-m", gpt2]).stdout.splitlines()
    assert any("causal LM" in line for line in lines)


def test_scan_json_rows_and_heatmap(gpt2, tmp_path):
    from PIL import Image

    from attnviz.heads.ablation import scan_heads

    plot = tmp_path / "effect.png"
    result = cli_ok(["ablate", TEXT, "--scan", "--top", "0", "-m", gpt2, "--json", "--plot", str(plot)])
    rows = json.loads(result.stdout)
    assert [set(r) for r in rows] == [{"rank", "layer", "head", "delta"}] * 8
    found = scan_heads(_lm(gpt2), TEXT)
    for r in rows:
        assert r["delta"] == pytest.approx(found.delta[r["layer"], r["head"]], abs=1e-9)
    assert [abs(r["delta"]) for r in rows] == sorted((abs(r["delta"]) for r in rows), reverse=True)
    assert f"wrote {plot}" in result.stderr
    with Image.open(plot) as img:
        assert img.size[0] > 100 and img.size[1] > 100
    table = cli_ok(["ablate", TEXT, "--scan", "-k", "3", "-m", gpt2]).stdout.splitlines()
    assert table[-4].split() == ["rank", "layer", "head", "delta"]
    assert [line.split()[0] for line in table[-3:]] == ["1", "2", "3"]


def test_mean_mode_reads_the_reference_file(gpt2, tmp_path):
    from attnviz.heads.ablation import ablate

    ref = tmp_path / "ref.txt"
    ref.write_text("A dog chased the cat.\n\nAttention is a weighted average.\n")
    args = ["ablate", TEXT, "-l", "0", "--head", "0", "--mode", "mean", "--reference", str(ref)]
    out = json.loads(cli_ok([*args, "-m", gpt2, "--json"]).stdout)
    lib = ablate(
        _lm(gpt2),
        TEXT,
        [(0, 0)],
        mode="mean",
        reference=["A dog chased the cat.", "Attention is a weighted average."],
    )
    assert out["after"] == pytest.approx(lib.after)


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (["-l", "0", "--head", "9"], ["head 9 is out of range"]),
        (["-l", "5", "--head", "0"], ["layer 5 is out of range"]),
        (["-l", "0", "--head", "1", "--target", "zebra"], ["'zebra' is not in the text"]),
        (["-l", "0", "--head", "1", "--mode", "mean"], ["--mode mean needs reference texts"]),
        (["--scan", "--mode", "mean"], ["--mode mean needs reference texts"]),
        (
            ["-l", "0", "--head", "1", "--reference", "missing.txt", "--mode", "mean"],
            ["cannot read missing.txt"],
        ),
        (["-l", "0"], ["both --layer and --head"]),
        ([], ["say which head"]),
        (["--heads", "1-2"], ["LAYER:HEAD"]),
        (["--scan", "-l", "0", "--head", "1"], ["drop --layer"]),
        (["-l", "0", "--head", "1", "--plot", "x.png"], ["add --scan"]),
    ],
)
def test_errors_are_one_line(gpt2, args, needles):
    one_line_error(runner.invoke(app, ["ablate", TEXT, *args, "-m", gpt2]), *needles)


def test_find_head_ablate_adds_the_effect_and_spearman(gpt2):
    from attnviz.extraction import extract
    from attnviz.heads.ablation import for_ablation, scan_heads, spearman
    from attnviz.heads.search import find_heads

    result = cli_ok(["find-head", "cat", "mat", TEXT, "-m", gpt2, "--ablate", "--json", "-k", "3"])
    rows = json.loads(result.stdout)
    assert len(rows) == 3 and all("delta" in r and "score" in r for r in rows)
    loaded = for_ablation(_lm(gpt2))
    found = scan_heads(loaded, TEXT, target="mat")
    ranking = find_heads(extract(TEXT, loaded), "cat", "mat", top=None).ranking
    for r in rows:
        assert r["delta"] == pytest.approx(found.delta[r["layer"], r["head"]], abs=1e-9)
    rho = spearman(
        np.array([h.score for h in ranking]), np.array([found.effect[h.layer, h.head] for h in ranking])
    )
    assert f"over 8 heads: {rho:+.3f}" in result.stderr
    table = cli_ok(["find-head", "cat", "mat", TEXT, "-m", gpt2, "--ablate"]).stdout
    assert "Spearman" in table and " delta " in table


def test_heads_induction_ablate_reports_the_loss_rise_and_overlap(tiny_model_path):
    from attnviz.heads.ablation import repeat_loss_scan, top_overlap
    from attnviz.heads.induction import induction_scores

    llama = str(tiny_model_path("llama"))
    args = ["heads", "--induction", "--ablate", "-m", llama, "--seq-len", "6", "--batch", "2", "--top", "0"]
    result = cli_ok([*args, "--json"])
    rows = json.loads(result.stdout)
    loaded = _lm(llama)
    found = repeat_loss_scan(loaded, seq_len=6, batch=2, seed=0)
    for r in rows:
        assert r["loss_rise"] == pytest.approx(found.delta[r["layer"], r["head"]], abs=1e-9)
    overlap, k = top_overlap(induction_scores(loaded, seq_len=6, batch=2).induction, found.delta, 10)
    assert f"top-{k} overlap of induction score and loss rise: {overlap} of {k}" in result.stderr
    assert "loss rise" in cli_ok(args).stdout
    one_line_error(
        runner.invoke(app, ["heads", TEXT, "--ablate", "-m", llama]), "--ablate works with --induction"
    )
