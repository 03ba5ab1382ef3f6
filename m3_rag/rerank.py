"""Rerank any texts against a query with the exact hybrid score (what framework rerankers use).

With an :class:`~m3_rag.EncodingStore` only the query is encoded when the texts are stored:
their dense vectors, sparse weights and ColBERT vectors are read (and scored straight from the
stored dtype); texts not stored yet are encoded once and stored.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TypeVar

import numpy as np

from .cross_encoder import CrossEncoderLike, cross_encoder_scores
from .encoding_entries import PackedEncodings
from .retrieval import top_k
from .scoring import dense_scores, hybrid_scores, lexical_scores, normalize_weights
from .sparse import SparseVector, stack_csr
from .store_encode import fetch_encodings

if TYPE_CHECKING:
    from .encoder import M3Embedder
    from .encoding_store import EncodingStore

__all__ = ["RankedText", "rerank_texts"]

T = TypeVar("T")


@dataclass(frozen=True)
class RankedText:
    """One reranked text: its ``index`` in the input, hybrid ``score`` and per-mode ``scores``."""

    index: int
    score: float
    scores: dict[str, float] = field(default_factory=dict)


def _passages(
    embedder: M3Embedder, texts: list[str], max_length: int | None, store: EncodingStore | None
) -> PackedEncodings:
    """The texts' encodings packed for scoring: from the store, or from one model pass (float32)."""
    if store is not None:
        return fetch_encodings(embedder, texts, store, max_length=max_length)
    p = embedder.encode_documents(texts, max_length=max_length)
    assert p.dense is not None and p.sparse is not None and p.colbert is not None
    offsets = np.concatenate([[0], np.cumsum([len(c) for c in p.colbert])]).astype(np.int64)
    sparse = [SparseVector.from_dict(w) for w in p.sparse]
    return PackedEncodings(p.dense, sparse, np.concatenate(p.colbert), None, offsets)


def rerank_texts(
    embedder: M3Embedder,
    query: str,
    texts: Sequence[str],
    *,
    weights: Sequence[float] = (1.0, 1.0, 1.0),
    top_n: int | None = None,
    query_max_length: int | None = None,
    passage_max_length: int | None = None,
    cross_encoder: str | CrossEncoderLike | None = None,
    cross_encoder_top_n: int | None = None,
    encoding_store: EncodingStore | None = None,
) -> list[RankedText]:
    """Order ``texts`` by their hybrid score against ``query``, best first.

    The query and the texts are each encoded once (one pass per batch); the scores equal
    ``embedder.compute_score([(query, t) for t in texts], weights=weights)``.

    With ``encoding_store`` (an :class:`~m3_rag.EncodingStore` of this model), only the query is
    encoded when the texts are stored (e.g. by the embedding adapters, when the texts went into a
    vector store): their encodings are read, and the texts not stored yet are encoded once and
    stored. Scores then equal ``compute_score``'s to 1e-5 with float32 storage; float16 and int8
    storage change only the ColBERT score (dense and sparse are exact): by at most 2.9e-5 and
    5.0e-4 on the mid-size benchmark checkpoint, 2.0e-4 and 1.5e-3 on the 32-d test checkpoints
    (benchmarks/README.md; pinned in tests/test_encoding_fidelity.py). ``passage_max_length``
    must be the one the texts were stored with (both default to the embedder's
    ``passage_max_length``), or they are other keys: misses.

    With ``cross_encoder`` (a cross-encoder or its model name), the best ``cross_encoder_top_n``
    by hybrid score (default: ``top_n``, or all) are reordered by the cross-encoder and the best
    ``top_n`` of them returned: ``score`` is then the cross-encoder's and ``scores`` gains
    ``"hybrid"`` and ``"cross_encoder"``.

    >>> from m3_rag import M3Embedder
    >>> m3 = M3Embedder.from_pretrained("tests/data/tiny-m3")
    >>> ranked = rerank_texts(m3, "capital of Germany", ["Paris is in France.", "Berlin is the capital."], top_n=1)
    >>> len(ranked), sorted(ranked[0].scores)
    (1, ['colbert', 'dense', 'sparse'])
    """
    if not isinstance(query, str):
        raise TypeError(f"query must be a str, got {type(query).__name__}")
    w = normalize_weights(weights)
    for name, value in (("top_n", top_n), ("cross_encoder_top_n", cross_encoder_top_n)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ValueError(f"{name} must be an int >= 1 or None, got {value!r}")
    if len(texts) == 0:
        return []
    q = embedder.encode_queries([query], max_length=query_max_length)
    assert q.dense is not None and q.sparse is not None and q.colbert is not None
    p = _passages(embedder, list(texts), passage_max_length, encoding_store)
    per_mode = {
        "dense": dense_scores(q.dense[0], p.dense),
        "sparse": lexical_scores(q.sparse[0], stack_csr(p.sparse, embedder.vocab_size)),
        "colbert": p.colbert_scores(q.colbert[0]),
    }
    hybrid = hybrid_scores(per_mode["dense"], per_mode["sparse"], per_mode["colbert"], w)
    if cross_encoder is None:
        order = top_k(hybrid, top_n or len(texts))
        return [
            RankedText(int(i), float(hybrid[i]), {mode: float(values[i]) for mode, values in per_mode.items()})
            for i in order.tolist()
        ]
    seen = top_k(hybrid, cross_encoder_top_n or top_n or len(texts))
    final = cross_encoder_scores(cross_encoder, query, [texts[i] for i in seen.tolist()])
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
