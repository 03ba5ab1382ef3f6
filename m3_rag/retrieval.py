"""The retrieval pipeline shared by every store: first-stage candidates, exact hybrid rerank, hits.

A store supplies, for one query, the dense and lexical scores of its candidates and their
ColBERT vectors (stored, or re-encoded from the texts); this module turns them into ranked
:class:`SearchHit` objects with the reference formulas of :mod:`m3_rag.scoring`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np

from .scoring import Weights, hybrid_scores, normalize_weights

__all__ = [
    "FIRST_STAGES",
    "HybridStore",
    "SearchHit",
    "check_first_stage",
    "check_search_args",
    "make_hits",
    "rerank",
    "top_k",
]

#: Modes that can pick first-stage candidates.
FIRST_STAGES = ("dense", "sparse")


@dataclass(frozen=True)
class SearchHit:
    """One search result.

    Attributes:
        id: the document id.
        text: the document text.
        metadata: the document metadata (a copy: changing it changes nothing in the store).
        score: the hybrid score ``(w_d*dense + w_s*sparse + w_c*colbert) / (w_d + w_s + w_c)``.
        scores: the per-mode scores ``{"dense": ..., "sparse": ..., "colbert": ...}``.
    """

    id: str
    text: str
    metadata: dict[str, Any] = field(default_factory=dict)
    score: float = 0.0
    scores: dict[str, float] = field(default_factory=dict)


@runtime_checkable
class HybridStore(Protocol):
    """What retrievers need from a store: :class:`~m3_rag.M3Index` and the Milvus store both are one."""

    embedder: Any

    def __len__(self) -> int: ...

    def add(
        self,
        texts: Sequence[str],
        *,
        ids: Sequence[str] | None = None,
        metadatas: Sequence[Mapping[str, Any] | None] | None = None,
    ) -> list[str]: ...

    def delete(self, ids: Sequence[str]) -> int: ...

    def search(
        self,
        query: str,
        *,
        k: int = 10,
        candidates: int = 100,
        first_stage: str | Sequence[str] = ("dense", "sparse"),
        weights: Sequence[float] = (1.0, 1.0, 1.0),
        filter: Mapping[str, Any] | None = None,
        rerank_with: Any = None,
        rerank_top_n: int | None = None,
    ) -> list[SearchHit]: ...

    def search_batch(
        self,
        queries: Sequence[str],
        *,
        k: int = 10,
        candidates: int = 100,
        first_stage: str | Sequence[str] = ("dense", "sparse"),
        weights: Sequence[float] = (1.0, 1.0, 1.0),
        filter: Mapping[str, Any] | None = None,
        rerank_with: Any = None,
        rerank_top_n: int | None = None,
    ) -> list[list[SearchHit]]: ...


def check_first_stage(first_stage: str | Sequence[str]) -> tuple[str, ...]:
    """Normalise ``first_stage`` to a tuple of ``"dense"`` / ``"sparse"``.

    >>> check_first_stage("dense")
    ('dense',)
    """
    stages = (first_stage,) if isinstance(first_stage, str) else tuple(first_stage)
    if not stages or any(s not in FIRST_STAGES for s in stages):
        raise ValueError(f"first_stage must be one or both of {FIRST_STAGES}, got {first_stage!r}")
    return tuple(dict.fromkeys(stages))


def check_search_args(
    k: int, candidates: int, first_stage: str | Sequence[str], weights: Sequence[float]
) -> tuple[tuple[str, ...], Weights]:
    """Validate the common search arguments; returns the normalised first stage and weights."""
    for name, value in (("k", k), ("candidates", candidates)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    return check_first_stage(first_stage), normalize_weights(weights)


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
        dense, sparse, colbert: (c,) each candidate's dense, lexical and ColBERT score (see
            :func:`m3_rag.scoring.colbert_scores_at` for ColBERT from a store).
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
    metadatas: Sequence[dict[str, Any]],
) -> list[SearchHit]:
    """Build :class:`SearchHit` objects for ``positions`` into the candidate arrays."""
    import copy

    return [
        SearchHit(
            id=ids[p],
            text=texts[p],
            metadata=copy.deepcopy(metadatas[p]),
            score=float(hybrid[p]),
            scores={mode: float(values[p]) for mode, values in per_mode.items()},
        )
        for p in positions.tolist()
    ]
