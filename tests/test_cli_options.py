"""Shared CLI plumbing: the loading status line stays off whenever a command prints JSON."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from attnviz.cli import app

runner = CliRunner()
TEXT = "the cat sat on the mat"
JSON_RUNS = {
    "extract": ["extract", TEXT, "--json"],
    "find-head": ["find-head", "cat", "mat", TEXT, "--json"],
    "heads": ["heads", TEXT, "--json"],
    "entropy": ["entropy", TEXT, "-l", "0", "--head", "0", "--json"],
    "explain": ["explain", TEXT, "-l", "0", "--head", "0", "--json"],
    "rollout": ["rollout", TEXT, "--json"],
    "compare": ["compare", TEXT, "the dog sat on the mat", "--json"],
    "ablate": ["ablate", TEXT, "--layer", "0", "--head", "0", "--json"],
    "batch": ["batch", "corpus.txt", "-o", "out", "--no-plots", "--json"],
}


@pytest.fixture
def spinner_calls(monkeypatch) -> list[bool]:
    """Pretend stderr is a terminal and record each decision of `load` to show the status line."""
    from attnviz.cli import _options

    calls: list[bool] = []
    real = _options.spinner_wanted

    def spy(quiet: bool = False) -> bool:
        calls.append(real(quiet))
        return False  # never draw it under the test runner

    monkeypatch.setattr(_options, "_terminal", lambda: True)
    monkeypatch.setattr(_options, "spinner_wanted", spy)
    return calls


@pytest.mark.parametrize("name", sorted(JSON_RUNS))
def test_json_runs_load_without_the_status_line(tmp_path, monkeypatch, spinner_calls, name, bert):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "corpus.txt").write_text(f"{TEXT}\nthe dog sat on the mat\n")
    model = bert
    args = JSON_RUNS[name]
    args = [*args, "-m", model]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert spinner_calls == [False]


def test_without_json_a_terminal_gets_the_status_line(spinner_calls, bert):
    result = runner.invoke(app, ["heads", TEXT, "-m", bert])
    assert result.exit_code == 0, result.output
    assert spinner_calls == [True]


def test_quiet_or_no_terminal_means_no_status_line(monkeypatch):
    from attnviz.cli import _options

    monkeypatch.setattr(_options, "_terminal", lambda: True)
    assert _options.spinner_wanted() and not _options.spinner_wanted(quiet=True)
    monkeypatch.setattr(_options, "_terminal", lambda: False)
    assert not _options.spinner_wanted()


def _options_named(option: str) -> dict[str, object]:
    import typer

    commands = typer.main.get_command(app).commands
    return {name: p for name, cmd in commands.items() for p in cmd.params if option in p.opts}


def test_every_cmap_option_completes_colour_maps():
    """One --cmap alias everywhere: rollout and compare had a copy without completion (issue 20)."""
    found = _options_named("--cmap")
    assert {"heatmap", "rollout", "compare"} <= set(found)
    for name in found:
        words = f"attnviz {name} --cmap vir"
        env = {"_ATTNVIZ_COMPLETE": "complete_bash", "COMP_WORDS": words, "COMP_CWORD": "3"}
        result = runner.invoke(app, [], env=env, prog_name="attnviz")
        assert "viridis" in result.stdout.split(), (name, result.output)


def test_dpi_reads_the_same_in_every_command():
    """One --dpi alias (heatmap's own says the whole-model grid's default differs)."""
    helps = {name: p.help for name, p in _options_named("--dpi").items() if name != "heatmap"}
    assert len(helps) >= 2 and len(set(helps.values())) == 1, helps
