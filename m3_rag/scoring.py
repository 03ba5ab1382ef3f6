"""Pure, batched scoring functions: BGE-M3's dense, lexical, ColBERT and hybrid scores.

Every function scores one query against many passages (or many pairs) with array operations,
never a Python loop over tokens or pairs. The formulas are those of FlagEmbedding 1.4.2:

- dense: inner product of unit vectors;
- lexical (sparse): ``sum over shared token ids of w_q * w_p``;
- ColBERT: for each query vector the max inner product over the passage's vectors, summed and
  divided by the number of query vectors;
- hybrid: ``(w_d * dense + w_s * sparse + w_c * colbert) / (w_d + w_s + w_c)``.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence

import numpy as np
import scipy.sparse as sp
import torch

from .sparse import stack_csr

# torch.from_numpy warns about read-only arrays (a memory-mapped index); they are only read here
warnings.filterwarnings("ignore", message="The given NumPy array is not writable", module=__name__)

__all__ = [
    "Weights",
    "colbert_pair_scores",
    "colbert_scores",
    "colbert_scores_at",
    "dense_scores",
    "hybrid_scores",
    "lexical_scores",
    "normalize_weights",
    "sparse_to_csr",
]

#: Weights of the dense, sparse and ColBERT scores, in that order.
Weights = tuple[float, float, float]


def normalize_weights(weights: Sequence[float], *, scaled: bool = False) -> Weights:
    """Check ``(w_dense, w_sparse, w_colbert)``: three finite numbers >= 0, not all zero.

    With ``scaled=True`` they come back divided by the largest (which becomes 1.0), so that
    sums of weights and of weighted scores cannot overflow: ``(1e308, 1e308, 1e308)`` gives
    ``(1.0, 1.0, 1.0)``, and every hybrid score is the same as with the unscaled weights.

    >>> normalize_weights([0.4, 0.2, 0.4])
    (0.4, 0.2, 0.4)
    >>> normalize_weights([4e307, 2e307, 4e307], scaled=True)
    (1.0, 0.5, 1.0)
    """
    try:
        values = tuple(float(w) for w in weights)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"weights must be three numbers (dense, sparse, colbert), got {weights!r}") from exc
    if len(values) != 3:
        raise ValueError(f"weights must be three numbers (dense, sparse, colbert), got {len(values)}: {weights!r}")
    if not all(np.isfinite(values)) or min(values) < 0 or max(values) <= 0:
        raise ValueError(f"weights must be finite, >= 0 and not all zero, got {weights!r}")
    if scaled:
        top = max(values)
        values = tuple(v / top for v in values)
    return values[0], values[1], values[2]


def dense_scores(query: np.ndarray, passages: np.ndarray) -> np.ndarray:
    """Inner products: query (d,) or (m, d) against passages (n, d) -> (n,) or (m, n).

    >>> dense_scores(np.array([1.0, 0.0]), np.array([[0.6, 0.8], [1.0, 0.0]]))
    array([0.6, 1. ], dtype=float32)
    """
    return np.asarray(query, dtype=np.float32) @ np.asarray(passages, dtype=np.float32).T


def sparse_to_csr(weights: Sequence[Mapping[int, float]], vocab_size: int) -> sp.csr_matrix:
    """Stack sparse vectors into a float32 CSR (n, vocab_size): :func:`m3_rag.sparse.stack_csr`.

    >>> sparse_to_csr([{3: 0.5}, {}, {1: 1.0, 3: 2.0}], vocab_size=4).toarray().tolist()
    [[0.0, 0.0, 0.0, 0.5], [0.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 2.0]]
    """
    return stack_csr(weights, vocab_size)


def lexical_scores(query: Mapping[int, float], passages: sp.csr_matrix) -> np.ndarray:
    """Lexical matching: ``sum over shared ids of w_q * w_p``; query dict vs CSR (n, V) -> (n,).

    >>> P = sparse_to_csr([{1: 0.5, 2: 1.0}, {3: 2.0}], vocab_size=5)
    >>> lexical_scores({2: 0.3, 3: 0.1}, P)
    array([0.3, 0.2], dtype=float32)
    """
    vocab = passages.shape[1]
    ids = np.fromiter((k for k in query if 0 <= k < vocab), dtype=np.int64)
    vals = np.fromiter((v for k, v in query.items() if 0 <= k < vocab), dtype=np.float32, count=len(ids))
    if len(ids) == 0:
        return np.zeros(passages.shape[0], dtype=np.float32)
    return np.asarray(passages[:, ids] @ vals, dtype=np.float32).reshape(-1)


def colbert_scores(query: np.ndarray, passages: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Late interaction of one query against packed passages.

    Args:
        query: (Lq, d) query vectors.
        passages: (M, d) vectors of all passages, packed; float16 is cast to float32.
        offsets: (n + 1,) passage ``j`` owns rows ``offsets[j]:offsets[j + 1]`` (at least one).

    Returns:
        (n,) float32: ``mean over query vectors of max over passage vectors of q . p``.

    >>> q = np.array([[1.0, 0.0], [0.0, 1.0]])
    >>> p = np.array([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]])
    >>> colbert_scores(q, p, np.array([0, 2, 3]))
    array([0.9, 0.5], dtype=float32)
    """
    offsets = np.asarray(offsets, dtype=np.int64)
    if len(offsets) == 0:
        return np.zeros(0, dtype=np.float32)
    return colbert_scores_at(query, passages, offsets[:-1], np.diff(offsets))


