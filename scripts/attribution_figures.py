"""Draw docs/attribution.md's pictures: direct logit attribution and the logit lens of SmolLM2 on the
indirect-object prompt (docs/attribution-ioi.png, docs/lens-ioi.png), and print the numbers quoted.

    PYTHONPATH=src .venv/bin/python scripts/attribution_figures.py
"""

from __future__ import annotations

from pathlib import Path

IOI = "When Mary and John went to the store, John gave a drink to"
DOCS = Path(__file__).resolve().parents[1] / "docs"


def main() -> None:
    from attnviz.analyses.attribution import attribute
    from attnviz.analyses.lens import lens
    from attnviz.plots.attribution import attribution_map, lens_map

    r = attribute(IOI, "smollm2", answer="Mary", wrong="John", device="cpu")
    print(f"logit difference {r.logit:+.4f}; sum of {len(r.names)} components {r.total:+.4f}")
    for name, value in r.top(10):
        print(f"  {name:>10} {value:+.3f}")
    print("  others:", {k: round(v, 6) for k, v in r.others.items()})
    attribution_map(r, DOCS / "attribution-ioi.png")
    lz = lens(IOI, "smollm2", k=5, answer="Mary", device="cpu")
    last = len(lz.tokens) - 1
    print("rank of 'Mary' after each stage:", lz.answer_rank[:, last].tolist())
    print("p('Mary') in the last stages:", [round(float(p), 3) for p in lz.answer_prob[-6:, last]])
    print("top token at the last position:", [lz.label(i, last) for i in range(len(lz.stages))])
    lens_map(lz, DOCS / "lens-ioi.png")
    print("wrote", DOCS / "attribution-ioi.png", DOCS / "lens-ioi.png")


if __name__ == "__main__":
    main()
