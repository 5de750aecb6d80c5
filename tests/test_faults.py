"""Fault injection (issue 30, parts 2-4): planted links and hard links, files named like ours,
poison records, leftovers of kill -9, a full disk, and damaged runs. Each ends in a rejected line
or one `error:` line (exit 2); no file attnviz did not write changes, no committed text is lost.

A full disk is a real small tmpfs where this machine lets the tests mount one (root), else writes
made to fail with ENOSPC.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import one_line_error
from typer.testing import CliRunner

from attnviz.batch import HEADS_DIR, PLOTS_DIR, REJECTS_FILE, RUN_FILE, Item, Reject, read_corpus
from attnviz.batch import run_batch_analysis as run
from attnviz.batch.config import make_config
from attnviz.models.loading import load_model

runner = CliRunner()
TEXTS = [f"The cat number {i} sat on the mat." for i in range(6)]


def app():
    from attnviz.cli import app

    return app


@pytest.fixture(scope="module")
def tiny(tiny_model_path):
    return load_model(str(tiny_model_path("bert")), device="cpu")


@pytest.fixture(scope="module")
def finished(tiny, tmp_path_factory) -> Path:
    """A complete run of two parts (and a rejected line) over corpus.txt, made once."""
    root = tmp_path_factory.mktemp("finished")
    corpus = root / "corpus.txt"
    corpus.write_text("\n".join([*TEXTS[:3], "", *TEXTS[3:]]) + "\n", encoding="utf-8")
    run(corpus, make_config(texts_per_part=3, plots=False), root / "OUT", model=tiny)
    return root


@pytest.fixture
def previous(finished, tmp_path) -> Path:
    """A copy of the finished run (its folder OUT and its corpus.txt) in this test's folder, as if
    it had been killed before its end."""
    out = tmp_path / "OUT"
    shutil.copytree(finished / "OUT", out)
    shutil.copy(finished / "corpus.txt", tmp_path / "corpus.txt")
    data = json.loads((out / RUN_FILE).read_text())
    data["input"]["path"] = str((tmp_path / "corpus.txt").resolve())  # the run was over this copy
    data["status"] = "interrupted"  # killed before its end: --resume reads its parts and rejects
    (out / RUN_FILE).write_text(json.dumps(data))
    return out


def _resume(tiny, tmp_path: Path, out: Path):
    return run(
        tmp_path / "corpus.txt", make_config(texts_per_part=3, plots=False), out, model=tiny, resume=True
    )


@pytest.fixture
def no_model(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the error")

    monkeypatch.setattr("attnviz.cli._options.load", refuse)


def _cli(*args: str):
    return runner.invoke(app(), list(args))


# -- 2. files attnviz did not write ------------------------------------------------------------
@pytest.mark.parametrize("name", ["._run.json.tmp", "._summary.csv.tmp"])
def test_a_link_planted_under_a_temporary_name_is_never_written_through(tiny, tmp_path, name):
    mine = tmp_path / "mine.txt"
    mine.write_text("the user's file")
    out = tmp_path / "OUT"
    out.mkdir()
    (out / name).symlink_to(mine)
    run(TEXTS, make_config(plots=False), out, model=tiny)
    assert mine.read_text() == "the user's file"
    assert json.loads((out / RUN_FILE).read_text())["status"] == "complete"


def test_a_link_planted_before_resume_is_never_written_through(tiny, previous, tmp_path):
    mine = tmp_path / "mine.txt"
    mine.write_text("the user's file")
    for name in ("._run.json.tmp", "._summary.csv.tmp"):
        (previous / name).symlink_to(mine)
    run(
        tmp_path / "corpus.txt", make_config(texts_per_part=3, plots=False), previous, model=tiny, resume=True
    )
    assert mine.read_text() == "the user's file"


def test_a_hard_linked_rejects_file_is_never_appended_to(previous, tmp_path, no_model):
    mine = tmp_path / "mine.jsonl"
    (previous / REJECTS_FILE).unlink()
    mine.write_text("the user's own lines\n")
    os.link(mine, previous / REJECTS_FILE)
    result = _cli("batch", str(tmp_path / "corpus.txt"), "-o", str(previous), "--resume")
    one_line_error(result, "_rejects.jsonl is a hard link")
    assert mine.read_text() == "the user's own lines\n"


def test_overwrite_keeps_a_users_file_named_like_a_plot(previous, tmp_path, no_model):
    """The run kept no plots; `_plots/entropy.png` is the user's: refused, kept."""
    (previous / PLOTS_DIR).mkdir()
    (previous / PLOTS_DIR / "entropy.png").write_bytes(b"my figure")
    result = _cli("batch", str(tmp_path / "corpus.txt"), "-o", str(previous), "--overwrite")
    one_line_error(result, "_plots/entropy.png is not a file this run wrote")
    assert (previous / PLOTS_DIR / "entropy.png").read_bytes() == b"my figure"


