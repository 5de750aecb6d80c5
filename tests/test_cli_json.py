"""Every command's `--json` output, pinned: keys, their order and values, on the tiny test models.

The goldens in data/cli_json.json were written by the commands before they shared one printer
(cli/_output.py); a command that drops, renames, reorders or changes a field fails here. Paths are
written as <tmp> (the test's folder) and <bert>/<gpt2> (the tiny models' folders).
Regenerate after a deliberate change: ATTNVIZ_WRITE_GOLDEN=1 pytest tests/test_cli_json.py
"""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path
from typing import Any

import pytest
from helpers import cli_ok

GOLDEN = Path(__file__).parent / "data" / "cli_json.json"
pytestmark = pytest.mark.usefixtures("torch_threads_of_the_goldens")
TEXT = "the cat sat on the mat"
CORPUS = ["the cat sat on the mat", "a dog chased the cat", "attention is a weighted average"]
INDUCTION = ["heads", "--induction", "-m", "{gpt2}", "--seq-len", "6", "--batch", "2"]

CASES: dict[str, list[str]] = {
    "models": ["models"],
    "info": ["info", "{bert}"],
    "extract": ["extract", "the cat sat", "-m", "{bert}", "-o", "att.safetensors"],
    "entropy": ["entropy", TEXT, "-m", "{bert}", "--layer", "1", "--head", "2", "-o", "e.png"],
    "explain": ["explain", "the cat", "-m", "{bert}", "--layer", "0", "--head", "1"],
    "rollout": ["rollout", TEXT, "-m", "{bert}", "--head-fusion", "max"],
    "compare": ["compare", TEXT, "the dog sat on the mat", "-m", "{bert}", "--top", "3"],
    "cluster": ["cluster", "c.jsonl", "-m", "{bert}", "-o", "out"],
    "find-head": ["find-head", "cat", "mat", TEXT, "-m", "{bert}", "--no-special"],
    "find-head-texts": ["find-head", "cat", "mat", "--texts", "c.jsonl", "-m", "{bert}", "-k", "3"],
    "heads": ["heads", TEXT, "-m", "{bert}", "-k", "4"],
    "heads-induction": INDUCTION,
    "ablate": ["ablate", TEXT, "-l", "1", "--head", "2", "--target", "mat", "-m", "{gpt2}"],
    "ablate-scan": ["ablate", TEXT, "--scan", "--top", "3", "-m", "{gpt2}"],
    "find-head-ablate": ["find-head", "cat", "mat", TEXT, "-m", "{gpt2}", "--ablate", "-k", "3"],
    "heads-induction-ablate": [*INDUCTION, "--ablate", "--top", "3"],
    "generate": ["generate", "the cat sat", "-m", "{gpt2}", "--max-new-tokens", "3", "-o", "g.safetensors"],
}


def _run(name: str, request: pytest.FixtureRequest, tmp_path: Path, as_json: bool) -> tuple[str, str]:
    """The command's stdout and stderr, with the test's folder and the models' folders as names."""
    (tmp_path / "c.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in CORPUS))
    models = {m: request.getfixturevalue(m) for m in ("bert", "gpt2")}
    args = [a.format(**models) for a in CASES[name]] + (["--json"] if as_json else [])
    result = cli_ok(args)
    out, err = result.stdout, result.stderr
    for model, path in models.items():
        out, err = out.replace(path, f"<{model}>"), err.replace(path, f"<{model}>")
    site = str(Path(sys.prefix))  # the bundled models live in this environment (a clone's own .venv)
    out, err = out.replace(site, "<env>"), err.replace(site, "<env>")
    return out.replace(str(tmp_path), "<tmp>"), err.replace(str(tmp_path), "<tmp>")


def _same(got: Any, want: Any, where: str = "$") -> None:
    """Equal keys in equal order, equal strings/ints/bools, floats to 1e-6 (relative)."""
    assert type(got) is type(want), f"{where}: {type(got).__name__} != {type(want).__name__}"
    if isinstance(want, dict):
        assert list(got) == list(want), f"{where}: keys {list(got)} != {list(want)}"
        for key in want:
            _same(got[key], want[key], f"{where}.{key}")
    elif isinstance(want, list):
        assert len(got) == len(want), f"{where}: {len(got)} items != {len(want)}"
        for i, (g, w) in enumerate(zip(got, want, strict=True)):
            _same(g, w, f"{where}[{i}]")
    elif isinstance(want, float):
        assert math.isclose(got, want, rel_tol=1e-6, abs_tol=1e-9), f"{where}: {got} != {want}"
    else:
        assert got == want, f"{where}: {got!r} != {want!r}"


@pytest.mark.parametrize("name", list(CASES))
def test_json_output_is_pinned(name: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    out, _ = _run(name, request, tmp_path, as_json=True)
    got = json.loads(out)  # stdout is one JSON document and nothing else
    if os.environ.get("ATTNVIZ_WRITE_GOLDEN"):
        goldens = json.loads(GOLDEN.read_text()) if GOLDEN.exists() else {}
        goldens[name] = got
        GOLDEN.write_text(json.dumps(goldens, indent=1, ensure_ascii=False) + "\n")
    _same(got, json.loads(GOLDEN.read_text())[name])


def test_the_checker_catches_order_and_value() -> None:
    _same({"a": 1, "b": [0.5, "x"]}, {"a": 1, "b": [0.5 + 1e-9, "x"]})
    for bad in ({"b": [0.5, "x"], "a": 1}, {"a": 1, "b": [0.6, "x"]}, {"a": 1.0, "b": [0.5, "x"]}):
        with pytest.raises(AssertionError):
            _same(bad, {"a": 1, "b": [0.5, "x"]})
