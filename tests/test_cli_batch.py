"""`attnviz batch` on the command line: outputs, config files, rejects, refusals, kill and resume."""

from __future__ import annotations

import gzip
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from helpers import assert_png_of, image_values, one_line_error, tick_labels
from typer.testing import CliRunner

from attnviz.cli import app

runner = CliRunner()

SENTENCES = [
    "Emily always wanted to visit Paris so she took some French lessons.",
    "The trophy did not fit in the suitcase because it was too big.",
    "The cat sat on the mat, and the cat slept.",
    "Attention is a weighted average of value vectors.",
    "A dog chased the cat across the garden while the bird sang.",
]


def _corpus(path: Path, n: int, extra: bytes = b"") -> Path:
    lines = [f"{SENTENCES[i % len(SENTENCES)]} This is sentence number {i}." for i in range(n)]
    path.write_bytes(("\n".join(lines) + "\n").encode() + extra)
    return path


@pytest.mark.slow
def test_batch_end_to_end(minilm, tmp_path, monkeypatch, figures):
    saved = figures
    corpus = _corpus(tmp_path / "c.txt", 6, extra=b"\n\xff\xfe\n" + b"word " * 600 + b"\n")
    result = runner.invoke(
        app, ["batch", str(corpus), "-o", "out", "--probe", "she:Emily", "--layers", "0,5"]
    )
    assert result.exit_code == 0, result.output
    last = result.stdout.strip().splitlines()[-1]
    assert last.startswith("done: 6 texts processed, 3 rejected") and "texts/s" in last
    assert "━" not in result.stderr  # no progress bar when stderr is not a terminal
    frame = pd.read_parquet("out")  # the README's read-back line
    assert len(frame) == 6 * 2 * 12 and set(frame.layer) == {0, 5}
    lowest = frame.groupby(["layer", "head"])["entropy"].mean().nsmallest(5)
    summary = pd.read_csv("out/_summary.csv").set_index(["layer", "head"])["entropy_mean"]
    assert list(lowest.index) == list(summary.nsmallest(5).index)  # the long table and the summary agree
    np.testing.assert_allclose(lowest.to_numpy(), summary.nsmallest(5).to_numpy(), rtol=1e-5)
    assert lowest.iloc[0] == frame["entropy"].groupby([frame["layer"], frame["head"]]).mean().min()
    assert {"probe_she_emily_ab", "probe_she_emily_ba", "pattern_first"} <= set(frame.columns)
    reasons = [json.loads(x)["reason"] for x in Path("out/_rejects.jsonl").read_text().splitlines()]
    assert reasons == ["empty", "undecodable", "too_long"]
    grid = pd.read_csv("out/_summary.csv").set_index(["layer", "head"])
    np.testing.assert_allclose(
        image_values(saved["entropy.png"]), grid["entropy_mean"].to_numpy().reshape(2, 12), rtol=1e-5
    )
    assert tick_labels(saved["role.png"], "y") == ["L0", "L5"]  # one labelling everywhere (issue 31)
    for name in ("entropy.png", "role.png"):
        assert_png_of(Path("out/_plots") / name, saved[name])
    run = json.loads(Path("out/_run.json").read_text())
    assert run["counts"] == {"texts": 6, "rejected": 3, "parts": 1, "rows": 144}
    # --truncate keeps the long line instead
    again = runner.invoke(app, ["batch", str(corpus), "-o", "out", "--truncate", "--overwrite", "--json"])
    assert again.exit_code == 0, again.output
    assert json.loads(again.stdout)["processed"] == 7


def _readme_block(needle: str) -> str:
    """The batch guide's python block holding `needle` (docs/batch.md, else README.md)."""
    root = Path(__file__).resolve().parents[1]
    for doc in (root / "docs" / "batch.md", root / "README.md"):
        if doc.is_file():
            for block in re.findall(r"```python\n(.*?)```", doc.read_text(encoding="utf-8"), re.S):
                if needle in block:
                    return block
    raise AssertionError(f"no README python block holds {needle!r}")


