"""Maximal marginal relevance for :class:`~m3_rag.integrations.langchain.M3VectorStore` (no LangChain import)."""

from __future__ import annotations

import numpy as np

__all__ = ["check_mmr", "mmr_order"]


def mmr_order(relevance: np.ndarray, vectors: np.ndarray, k: int, lambda_mult: float) -> list[int]:
    """Maximal marginal relevance: pick ``k`` of ``n`` candidates, each maximising
    ``lambda_mult * relevance - (1 - lambda_mult) * (max similarity to those already picked)``.

    Args:
        relevance: (n,) each candidate's score for the query (here: the hybrid score).
        vectors: (n, d) unit vectors whose inner products measure redundancy (dense vectors).
        k: how many to pick (at most n).
        lambda_mult: 1 ranks by relevance only, 0 by diversity only.

    Returns:
        Positions into the candidates, in the order picked (the most relevant first).

    >>> mmr_order(np.array([0.9, 0.89, 0.5]), np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]]), 2, 0.5)
    [0, 2]
    """
    n = len(relevance)
    if n == 0 or k < 1:
        return []
    rel = np.asarray(relevance, dtype=np.float64)
    vec = np.asarray(vectors, dtype=np.float64)
    similarity = vec @ vec.T  # (n, n)
    picked = [int(np.argmax(rel))]
    redundancy = similarity[picked[0]].copy()
    chosen = np.zeros(n, dtype=bool)
    chosen[picked[0]] = True
    while len(picked) < min(k, n):
        score = np.where(chosen, -np.inf, lambda_mult * rel - (1.0 - lambda_mult) * redundancy)
        best = int(np.argmax(score))
        picked.append(best)
        chosen[best] = True
        np.maximum(redundancy, similarity[best], out=redundancy)
    return picked


def check_mmr(k: int, fetch_k: int, lambda_mult: float) -> None:
    for name, value in (("k", k), ("fetch_k", fetch_k)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    if isinstance(lambda_mult, bool) or not isinstance(lambda_mult, (int, float)) or not 0 <= lambda_mult <= 1:
        raise ValueError(f"lambda_mult must be in [0, 1] (1: relevance only, 0: diversity only), got {lambda_mult!r}")
