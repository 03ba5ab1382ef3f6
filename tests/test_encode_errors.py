"""Bad input to encode / compute_score gets a clear error; empty input gets empty outputs."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from m3_rag import M3Embedder


def test_non_str_item_names_index_and_type(embedder: M3Embedder) -> None:
    with pytest.raises(TypeError, match=r"texts\[2\] must be a str, got int"):
        embedder.encode(["a", "b", 3])  # type: ignore[list-item]
    with pytest.raises(TypeError, match="got None"):
        embedder.encode(None)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"texts\[0\] must be a str, got NoneType"):
        embedder.encode([None])  # type: ignore[list-item]
    with pytest.raises(TypeError, match="got bytes"):
        embedder.encode(b"bytes")  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", [0, 1, -5])
def test_max_length_too_small(embedder: M3Embedder, bad: int) -> None:
    with pytest.raises(ValueError, match=r"max_length must be >= 2"):
        embedder.encode(["a"], max_length=bad)


def test_max_length_above_the_model(embedder: M3Embedder) -> None:
    with pytest.raises(ValueError, match=r"max_length=8192 is more than this model takes \(512"):
        embedder.encode(["a"], max_length=8192)


def test_nothing_to_compute(embedder: M3Embedder) -> None:
    with pytest.raises(ValueError, match="at least one of"):
        embedder.encode(["a"], dense=False, sparse=False, colbert=False)


def test_empty_list_gives_empty_shapes(embedder: M3Embedder) -> None:
    out = embedder.encode([])
    assert out.dense is not None and out.dense.shape == (0, embedder.dim) and out.dense.dtype == np.float32
    assert out.sparse == [] and out.colbert == [] and len(out) == 0
    assert embedder.compute_score([]) == {
        k: [] for k in ("colbert", "sparse", "dense", "sparse+dense", "colbert+sparse+dense")
    }


def test_truncation_is_logged(embedder: M3Embedder, caplog) -> None:
    with caplog.at_level(logging.WARNING, logger="m3_rag"):
        out = embedder.encode(["one two three four five six seven", ""], max_length=4)
    assert "1 of 2 texts were longer than max_length=4" in caplog.text
    assert out.colbert is not None and out.colbert[0].shape[0] == 3


def test_query_and_document_defaults(tiny_path) -> None:
    m3 = M3Embedder.from_pretrained(tiny_path, query_max_length=6, passage_max_length=10)
    text = " ".join(["word"] * 50)
    q, d = m3.encode_queries([text]), m3.encode_documents([text])
    assert q.colbert is not None and d.colbert is not None
    assert q.colbert[0].shape[0] == 5 and d.colbert[0].shape[0] == 9
    assert m3.encode_queries([text], max_length=8).colbert[0].shape[0] == 7  # type: ignore[index]


@pytest.mark.parametrize(
    ("pairs", "message"),
    [
        ([("q", "p"), ("q",)], r"pairs\[1\] must be a \(query, passage\) tuple"),
        ([("q", 3)], r"pairs\[0\] must hold two str, got \(str, int\)"),
        ("qp", "pairs must be a list"),
        (None, "got None"),
    ],
)
def test_compute_score_bad_pairs(embedder: M3Embedder, pairs, message) -> None:
    with pytest.raises(TypeError, match=message):
        embedder.compute_score(pairs)


@pytest.mark.parametrize("weights", [(1, 1), (1, -1, 1), (0, 0, 0), (1, float("nan"), 1)])
def test_compute_score_bad_weights(embedder: M3Embedder, weights) -> None:
    with pytest.raises(ValueError, match="weights must be"):
        embedder.compute_score([("q", "p")], weights=weights)


def test_one_pair_tuple_and_duplicates(embedder: M3Embedder) -> None:
    one = embedder.compute_score(("capital of Germany", "Berlin is the capital of Germany."))
    many = embedder.compute_score([("capital of Germany", "Berlin is the capital of Germany.")] * 3)
    assert all(len(v) == 1 for v in one.values())
    for key in one:
        assert many[key] == pytest.approx(one[key] * 3)
