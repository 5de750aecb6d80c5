"""Draw docs/causal-heads.png, causal-resid.png, causal-layer.png and causal-noising.png, and print
the numbers docs/causal.md quotes (SmolLM2, the IOI prompt).

Run: PYTHONPATH=src python scripts/causal_figures.py [resid path noising layer heads]
(several minutes on 2 CPU cores; names pick some of the runs)
"""

from __future__ import annotations

import sys
from pathlib import Path

CLEAN = "When Mary and John went to the store, John gave a drink to"
CORRUPT = "When Mary and John went to the store, Mary gave a drink to"
DOCS = Path(__file__).resolve().parent.parent / "docs"


def main() -> None:
    from attnviz.heads.patching import for_patching, patch, unit_name
    from attnviz.heads.path_patching import path_patch
    from attnviz.models.loading import load_model
    from attnviz.plots.causal import patching_map

    loaded = for_patching(load_model("smollm2", device="cpu"))
    names = {"answer": "Mary", "wrong": "John"}
    senders, late = [(20, 0), (17, 4)], [(23, 3), (29, 1), (24, 4)]  # from the head map below
    plan: dict[str, dict] = {"resid": {"unit": "resid"}, "path": {}, "noising": {"noising": True}}
    plan.update({"layer": {"unit": "layer"}, "heads": {}})
    wanted = sys.argv[1:] or list(plan)  # e.g. `noising heads` to redo two of them
    for name, options in plan.items():
        if name not in wanted:
            continue
        if name == "path":
            for sender in senders:
                for via in ("q", "k", "v"):
                    r = path_patch(CLEAN, CORRUPT, loaded, sender=sender, receivers=late, via=via, **names)
                    print(
                        f"path L{sender[0]}H{sender[1]} -> {late} via {via}: effect {r.effect:+.3f}. {r.note}"
                    )
            continue
        result = patch(CLEAN, CORRUPT, loaded, **names, **options)
        patching_map(result, DOCS / f"causal-{name}.png")
        result.save(f"/tmp/causal-{name}.npz")  # to redraw without recomputing
        top = ", ".join(f"{unit_name(result, i)} {e:+.2f}" for i, e in result.top(8))
        print(
            f"{name}: clean {result.clean:.3f}, corrupt {result.corrupt:.3f}, {result.seconds:.0f} s; {top}"
        )


if __name__ == "__main__":
    main()
