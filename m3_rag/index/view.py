"""What a search of :class:`~m3_rag.M3Index` reads: an immutable snapshot of segments and live rows.

Writers build a new :class:`View` and swap it in; a search takes the current one and needs no
lock, so searches never wait for an ``add``, a commit or a model pass, and always see one
consistent state (before or after a write, never a mix).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch

from ..filters import Filter, MetadataColumns, filter_mask
from ..ranking import top_k
from ..retrieval import Candidates, QueryBatch, SearchRequest
from ..sparse import stack_csr
from .segment import Segment

__all__ = ["View", "search_view", "view_ids"]


@dataclass(frozen=True)
class View:
    """Segments and, per segment, which rows are alive (arrays never changed after publication)."""

    segments: tuple[Segment, ...] = ()
    alive: tuple[np.ndarray, ...] = ()

    @property
    def bases(self) -> np.ndarray:
        return np.concatenate([[0], np.cumsum([s.n for s in self.segments])]).astype(np.int64)

    @property
    def count(self) -> int:
        return int(sum(int(a.sum()) for a in self.alive))

    def rows(self) -> int:
        return int(sum(s.n for s in self.segments))


def _segment_mask(segment: Segment, alive: np.ndarray, flt: Filter | None) -> np.ndarray:
    if flt is None:
        return alive
    if segment.filter_cache is None:  # rows never change: one set of columns per segment, built lazily
        segment.filter_cache = MetadataColumns(segment.metadatas)
    return alive & filter_mask(flt, segment.filter_cache)


def view_ids(view: View, flt: Filter | None) -> list[str]:
    """Ids of the live rows of ``view`` whose metadata passes ``flt`` (None: every live row)."""
    out: list[str] = []
    for segment, alive in zip(view.segments, view.alive):
        out.extend(str(segment.ids[r]) for r in np.flatnonzero(_segment_mask(segment, alive, flt)).tolist())
    return out


def search_view(view: View, queries: QueryBatch, request: SearchRequest, vocab_size: int) -> list[Candidates]:
    """The first stage and candidate scores of every query over ``view`` (see ``HybridStore._candidates``)."""
    m = len(queries)
    if not view.segments or m == 0:
        return [Candidates.empty() for _ in range(m)]
    allowed = np.concatenate([_segment_mask(s, a, request.filter) for s, a in zip(view.segments, view.alive)])
    if not allowed.any():
        return [Candidates.empty() for _ in range(m)]
    bases = view.bases
    q_dense = torch.from_numpy(np.ascontiguousarray(queries.dense, dtype=np.float32))
    q_sparse = stack_csr(queries.sparse, vocab_size)
    stages = request.first_stage
    dense_all = (
        torch.cat([s.dense_scores(q_dense) for s in view.segments]).numpy() if "dense" in stages else None
    )  # (N, m)
    sparse_all = (
        np.concatenate([np.asarray((q_sparse @ s.inverted(vocab_size)).todense()) for s in view.segments], axis=1)
        if "sparse" in stages
        else None
    )  # (m, N)
    picked: list[np.ndarray] = []
    for j in range(m):
        found = []
        if dense_all is not None:
            found.append(top_k(np.where(allowed, dense_all[:, j], -np.inf), request.candidates))
        if sparse_all is not None:
            lexical = sparse_all[j]
            found.append(top_k(np.where(allowed & (lexical > 0), lexical, -np.inf), request.candidates))
        picked.append(np.unique(np.concatenate(found)).astype(np.int64))
    every = np.unique(np.concatenate(picked)) if picked else np.zeros(0, np.int64)
    where = np.searchsorted(bases, every, side="right") - 1
    for s in np.unique(where).tolist():  # start reading every candidate's ColBERT rows from disk now
        view.segments[s].prefetch(every[where == s] - bases[s])
    out = []
    for j, rows in enumerate(picked):
        if len(rows) == 0:
            out.append(Candidates.empty())
            continue
        seg_of = np.searchsorted(bases, rows, side="right") - 1
        local = rows - bases[seg_of]
        dense = _gather_dense(view, seg_of, local, queries.dense[j])  # per row: the same bits whatever the segments
        sparse = sparse_all[j, rows] if sparse_all is not None else _gather_sparse(view, seg_of, local, q_sparse[j])
        colbert = _gather_colbert(view, seg_of, local, queries.colbert[j])
        segs = [view.segments[s] for s in seg_of.tolist()]
        ids: list[Any] = [seg.ids[r] for seg, r in zip(segs, local.tolist())]
        texts: list[Any] = [seg.texts[r] for seg, r in zip(segs, local.tolist())]
        metas: list[Any] = [seg.metadatas[r] for seg, r in zip(segs, local.tolist())]
        out.append(Candidates(ids, texts, metas, dense.astype(np.float32), sparse.astype(np.float32), colbert))
    return out


def _groups(seg_of: np.ndarray) -> Sequence[tuple[int, np.ndarray]]:
    return [(s, np.flatnonzero(seg_of == s)) for s in np.unique(seg_of).tolist()]


def _gather_dense(view: View, seg_of: np.ndarray, local: np.ndarray, query: np.ndarray) -> np.ndarray:
    out = np.zeros(len(local), np.float32)
    q = np.asarray(query, dtype=np.float32)
    for s, pos in _groups(seg_of):
        out[pos] = (view.segments[s].arrays.dense[local[pos]] * q).sum(axis=1, dtype=np.float32)
    return out


def _gather_sparse(view: View, seg_of: np.ndarray, local: np.ndarray, query: Any) -> np.ndarray:
    """Lexical scores of some rows: their forward rows (c, V) times the (1, V) query."""
    out = np.zeros(len(local), np.float32)
    for s, pos in _groups(seg_of):
        ids, weights, offsets = view.segments[s].sparse_rows(local[pos])
        forward = sp.csr_matrix((weights, ids, offsets), shape=(len(pos), query.shape[1]))
        out[pos] = np.asarray((forward @ query.T).todense()).reshape(-1)
    return out


def _gather_colbert(view: View, seg_of: np.ndarray, local: np.ndarray, query: np.ndarray) -> np.ndarray | None:
    if not view.segments[0].has_colbert:
        return None
    out = np.zeros(len(local), np.float32)
    for s, pos in _groups(seg_of):
        out[pos] = view.segments[s].colbert_scores(query, local[pos])
    return out
