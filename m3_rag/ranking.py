"""Ranking candidates: the top-k selection, the exact hybrid rerank and the :class:`SearchHit` results.

Pure functions over arrays; every store's search ends here (see :mod:`m3_rag.retrieval`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .records import copy_metadata
from .scoring import Weights, hybrid_scores

__all__ = ["SearchHit", "make_hits", "rerank", "top_k"]


@dataclass(frozen=True)
class SearchHit:
    """One search result.

    Attributes:
        id: the document id.
        text: the document text.
        metadata: the document metadata (a copy: changing it changes nothing in the store).
        score: the hybrid score ``(w_d*dense + w_s*sparse + w_c*colbert) / (w_d + w_s + w_c)``, or,
            after a cross-encoder stage, the cross-encoder's score.
        scores: the per-mode scores ``{"dense": ..., "sparse": ..., "colbert": ...}`` (plus
            ``"hybrid"`` and ``"cross_encoder"`` after a cross-encoder stage).
    """

    id: str
    text: str
    metadata: dict[str, Any] = field(default_factory=dict)
    score: float = 0.0
    scores: dict[str, float] = field(default_factory=dict)


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Positions of the ``k`` largest finite scores, best first (ties: lower position first).

    >>> top_k(np.array([0.1, 0.9, -np.inf, 0.9, 0.5]), 3).tolist()
    [1, 3, 4]
    """
    finite = np.flatnonzero(np.isfinite(scores))
    if len(finite) > k:
        part = np.argpartition(-scores[finite], k - 1)[:k]
        # keep everything tied with the k-th score so that ties resolve by position
        threshold = scores[finite[part]].min()
        finite = finite[scores[finite] >= threshold]
    order = np.lexsort((finite, -scores[finite]))
    return finite[order][:k]


def rerank(
    dense: np.ndarray,
    sparse: np.ndarray,
    colbert: np.ndarray,
    *,
    weights: Weights,
    k: int,
) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """Exact hybrid scores of ``c`` candidates and the best ``k`` of them.

    Args:
        dense, sparse, colbert: (c,) each candidate's dense, lexical and ColBERT score.
        weights: ``(w_dense, w_sparse, w_colbert)``.

    Returns:
        ``(order, hybrid, per_mode)``: positions of the best ``k`` candidates, best first; the
        (c,) hybrid scores; ``{"dense", "sparse", "colbert"}`` -> (c,) scores.

    >>> order, hybrid, _ = rerank(np.array([0.5, 0.9]), np.array([0.1, 0.0]), np.array([0.6, 0.6]),
    ...                           weights=(1.0, 1.0, 1.0), k=1)
    >>> order.tolist(), hybrid.round(3).tolist()
    ([1], [0.4, 0.5])
    """
    hybrid = hybrid_scores(dense, sparse, colbert, weights)
    per_mode = {"dense": np.asarray(dense), "sparse": np.asarray(sparse), "colbert": np.asarray(colbert)}
    return top_k(hybrid, k), hybrid, per_mode


def make_hits(
    positions: np.ndarray,
    hybrid: np.ndarray,
    per_mode: Mapping[str, np.ndarray],
    ids: Sequence[str],
    texts: Sequence[str],
    metadatas: Sequence[Mapping[str, Any]],
) -> list[SearchHit]:
    """:class:`SearchHit` objects for ``positions`` into the candidate arrays (metadata copied)."""
    return [
        SearchHit(
            id=ids[p],
            text=texts[p],
            metadata=copy_metadata(metadatas[p]),
            score=float(hybrid[p]),
            scores={mode: float(values[p]) for mode, values in per_mode.items()},
        )
        for p in positions.tolist()
    ]
