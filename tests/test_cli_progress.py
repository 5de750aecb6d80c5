"""Progress: the library's `progress(done, total)` callbacks count right, and the CLI turns them into a
rich bar on an interactive stderr only (never off a terminal, never with --json)."""

from __future__ import annotations

import json

import pytest
from helpers import cli_ok

TEXT = "The cat sat on the mat, and the cat slept."


@pytest.fixture
def terminal(monkeypatch):
    """Make the CLI believe stderr (and, with `stdout=True`, stdout) is an interactive terminal."""

    def force(stdout: bool = False) -> None:
        monkeypatch.setattr("attnviz.cli._options._terminal", lambda: True)
        monkeypatch.setattr("attnviz.cli._progress.stdout_terminal", lambda: stdout)

    return force


def _lm(path: str):
    from attnviz.heads.ablation import for_ablation
    from attnviz.models.loading import load_model

    return for_ablation(load_model(path, device="cpu"))


def test_scan_and_repeat_loss_report_the_heads_done(gpt2):
    from attnviz.heads.ablation import repeat_loss_scan, scan_heads

    loaded = _lm(gpt2)  # 2 layers x 4 heads
    calls: list[tuple[int, int]] = []
    plain = scan_heads(loaded, TEXT)
    found = scan_heads(loaded, TEXT, batch_size=3, progress=lambda d, t: calls.append((d, t)))
    assert calls == [(0, 8), (3, 8), (6, 8), (8, 8)]
    assert found.delta.ravel().tolist() == pytest.approx(
        plain.delta.ravel().tolist(), abs=1e-6
    )  # batch size: float noise
    calls.clear()
    repeat_loss_scan(loaded, seq_len=5, batch=2, batch_size=6, progress=lambda d, t: calls.append((d, t)))
    assert calls == [(0, 8), (3, 8), (6, 8), (8, 8)]  # 3 heads x 2 sequences per forward pass


def test_generate_counts_its_steps_and_streams_the_text(tiny_model_path):
    from attnviz.generation.run import generate, load_for_generation

    loaded = load_for_generation(str(tiny_model_path("llama")), device="cpu")
    calls: list[tuple[int, int]] = []
    pieces: list[str] = []
    gen = generate(
        "the cat sat", loaded, max_new_tokens=5, progress=lambda d, t: calls.append((d, t)),
        on_text=pieces.append,
    )  # fmt: skip
    assert calls == [(i, 5) for i in range(gen.n_new + 1)] and gen.n_new >= 1
    assert "".join(pieces) == gen.text and all(pieces)
    assert generate("the cat sat", loaded, max_new_tokens=5).token_ids == gen.token_ids


def _bar_in(stderr: str, label: str, done: str) -> bool:
    return label in stderr and done in stderr


def test_ablate_scan_shows_a_bar_on_a_terminal_only(gpt2, terminal):
    args = ["ablate", TEXT, "--scan", "-m", gpt2]
    assert "ablating each head" not in cli_ok(args).stderr  # not a terminal: nothing
    terminal()
    result = cli_ok(args)
    assert _bar_in(result.stderr, "ablating each head", "8/8"), result.stderr
    assert "ablating each head" not in result.stdout
    quiet = cli_ok([*args, "--json"])  # --json: never a bar, even on a terminal
    assert "ablating" not in quiet.stderr and json.loads(quiet.stdout)


def test_find_head_and_induction_ablate_show_a_bar(gpt2, tiny_model_path, terminal):
    terminal()
    found = cli_ok(["find-head", "cat", "mat", TEXT, "-m", gpt2, "--ablate"])
    assert _bar_in(found.stderr, "ablating each head", "8/8"), found.stderr
    llama = str(tiny_model_path("llama"))
    args = ["heads", "--induction", "--ablate", "-m", llama, "--seq-len", "6", "--batch", "2"]
    result = cli_ok(args)
    assert _bar_in(result.stderr, "ablating each head", "/"), result.stderr
    assert "ablating" not in cli_ok([*args, "--json"]).stderr


def test_generate_streams_on_a_terminal_and_counts_when_redirected(tiny_model_path, terminal):
    llama = str(tiny_model_path("llama"))
    args = ["generate", "the cat sat", "-m", llama, "--max-new-tokens", "5"]
    plain = cli_ok(args)
    assert "generating" not in plain.stderr
    text = plain.stdout
    terminal(stdout=True)  # the continuation streams to the terminal, once
    streamed = cli_ok(args)
    assert streamed.stdout == text and "generating" not in streamed.stderr
    terminal(stdout=False)  # stdout redirected, stderr a terminal: a bar counts the tokens
    counted = cli_ok(args)
    assert counted.stdout == text and "generating" in counted.stderr and "/5" in counted.stderr
    assert "generating" not in cli_ok([*args, "--json"]).stderr


def test_view_shows_its_stages_on_a_terminal_only(gpt2, terminal, tmp_path):
    args = ["view", TEXT, "-m", gpt2, "-o", str(tmp_path / "v.html")]
    assert "building the page" not in cli_ok(args).stderr
    terminal()
    shown = cli_ok(args).stderr
    assert "extracting attention" in shown and "building the page" in shown, shown


def test_heatmap_says_it_is_drawing_on_a_terminal_only(gpt2, terminal, tmp_path):
    """A long text's overview takes seconds to draw and write: a spinner says so (never off a terminal)."""
    args = ["heatmap", TEXT, "-m", gpt2, "-o", str(tmp_path / "h.png")]
    assert "drawing" not in cli_ok(args).stderr
    terminal()
    shown = cli_ok(args).stderr
    assert "drawing 8 heads of" in shown and "writing the picture" in shown, shown


def test_cluster_counts_its_texts(bert):
    """Issue 31: cluster ran silently over a corpus; cluster_texts now reports each text done."""
    from attnviz.analyses.cluster import cluster_texts

    calls: list[tuple[int, int]] = []
    texts = ["the cat sat", "a dog ran home", "birds sing", "the sun is hot", "rain fell"]
    cluster_texts(texts, bert, batch_size=2, device="cpu", progress=lambda d, t: calls.append((d, t)))
    assert calls == [(i, 5) for i in range(6)]