@pytest.mark.slow
def test_readme_read_back_lines_run(minilm, tmp_path, capsys):
    corpus = _corpus(tmp_path / "c.txt", 4)
    assert runner.invoke(app, ["batch", str(corpus), "-o", "out", "--no-plots"]).exit_code == 0
    block = _readme_block('pd.read_parquet("out")')
    assert len(block.strip().splitlines()) == 3  # the three-line example
    exec(compile(block, "README", "exec"), {})
    printed = capsys.readouterr().out
    assert "entropy" in printed and "layer" in printed


@pytest.mark.slow
def test_config_file_with_command_line_overrides(minilm, tmp_path):
    Path("configs").mkdir()
    Path("configs/mine.toml").write_text(
        '[statistics]\nkeep = ["entropy"]\n[output]\nplots = false\n'
        '[[probes]]\nname = "it_trophy"\na = "it"\nb = "trophy"\n'
    )
    shown = runner.invoke(
        app, ["batch", "x.txt", "-o", "out", "-c", "mine", "--stats", "entropy,special", "--show-config"]
    )
    assert shown.exit_code == 0, shown.output
    assert 'keep = ["entropy", "special"]' in shown.stdout and 'name = "it_trophy"' in shown.stdout
    corpus = _corpus(tmp_path / "c.jsonl", 0)
    corpus.write_text("\n".join(json.dumps({"body": s}) for s in SENTENCES) + "\n")
    result = runner.invoke(
        app,
        ["batch", str(corpus), "-o", "out", "-c", "mine", "--field", "body", "--stats", "entropy,special"],
    )
    assert result.exit_code == 0, result.output
    frame = pd.read_parquet("out")
    assert list(frame.columns) == [
        "text_id",
        "layer",
        "head",
        "n_tokens",
        "entropy",
        "special",
        "probe_it_trophy_ab",
        "probe_it_trophy_ba",
    ]
    assert frame.loc[frame.text_id == 1, "probe_it_trophy_ab"].notna().all()
    assert frame.loc[frame.text_id == 0, "probe_it_trophy_ab"].isna().all()
    assert not Path("out/_plots").exists()


@pytest.mark.slow
def test_standard_input_and_refusals(minilm):
    result = runner.invoke(
        app, ["batch", "-", "-o", "out", "--stats", "entropy"], input="one text\ntwo texts\n"
    )
    assert result.exit_code == 0, result.output
    assert "done: 2 texts processed, 0 rejected" in result.stdout
    same = runner.invoke(app, ["batch", "-", "-o", "out", "--stats", "entropy"], input="one text\n")
    one_line_error(same, "already holds this run", "--resume")
    other = runner.invoke(app, ["batch", "-", "-o", "out"], input="one text\n")
    one_line_error(other, "different run", "--overwrite")
    one_line_error(runner.invoke(app, ["batch", "missing.txt", "-o", "o2"]), "no such input file")
    one_line_error(runner.invoke(app, ["batch", "-", "-o", "o3", "--probe", "nocolon"]), "bad probe")
    Path("t.csv").write_text("id,text\n1,hi\n")
    one_line_error(runner.invoke(app, ["batch", "t.csv", "-o", "o4", "--column", "body"]), "no column 'body'")


def _start(corpus: Path, out: Path) -> subprocess.Popen:
    cmd = [sys.executable, "-c", "from attnviz.cli import main; main()", "batch", str(corpus), "-o", str(out)]
    cmd += ["--batch-size", "1", "--texts-per-part", "10", "--threads", "1", "--no-plots"]
    return subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=os.environ.copy()
    )


def _wait_for_first_part(proc: subprocess.Popen, out: Path) -> None:
    deadline = time.monotonic() + 120
    while not (out / "heads" / "part-00000.parquet").exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "no part was committed in time"
        time.sleep(0.02)


