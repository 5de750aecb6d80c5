"""The batch output folder's safety (issue 24): --overwrite and --resume never delete, follow or
read what attnviz did not write; they refuse in one line, before the model loads, and change nothing."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from attnviz.batch import HEADS_DIR, REJECTS_FILE, RUN_FILE, run_batch_analysis
from attnviz.batch.config import make_config

runner = CliRunner()
TEXTS = [f"The cat sat on the mat number {i}." for i in range(6)]


@pytest.fixture(scope="module")
def finished_run(tiny_bert, tmp_path_factory) -> Path:
    """A finished run of two parts, made once through the API (the CLI below never gets to a model)."""
    out = tmp_path_factory.mktemp("run") / "OUT"
    run_batch_analysis(TEXTS, make_config(texts_per_part=3, plots=False), out, model=tiny_bert)
    assert sorted(p.name for p in (out / HEADS_DIR).iterdir()) == ["part-00000.parquet", "part-00001.parquet"]
    return out


@pytest.fixture
def previous_run(finished_run, tmp_path) -> Path:
    """A copy of the finished run for one test to spoil."""
    out = tmp_path / "OUT"
    shutil.copytree(finished_run, out)
    return out


def _snapshot(folder: Path) -> dict[str, bytes | str]:
    """Every entry under `folder`, links as their targets (not followed), files as their bytes."""
    out: dict[str, bytes | str] = {}
    for root, dirs, files in os.walk(folder):
        for name in dirs + files:
            path = Path(root) / name
            rel = str(path.relative_to(folder))
            if path.is_symlink():
                out[rel] = "-> " + os.readlink(path)
            elif path.is_file():
                out[rel] = path.read_bytes()
    return out


def _refused(out: Path, flag: str, tmp_path: Path, *needles: str) -> None:
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(TEXTS) + "\n")
    before = _snapshot(tmp_path)
    result = runner.invoke(app(), ["batch", str(corpus), "-o", str(out), flag])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    assert _snapshot(tmp_path) == before  # nothing deleted, nothing written, through links or not


def app():
    from attnviz.cli import app

    return app


@pytest.mark.parametrize("flag", ["--overwrite", "--resume"])
def test_heads_linked_to_a_users_folder(previous_run, tmp_path, no_model, flag):
    mine = tmp_path / "mine"
    mine.mkdir()
    for i in range(3):
        (mine / f"part-{i:05d}.parquet").write_bytes(f"user data {i}".encode())
    heads = previous_run / HEADS_DIR
    for part in heads.iterdir():
        part.unlink()
    heads.rmdir()
    heads.symlink_to(mine)
    _refused(previous_run, flag, tmp_path, "heads is a symbolic link")
    assert len(list(mine.iterdir())) == 3


@pytest.mark.parametrize("flag", ["--overwrite", "--resume"])
def test_a_stray_part_beside_a_previous_run(previous_run, tmp_path, no_model, flag):
    (previous_run / HEADS_DIR / "part-1.parquet").write_bytes(b"the user's own table")
    _refused(previous_run, flag, tmp_path, "part-1.parquet is not written by attnviz")
    assert (previous_run / HEADS_DIR / "part-00001.parquet").exists()  # the previous run is whole


@pytest.mark.parametrize("name", [RUN_FILE, REJECTS_FILE, "_summary.csv", ".lock"])
@pytest.mark.parametrize("flag", ["--overwrite", "--resume"])
def test_linked_run_files_are_never_followed(previous_run, tmp_path, no_model, flag, name):
    mine = tmp_path / "mine.txt"
    mine.write_text("the user's own file")
    target = previous_run / name
    if target.exists():
        target.unlink()
    target.symlink_to(mine)
    _refused(previous_run, flag, tmp_path, "symbolic link")


def test_a_linked_part_inside_a_run_folder(previous_run, tmp_path, no_model):
    mine = tmp_path / "mine.parquet"
    mine.write_bytes(b"mine")
    (previous_run / HEADS_DIR / "part-00007.parquet").symlink_to(mine)
    _refused(previous_run, "--overwrite", tmp_path, "part-00007.parquet is a symbolic link")


def test_the_users_other_files_are_kept_and_the_run_replaced(previous_run, tiny_bert, tmp_path):
    """Files that cannot be taken for a part stay where they are, and --overwrite goes ahead."""
    (previous_run / HEADS_DIR / "notes.txt").write_text("mine")
    (previous_run / HEADS_DIR / ".DS_Store").write_bytes(b"finder")
    done = run_batch_analysis(
        TEXTS[:2], make_config(plots=False), previous_run, model=tiny_bert, overwrite=True
    )
    assert done.processed == 2
    names = sorted(p.name for p in (previous_run / HEADS_DIR).iterdir())
    assert names == [".DS_Store", "notes.txt", "part-00000.parquet"]


def test_resume_and_overwrite_together_are_refused_by_the_library(previous_run, tiny_bert, tmp_path):
    """Issue 28: `run_batch_analysis(resume=True, overwrite=True)` replaced the run it was asked to
    continue; only `attnviz batch` refused the pair. The folder stays as it was."""
    from attnviz.batch.store import check_outdir
    from attnviz.errors import InputError, cli_terms

    before = _snapshot(previous_run)
    needle = r"^give resume=True \(continue the run\) or overwrite=True \(replace it\), not both$"
    for call in (
        lambda: run_batch_analysis(
            ["a cat"], make_config(), previous_run, model=tiny_bert, resume=True, overwrite=True
        ),
        lambda: check_outdir(tmp_path / "new", make_config(), ["a cat"], True, True),
    ):
        with pytest.raises(InputError, match=needle) as caught:
            call()
        assert caught.value.render(cli_terms).startswith("give --resume (continue the run) or --overwrite")
    assert _snapshot(previous_run) == before and not (tmp_path / "new").exists()
