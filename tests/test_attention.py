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


# -- issue 30: a crafted file is refused on load, naming the file ------------------------------

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from helpers import crafted, synthetic  # noqa: E402

from attnviz.attention import Attention  # noqa: E402
from attnviz.errors import AttnvizError  # noqa: E402


def _crafted(tmp_path, change, arrays=None):
    """A good file from `save`, its metadata changed by `change` (and its arrays replaced)."""
    return crafted(synthetic().save(tmp_path / "good.npz"), change, arrays)


@pytest.mark.parametrize(
    ("change", "arrays", "needle"),
    [
        (lambda m: m.pop("tokens"), None, "'tokens' is missing"),
        (lambda m: m.pop("model"), None, "'model' is missing"),
        (
            lambda m: m.update(tokens=[1, 2, 3, 4, 5, 6, 7]),
            None,
            "'tokens' holds something other than strings",
        ),
        (lambda m: m.update(tokens="[CLS] em"), None, "'tokens' is not a list"),
        (lambda m: m.update(special={"a": 1}), None, "'special' is not a list"),
        (lambda m: m.update(spans=[[0, 0]] * 3), None, "'spans' has 3 entries, not 7"),
        (lambda m: m.update(word_ids=[None, 0, 0, 1, 2, 99, None]), None, "'word_ids' holds 99"),
        (lambda m: m.update(layers=[0, 1, 2]), None, "its 'self' array is float32[2, 3, 7, 7]"),
        (lambda m: m.update(heads=["a", "b", "c"]), None, "'heads' holds 'a'"),
        (lambda m: m.update(causal="yes"), None, "'causal' is not true or false"),
        (lambda m: m.update(kind=3), None, "'kind' is not a string"),
        (lambda m: m.update(kind="encoder-decoder"), None, "holds no 'encoder' array"),
        (lambda m: None, {"self": np.ones((2, 3, 7, 6), np.float32)}, "float 2x3x7x7"),
        (lambda m: None, {"self": np.ones((2, 3, 7, 7), np.int64)}, "not float"),
        (lambda m: None, {}, "holds no 'self' array"),
    ],
)
def test_a_crafted_attention_file_is_refused_naming_it(tmp_path, change, arrays, needle):
    path = _crafted(tmp_path, change, arrays)
    with pytest.raises(AttnvizError, match=str(path).replace(".", r"\.")) as info:
        Attention.load(path)
    assert needle in str(info.value), str(info.value)


def test_metadata_that_is_not_an_object_is_refused(tmp_path):
    path = tmp_path / "list.npz"
    np.savez(path, metadata=np.array("[1, 2]"), self=np.ones((1, 1, 1, 1), np.float32))
    with pytest.raises(AttnvizError, match="metadata is not a JSON object"):
        Attention.load(path)


def test_a_good_file_still_loads_exactly(tmp_path):
    att = synthetic(causal=True)
    back = Attention.load(att.save(tmp_path / "a.safetensors"))
    assert back.tokens == att.tokens and back.word_ids == att.word_ids and back.causal
    np.testing.assert_array_equal(back.attn, att.attn)


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
