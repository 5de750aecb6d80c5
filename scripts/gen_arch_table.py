"""Write docs/models.md's table of architectures from the zoo: each built, loaded and probed here.

    python scripts/gen_arch_table.py          # rewrite the table in docs/models.md
    python scripts/gen_arch_table.py --check  # exit 1 if the table is stale (tests/test_zoo.py does this)

Each row is what attnviz finds on the tiny random model of tests/zoo.py (2 layers, 4 heads): its
kind, whether its attention goes through transformers' attention interface (weights, norm weighting
and ablation through attnviz's attention function) or through its own code (weights via eager; heads
edited at the input of the output projection found by data flow, or, where none is found, the
analyses that need each head's output refused in one line, saying why). tests/test_zoo.py checks
each claim against eager and against hand-written references.
"""

from __future__ import annotations

import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
TARGET = ROOT / "docs" / "models.md"
START = "<!-- arch-table:start (scripts/gen_arch_table.py writes this table) -->"
END = "<!-- arch-table:end -->"


def _zoo() -> Any:
    sys.path.insert(0, str(ROOT / "tests"))
    import zoo

    return zoo


def facts(spec: Any, folder: Path) -> dict[str, str]:
    """What attnviz finds on one zoo model, as the table's cells."""
    from attnviz.errors import InputError
    from attnviz.models.architecture import output_projections
    from attnviz.models.loading import load_model

    loaded = load_model(str(folder), device="cpu")
    cap = loaded.capture
    interface = cap.interface
    if interface:
        try:
            output_projections(loaded, "norm weighting")
            analyses = "yes"
        except InputError:
            analyses = "refused: output changed before W_O"
    elif cap.edit_at == "projection":
        analyses = "yes (own attention code: heads edited at W_O's input)"
    else:
        analyses = f"refused in one line: own attention code, and {cap.edit_problem}"
    heads = f"{loaded.num_heads}"
    if loaded.num_kv_heads != loaded.num_heads:
        heads += f" ({loaded.num_kv_heads} kv)"
    return {
        "architecture": f"`{spec.name}`",
        "class": type(loaded.model).__name__,
        "kind": loaded.kind,
        "tested for": spec.feature or "-",
        "heads": heads,
        "weights": "exact (attnviz function)" if interface else "exact (eager)",
        "norm weighting, ablation": analyses,
    }


def render(folder_of: Callable[[str], Path]) -> str:
    """The table, every zoo architecture in zoo order; `folder_of(name)` builds or finds its model."""
    zoo = _zoo()
    rows = [facts(spec, folder_of(spec.name)) for spec in zoo.SPECS]
    cols = list(rows[0])
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(row[c] for c in cols) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def replace_table(text: str, table: str) -> str:
    """`text` with the part between the markers replaced by `table`."""
    head, rest = text.split(START, 1)
    _old, tail = rest.split(END, 1)
    return f"{head}{START}\n{table}{END}{tail}"


def main(argv: list[str]) -> int:
    import transformers

    transformers.logging.set_verbosity_error()
    zoo = _zoo()
    with tempfile.TemporaryDirectory() as tmp:
        table = render(lambda name: zoo.build(name, Path(tmp) / name))
    current = TARGET.read_text(encoding="utf-8")
    wanted = replace_table(current, table)
    if "--check" in argv:
        if wanted != current:
            print("docs/models.md's architecture table is stale: run python scripts/gen_arch_table.py")
            return 1
        return 0
    TARGET.write_text(wanted, encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
