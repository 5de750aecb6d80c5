"""Head distances (Clark et al. 2019) against loops over head pairs and tokens; classical MDS."""

from __future__ import annotations

import csv

import numpy as np
import pytest
from analyses_helpers import js_scalar, synthetic

from attnviz.analyses.cluster import classical_mds, cluster_texts, head_distances
from attnviz.batch.corpus import read_texts
from attnviz.errors import InputError


def brute_distances(atts) -> list[list[float]]:
    layers, heads = atts[0].attn.shape[:2]
    units = [(layer, h) for layer in range(layers) for h in range(heads)]
    out = [[0.0] * len(units) for _ in units]
    for x, (la, ha) in enumerate(units):
        for y, (lb, hb) in enumerate(units):
            per_text = []
            for att in atts:
                n = att.n_tokens
                rows = [
                    js_scalar(
                        [float(v) for v in att.attn[la, ha, i]], [float(v) for v in att.attn[lb, hb, i]]
                    )
                    for i in range(n)
                ]
                per_text.append(sum(rows) / n)
            out[x][y] = sum(per_text) / len(per_text)
    return out


def test_distances_equal_brute_force(tmp_path) -> None:
    atts = [synthetic(("a", "b", "c"), seed=1), synthetic(("a", "b", "c", "d", "e"), seed=2, causal=True)]
    got = head_distances(iter(atts))
    np.testing.assert_allclose(got.matrix, brute_distances(atts), atol=1e-9)
    assert got.texts == 2 and got.labels[:4] == ["L0H0", "L0H1", "L0H2", "L1H0"]
    assert np.allclose(got.matrix, got.matrix.T) and np.allclose(np.diag(got.matrix), 0)
    assert len(got.roles) == 6
    path = got.to_csv(tmp_path / "distances.csv")
    rows = list(csv.reader(path.open()))
    assert rows[0] == ["head", *got.labels] and rows[2][0] == "L0H1"
    assert float(rows[2][1]) == pytest.approx(got.matrix[1, 0], abs=1e-6)
    near = got.nearest(2)
    assert near[0]["distance"] <= near[1]["distance"]


def test_classical_mds_recovers_planar_points() -> None:
    rng = np.random.default_rng(0)
    points = rng.random((8, 2))
    d = np.sqrt(((points[:, None] - points[None]) ** 2).sum(-1))
    emb = classical_mds(d, 2)
    d2 = np.sqrt(((emb[:, None] - emb[None]) ** 2).sum(-1))
    np.testing.assert_allclose(d2, d, atol=1e-9)


def test_fewer_than_two_texts() -> None:
    with pytest.raises(InputError, match="at least two texts, got 1"):
        head_distances([synthetic(("a", "b"))])
    with pytest.raises(InputError, match="at least two texts, got 1"):
        cluster_texts(["only one"], model="minilm")


def test_read_texts_uses_the_batch_readers(tmp_path) -> None:
    path = tmp_path / "c.jsonl"
    path.write_text('{"text": "one"}\n{"nope": 1}\n{"text": "two"}\n', encoding="utf-8")
    assert read_texts(path) == (["one", "two"], 1)


def test_tiny_model(bert) -> None:
    from attnviz.extraction import extract_batch

    path = bert
    texts = ["the cat sat on the mat", "a dog chased the bird", "attention is a weighted average"]
    got = cluster_texts(texts, path, device="cpu")
    atts = extract_batch(texts, path, device="cpu")
    np.testing.assert_allclose(got.matrix, brute_distances(atts), atol=1e-6)


@pytest.mark.slow
def test_minilm(minilm) -> None:
    from attnviz.extraction import extract_batch

    texts = ["The cat sat on the mat.", "Paris is the capital of France."]
    got = cluster_texts(texts, minilm, layers=[0, 5])
    atts = extract_batch(texts, minilm, layers=[0, 5])
    np.testing.assert_allclose(got.matrix, brute_distances(atts), atol=1e-6)
    assert got.matrix.shape == (24, 24)


def test_too_long_text_is_numbered_in_the_whole_input(bert) -> None:
    from attnviz.errors import TextTooLongError

    texts = ["the cat sat", "a dog", "the bird sang", "the cat " * 40]
    with pytest.raises(TextTooLongError, match=r"^text 4 has \d+ tokens .*pass truncate=True"):
        cluster_texts(texts, bert, batch_size=2, device="cpu")