@pytest.mark.slow
def test_killed_run_resumes_without_duplicates_or_gaps(minilm, tmp_path):
    corpus = _corpus(tmp_path / "c.txt", 300)
    out = tmp_path / "out"
    proc = _start(corpus, out)
    _wait_for_first_part(proc, out)
    proc.kill()  # SIGKILL: no chance to clean up
    proc.wait()
    run = json.loads((out / "_run.json").read_text())
    assert run["status"] == "running"  # it never got to say otherwise
    before = pd.read_parquet(out).text_id.nunique()
    assert 10 <= before < 300
    result = runner.invoke(app, ["batch", str(corpus), "-o", str(out), "--resume", "--no-plots"])
    assert result.exit_code == 0, result.output
    assert f"done: 300 texts processed ({300 - before} now, {before} before), 0 rejected" in result.stdout
    frame = pd.read_parquet(out)
    assert sorted(frame.text_id.unique()) == list(range(300))
    assert frame.groupby(["text_id", "layer", "head"]).size().max() == 1
    assert len(frame) == 300 * 72


@pytest.mark.slow
def test_sigterm_commits_finished_batches_and_says_how_to_resume(minilm, tmp_path):
    corpus = _corpus(tmp_path / "c.txt", 300)
    out = tmp_path / "out"
    proc = _start(corpus, out)
    _wait_for_first_part(proc, out)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "interrupted" in err and "--resume" in err
    run = json.loads((out / "_run.json").read_text())
    assert run["status"] == "interrupted"
    assert run["counts"]["texts"] == pd.read_parquet(out).text_id.nunique()


# -- trust: one-line exit-2 answers, given before any model loads ---------------------------------
@pytest.mark.parametrize(
    "args",
    [
        ["--layers", "3-1"],
        ["--heads", "3-1"],
        ["--layers", ""],
        ["--heads", "a,b"],
        ["--layers=-1--3"],
        ["--heads", "0,,2"],
    ],
)
def test_selections_answer_as_extract_does(no_model, tmp_path, args):
    corpus = _corpus(tmp_path / "c.txt", 2)
    batch = runner.invoke(app, ["batch", str(corpus), "-o", "out", *args])
    extract = runner.invoke(app, ["extract", "some text", *args])
    one_line_error(batch, args[0].split("=")[0])
    assert batch.stderr == extract.stderr and extract.exit_code == 2
    assert not Path("out").exists()


def test_config_selections_name_the_file(no_model, tmp_path):
    corpus = _corpus(tmp_path / "c.txt", 2)
    Path("bad.toml").write_text("[run]\nlayers = '3-1'\n")
    one_line_error(
        runner.invoke(app, ["batch", str(corpus), "-o", "out", "-c", "bad.toml"]),
        "bad layers in bad.toml range '3-1'",
    )
    Path("trust.toml").write_text("[model]\ntrust_remote_code = true\n")
    one_line_error(
        runner.invoke(app, ["batch", str(corpus), "-o", "out", "-c", "trust.toml"]),
        "trust.toml",
        "--trust-remote-code",
    )


def test_bad_inputs_and_folders_are_refused_before_the_model(no_model, tmp_path, monkeypatch):
    corpus = _corpus(tmp_path / "c.txt", 2)
    Path("fake.txt.gz").write_text("not compressed\n")
    one_line_error(runner.invoke(app, ["batch", "fake.txt.gz", "-o", "o1"]), "not gzip-compressed")
    Path("empty.txt").write_bytes(b"")
    one_line_error(runner.invoke(app, ["batch", "empty.txt", "-o", "o2"]), "empty.txt is empty")
    one_line_error(
        runner.invoke(app, ["batch", str(corpus), "-o", "o3", "--probe", "a b=she:Emily"]),
        "bad probe name 'a b'",
    )
    # the example: a folder of the user's own with a heads/ sub-folder, and --overwrite
    Path("u/heads").mkdir(parents=True)
    Path("u/heads/important.txt").write_text("notes")
    one_line_error(
        runner.invoke(app, ["batch", str(corpus), "-o", "u", "--overwrite"]), "no attnviz run wrote it"
    )
    assert Path("u/heads/important.txt").read_text() == "notes"
    # another run holds the folder
    from attnviz.batch import BatchConfig, OutputFolder

    with OutputFolder("busy", BatchConfig(), ["x"], False, False):
        one_line_error(runner.invoke(app, ["batch", str(corpus), "-o", "busy"]), "another attnviz batch")
    assert not any(Path(p).exists() for p in ("o1", "o2", "o3"))

    import errno
    import pathlib

    def read_only(self, *a, **k):
        raise PermissionError(errno.EROFS, "Read-only file system", str(self))

    monkeypatch.setattr(pathlib.Path, "mkdir", read_only)
    one_line_error(runner.invoke(app, ["batch", str(corpus), "-o", "ro/out"]), "read-only file system", "-o")


