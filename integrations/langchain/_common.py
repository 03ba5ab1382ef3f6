"""Helpers shared by the LangChain adapters: the shared model, score keys, Documents.

The per-text encoding cache that gives one model pass per text when a store asks for dense and
sparse vectors separately is the core's :mod:`m3_rag.encode_cache` (``cache_for(embedder)``).
Nothing here imports LangChain.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from m3_rag.ranking import SearchHit

from .._embedder import resolve_embedder

__all__ = ["INSTALL_HINT", "SCORE_KEYS", "hit_scores", "resolve_embedder", "score_metadata"]

#: What the ImportError of a missing LangChain says to run.
INSTALL_HINT = 'pip install "m3-rag[langchain]"'
#: Metadata keys of the hybrid score and of the per-mode scores on returned Documents.
SCORE_KEYS = {
    "score": "relevance_score",
    "dense": "dense_score",
    "sparse": "sparse_score",
    "colbert": "colbert_score",
    "hybrid": "hybrid_score",  # with a cross-encoder final stage: the hybrid score it replaced
    "cross_encoder": "cross_encoder_score",
}


def score_metadata(metadata: Mapping[str, Any] | None, score: float, scores: Mapping[str, float]) -> dict[str, Any]:
    """A new dict: ``metadata`` plus ``relevance_score`` and ``dense_score``/``sparse_score``/``colbert_score``.

    >>> score_metadata({"source": "a"}, 0.5, {"dense": 0.7, "sparse": 0.1, "colbert": 0.7})
    {'source': 'a', 'relevance_score': 0.5, 'dense_score': 0.7, 'sparse_score': 0.1, 'colbert_score': 0.7}
    """
    out = dict(metadata or {})
    out[SCORE_KEYS["score"]] = float(score)
    for mode in ("dense", "sparse", "colbert", "hybrid", "cross_encoder"):
        if mode in scores:
            out[SCORE_KEYS[mode]] = float(scores[mode])
    return out


def hit_scores(hit: SearchHit) -> dict[str, float]:
    """The scores of a hit under the keys :func:`score_metadata` uses (``relevance_score``, ``dense_score``...).

    >>> hit_scores(SearchHit("a", "text", {}, 0.5, {"dense": 0.7, "sparse": 0.1, "colbert": 0.7}))
    {'relevance_score': 0.5, 'dense_score': 0.7, 'sparse_score': 0.1, 'colbert_score': 0.7}
    """
    return score_metadata(None, hit.score, hit.scores)