def test_overwrite_keeps_a_part_replaced_by_the_user(previous, tmp_path, no_model):
    """A file named exactly like a part, with other bytes than the run wrote, is not deleted."""
    part = previous / HEADS_DIR / "part-00001.parquet"
    part.write_bytes(b"the user's own table")
    result = _cli("batch", str(tmp_path / "corpus.txt"), "-o", str(previous), "--overwrite")
    one_line_error(result, "part-00001.parquet is not a file this run wrote")
    assert part.read_bytes() == b"the user's own table"


def test_the_manifest_lists_every_file_the_run_wrote_and_overwrite_deletes_them(tiny, tmp_path):
    out = tmp_path / "OUT"
    run(TEXTS, make_config(texts_per_part=4, save_attention=True), out, model=tiny)
    manifest = json.loads((out / RUN_FILE).read_text())["manifest"]
    files = {
        p.relative_to(out).as_posix()
        for p in out.rglob("*")
        if p.is_file() and p.name not in (RUN_FILE, REJECTS_FILE, ".lock")
    }
    assert set(manifest) == files and len(files) == 2 + 2 + 2 + 3  # parts, texts, shards, summary+plots
    run(TEXTS[:1], make_config(plots=False), out, model=tiny, overwrite=True)
    assert sorted(json.loads((out / RUN_FILE).read_text())["manifest"]) == [
        "_summary.csv",
        "_texts/part-00000.parquet",
        "heads/part-00000.parquet",
    ]


# -- 3. poison records ---------------------------------------------------------------------------
POISON = [
    ('{"text": "\\ud800"}', "undecodable"),  # a lone surrogate: the tokenizer raised TypeError
    ('{"text": "ok \\udfff then"}', "undecodable"),
    ('{"text": ' + "1" * 5000 + "}", "malformed_json"),  # over Python's 4300-digit limit: ValueError
    ('{"text": ' + "[" * 100_000 + "]" * 100_000 + "}", "malformed_json"),  # RecursionError
    ('{"text": {"\\ud800": 1}}', "not_text"),
    ('{"text": [1, 2]}', "not_text"),
    ('{"text": "\\u200b\\u200d\\ufeff \\u2060"}', "empty"),  # only zero-width characters
]


@pytest.mark.parametrize(("line", "reason"), POISON, ids=[r for _, r in POISON])
def test_a_poison_record_is_a_rejected_line(tmp_path, line, reason):
    path = tmp_path / "c.jsonl"
    path.write_text(line + '\n{"text": "fine"}\n', encoding="utf-8")
    first, second = list(read_corpus(path))
    assert isinstance(first, Reject) and first.reason == reason, first
    json.dumps(first.as_dict(), ensure_ascii=False).encode("utf-8")  # the reject line can be written
    assert second == Item(1, 2, "fine")


def test_a_lone_surrogate_is_rejected_from_python_too(tmp_path):
    first, second = list(read_corpus(["caf\udce9", "fine"]))
    assert first.reason == "undecodable" and "\\udce9" in first.excerpt and second.text == "fine"


def test_a_poison_record_never_stops_a_run_or_a_resume(tiny, tmp_path):
    corpus = tmp_path / "c.jsonl"
    corpus.write_text('{"text": "one"}\n{"text": "\\ud800"}\n{"text": "three"}\n', encoding="utf-8")
    config = make_config(plots=False)
    done = run(corpus, config, tmp_path / "OUT", model=tiny)
    assert (done.processed, done.rejected, done.status) == (2, 1, "complete")
    again = run(corpus, config, tmp_path / "OUT", model=tiny, resume=True)
    assert (again.total_processed, again.total_rejected) == (2, 1)


def test_a_line_without_end_is_rejected_as_too_long_without_holding_it(tmp_path):
    """A stream with no newline (/dev/zero, a binary file): read in pieces, rejected as too long."""
    from attnviz.batch.corpus import MAX_LINE_BYTES

    path = tmp_path / "zeros.txt"
    with open(path, "wb") as f:
        f.write(b"\0" * (MAX_LINE_BYTES * 2 + 5) + b"\nnext line\n")
    first, second = list(read_corpus(path))
    assert first.reason == "too_long" and len(first.excerpt) <= 80
    assert second == Item(1, 2, "next line")


# -- 3. leftovers of kill -9 ---------------------------------------------------------------------
_KILLED = """
import os, signal, sys
from attnviz.outputs import atomic_output
with atomic_output(sys.argv[1]) as tmp:
    tmp.write_bytes(b"x" * 1000)
    os.kill(os.getpid(), signal.SIGKILL)
"""


