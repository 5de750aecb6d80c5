"""`attnviz find-head` and `attnviz heads`: tables, JSON, plots, text sources and one-line errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
from helpers import (
    assert_png_of,
    assert_svg_of,
    cli_ok,
    figure_text,
    image_values,
    one_line_error,
    tick_labels,
)
from typer.testing import CliRunner

from attnviz.cli import app
from attnviz.heads.patterns import PATTERNS

runner = CliRunner()
FIELDS = {"rank", "layer", "head", "score", "a2b", "b2a", "role"}
TEXT = "The cat sat on the mat, and the cat slept."


def test_find_head_table_says_which_positions_were_used(bert):
    out = cli_ok(["find-head", "cat", "mat", TEXT, "-m", bert, "-n", "2,1"]).stdout
    lines = out.splitlines()
    assert "A 'cat' = token 10 (occurrence 2 of 2)" in lines[0] and "B 'mat' = token 6" in lines[0]
    assert lines[2].split() == ["rank", "layer", "head", "score", "A->B", "B->A", "role"]
    assert len(lines) == 3 + 5  # --top defaults to 5


def test_find_head_json_has_exactly_the_promised_fields(bert):
    result = cli_ok(["find-head", "cat", "mat", TEXT, "-m", bert, "--json", "-k", "0"])
    rows = json.loads(result.stdout)
    assert len(rows) == 2 * 4 and all(set(r) == FIELDS for r in rows)
    assert [r["rank"] for r in rows] == list(range(1, 9))
    assert all(r["score"] == max(r["a2b"], r["b2a"]) for r in rows)
    assert "token" in result.stderr  # the positions used go to stderr beside --json


def test_find_head_direction_layer_and_positions(bert):
    rows = json.loads(
        cli_ok(["find-head", "@2", "@6", TEXT, "-m", bert, "--json", "-d", "b2a", "--layer", "1"]).stdout
    )
    assert {r["layer"] for r in rows} == {1} and all(r["score"] == r["b2a"] for r in rows)


def test_find_head_reads_texts_file_and_stdin(bert, tmp_path):
    src = tmp_path / "sentences.txt"
    src.write_text("the cat sat on the mat\na dog slept\n\nthe mat and the cat\n", encoding="utf-8")
    by_file = cli_ok(["find-head", "cat", "mat", "--texts", str(src), "-m", bert])
    assert "mean over 2 of 3 texts" in by_file.stdout and "text 3:" in by_file.stdout
    by_stdin = cli_ok(["find-head", "cat", "mat", "--texts", "-", "-m", bert], input=src.read_text())
    assert by_stdin.stdout == by_file.stdout
    one = cli_ok(["find-head", "cat", "mat", "-m", bert], input="the cat sat on the mat\n")
    assert "mean over" not in one.stdout
    # --file is one text, as in every command: the whole file, line breaks and all
    whole = cli_ok(["find-head", "cat", "mat", "-f", str(src), "-m", bert])
    assert "mean over" not in whole.stdout and "occurrence 1 of 2" in whole.stdout
    one_line_error(
        runner.invoke(app, ["find-head", "cat", "dog", "-m", bert], input="the cat sat\n"), "'dog'"
    )


def test_find_head_plot_draws_the_winning_heads_attention(bert, tmp_path, monkeypatch, figures):
    from attnviz.extraction import extract
    from attnviz.heads.search import find_heads
    from attnviz.models.loading import load_model

    saved = figures
    out = tmp_path / "best.png"
    result = cli_ok(["find-head", "cat", "mat", TEXT, "-m", bert, "--plot", str(out)])
    assert f"wrote {out}" in result.stdout
    att = extract(TEXT, load_model(bert, device="cpu"))
    best = find_heads(att, "cat", "mat").best
    fig = saved["best.png"]
    np.testing.assert_allclose(image_values(fig), att.head(best.layer, best.head), atol=1e-6)
    assert len(tick_labels(fig, "x")) == len(tick_labels(fig, "y")) == len(att.tokens)
    assert f"layer {best.layer} · head {best.head}" in figure_text(fig)
    assert_png_of(out, fig)


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (["find-head", "cat", "dog", TEXT], ["'dog' does not occur in the text", "spelling"]),
        (["find-head", "cat", "ca", TEXT], ["'ca' is not in the text", "[CLS] The cat sat"]),
        (["find-head", "cat", "mat", TEXT, "-n", "3"], ["occurrence 3", "--occurrence N,M"]),
        (["find-head", "cat", "mat", TEXT, "-d", "up"], ["--direction"]),
        (["find-head", "cat", "mat", TEXT, "--plot", "x.jpg"], ["image format"]),
        (["find-head", "cat", "mat", TEXT, "-l", "9"], ["layer 9"]),
        (["find-head", "cat", "mat", TEXT, "-l", "0,1"], ["--layers 0,1"]),
        (["find-head", "cat", "mat", TEXT, "-l", "1", "--layers", "0"], ["not both"]),
        (["find-head", "cat", "@99", TEXT], ["@99 is out of range"]),
        (["heads", TEXT, "--sort", "diagonal"], ["unknown --sort"]),
        (["heads", TEXT, "--file", "x.txt"], ["not both"]),
        (["heads", "--induction"], ["applies to causal"]),
        (["heads", TEXT, "--induction"], ["drop the text"]),
    ],
)
def test_errors_are_one_line(bert, args, needles):
    one_line_error(runner.invoke(app, [*args, "-m", bert]), *needles)


def test_heads_table_and_json(bert):
    table = cli_ok(["heads", TEXT, "-m", bert]).stdout.splitlines()
    assert table[1].split() == [
        "layer",
        "head",
        "self",
        "prev",
        "next",
        "first",
        "sep",
        "punct",
        "broad",
        "role",
    ]
    assert len(table) == 2 + 2 * 4 + 1 and table[-1].startswith("roles: ")
    rows = json.loads(cli_ok(["heads", TEXT, "-m", bert, "--json", "--sort", "previous", "-k", "3"]).stdout)
    assert len(rows) == 3 and set(rows[0]) == {"layer", "head", "role", *PATTERNS}
    assert [r["previous"] for r in rows] == sorted((r["previous"] for r in rows), reverse=True)


def test_heads_top_without_sort_lists_the_strongest_roles(bert):
    everything = json.loads(cli_ok(["heads", TEXT, "-m", bert, "--json"]).stdout)
    assert [(r["layer"], r["head"]) for r in everything] == sorted(
        (r["layer"], r["head"]) for r in everything
    )

    def strength(r):  # brute force: a head with a role before a mixed one, then its role's score
        return (r["role"] != "mixed", r[r["role"]] if r["role"] != "mixed" else max(r[p] for p in PATTERNS))

    best = sorted(everything, key=strength, reverse=True)[:3]
    rows = json.loads(cli_ok(["heads", TEXT, "-m", bert, "--json", "-k", "3"]).stdout)
    assert [strength(r) for r in rows] == [strength(r) for r in best]
    assert rows == json.loads(
        cli_ok(["heads", TEXT, "-m", bert, "--json", "-k", "3", "--sort", "role"]).stdout
    )
    assert [(r["layer"], r["head"]) for r in rows] != [(0, 0), (0, 1), (0, 2)]


@pytest.mark.parametrize("extra", [[], ["--no-special"]])
def test_find_head_roles_are_the_roles_heads_gives_whatever_the_weighting(bert, extra):
    roles = {
        (r["layer"], r["head"]): r["role"]
        for r in json.loads(cli_ok(["heads", TEXT, "-m", bert, "--json", *extra]).stdout)
    }
    for weighting in ("attention", "norm"):
        rows = json.loads(cli_ok(["find-head", "cat", "mat", TEXT, "-m", bert, "-k", "0", "--json",
                                  "--weighting", weighting, *extra]).stdout)  # fmt: skip
        assert {(r["layer"], r["head"]): r["role"] for r in rows} == roles, weighting


def test_heads_over_a_file_gives_mean_and_spread(bert, tmp_path):
    src = tmp_path / "texts.txt"
    src.write_text("the cat sat on the mat\na dog chased the cat\n", encoding="utf-8")
    out = cli_ok(["heads", "--texts", str(src), "-m", bert]).stdout
    assert "over 2 texts" in out and "±" in out
    rows = json.loads(cli_ok(["heads", "--texts", str(src), "-m", bert, "--json"]).stdout)
    assert {"self_std", "broad_std"} <= set(rows[0])


def test_heads_plot_is_the_role_map_of_the_table(bert, tmp_path, monkeypatch, figures):
    from attnviz.extraction import extract
    from attnviz.heads.patterns import ROLE_NAMES, head_patterns
    from attnviz.models.loading import load_model

    saved = figures
    out = tmp_path / "roles.svg"
    cli_ok(["heads", TEXT, "-m", bert, "--plot", str(out), "--layers", "1"])
    table = head_patterns(extract(TEXT, load_model(bert, device="cpu"), layers=[1]))
    fig = saved["roles.svg"]
    codes = np.vectorize(ROLE_NAMES.index)(np.asarray(table.roles))  # [1 layer, heads]
    np.testing.assert_array_equal(image_values(fig), codes)
    assert tick_labels(fig, "y") == ["L1"] and tick_labels(fig, "x") == [f"H{h}" for h in table.heads]
    assert_svg_of(out, fig)


def test_heads_induction_on_a_tiny_causal_model(llama, tmp_path, monkeypatch, figures):
    from attnviz.heads.induction import induction_scores
    from attnviz.models.loading import load_model

    rows = json.loads(
        cli_ok(["heads", "--induction", "-m", llama, "--seq-len", "8", "--batch", "2", "--json"]).stdout
    )
    assert len(rows) == 8 and set(rows[0]) == {"rank", "layer", "head", "induction", "duplicate"}
    saved = figures
    out = tmp_path / "ind.png"
    text = cli_ok(
        ["heads", "--induction", "-m", llama, "--seq-len", "8", "--sort", "duplicate", "--plot", str(out)]
    )
    assert "chance" in text.stdout
    fig = saved["ind.png"]
    expected = induction_scores(load_model(llama, device="cpu"), seq_len=8).duplicate  # the sorted-by score
    np.testing.assert_allclose(image_values(fig), expected, atol=1e-9)
    assert tick_labels(fig, "y") == ["L0", "L1"] and tick_labels(fig, "x") == ["H0", "H1", "H2", "H3"]
    assert_png_of(out, fig)


@pytest.mark.slow
def test_minilm_seed_sentence_paris_french(minilm, seed_text):
    from attnviz.extraction import extract

    result = cli_ok(["find-head", "paris", "french", seed_text, "--json"])
    rows = json.loads(result.stdout)
    att = extract(seed_text, minilm)
    ia, ib = att.tokens.index("paris"), att.tokens.index("french")
    scores = [
        (max(att.attn[l_, h, ia, ib], att.attn[l_, h, ib, ia]), -l_, -h)
        for l_ in range(minilm.num_layers)
        for h in range(minilm.num_heads)
    ]
    score, neg_layer, neg_head = max(scores)
    assert (rows[0]["layer"], rows[0]["head"]) == (-neg_layer, -neg_head)
    assert rows[0]["score"] == pytest.approx(float(score))


@pytest.mark.slow
def test_smollm2_induction_command(smollm2):
    rows = json.loads(
        cli_ok(
            ["heads", "--induction", "-m", "smollm2", "--seq-len", "20", "--batch", "2", "--json", "-k", "3"]
        ).stdout
    )
    assert rows[0]["induction"] > 0.5


# -- one meaning per option, errors before loading (issue 12) -----------------------------------
NO_MODEL = ["-m", "/nonexistent/model"]  # loading this fails: an error naming anything else came first


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (["find-head", "paris", "german", "Emily visits Paris"], ["'german' does not occur in the text"]),
        (["find-head", "paris", "berlin", "--texts", "-"], ["'berlin' does not occur in any of the 2"]),
        (["find-head", "paris", "rome", "--texts", "-"], ["none of the 2 texts contains both"]),
        (["find-head", "a", "b", "a b", "--plot", "x.gif"], ["unknown image format"]),
        (["find-head", "a", "b", "a b", "--plot", "blocker/x.png"], ["cannot write", "not a folder"]),
        (["heads", "a b", "--threshold", "2"], ["bad --threshold 2", "0-1"]),
        (["heads", "a b", "--broad-threshold", "-0.1"], ["bad --broad-threshold"]),
        (["heads", "--induction", "--sort", "self"], ["unknown --sort 'self' for the induction test"]),
        (["heads", "a b", "--plot", "blocker/x.png"], ["cannot write"]),
        (["heads", "a b", "--texts", "list.txt"], ["not both the text and --texts"]),
    ],
)
def test_errors_come_before_the_model_loads(args, needles, tmp_path):
    (tmp_path / "blocker").write_text("x")
    (tmp_path / "list.txt").write_text("a b\n")
    result = runner.invoke(app, [*args, *NO_MODEL], input="Paris is big\nRome is old\n")
    one_line_error(result, *needles)


SELECTION_CASES = [("3-1", "bad {opt} range '3-1': write it low to high (1-3)"), ("", "{opt} is empty"),
                   ("a,b", "bad {opt} value 'a,b'")]  # fmt: skip


@pytest.mark.parametrize(("value", "message"), SELECTION_CASES)
@pytest.mark.parametrize(
    "command",
    [
        ["find-head", "a", "b", "a b", "--layers"],
        ["find-head", "a", "b", "a b", "--heads"],
        ["heads", "a b", "--layers"],
        ["heads", "a b", "--heads"],
        ["heads", "--induction", "--layers"],
        ["heatmap", "a b", "--heads"],
        ["entropy", "a b", "--heads"],
    ],
)
def test_every_command_reads_a_selection_the_same_way(command, value, message):
    result = runner.invoke(app, [*command, value, *NO_MODEL])
    one_line_error(result, message.format(opt=command[-1]))


def test_negative_layers_count_from_the_end_in_find_head_and_heads(bert):
    last = json.loads(
        cli_ok(["find-head", "cat", "mat", TEXT, "--layers", "-1", "-k", "0", "--json", "-m", bert]).stdout
    )
    assert {r["layer"] for r in last} == {1}
    both = json.loads(
        cli_ok(["find-head", "cat", "mat", TEXT, "--layers", "0,-1", "-k", "0", "--json", "-m", bert]).stdout
    )
    assert {r["layer"] for r in both} == {0, 1}
    one = json.loads(
        cli_ok(["find-head", "cat", "mat", TEXT, "--layer", "-1", "-k", "0", "--json", "-m", bert]).stdout
    )
    assert one == last
    rows = json.loads(
        cli_ok(["heads", TEXT, "--layers", "-1", "--heads", "-2--1", "--json", "-m", bert]).stdout
    )
    assert {(r["layer"], r["head"]) for r in rows} == {(1, 2), (1, 3)}


def test_find_head_takes_the_text_as_third_argument_and_phrases(bert):
    out = cli_ok(["find-head", "the cat", "mat", "The cat sat on the mat.", "-m", bert]).stdout
    assert "A 'The cat' = tokens 1, 2" in out and "B 'mat' = token 6" in out
    rows = json.loads(cli_ok(["find-head", "the cat", "mat", "The cat sat on the mat.", "-m", bert,
                           "-k", "0", "--json"]).stdout)  # fmt: skip
    from attnviz.extraction import extract

    att = extract("The cat sat on the mat.", bert)
    by_hand = att.attn[:, :, [1, 2]][:, :, :, [6]].sum(-1).mean(-1)  # mean over A's pieces, sum over B's
    for r in rows:
        assert r["a2b"] == pytest.approx(float(by_hand[r["layer"], r["head"]]), abs=1e-6)


def test_no_special_encodes_the_words_alone(bert):
    with_special = cli_ok(["find-head", "@0", "mat", TEXT, "-m", bert]).stdout
    without = cli_ok(["find-head", "@0", "mat", TEXT, "-m", bert, "--no-special"]).stdout
    assert "A '[CLS]' = token 0" in with_special and "B 'mat' = token 6" in with_special
    assert "A 'the' = token 0" in without and "B 'mat' = token 5" in without
    rows = json.loads(cli_ok(["heads", TEXT, "-m", bert, "--no-special", "--json"]).stdout)
    from attnviz.analyses.aggregate import without_special
    from attnviz.extraction import extract
    from attnviz.heads.patterns import head_patterns

    att = extract(TEXT, bert)
    hidden = {(r.layer, r.head): r.scores for r in head_patterns(without_special(att)).rows()}
    shown = {(r.layer, r.head): r.scores for r in head_patterns(att).rows()}
    for r in rows:  # the scores of the rows without [CLS]/[SEP], renormalised: not those with them
        assert {p: r[p] for p in PATTERNS} == pytest.approx(hidden[r["layer"], r["head"]], abs=1e-6)
    assert any(abs(r["first"] - shown[r["layer"], r["head"]]["first"]) > 1e-3 for r in rows)


def test_usage_errors_are_one_line_through_the_console_script(tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    script = Path(sys.executable).with_name("attnviz")
    if not script.exists():
        pytest.skip("the attnviz console script is not installed in this environment")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    for args, needle in (
        (["heads", "a b", "--threshold", "2"], "bad --threshold 2"),
        (["heatmap", "a b", "--layer", "0,2"], "--layers 0,2"),
        (["find-head", "x"], "Missing argument 'B'"),
    ):
        out = subprocess.run([str(script), *args], capture_output=True, text=True, env=env, cwd=tmp_path)
        lines = out.stderr.strip().splitlines()
        assert out.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), out.stderr
        assert needle in lines[0] and "Traceback" not in out.stderr
