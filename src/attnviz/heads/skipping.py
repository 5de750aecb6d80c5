"""Skip the layers below a patch: their output is the destination run's, so replay it, don't recompute.

A patch at layer L cannot change what layers 0..L-1 compute (a forward pass runs its blocks in
order), so a batch of patches whose lowest layer is L can take those blocks' outputs from one
recorded run of the destination text instead of computing them again for every row. Each block's
`forward` is wrapped once (its hooks still run); the wrapper replays a recorded output only inside
`skipping()`, which is per call (a `ContextVar`), so another thread's forward on the same model is
untouched. `Skipper.check` proves the replay on this model before it is used: a forward with the
lower half replayed must give the plain forward's readout, else skipping is off (shared layers,
layers that pass state to later layers outside their outputs).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

_REPLAY: ContextVar[dict[int, Callable[[], Any]] | None] = ContextVar("attnviz_replay", default=None)
_WRAP = threading.Lock()


def _wrap(block: Any) -> None:
    """Give `block` a forward that replays a recorded output when this context asks for it."""
    with _WRAP:
        if block.__dict__.get("_attnviz_replays"):
            return
        original = block.forward
        ident = id(block)

        def forward(*args: Any, **kwargs: Any) -> Any:
            table = _REPLAY.get()
            if table is not None and ident in table:
                return table[ident]()
            return original(*args, **kwargs)

        block.forward = forward
        block._attnviz_replays = True


def _expand(x: Any, rows: int) -> Any:
    """A batch-1 output as `rows` rows: every tensor whose first dimension is 1, in any tuple or list."""
    import torch

    if isinstance(x, torch.Tensor):
        return x.expand(rows, *x.shape[1:]).contiguous() if x.ndim and x.shape[0] == 1 else x
    if isinstance(x, tuple) and not hasattr(x, "_fields"):
        return tuple(_expand(v, rows) for v in x)
    if isinstance(x, list):
        return [_expand(v, rows) for v in x]
    return x


@dataclass
class Skipper:
    """One model's blocks and the destination run's output of each (recorded at one row).

    `offset` blocks come first and are always replayed: an encoder-decoder's encoder blocks, which
    no patch of a decoder-side stream can change.
    """

    blocks: list[Any]
    offset: int = 0
    outputs: list[Any] = field(default_factory=list)
    usable: bool = False
    result: Any = None  # what the recorded run returned (the destination's own readout)

    def record(self, run: Callable[[], Any]) -> None:
        """Run the destination text once (`run()`), keeping every block's output and its result."""
        kept: dict[int, Any] = {}
        handles = []
        for i, block in enumerate(self.blocks):

            def keep(module: Any, args: Any, output: Any, i: int = i) -> None:
                kept[i] = output

            handles.append(block.register_forward_hook(keep))
        try:
            self.result = run()
        finally:
            for h in handles:
                h.remove()
        self.outputs = [kept.get(i) for i in range(len(self.blocks))]

    def check(self, run: Callable[[int], Any]) -> bool:
        """Whether replaying the lower half gives `run(rows)`'s readout; `usable` says it from now on."""
        import torch

        if len(self.blocks) < 2 or any(o is None for o in self.outputs):
            self.usable = False
            return False
        for block in self.blocks:
            _wrap(block)
        plain = run(2)
        try:
            with self.replaying((len(self.blocks) - self.offset) // 2, 2, force=True):
                replayed = run(2)
        except Exception:  # a block whose successors need more than its output: no skipping
            self.usable = False
            return False
        self.usable = bool(
            plain.shape == replayed.shape and torch.allclose(plain, replayed, rtol=1e-5, atol=1e-5)
        )
        return self.usable

    @contextmanager
    def replaying(self, below: int, rows: int, force: bool = False) -> Iterator[None]:
        """Inside: the stream's blocks 0..below-1 (and the offset ones) return their recorded outputs."""
        below += self.offset
        if not (self.usable or force) or below <= 0:
            yield
            return
        table = {
            id(block): (lambda out=out: _expand(out, rows))
            for block, out in zip(self.blocks[:below], self.outputs[:below], strict=True)
        }
        token = _REPLAY.set(table)
        try:
            yield
        finally:
            _REPLAY.reset(token)


def chunks(layers: list[int], size: int) -> Iterator[tuple[int, int, int]]:
    """(start, stop, lowest layer) of consecutive rows: whole layers packed up to `size` rows.

    `layers[i]` is row i's layer (ascending in practice). A layer's rows stay together unless they
    alone exceed `size`, so each chunk's lowest layer is as high as it can be.
    """
    size = max(1, size)
    start, n = 0, len(layers)
    while start < n:
        stop = min(start + size, n)
        if stop < n and layers[stop] == layers[stop - 1] and layers[start] != layers[stop - 1]:
            while layers[stop - 1] == layers[stop]:  # end at a layer's boundary
                stop -= 1
        yield start, stop, min(layers[start:stop])
        start = stop