def test_the_next_write_of_an_output_removes_a_killed_writers_temporary_file(tmp_path):
    from attnviz.outputs import atomic_output

    target = tmp_path / "out.safetensors"
    done = subprocess.run([sys.executable, "-c", _KILLED, str(target)], capture_output=True)
    assert done.returncode == -signal.SIGKILL
    left = [p.name for p in tmp_path.iterdir()]
    assert len(left) == 1 and left[0].startswith(".out.safetensors.tmp"), left  # what kill -9 leaves
    (tmp_path / ".other.png.tmp1-abc.png").write_bytes(b"another output's: kept")
    with atomic_output(target) as tmp:
        tmp.write_bytes(b"new")
    assert sorted(p.name for p in tmp_path.iterdir()) == [".other.png.tmp1-abc.png", "out.safetensors"]


def _dead_pid() -> int:
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True)
    return int(done.stdout)


def test_extract_o_removes_what_a_killed_extract_left(bert, tmp_path):
    """`extract -o x.safetensors` killed with -9 left `.x.safetensors.tmpPID-*` (70 MB for 512
    tokens); the next `extract -o` of the same file removes it."""
    stale = tmp_path / f".x.safetensors.tmp{_dead_pid()}-k2j4h5.safetensors"
    stale.write_bytes(b"\0" * 1000)
    result = _cli("extract", "the cat sat", "-m", bert, "-o", str(tmp_path / "x.safetensors"))
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.safetensors"]


def test_an_endless_line_is_rejected_before_its_end(tmp_path):
    """Standard input from /dev/zero never ends: its reject comes at once (then it reads on, flat)."""
    from attnviz.batch.corpus import MAX_LINE_BYTES, _read_txt

    with open("/dev/zero", "rb") as zeros:
        first = next(_read_txt(zeros))
    assert first.reason == "too_long" and f"{MAX_LINE_BYTES // 2**20} MiB" in first.detail


def test_a_live_writers_temporary_file_is_kept(tmp_path):
    from attnviz.outputs import atomic_output

    live = tmp_path / f".out.png.tmp{os.getppid()}-abcd.png"  # our parent runs: its file is in use
    live.write_bytes(b"being written")
    with atomic_output(tmp_path / "out.png") as tmp:
        tmp.write_bytes(b"png")
    assert live.exists()


# -- 3. a full disk ------------------------------------------------------------------------------
@pytest.fixture
def small_disk(tmp_path):
    """A real 1 MiB tmpfs, when this machine lets the tests mount one (root); else skipped."""
    mount = tmp_path / "disk"
    mount.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def _fill(disk: Path, leave: int) -> None:
    """Fill the disk, leaving about `leave` bytes."""
    free = shutil.disk_usage(disk).free
    with open(disk / "filler", "wb") as f, contextlib.suppress(OSError):
        f.write(b"\0" * max(0, free - leave))


def test_save_attention_on_a_full_disk_is_one_line(bert, small_disk, tmp_path):
    corpus = tmp_path / "c.txt"
    corpus.write_text("\n".join(TEXTS * 60) + "\n", encoding="utf-8")
    out = small_disk / "OUT"
    result = _cli(
        "batch", str(corpus), "-o", str(out), "-m", bert, "--save-attention", "--texts-per-part", "8"
    )
    one_line_error(result, "no space left on", "--resume")
    assert json.loads((out / RUN_FILE).read_text())["status"] == "failed"


def test_save_attention_full_disk_injected(bert, tmp_path, monkeypatch):
    """The same where no tmpfs can be mounted: safetensors' own error for ENOSPC."""
    import safetensors.numpy
    from safetensors import SafetensorError

    def full(*args, **kwargs):
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr(safetensors.numpy, "save_file", full)
    corpus = tmp_path / "c.txt"
    corpus.write_text("\n".join(TEXTS) + "\n", encoding="utf-8")
    result = _cli("batch", str(corpus), "-o", str(tmp_path / "OUT"), "-m", bert, "--save-attention")
    one_line_error(result, "no space left on", "--resume")


def test_rejects_on_a_full_disk_is_the_clean_line(bert, small_disk, tmp_path):
    """Rejects fill the disk: the one line says so (the second flush on close used to hide it)."""
    corpus = tmp_path / "c.jsonl"
    corpus.write_text('{"no": "text here, rejected with an excerpt of it"}\n' * 30_000, encoding="utf-8")
    out = small_disk / "OUT"
    result = _cli("batch", str(corpus), "-o", str(out), "-m", bert)
    one_line_error(result, "no space left on", "--resume")


