"""Rerank any texts against a query with the exact hybrid score (what framework rerankers use)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from .cross_encoder import CrossEncoderLike, cross_encoder_scores
from .retrieval import top_k
from .scoring import colbert_scores, dense_scores, hybrid_scores, lexical_scores, normalize_weights, sparse_to_csr

if TYPE_CHECKING:
    from .encoder import M3Embedder

__all__ = ["RankedText", "rerank_texts"]


@dataclass(frozen=True)
class RankedText:
    """One reranked text: its ``index`` in the input, hybrid ``score`` and per-mode ``scores``."""

    index: int
    score: float
    scores: dict[str, float] = field(default_factory=dict)


def rerank_texts(
    embedder: M3Embedder,
    query: str,
    texts: Sequence[str],
    *,
    weights: Sequence[float] = (1.0, 1.0, 1.0),
    top_n: int | None = None,
    max_query_length: int | None = None,
    max_passage_length: int | None = None,
    rerank_with: str | CrossEncoderLike | None = None,
    rerank_top_n: int | None = None,
) -> list[RankedText]:
    """Order ``texts`` by their hybrid score against ``query``, best first.

    The query and the texts are each encoded once (one pass per batch); the scores equal
    ``embedder.compute_score([(query, t) for t in texts], weights=weights)``.

    With ``rerank_with`` (a cross-encoder or its model name), the best ``rerank_top_n`` by hybrid
    score (default: ``top_n``, or all) are reordered by the cross-encoder and the best ``top_n``
    of them returned: ``score`` is then the cross-encoder's and ``scores`` gains ``"hybrid"`` and
    ``"cross_encoder"``.

    >>> from m3_rag import M3Embedder
    >>> m3 = M3Embedder.from_pretrained("tests/data/tiny-m3")
    >>> ranked = rerank_texts(m3, "capital of Germany", ["Paris is in France.", "Berlin is the capital."], top_n=1)
    >>> len(ranked), sorted(ranked[0].scores)
    (1, ['colbert', 'dense', 'sparse'])
    """
    if not isinstance(query, str):
        raise TypeError(f"query must be a str, got {type(query).__name__}")
    w = normalize_weights(weights)
    for name, value in (("top_n", top_n), ("rerank_top_n", rerank_top_n)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ValueError(f"{name} must be an int >= 1 or None, got {value!r}")
    if len(texts) == 0:
        return []
    q = embedder.encode_queries([query], max_length=max_query_length)
    p = embedder.encode_documents(list(texts), max_length=max_passage_length)
    assert q.dense is not None and q.sparse is not None and q.colbert is not None
    assert p.dense is not None and p.sparse is not None and p.colbert is not None
    per_mode = {
        "dense": dense_scores(q.dense[0], p.dense),
        "sparse": lexical_scores(q.sparse[0], sparse_to_csr(p.sparse, embedder.vocab_size)),
        "colbert": colbert_scores(
            q.colbert[0], np.concatenate(p.colbert), np.concatenate([[0], np.cumsum([len(c) for c in p.colbert])])
        ),
    }
    hybrid = hybrid_scores(per_mode["dense"], per_mode["sparse"], per_mode["colbert"], w)
    if rerank_with is None:
        order = top_k(hybrid, top_n or len(texts))
        return [
            RankedText(int(i), float(hybrid[i]), {mode: float(values[i]) for mode, values in per_mode.items()})
            for i in order.tolist()
        ]
    seen = top_k(hybrid, rerank_top_n or top_n or len(texts))
    final = cross_encoder_scores(rerank_with, query, [texts[i] for i in seen.tolist()])
    return [
        RankedText(
            int(i),
            float(final[j]),
            {
                **{mode: float(values[i]) for mode, values in per_mode.items()},
                "hybrid": float(hybrid[i]),
                "cross_encoder": float(final[j]),
            },
        )
        for j, i in ((j, int(seen[j])) for j in top_k(final, top_n or len(seen)).tolist())
    ]