def colbert_scores_at(
    query: np.ndarray,
    vectors: np.ndarray,
    starts: np.ndarray,
    lengths: np.ndarray,
    *,
    scales: np.ndarray | None = None,
    block_rows: int = 1024,
) -> np.ndarray:
    """Late interaction of one query against passages stored anywhere in ``vectors``.

    Passage ``j`` owns rows ``vectors[starts[j] : starts[j] + lengths[j]]``. ``vectors`` may be
    a float32, float16 or int8 memory map (int8 with ``scales``, see :mod:`m3_rag.colbert_codec`):
    rows are gathered, cast to float32 and multiplied
    ``block_rows`` at a time in buffers that stay in cache, so neither a float32 copy of all
    candidates nor a gathered copy is ever made (that copy, not the arithmetic, used to be most
    of a rerank's time).

    Args:
        query: (Lq, d) query vectors.
        vectors: (N, d) float32, float16 or int8 passage vectors.
        starts, lengths: (n,) each passage's first row and number of rows (at least one).
        scales: optional (N,) float32 per-row scales (int8 storage): row ``r`` stands for
            ``vectors[r] * scales[r]``.

    Returns:
        (n,) float32: ``mean over query vectors of max over passage vectors of q . p``.

    >>> q = np.array([[1.0, 0.0], [0.0, 1.0]])
    >>> p = np.array([[0.0, 1.0], [1.0, 0.0], [0.5, 0.75]], dtype=np.float16)
    >>> colbert_scores_at(q, p, np.array([1, 0]), np.array([2, 1]))
    array([0.875, 0.5  ], dtype=float32)
    """
    starts = np.asarray(starts, dtype=np.int64)
    lengths = np.asarray(lengths, dtype=np.int64)
    if starts.shape != lengths.shape or starts.ndim != 1:
        raise ValueError(f"starts and lengths must be 1-D of one length, got {starts.shape} and {lengths.shape}")
    n, lq = len(starts), len(query)
    if n == 0 or lq == 0:
        return np.zeros(n, dtype=np.float32)
    if np.any(lengths <= 0):
        raise ValueError("every passage needs at least one ColBERT vector (lengths must be >= 1)")
    if vectors.ndim != 2 or vectors.shape[1] != np.shape(query)[1]:
        raise ValueError(f"vectors must be (N, {np.shape(query)[1]}) like the query, got {vectors.shape}")
    if starts.min() < 0 or int((starts + lengths).max()) > len(vectors):
        raise ValueError(f"passage rows run outside the {len(vectors)} stored vectors")
    if scales is not None and np.shape(scales) != (len(vectors),):
        raise ValueError(f"scales must be ({len(vectors)},) like the vectors' rows, got {np.shape(scales)}")
    if scales is None and vectors.dtype == np.int8:
        raise ValueError("int8 ColBERT vectors need their per-row scales")
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    total, dim = int(offsets[-1]), vectors.shape[1]
    rows = np.repeat(starts - offsets[:-1], lengths) + np.arange(total)  # source row of each packed row
    breaks = np.flatnonzero(np.diff(rows) != 1)  # where the source rows stop being consecutive
    # pad the query to a multiple of 8 vectors: MKL's kernels for a skinny product are ~1.6x faster
    width = -(-lq // 8) * 8
    q = torch.zeros((width, dim), dtype=torch.float32)
    q[:lq] = torch.as_tensor(np.asarray(query, dtype=np.float32))
    stored = (np.float16, np.float32, np.int8)
    source = torch.from_numpy(vectors if vectors.dtype in stored else vectors.astype(np.float32))
    row_scale = None if scales is None else torch.from_numpy(np.asarray(scales, dtype=np.float32))
    token_scores = torch.empty((total, width), dtype=torch.float32)
    block = max(1, min(block_rows, total))
    gathered = torch.empty((block, dim), dtype=source.dtype)
    as_float = torch.empty((block, dim), dtype=torch.float32) if source.dtype != torch.float32 else None
    for a in range(0, total, block):
        b = min(total, a + block)
        if not np.any((breaks >= a) & (breaks < b - 1)):  # one run of consecutive rows: a view, no copy
            chunk = source[int(rows[a]) : int(rows[a]) + b - a]
        else:
            chunk = torch.index_select(source, 0, torch.from_numpy(rows[a:b]), out=gathered[: b - a])
        if as_float is not None:
            chunk = as_float[: b - a].copy_(chunk)
        torch.mm(chunk, q.T, out=token_scores[a:b])
        if row_scale is not None:  # q . (s * v) = s * (q . v): scale the (rows, Lq) products, not the vectors
            token_scores[a:b] *= row_scale[torch.from_numpy(rows[a:b])][:, None]
    best = np.maximum.reduceat(token_scores.numpy()[:, :lq], offsets[:-1], axis=0)  # (n, Lq)
    return (best.sum(axis=1) / np.float32(lq)).astype(np.float32)


def _padded(packed: np.ndarray, offsets: np.ndarray, lengths: np.ndarray, width: int) -> torch.Tensor:
    """Gather rows of ``packed`` into a zero-padded (len(offsets), width, d) tensor."""
    positions = np.arange(width)[None, :]
    valid = positions < lengths[:, None]
    rows = np.where(valid, offsets[:, None] + positions, 0)
    return torch.from_numpy(packed[rows] * valid[..., None].astype(np.float32))


def colbert_pair_scores(
    queries: Sequence[np.ndarray], passages: Sequence[np.ndarray], *, max_elements: int = 1 << 24
) -> np.ndarray:
    """ColBERT score of each pair ``(queries[i], passages[i])``, batched over pairs.

    Pairs are sorted by passage length and scored in zero-padded chunks of at most
    ``max_elements`` token scores (pairs x Lq x Lp), one batched matrix product per chunk;
    padded passage positions are masked with -inf, padded query positions count 0.

    >>> q = [np.array([[1.0, 0.0]]), np.array([[0.0, 1.0]])]
    >>> p = [np.array([[0.6, 0.8]]), np.array([[1.0, 0.0], [0.0, 1.0]])]
    >>> colbert_pair_scores(q, p)
    array([0.6, 1. ], dtype=float32)
    """
    if len(queries) != len(passages):
        raise ValueError(f"got {len(queries)} queries and {len(passages)} passages: expected one per pair")
    n = len(queries)
    out = np.zeros(n, dtype=np.float32)
    if n == 0:
        return out
    q_len = np.fromiter((len(q) for q in queries), dtype=np.int64, count=n)
    p_len = np.fromiter((len(p) for p in passages), dtype=np.int64, count=n)
    if np.any(p_len == 0):
        raise ValueError("every passage needs at least one ColBERT vector")
    q_pack = np.concatenate([np.asarray(q, dtype=np.float32) for q in queries])
    p_pack = np.concatenate([np.asarray(p, dtype=np.float32) for p in passages])
    q_off = np.concatenate([[0], np.cumsum(q_len)[:-1]])
    p_off = np.concatenate([[0], np.cumsum(p_len)[:-1]])
    order = np.argsort(-p_len, kind="stable")  # longest passage first in each chunk
    lq_all = max(1, int(q_len.max()))
    start = 0
    while start < n:
        size = max(1, max_elements // (lq_all * int(p_len[order[start]])))
        idx = order[start : start + size]
        lq, lp = max(1, int(q_len[idx].max())), int(p_len[idx].max())
        q = _padded(q_pack, q_off[idx], q_len[idx], lq)
        p = _padded(p_pack, p_off[idx], p_len[idx], lp)
        scores = torch.bmm(q, p.transpose(1, 2))  # (c, lq, lp)
        p_pad = torch.from_numpy(np.arange(lp)[None, :] >= p_len[idx][:, None])
        best = scores.masked_fill(p_pad[:, None, :], float("-inf")).max(dim=2).values  # (c, lq)
        q_pad = torch.from_numpy(np.arange(lq)[None, :] >= q_len[idx][:, None])
        best = best.masked_fill(q_pad, 0.0)
        out[idx] = (best.sum(dim=1) / torch.from_numpy(np.maximum(q_len[idx], 1)).float()).numpy()
        start += size
    return out


def hybrid_scores(
    dense: np.ndarray | float,
    sparse: np.ndarray | float,
    colbert: np.ndarray | float,
    weights: Sequence[float] = (1.0, 1.0, 1.0),
) -> np.ndarray:
    """Weighted mean ``(w_d*dense + w_s*sparse + w_c*colbert) / (w_d + w_s + w_c)``, float64.

    The weights are first divided by the largest (:func:`normalize_weights` with
    ``scaled=True``), so huge weights cannot overflow: ``(1e308, 1e308, 1e308)`` gives exactly
    the scores of ``(1, 1, 1)``.

    >>> hybrid_scores(np.array([0.5]), np.array([0.2]), np.array([0.8]), (0.4, 0.2, 0.4)).round(6)
    array([0.56])
    >>> hybrid_scores(np.array([0.5]), np.array([0.2]), np.array([0.8]), (1e308, 1e308, 1e308)).round(6)
    array([0.5])
    """
    w_d, w_s, w_c = normalize_weights(weights, scaled=True)
    total = w_d + w_s + w_c
    return np.asarray(
        (
            w_d * np.asarray(dense, dtype=np.float64)
            + w_s * np.asarray(sparse, dtype=np.float64)
            + w_c * np.asarray(colbert, dtype=np.float64)
        )
        / total
    )
