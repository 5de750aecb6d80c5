"""The result types live in a leaf module that any module can import without a cycle."""

from __future__ import annotations

import subprocess
import sys


def test_attention_module_imports_nothing_of_attnviz():
    code = "import sys, attnviz.attention\nprint(sorted(m for m in sys.modules if m.startswith('attnviz')))\n"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "['attnviz', 'attnviz.attention']", out.stdout


def test_repr_is_one_short_line_whatever_the_size():
    """A prompt shows what was extracted, not 27 KB of weights."""
    import numpy as np

    from attnviz.attention import Attention

    n = 60
    tokens = tuple(f"tok{i}" for i in range(n))
    att = Attention(
        model="minilm",
        kind="decoder",
        text="word " * n,
        tokens=tokens,
        spans=tuple((i, i + 1) for i in range(n)),
        word_ids=tuple(range(n)),
        words=tokens,
        special=(False,) * n,
        layers=tuple(range(6)),
        heads=tuple(range(12)),
        attn=np.full((6, 12, n, n), 1 / n, dtype=np.float32),
        causal=True,
    )
    text = repr(att)
    assert "\n" not in text and len(text) < 300, text
    assert "self=float32[6, 12, 60, 60]" in text and "tokens=60" in text and "causal=True" in text
    assert str(att) == text


def test_attention_and_generation_share_one_result_base():
    """Issue 28: Generation ran parallel to Attention; both are HeadResults now, with one lookup rule."""
    import dataclasses
    import typing

    from attnviz.attention import Attention, HeadResult
    from attnviz.generation.run import Generation

    assert issubclass(Attention, HeadResult) and issubclass(Generation, HeadResult)
    base = {f.name for f in dataclasses.fields(HeadResult)}
    assert base == {"model", "layers", "heads", "notes"}
    assert base <= {f.name for f in dataclasses.fields(Generation)}
    hints = typing.get_type_hints(Attention)
    assert typing.get_args(hints["kind"]) == ("encoder", "decoder", "encoder-decoder")
    assert typing.get_args(hints["level"]) == ("token", "word")
    assert typing.get_args(hints["weighting"]) == ("attention", "norm")
