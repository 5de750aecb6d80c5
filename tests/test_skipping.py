"""Layer replay in patching: the layers below a patch replay the destination run, exactly, per call."""

from __future__ import annotations

import threading

import numpy as np
import pytest

CLEAN = "The cat sat on the mat"
CORRUPT = "The mat sat on the cat"


def _loaded(tiny_model_path, arch: str):
    from attnviz.heads.patching import for_patching
    from attnviz.models.loading import load_model

    return for_patching(load_model(str(tiny_model_path(arch)), device="cpu"))


def _setup(loaded):
    from attnviz.heads.patching import prepare

    return prepare(loaded, CLEAN, CORRUPT, "the", None, "log-prob", None)


@pytest.mark.parametrize("arch", ["llama", "gpt2", "t5", "bert", "gemma2", "bloom"])
def test_replay_is_proven_on_each_kind_of_model(tiny_model_path, arch):
    import torch

    from attnviz.heads.patching import _skipper, forward

    loaded = _loaded(tiny_model_path, arch)
    setup = _setup(loaded)
    ids = setup.ids["corrupt"]
    with torch.inference_mode():
        skipper = _skipper(setup, ids)
        assert skipper.usable
        plain = forward(setup, ids, 3)
        assert skipper.offset == (2 if arch == "t5" else 0)  # a decoder-side patch replays the encoder
        for below in range(len(skipper.blocks) - skipper.offset + 1):
            with skipper.replaying(below, 3):
                torch.testing.assert_close(forward(setup, ids, 3), plain, rtol=1e-6, atol=1e-6)


def test_shared_layers_are_computed(tiny_model_path):
    from attnviz.heads.patching import _skipper

    loaded = _loaded(tiny_model_path, "albert")
    setup = _setup(loaded)
    assert not _skipper(setup, setup.ids["corrupt"]).usable


def test_the_layers_below_a_batch_are_not_computed(tiny_model_path):
    import torch

    from attnviz.heads.interventions import attention_modules
    from attnviz.heads.patching import patch

    loaded = _loaded(tiny_model_path, "llama")
    calls = {0: [], 1: []}

    def rows(i, args, kwargs):
        calls[i].append((args[0] if args else kwargs["hidden_states"]).shape[0])

    handles = [
        m.register_forward_pre_hook(lambda mod, a, k, i=i: rows(i, a, k), with_kwargs=True)
        for i, m in enumerate(attention_modules(loaded, "self"))
    ]
    try:
        with torch.inference_mode():
            result = patch(CLEAN, CORRUPT, loaded, answer="the", batch_size=4)
    finally:
        for h in handles:
            h.remove()
    assert result.patched.shape == (2, 4)
    # two batches of four rows (layer 0's heads, then layer 1's): layer 1 computes both, layer 0
    # only the first; the replay's proof (two rows, layer 0 replayed) is the other call it skips
    assert calls[1].count(4) == 2 and calls[0].count(4) == 1
    assert len(calls[1]) - len(calls[0]) == 2


def test_replay_changes_no_value(tiny_model_path, monkeypatch):
    from attnviz.heads import patching
    from attnviz.heads.skipping import Skipper

    loaded = _loaded(tiny_model_path, "llama")
    maps = {}
    units = {"heads": True, "resid": False, "layer": False}  # unit -> per position
    for unit, per in units.items():
        maps[unit] = patching.patch(CLEAN, CORRUPT, loaded, answer="the", unit=unit, positions=per)
    monkeypatch.setattr(Skipper, "check", lambda self, run: False)  # every layer computed
    for unit, replayed in maps.items():
        full = patching.patch(CLEAN, CORRUPT, loaded, answer="the", unit=unit, positions=units[unit])
        np.testing.assert_allclose(replayed.patched, full.patched, atol=1e-6)


def test_replay_is_per_call_not_per_model(tiny_model_path):
    """A forward on another thread, during a replay on this one, computes every layer."""
    import torch

    from attnviz.heads.patching import _skipper, forward

    loaded = _loaded(tiny_model_path, "llama")
    setup = _setup(loaded)
    with torch.inference_mode():
        plain_clean = forward(setup, setup.ids["clean"])
        skipper = _skipper(setup, setup.ids["corrupt"])
        got = {}

        def other():
            with torch.inference_mode():
                got["clean"] = forward(setup, setup.ids["clean"])

        with skipper.replaying(len(skipper.blocks), 1):
            thread = threading.Thread(target=other)
            thread.start()
            thread.join()
            replayed = forward(setup, setup.ids["clean"])  # this call replays the corrupt run
    assert torch.equal(got["clean"], plain_clean)
    assert not torch.equal(replayed, plain_clean)


def test_a_block_that_leaves_state_for_the_next_is_not_replayed():
    import torch

    from attnviz.heads.skipping import Skipper

    shared: dict = {}

    class Writes(torch.nn.Module):
        def forward(self, x):
            shared["seen"] = x.sum()
            return x + 1

    class Reads(torch.nn.Module):
        def forward(self, x):
            return x * shared["seen"]

    blocks = torch.nn.ModuleList([Writes(), Reads()])

    def run(rows: int = 1):
        x = torch.ones(rows, 3)
        shared.clear()
        for b in blocks:
            x = b(x)
        return x

    skipper = Skipper(blocks=list(blocks))
    skipper.record(run)
    assert not skipper.check(run)  # the replayed first block never writes what the second reads
    assert not skipper.usable


@pytest.mark.parametrize(
    ("layers", "size", "expected"),
    [
        ([0, 0, 1, 1, 2, 2], 4, [(0, 4, 0), (4, 6, 2)]),
        ([0, 0, 0, 1, 1, 1], 4, [(0, 3, 0), (3, 6, 1)]),  # a layer is not split across batches
        ([0, 0, 0, 0, 0, 1], 2, [(0, 2, 0), (2, 4, 0), (4, 6, 0)]),  # a big layer is split
        ([3, 1, 2], 8, [(0, 3, 1)]),  # the lowest layer, in any order
    ],
)
def test_chunks_keep_layers_together(layers, size, expected):
    from attnviz.heads.skipping import chunks

    assert list(chunks(layers, size)) == expected