def test_cut_short_gz_and_empty_input_are_one_line_errors(bert, tmp_path):
    data = gzip.compress(("\n".join(SENTENCES * 4) + "\n").encode())
    Path("cut.txt.gz").write_bytes(data[:-12])
    cut = runner.invoke(app, ["batch", "cut.txt.gz", "-o", "o1", "-m", bert, "--texts-per-part", "4"])
    one_line_error(cut, "cut.txt.gz", "cut short", "texts before it are committed")
    assert json.loads(Path("o1/_run.json").read_text())["status"] == "failed"
    for stdin in ("", "\n"[:0]):
        closed = runner.invoke(app, ["batch", "-", "-o", "o2", "-m", bert], input=stdin)
        one_line_error(closed, "nothing was read: standard input held no records")
        assert not Path("o2").exists()


def test_disk_full_is_one_line_and_says_how_to_go_on(bert, tmp_path, monkeypatch):
    import errno

    from attnviz.batch.store import Store

    corpus = _corpus(tmp_path / "c.txt", 12)
    real = Store._write_table
    calls = {"n": 0}

    def fill_up(self, path, table):
        calls["n"] += 1
        if calls["n"] > 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        real(self, path, table)

    monkeypatch.setattr(Store, "_write_table", fill_up)
    args = [
        "batch",
        str(corpus),
        "-o",
        "out",
        "-m",
        bert,
        "--texts-per-part",
        "4",
        "--no-plots",
        "--truncate",
    ]
    full = runner.invoke(app, args)
    one_line_error(
        full, "no space left on out; nothing committed is lost, free space and rerun with --resume"
    )
    assert sorted(pd.read_parquet("out").text_id.unique()) == [0, 1, 2, 3]
    monkeypatch.setattr(Store, "_write_table", real)
    again = runner.invoke(app, [*args, "--resume"])
    assert again.exit_code == 0, again.output
    assert "done: 12 texts processed (8 now, 4 before), 0 rejected" in again.stdout


def test_resuming_a_complete_run_loads_no_model(bert, tmp_path, monkeypatch):
    import attnviz.models.loading

    corpus = tmp_path / "c.txt"
    corpus.write_text("the cat sat\n\nthe dog ran\na bird flew\n")
    out = tmp_path / "out"
    args = ["batch", str(corpus), "-o", str(out), "-m", bert, "--no-plots"]
    assert runner.invoke(app, args).exit_code == 0
    real = attnviz.models.loading.load_model

    def refuse(*a, **kw):
        raise AssertionError("a model was loaded to resume a complete run")

    monkeypatch.setattr(attnviz.models.loading, "load_model", refuse)
    again = runner.invoke(app, [*args, "--resume"])
    assert again.exit_code == 0, again.output
    assert "done: 3 texts processed (0 now, 3 before), 1 rejected" in again.stdout
    assert "nothing left to do" in again.stderr
    from attnviz.batch import run_batch_analysis
    from attnviz.batch.config import make_config

    done = run_batch_analysis(corpus, make_config(model=bert, plots=False), out, resume=True)
    assert (done.status, done.processed, done.total_processed, done.total_rejected) == ("complete", 0, 3, 1)
    with corpus.open("a") as f:
        f.write("one more text\n")  # a record the run has not seen: the model is needed again
    monkeypatch.setattr(attnviz.models.loading, "load_model", real)
    more = runner.invoke(app, [*args, "--resume"])
    assert more.exit_code == 0, more.output
    assert "done: 4 texts processed (1 now, 3 before), 1 rejected" in more.stdout
