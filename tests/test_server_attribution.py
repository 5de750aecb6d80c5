"""`serve`'s /api/attribute and /api/lens: the library's JSON, and one-line errors in query terms."""

from __future__ import annotations

import pytest
from starlette.testclient import TestClient

from attnviz.models.loading import load_model
from attnviz.server.app import create_app

TEXT = "The cat sat on the mat, and the"


@pytest.fixture(scope="module")
def client(gpt2, bert):
    models = {"gpt2": load_model(gpt2, device="cpu"), "bert": load_model(bert, device="cpu")}
    with TestClient(create_app(models), raise_server_exceptions=False) as c:
        yield c


def test_attribute_answers_the_librarys_json(client, gpt2):
    from attnviz.analyses.attribution import attribute

    got = client.get("/api/attribute", params={"text": TEXT, "answer": "cat", "wrong": "the"}).json()
    want = attribute(TEXT, gpt2, answer="cat", wrong="the", device="cpu").as_dict()
    assert got == want
    assert abs(sum(c["value"] for c in got["components"]) - got["logit"]) < 1e-3


def test_lens_answers_top_ids(client):
    got = client.post("/api/lens", data={"text": TEXT, "k": "2", "answer": "cat"}).json()
    assert len(got["top_ids"]) == 3 and len(got["top"][0]) == 2 and len(got["answer_rank"]) == 3


@pytest.mark.parametrize(
    ("path", "params", "needle"),
    [
        ("attribute", {"text": TEXT}, "missing parameter 'answer'"),
        ("attribute", {"text": TEXT, "answer": "cat", "wrong": "cat"}, "wrong"),
        ("attribute", {"text": TEXT, "answer": "zzqx"}, "tokens ("),
        ("attribute", {"text": TEXT, "answer": "cat", "model": "bert"}, "no LM head"),
        ("lens", {"text": TEXT, "k": "0"}, "k=0"),
        ("lens", {"text": TEXT, "model": "bert"}, "no LM head"),
    ],
)
def test_bad_requests_are_one_json_line(client, path, params, needle):
    r = client.get(f"/api/{path}", params=params)
    assert r.status_code == 400, r.text
    assert needle in r.json()["error"] and "\n" not in r.json()["error"]
