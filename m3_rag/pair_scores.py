"""``compute_score``: FlagEmbedding-compatible scores of (query, passage) pairs, batched."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from .scoring import colbert_pair_scores, normalize_weights, sparse_to_csr

if TYPE_CHECKING:
    from .encoder import M3Embedder

__all__ = ["SCORE_KEYS", "compute_pair_scores"]

#: The keys of ``compute_score``'s result, as the reference names them.
SCORE_KEYS = ("colbert", "sparse", "dense", "sparse+dense", "colbert+sparse+dense")


def _check_pairs(pairs: Sequence[tuple[str, str]] | tuple[str, str]) -> list[tuple[str, str]]:
    if pairs is None:
        raise TypeError("pairs must be a list of (query, passage) tuples, got None")
    if isinstance(pairs, tuple) and len(pairs) == 2 and isinstance(pairs[0], str) and isinstance(pairs[1], str):
        return [(pairs[0], pairs[1])]
    if isinstance(pairs, (str, bytes)) or not isinstance(pairs, Sequence):
        raise TypeError(f"pairs must be a list of (query, passage) tuples, got {type(pairs).__name__}")
    checked: list[tuple[str, str]] = []
    for i, pair in enumerate(pairs):
        if isinstance(pair, str) or not isinstance(pair, Sequence) or len(pair) != 2:
            raise TypeError(f"pairs[{i}] must be a (query, passage) tuple of two str, got {pair!r:.80}")
        query, passage = pair
        if not isinstance(query, str) or not isinstance(passage, str):
            raise TypeError(f"pairs[{i}] must hold two str, got ({type(query).__name__}, {type(passage).__name__})")
        checked.append((query, passage))
    return checked


def compute_pair_scores(
    embedder: M3Embedder,
    pairs: Sequence[tuple[str, str]] | tuple[str, str],
    *,
    weights: Sequence[float],
    query_max_length: int,
    passage_max_length: int,
    batch_size: int | None = None,
    show_progress: bool | None = None,
) -> dict[str, list[float]]:
    """See :meth:`M3Embedder.compute_score`."""
    items = _check_pairs(pairs)
    w_dense, w_sparse, _ = normalize_weights(weights)  # checked before any encoding
    if not items:
        return {key: [] for key in SCORE_KEYS}
    query_index = {q: i for i, q in enumerate(dict.fromkeys(q for q, _ in items))}
    passage_index = {p: i for i, p in enumerate(dict.fromkeys(p for _, p in items))}
    qi = np.fromiter((query_index[q] for q, _ in items), dtype=np.int64, count=len(items))
    pi = np.fromiter((passage_index[p] for _, p in items), dtype=np.int64, count=len(items))
    q_out = embedder.encode(
        list(query_index), max_length=query_max_length, batch_size=batch_size, show_progress=show_progress
    )
    p_out = embedder.encode(
        list(passage_index), max_length=passage_max_length, batch_size=batch_size, show_progress=show_progress
    )
    assert q_out.dense is not None and p_out.dense is not None
    assert q_out.sparse is not None and p_out.sparse is not None
    assert q_out.colbert is not None and p_out.colbert is not None

    dense = np.einsum("ij,ij->i", q_out.dense[qi], p_out.dense[pi]).astype(np.float64)
    q_csr = sparse_to_csr(q_out.sparse, embedder.vocab_size)
    p_csr = sparse_to_csr(p_out.sparse, embedder.vocab_size)
    sparse = np.asarray(q_csr[qi].multiply(p_csr[pi]).sum(axis=1), dtype=np.float64).reshape(-1)
    q_vecs, p_vecs = q_out.colbert, p_out.colbert
    colbert = colbert_pair_scores([q_vecs[i] for i in qi.tolist()], [p_vecs[j] for j in pi.tolist()])
    colbert = colbert.astype(np.float64)

    # each mean with its weights divided by their largest: huge weights cannot overflow, and
    # (1e308, 1e308, 1e308) gives exactly the scores of (1, 1, 1)
    top2 = max(w_dense, w_sparse)
    if top2 > 0:
        d2, s2 = w_dense / top2, w_sparse / top2
        sparse_dense = (s2 * sparse + d2 * dense) / (s2 + d2)
    else:  # w_dense = w_sparse = 0 gives nan, as the reference
        sparse_dense = np.full(len(items), np.nan)
    w_d, w_s, w_c = normalize_weights(weights, scaled=True)
    total = (w_c * colbert + w_s * sparse + w_d * dense) / (w_d + w_s + w_c)
    return {
        "colbert": colbert.tolist(),
        "sparse": sparse.tolist(),
        "dense": dense.tolist(),
        "sparse+dense": sparse_dense.tolist(),
        "colbert+sparse+dense": total.tolist(),
    }
