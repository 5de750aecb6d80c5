"""`attnviz rollout`, `compare` and `cluster` through the command line, pictures checked by their data."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import numpy as np
import pytest
from helpers import bad, ok
from typer.testing import CliRunner

runner = CliRunner()
PAIR = (
    "The trophy did not fit in the suitcase because it was too big.",
    "The trophy did not fit in the suitcase because it was too small.",
)


def labels(axis) -> list[str]:
    return [t.get_text() for t in axis.get_ticklabels()]


# -- rollout ------------------------------------------------------------------------------------
def test_rollout_json_is_the_library_result(bert) -> None:
    from attnviz.analyses.rollout import rollout
    from attnviz.extraction import extract

    data = json.loads(
        ok("rollout", "the cat sat on the mat", "-m", bert, "--json", "--head-fusion", "max").stdout
    )
    att = extract("the cat sat on the mat", bert, device="cpu")
    assert data["model"] == att.model and data["tokens"] == list(att.tokens)
    np.testing.assert_allclose(data["rollout"], rollout(att, "max").matrix, atol=1e-12)
    assert data["output"] is None


def test_rollout_picture_and_token_row(bert, figures, tmp_path) -> None:
    out = tmp_path / "r.png"
    result = ok(
        "rollout", "the cat sat on the mat", "-m", bert, "--token", "cat", "--layers", "1", "-o", str(out)
    )
    assert result.stdout.strip() == str(out) and out.is_file()
    fig = figures[0][0]
    heat, bars = fig.axes[0], fig.axes[1]
    assert labels(heat.yaxis) == ["[CLS]", "the", "cat", "sat", "on", "the", "mat", "[SEP]"]
    assert heat.get_images()[0].get_array().shape == (8, 8)
    assert bars.get_title() == "row of 'cat' (@2)"
    from attnviz.analyses.rollout import rollout
    from attnviz.extraction import extract

    row = rollout(extract("the cat sat on the mat", bert, layers=[1], device="cpu")).row(2)
    np.testing.assert_allclose([p.get_height() for p in bars.patches], row, atol=1e-9)
    assert "layers 1" in fig.get_suptitle()


def test_rollout_errors(bert) -> None:
    bad("rollout", "the cat sat", "-m", bert, "--token", "dog", match="'dog' is not in the text")
    bad("rollout", "the cat sat", "-m", bert, "--token", "@40", match="out of range")
    bad("rollout", "the cat", "-m", bert, "--head-fusion", "sum", match="--head-fusion")
    bad("rollout", "the cat", "-m", bert, "--residual", "-1", match="--residual")
    bad("rollout", "the cat " * 40, "-m", bert, match="tokens but .* takes at most 64; pass --truncate")
    bad("rollout", "the cat", "-m", bert, "--layers", "0,1,5", match="layer")


# -- compare ------------------------------------------------------------------------------------
def test_compare_json_rows(bert) -> None:
    result = ok(
        "compare", "the cat sat on the mat", "the dog sat on the mat", "-m", bert, "--json", "--top", "3"
    )
    data = json.loads(result.stdout)
    assert [r["rank"] for r in data["rows"]] == [1, 2, 3]
    assert set(data["rows"][0]) == {"rank", "layer", "head", "change"}
    assert data["alignment"]["mode"] == "positional"
    assert "differing: cat/dog" in result.stderr
    from attnviz.analyses.compare import compare
    from attnviz.extraction import extract

    ref = compare(extract("the cat sat on the mat", bert), extract("the dog sat on the mat", bert))
    want = ref.ranked(3)
    assert [(r["layer"], r["head"]) for r in data["rows"]] == [(r["layer"], r["head"]) for r in want]
    assert [r["change"] for r in data["rows"]] == pytest.approx([r["change"] for r in want], rel=1e-3)


def test_compare_pictures(bert, figures, tmp_path) -> None:
    ok("compare", "the cat sat on the mat", "the big cat sat", "-m", bert, "-o", str(tmp_path / "c.png"))
    change = figures[0][0]
    assert change.axes[0].get_images()[0].get_array().shape == (2, 4)
    assert labels(change.axes[0].xaxis) == ["H0", "H1", "H2", "H3"]
    ok(
        "compare",
        "the cat sat on the mat",
        "the big cat sat",
        "-m",
        bert,
        "--layer",
        "1",
        "--head",
        "2",
        "-o",
        str(tmp_path / "p.png"),
    )
    pair = figures[1][0]
    diff_ax = next(ax for ax in pair.axes if ax.get_title() == "A - B")
    image = diff_ax.get_images()[0]
    low, high = image.get_clim()
    assert low == pytest.approx(-high)  # diverging scale centred on 0
    assert labels(diff_ax.yaxis) == ["[CLS]", "the", "cat", "sat", "[SEP]"]


def test_compare_errors(bert) -> None:
    bad("compare", "the cat", "the dog", "-m", bert, "--layer", "1", match="--layer and --head go together")
    bad("compare", "", "the dog", "-m", bert, match="TEXT_A is empty")
    bad("compare", "the cat", "the dog", "-m", bert, "--top", "-1", match="--top")


# -- cluster ------------------------------------------------------------------------------------
TEXTS = ["the cat sat on the mat", "a dog chased the cat", "attention is a weighted average"]


def test_cluster_folder(bert, figures, tmp_path) -> None:
    corpus = tmp_path / "c.jsonl"
    corpus.write_text("".join(json.dumps({"text": t}) + "\n" for t in TEXTS), encoding="utf-8")
    out = tmp_path / "out"
    data = json.loads(ok("cluster", str(corpus), "-m", bert, "-o", str(out), "--json").stdout)
    assert data["texts"] == 3 and len(data["files"]) == 3
    assert sum(len(g["heads"]) for g in data["groups"]) == 8
    rows = list(csv.reader((out / "distances.csv").open()))
    assert rows[0] == ["head", "L0H0", "L0H1", "L0H2", "L0H3", "L1H0", "L1H1", "L1H2", "L1H3"]
    from attnviz.analyses.cluster import cluster_texts

    ref = cluster_texts(TEXTS, bert, device="cpu")
    np.testing.assert_allclose(np.array([r[1:] for r in rows[1:]], dtype=float), ref.matrix, atol=1e-6)
    grid_fig, scatter = figures[0][0], figures[1][0]
    heat = next(ax for ax in grid_fig.axes if ax.get_xticklabels() and ax.collections)
    assert sorted(t.get_text() for t in heat.get_xticklabels()) == sorted(rows[0][1:])
    ax = scatter.axes[0]
    assert sum(len(c.get_offsets()) for c in ax.collections) == 8
    assert ax.get_xlabel() == "MDS 1"


def test_cluster_stdin_prints_the_groups_then_the_files(bert, tmp_path) -> None:
    """Issue 20: cluster printed only file paths; now the groups of heads, each from the tree."""
    from attnviz.analyses.cluster import cluster_texts

    result = ok(
        "cluster", "-m", bert, "-o", str(tmp_path / "o"), "--groups", "3", stdin="\n".join(TEXTS) + "\n"
    )
    lines = result.stdout.splitlines()
    assert lines[0].endswith("3 groups of heads over 3 texts (average linkage)")
    want = cluster_texts(TEXTS, bert, device="cpu").groups(3)
    for i, group in enumerate(want, start=1):
        assert lines[2 * i - 1] == f"group {i}: {group.describe()}"
        assert lines[2 * i].split() == list(group.heads)
    assert sorted(h for g in want for h in g.heads) == sorted(f"L{a}H{b}" for a in (0, 1) for b in range(4))
    assert [Path(x).name for x in lines[-3:]] == ["distances.csv", "clustermap.png", "embedding.png"]
    bad("cluster", "-m", bert, "--groups", "0", stdin="a\nb\n", match="bad --groups 0")


def test_cluster_errors(bert, tmp_path) -> None:
    one = tmp_path / "one.txt"
    one.write_text("only one text\n", encoding="utf-8")
    bad("cluster", str(one), "-m", bert, match="at least two texts, got 1")
    bad("cluster", "--file", str(one), "-m", bert, "--limit", "1", match="at least two texts")
    bad("cluster", str(tmp_path / "missing.txt"), "-m", bert, match="no such input file")


def test_docs_page_shows_each_command_and_its_figures() -> None:
    docs = Path(__file__).resolve().parents[1] / "docs"
    page = (docs / "analyses.md").read_text(encoding="utf-8")
    for name in ("rollout", "compare", "cluster"):
        assert f"## `attnviz {name}" in page
    images = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", page)
    assert len(images) >= 6
    for image in images:
        assert (docs / image).stat().st_size > 10_000, image
