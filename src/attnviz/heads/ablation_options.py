"""Ablation's options, parsed and checked before any model loads: which heads, zero or mean.

`AblationOptions.check()` holds every rule of `attnviz ablate`'s arguments once; `ablate`,
`scan_heads` and `run_ablation` (heads/ablation.py) build it or take it whole.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from attnviz.errors import InputError, param

MODES = ("zero", "mean")


def parse_heads(value: str) -> tuple[tuple[int, int], ...]:
    """'18:6,17:3' -> ((18, 6), (17, 3)); a one-line error otherwise."""
    out = []
    for part in value.split(","):
        m = re.fullmatch(r"\s*(-?\d+)\s*:\s*(\d+)\s*", part)
        if not m:
            raise InputError(f"bad {param('heads')} '{value}': use LAYER:HEAD pairs like 18:6,17:3")
        out.append((int(m.group(1)), int(m.group(2))))
    return tuple(dict.fromkeys(out))


SCAN_DROPS = param("heads", flag="--layer/--head/--heads")  # the command line names each way to give heads
HEADS_GIVEN = param("heads", flag="--layer L --head H, --heads L:H,...")


@dataclass(frozen=True)
class AblationOptions:
    """Which heads to ablate and how: one object, checked once by `check()` before a model loads,
    taken whole by `run_ablation` (the CLI only builds it; `ablate` and `scan_heads` build it too)."""

    heads: tuple[tuple[int, int], ...] = ()  # (layer, head) ablated together
    scan: bool = False  # instead: every head in turn (`scan_heads`)
    target: str | None = None
    occurrence: int | None = None
    mode: str = "zero"  # or "mean": the head's mean output over `reference`
    reference: tuple[str, ...] | None = None
    truncate: bool = False

    def check(self) -> AblationOptions:
        """InputError (one line, naming the option) on the first bad value; returns self."""
        if self.mode not in MODES:
            raise InputError(f"unknown {param('mode')} '{self.mode}': use {' or '.join(MODES)}")
        if self.mode == "mean" and not self.reference:
            raise InputError(
                f"{param('mode', 'mean')} needs reference texts to take each head's mean output over:"
                f" pass {param('reference')}"
            )
        if self.scan and self.heads:
            raise InputError(f"{param('scan', True)} ablates every head in turn: drop {SCAN_DROPS}")
        if not self.scan and not self.heads:
            raise InputError(f"say which head to ablate: {HEADS_GIVEN} or {param('scan', True)}")
        return self