def test_rejects_full_disk_injected(tiny, tmp_path, monkeypatch):
    from attnviz.batch import OutputError, integrity

    def full(fd, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(integrity, "append", full)
    with pytest.raises(OutputError, match="no space left on"):
        run(["fine", "   "], make_config(plots=False), tmp_path / "OUT", model=tiny)


def test_view_on_a_full_disk_leaves_no_empty_page(bert, small_disk, monkeypatch):
    monkeypatch.chdir(small_disk)
    _fill(small_disk, 4096)
    result = _cli("view", "the cat sat on the mat", "-m", bert)
    assert result.exit_code == 2, result.output
    assert not list((small_disk / "outputs").glob("view-*")) if (small_disk / "outputs").exists() else True


def test_view_full_disk_injected(bert, tmp_path, monkeypatch):
    real = Path.write_text

    def full(self, *args, **kwargs):
        if self.name.startswith(".view-"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", full)
    result = _cli("view", "the cat sat on the mat", "-m", bert)
    one_line_error(result, "No space left")
    assert list((tmp_path / "outputs").iterdir()) == []


# -- 3. damaged runs -----------------------------------------------------------------------------
def test_overwrite_refuses_a_run_without_a_manifest(previous, tmp_path, no_model):
    """A run written before the manifest existed: nothing says which files are its own."""
    data = json.loads((previous / RUN_FILE).read_text())
    del data["manifest"]
    (previous / RUN_FILE).write_text(json.dumps(data))
    result = _cli("batch", str(tmp_path / "corpus.txt"), "-o", str(previous), "--overwrite")
    one_line_error(result, "is not a file this run wrote")
    assert (previous / HEADS_DIR / "part-00000.parquet").exists()


def test_a_complete_run_with_a_part_moved_away_is_resumed_not_called_done(tiny, previous, tmp_path):
    data = json.loads((previous / RUN_FILE).read_text())
    data["status"] = "complete"
    (previous / RUN_FILE).write_text(json.dumps(data))
    (previous / HEADS_DIR / "part-00000.parquet").rename(tmp_path / "damaged.parquet")
    done = _resume(tiny, tmp_path, previous)
    assert (done.processed, done.total_processed) == (3, 6)


def test_resume_over_a_cut_part_names_it(previous, tmp_path, no_model):
    part = previous / HEADS_DIR / "part-00001.parquet"
    part.write_bytes(part.read_bytes()[:100])
    result = _cli("batch", str(tmp_path / "corpus.txt"), "-o", str(previous), "--resume")
    one_line_error(result, "part-00001.parquet is damaged", "move it away")


def test_a_cut_part_moved_away_has_its_texts_analysed_again(tiny, previous, tmp_path):
    (previous / HEADS_DIR / "part-00001.parquet").rename(tmp_path / "cut.parquet")
    done = run(
        tmp_path / "corpus.txt", make_config(texts_per_part=3, plots=False), previous, model=tiny, resume=True
    )
    assert (done.processed, done.total_processed, done.total_rejected) == (3, 6, 1)


@pytest.mark.parametrize(
    ("key", "value"),
    [("input", "x"), ("sessions", 5), ("counts", []), ("identity", "x"), ("manifest", [1]), ("status", 3)],
)
@pytest.mark.parametrize("flag", ["--resume", "--overwrite"])
def test_wrong_types_in_run_json_are_one_line(previous, tmp_path, no_model, key, value, flag):
    data = json.loads((previous / RUN_FILE).read_text())
    data[key] = value
    (previous / RUN_FILE).write_text(json.dumps(data))
    result = _cli("batch", str(tmp_path / "corpus.txt"), "-o", str(previous), flag)
    one_line_error(result, "_run.json is damaged", f"'{key}'")


@pytest.mark.parametrize(
    "line",
    [
        '{"text_id": "abc", "line": 1, "reason": "empty", "detail": "", "excerpt": ""}',
        "[1]",
        "not json",
        "{}",
    ],
)
def test_a_hand_edited_rejects_file_is_one_line(previous, tmp_path, no_model, line):
    with open(previous / REJECTS_FILE, "a") as f:
        f.write(line + "\n")
    result = _cli("batch", str(tmp_path / "corpus.txt"), "-o", str(previous), "--resume")
    one_line_error(result, "_rejects.jsonl line 2 is not a reject attnviz wrote")


def test_a_text_both_analysed_and_rejected_is_refused(tiny, previous, tmp_path):
    """A reject line added by hand for a committed text would count it twice: refused."""
    line = {"text_id": 0, "line": 1, "reason": "empty", "detail": "by hand", "excerpt": ""}
    with open(previous / REJECTS_FILE, "a") as f:
        f.write(json.dumps(line) + "\n")
    from attnviz.errors import InputError

    with pytest.raises(InputError, match=r"text 0 is both in a committed part and in _rejects\.jsonl"):
        _resume(tiny, tmp_path, previous)
