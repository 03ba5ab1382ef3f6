"""Hybrid weights are scaled before they are summed: huge or tiny weights give the scores of (1, 1, 1)."""

from __future__ import annotations

import numpy as np
import pytest

from m3_rag import M3Embedder, M3Index
from m3_rag.scoring import hybrid_scores, normalize_weights

CORPUS = [
    "Berlin is the capital of Germany.",
    "Paris is the capital of France and a city of museums.",
    "Die Hauptstadt von Deutschland ist Berlin.",
    "The quick brown fox jumps over the lazy dog.",
    "A vector database stores embeddings and answers nearest neighbour queries quickly.",
]
HUGE = (1e308, 1e308, 1e308)
TINY = (5e-324, 5e-324, 5e-324)  # the smallest subnormal: w * score rounds to 0 unless scaled first

rng = np.random.default_rng(7)
D, S, C = rng.uniform(-1, 1, 50), rng.uniform(0, 0.5, 50), rng.uniform(-1, 1, 50)


def test_scaled_weights() -> None:
    assert normalize_weights(HUGE, scaled=True) == (1.0, 1.0, 1.0)
    assert normalize_weights(TINY, scaled=True) == (1.0, 1.0, 1.0)
    assert normalize_weights((0, 3e307, 6e307), scaled=True) == (0.0, 0.5, 1.0)
    assert normalize_weights((1, 2, 3)) == (1.0, 2.0, 3.0)  # unscaled unless asked
    with pytest.raises(ValueError, match="finite"):
        normalize_weights((float("inf"), 1, 1), scaled=True)
    with pytest.raises(ValueError, match="not all zero"):
        normalize_weights((0, 0, 0), scaled=True)


@pytest.mark.parametrize("weights", [HUGE, TINY, (2, 2, 2), (1e-300, 1e-300, 1e-300)])
def test_hybrid_scores_of_equal_weights_are_those_of_ones(weights) -> None:
    base = hybrid_scores(D, S, C)
    np.testing.assert_array_equal(hybrid_scores(D, S, C, weights), base)  # bit for bit
    assert np.isfinite(base).all()
    np.testing.assert_allclose(base, (D + S + C) / 3, rtol=1e-15)


def test_hybrid_scores_of_huge_unequal_weights() -> None:
    np.testing.assert_allclose(hybrid_scores(D, S, C, (4e307, 2e307, 4e307)), 0.4 * D + 0.2 * S + 0.4 * C, rtol=1e-13)
    # one weight dwarfs the others: the score is that mode's, not nan or 0
    np.testing.assert_allclose(hybrid_scores(D, S, C, (1e308, 1e-300, 1e-300)), D, rtol=1e-13)
    # without scaling, 1e308 * 3 overflows to inf and every score became nan
    with np.errstate(over="ignore", invalid="ignore"):
        naive = (1e308 * D + 1e308 * S + 1e308 * C) / (1e308 + 1e308 + 1e308)
    assert not np.isfinite(naive).all()


def test_compute_score_with_huge_weights(embedder: M3Embedder) -> None:
    pairs = [("capital of Germany", t) for t in CORPUS]
    base = embedder.compute_score(pairs)
    for weights in (HUGE, TINY):
        assert embedder.compute_score(pairs, weights=weights) == base  # every key, every float
    scaled = embedder.compute_score(pairs, weights=(4e307, 2e307, 4e307))
    unscaled = embedder.compute_score(pairs, weights=(0.4, 0.2, 0.4))
    for key in ("sparse+dense", "colbert+sparse+dense"):
        np.testing.assert_allclose(scaled[key], unscaled[key], rtol=1e-12)
    # sparse+dense uses w_dense and w_sparse only: a huge ColBERT weight leaves it as (1, 1)
    lopsided = embedder.compute_score(pairs, weights=(1e-300, 1e-300, 1e308))
    np.testing.assert_allclose(lopsided["sparse+dense"], base["sparse+dense"], rtol=1e-12)
    np.testing.assert_allclose(lopsided["colbert+sparse+dense"], base["colbert"], rtol=1e-12)
    nan = embedder.compute_score(pairs, weights=(0, 0, 1))["sparse+dense"]
    assert np.isnan(nan).all()  # as the reference: 0 / 0


def test_search_with_huge_weights_equals_ones(embedder: M3Embedder) -> None:
    index = M3Index(embedder)
    index.add(CORPUS, ids=[f"d{i}" for i in range(len(CORPUS))])
    for query in ("capital of Germany", "vector database"):
        base = index.search(query, k=5)
        assert len(base) == 5
        for weights in (HUGE, TINY):
            hits = index.search(query, k=5, weights=weights)
            assert [(h.id, h.score) for h in hits] == [(h.id, h.score) for h in base]
