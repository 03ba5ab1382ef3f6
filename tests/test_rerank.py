"""rerank_texts and the shared-model registry."""

from __future__ import annotations

import numpy as np
import pytest

from m3_rag import M3Embedder, M3Index, rerank_texts
from m3_rag.retrieval import HybridStore

TEXTS = [
    "Paris is the capital of France.",
    "Berlin is the capital of Germany.",
    "The quick brown fox jumps over the lazy dog.",
    "",
    "Die Hauptstadt von Deutschland ist Berlin.",
]


@pytest.mark.parametrize("weights", [(1, 1, 1), (0.4, 0.2, 0.4), (0, 1, 0)])
def test_rerank_scores_equal_compute_score(embedder: M3Embedder, weights) -> None:
    query = "capital of Germany"
    ranked = rerank_texts(embedder, query, TEXTS, weights=weights)
    reference = embedder.compute_score([(query, t) for t in TEXTS], weights=weights)
    expected_order = sorted(range(len(TEXTS)), key=lambda i: (-reference["colbert+sparse+dense"][i], i))
    assert [r.index for r in ranked] == expected_order
    for r in ranked:
        assert r.score == pytest.approx(reference["colbert+sparse+dense"][r.index], rel=1e-5, abs=1e-7)
        for mode in ("dense", "sparse", "colbert"):
            assert r.scores[mode] == pytest.approx(reference[mode][r.index], rel=1e-5, abs=1e-7)


def test_rerank_top_n_and_edges(embedder: M3Embedder) -> None:
    assert len(rerank_texts(embedder, "q", TEXTS, top_n=2)) == 2
    assert len(rerank_texts(embedder, "q", TEXTS, top_n=50)) == len(TEXTS)
    assert rerank_texts(embedder, "q", []) == []
    with pytest.raises(ValueError, match="top_n"):
        rerank_texts(embedder, "q", TEXTS, top_n=0)
    with pytest.raises(TypeError, match="query must be a str"):
        rerank_texts(embedder, None, TEXTS)  # type: ignore[arg-type]


def test_shared_returns_one_model_per_process(tiny_path) -> None:
    a = M3Embedder.shared(tiny_path)
    b = M3Embedder.shared(str(tiny_path))
    c = M3Embedder.shared(tiny_path, dtype="bf16")
    assert a is b and a is not c
    np.testing.assert_array_equal(a.encode("x").dense, b.encode("x").dense)  # type: ignore[arg-type]


def test_index_is_a_hybrid_store(embedder: M3Embedder) -> None:
    assert isinstance(M3Index(embedder), HybridStore)
