"""The run lifecycle both engines share (batch/lifecycle.py), and the default number of threads."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch

from attnviz.batch import HEADS_DIR, RUN_FILE, LocalEngine, OutputFolder, drive, records, run_batch_analysis
from attnviz.batch.config import make_config

TEXTS = [f"The cat number {i} sat on the mat, and the dog watched it." for i in range(7)]


class Recording(LocalEngine):
    """A third engine written against the public protocol: the local one, every stage logged."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.calls: list[str] = []

    def prepare(self):
        self.calls.append("prepare")
        return super().prepare()

    def analyse(self, windows, state):
        self.calls.append("analyse")
        sizes = []

        def seen():
            for window in windows:
                sizes.append(len(window) if isinstance(window, list) else 0)
                yield window

        super().analyse(seen(), state)
        self.calls.append(f"windows {sizes}")

    def salvage(self, state, interrupted):
        self.calls.append(f"salvage interrupted={interrupted}")
        super().salvage(state, interrupted)


def test_any_engine_runs_through_the_one_lifecycle(tiny_bert, tmp_path):
    """`drive` prepares, feeds windows of `texts_per_part`, finishes: the folder run_batch_analysis writes."""
    config = make_config(texts_per_part=3, plots=False)
    folder = OutputFolder(tmp_path / "mine", config, TEXTS, False, False)
    engine = Recording(config, tiny_bert)
    try:
        result = drive(engine, TEXTS, config, folder, None)
    finally:
        folder.release()
    assert engine.calls == ["prepare", "analyse", "windows [3, 3, 1]"]
    assert result.processed == 7 and result.status == "complete"
    reference = run_batch_analysis(TEXTS, config, tmp_path / "ref", model=tiny_bert)
    mine, ref = (pd.read_parquet(r.outdir / HEADS_DIR) for r in (result, reference))
    pd.testing.assert_frame_equal(mine, ref)


def test_an_interrupted_engine_is_asked_to_keep_what_is_complete(tiny_bert, tmp_path):
    config = make_config(texts_per_part=3, plots=False, commit_seconds=3600)

    def stop(progress):
        if progress.processed >= 3:
            raise KeyboardInterrupt

    folder = OutputFolder(tmp_path / "out", config, TEXTS, False, False)
    engine = Recording(config, tiny_bert)
    try:
        with pytest.raises(KeyboardInterrupt):
            drive(engine, TEXTS, config, folder, stop)
    finally:
        folder.release()
    assert engine.calls[-1] == "salvage interrupted=True"
    run = json.loads((tmp_path / "out" / RUN_FILE).read_text())
    assert run["status"] == "interrupted" and run["counts"]["texts"] >= 3  # the pending batch committed


@pytest.mark.parametrize(("load", "free"), [(0.0, 4), (1.2, 3), (3.6, 1), (26.0, 1), (None, 4)])
def test_free_cpus_leaves_the_busy_ones_out(monkeypatch, load, free):
    monkeypatch.setattr(records.os, "sched_getaffinity", lambda pid: {0, 1, 2, 3}, raising=False)
    if load is None:

        def no_load():
            raise OSError("no load average")

        monkeypatch.setattr(records.os, "getloadavg", no_load)
    else:
        monkeypatch.setattr(records.os, "getloadavg", lambda: (load, 0.0, 0.0))
    assert records.free_cpus() == free


def test_the_default_threads_are_the_free_cpus_and_recorded(tiny_bert, tmp_path, monkeypatch):
    """No --threads: torch gets the CPUs other work leaves free (not one per core), and _run.json says so.

    The caller's own setting comes back after the run (a notebook's, or the rest of a test session's).
    """
    before = torch.get_num_threads()
    mine = 3 if before != 3 else 4
    torch.set_num_threads(mine)
    monkeypatch.setattr(records, "free_cpus", lambda: 1)
    try:
        run_batch_analysis(TEXTS[:2], make_config(plots=False), tmp_path / "auto", model=tiny_bert)
        auto = json.loads((tmp_path / "auto" / RUN_FILE).read_text())
        assert auto["engine"] == {"name": "local", "threads": 1} and torch.get_num_threads() == mine
        run_batch_analysis(TEXTS[:2], make_config(plots=False, threads=2), tmp_path / "two", model=tiny_bert)
        two = json.loads((tmp_path / "two" / RUN_FILE).read_text())
        assert two["engine"] == {"name": "local", "threads": 2} and torch.get_num_threads() == mine
        during = [
            torch.get_num_threads() for _ in records.iter_records(TEXTS[:2], make_config(), model=tiny_bert)
        ]
        assert during == [1, 1] and torch.get_num_threads() == mine
    finally:
        torch.set_num_threads(before)
