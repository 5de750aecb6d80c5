"""`serve`'s /api/patch: activation patching (or path patching, with `sender`) between two texts."""

from __future__ import annotations

from typing import Any

from attnviz.errors import InputError

MAX_PATCH_CHARS = 2_000  # per text: a head map runs one forward per 64 heads


def serve_patch(pool: Any, p: Any) -> dict[str, Any]:
    """clean, corrupt, answer, [wrong, metric, unit, noising, positions, at, stream, sender,
    receivers, via, model]: the command's JSON, plus the axes' labels and the top units."""
    from attnviz.heads.patching import check_options, patch, unit_name
    from attnviz.heads.path_patching import parse_receivers, parse_unit, path_patch

    clean, corrupt, answer = p.word("clean"), p.word("corrupt"), p.word("answer")
    for what, text in (("clean", clean), ("corrupt", corrupt)):
        if len(text) > MAX_PATCH_CHARS:
            raise InputError(
                f"the {what} text has {len(text)} characters; /api/patch takes {MAX_PATCH_CHARS}"
            )
    q = p.q
    wrong, metric = q.get("wrong") or None, q.get("metric") or None
    unit, at, stream = q.get("unit") or "heads", q.get("at") or None, q.get("stream") or None
    check_options(answer, wrong, metric, unit, at, p.flag("positions"))
    name = pool.name(q.get("model"))
    common = {
        "answer": answer,
        "wrong": wrong,
        "metric": metric,
        "noising": p.flag("noising"),
        "stream": stream,
    }
    if q.get("sender"):
        sender, receivers = parse_unit(q["sender"]), parse_receivers(q.get("receivers", ""))
        with pool.locks[name]:
            found = path_patch(
                clean, corrupt, pool.models[name], sender=sender, receivers=receivers,
                via=q.get("via") or "q", **common,
            )  # fmt: skip
        return found.as_dict()
    with pool.locks[name]:
        result = patch(
            clean, corrupt, pool.models[name], unit=unit, at=at, positions=p.flag("positions"), **common
        )
    data = result.as_dict()
    data.update(
        unit=result.unit, rows=list(result.rows), columns=list(result.columns),
        positions=list(result.positions), note=result.note,
        top=[{"unit": unit_name(result, i), "effect": e} for i, e in result.top(10)],
    )  # fmt: skip
    return data
