"""`serve`'s /api/attribute and /api/lens: direct logit attribution and the logit lens as JSON.

The same JSON as `attnviz attribute --json` and `attnviz lens --json`; the model with its LM head
is loaded once (cached by the loader) and its forward passes share the model's lock.
"""

from __future__ import annotations

from typing import Any

from attnviz.analyses.residual import with_head


def serve_attribute(pool: Any, p: Any) -> dict[str, Any]:
    """/api/attribute: text, answer, wrong (optional), position (default -1), model."""
    from attnviz.analyses.attribution import PURPOSE, attribute, check_answers

    text, name = p.text(), pool.name(p.q.get("model"))
    answer, wrong = p.word("answer"), (p.q.get("wrong") or None)
    check_answers(answer, wrong)
    position = p.int("position", -1)
    with pool.locks[name]:
        loaded = with_head(pool.models[name], PURPOSE)
        return attribute(text, loaded, answer=answer, wrong=wrong, position=position).as_dict()


def serve_lens(pool: Any, p: Any) -> dict[str, Any]:
    """/api/lens: text, k (default 5), answer (optional), model."""
    from attnviz.analyses.lens import PURPOSE, check_options, lens

    text, name = p.text(), pool.name(p.q.get("model"))
    k = p.int("k", 5)
    answer = p.q.get("answer") or None
    check_options(k, answer)
    with pool.locks[name]:
        loaded = with_head(pool.models[name], PURPOSE)
        return lens(text, loaded, k=k, answer=answer).as_dict()
