"""The first stage and candidate scoring of :class:`~m3_rag.index.QdrantStore` (see its module docs).

1. One ``query_batch_points`` request holds the dense and the sparse search of every query, with
   the filter translated by :func:`~m3_rag.index.qdrant_filter.qdrant_filter`. Where that
   translation is a superset, the returned metadata is checked exactly and the searches ask for
   more until each query has ``candidates`` that pass (or the collection has no more).
2. The union of each query's candidates is scored exactly: by Qdrant (``scoring="engine"``: a
   dense, a sparse and a ColBERT query per search query, restricted to the candidates with a
   ``HasIdCondition``, all in one more batched request) or here from the vectors fetched with the
   points (``"client"``). Either way the scores are BGE-M3's: ColBERT divides Qdrant's MAX_SIM
   sum by the number of query vectors.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from ..filters import Filter, MetadataColumns, filter_mask
from ..retrieval import Candidates, QueryBatch, SearchRequest
from ..scoring import colbert_scores_at
from ..sparse import SparseVector, stack_csr
from .qdrant_filter import QdrantFilter, qdrant_filter

if TYPE_CHECKING:
    from .qdrant import QdrantStore

__all__ = ["engine_is_cheaper", "find_candidates", "scroll_ids"]

_FETCH = 1000  # points per retrieve request
_TOKENS = 100  # ColBERT vectors per passage assumed by the cost model below


def engine_is_cheaper(points: int, queries: int, union: int, dim: int, colbert_dim: int, query_vectors: float) -> bool:
    """Local mode, ``scoring="auto"``: is scoring by the engine cheaper than fetching the vectors?

    qdrant-client's local engine scores a restricted query against every point of the collection
    (~40 us per point and query in Python, plus the MAX_SIM product at ~25 GFLOP/s); a fetch costs
    ~100 ns per stored number of each distinct candidate (it becomes a Python float). Constants
    measured with ``benchmarks/qdrant_store.py`` (32-d and 1024-d, 300 to 5,000 points).

    >>> engine_is_cheaper(300, 1, 100, 1024, 1024, 32), engine_is_cheaper(20_000, 1, 100, 1024, 1024, 32)
    (True, False)
    """
    engine = points * queries * (40e-6 + _TOKENS * query_vectors * colbert_dim * 2 / 25e9)
    client = union * (dim + _TOKENS * colbert_dim) * 1e-7
    return engine <= client


Hit = tuple[str, float, Any]  # (point id, first-stage score, metadata or None)


def _models() -> Any:
    from qdrant_client import models

    return models


def _colbert_query(store: QdrantStore, matrix: np.ndarray) -> np.ndarray:
    q = np.asarray(matrix, dtype=np.float32)
    return q if store.colbert_dtype == "float32" else q.astype(np.float16).astype(np.float32)  # as a server does


def _first_stage(store: QdrantStore, queries: QueryBatch, modes: Sequence[str], limit: int, qf: QdrantFilter) -> dict:
    m = _models()
    requests, where = [], []
    for mode in modes:
        for j in range(len(queries)):
            if mode == "sparse":
                sv = queries.sparse[j]
                if not len(sv):
                    continue  # no lexical weights: no lexical candidates
                query: Any = m.SparseVector(indices=sv.indices.tolist(), values=sv.weights.tolist())
                params = None
            else:
                query = np.asarray(queries.dense[j], dtype=np.float32).tolist()
                params = None if store.local else m.SearchParams(hnsw_ef=store.hnsw_ef or max(limit, 64))
            payload = False if qf.exact else ["metadata"]
            requests.append(
                m.QueryRequest(
                    query=query, using=mode, filter=qf.filter, limit=limit, params=params, with_payload=payload
                )
            )
            where.append((mode, j))
    out: dict[str, list[list[Hit]]] = {mode: [[] for _ in range(len(queries))] for mode in modes}
    if requests:
        responses = store.client.query_batch_points(store.collection, requests=requests)
        for (mode, j), response in zip(where, responses):
            out[mode][j] = [
                (str(p.id), float(p.score), None if qf.exact else (p.payload or {}).get("metadata") or {})
                for p in response.points
            ]
    return out


def find_candidates(store: QdrantStore, queries: QueryBatch, request: SearchRequest) -> list[Candidates]:
    """Each query's first-stage candidates among the records that pass the filter, scored exactly."""
    qf = qdrant_filter(request.filter)
    if qf.none or len(queries) == 0:
        return [Candidates.empty() for _ in range(len(queries))]
    want = limit = int(request.candidates)
    total: int | None = None
    while True:
        stages = _first_stage(store, queries, request.first_stage, limit, qf)
        if qf.exact:
            passing = None
            break
        metas = {pid: meta for per_mode in stages.values() for hits in per_mode for pid, _, meta in hits}
        order = list(metas)
        mask = filter_mask(request.filter, MetadataColumns([metas[p] for p in order]))
        passing = {p for p, ok in zip(order, mask.tolist()) if ok}
        short = any(
            len(hits) == limit and sum(pid in passing for pid, _, _ in hits) < want
            for per_mode in stages.values()
            for hits in per_mode
        )
        total = len(store) if total is None else total
        if not short or limit >= total:
            break
        limit = min(total, limit * 2)
    picked: list[list[str]] = []
    for j in range(len(queries)):
        ids: list[str] = []
        for mode, per_mode in stages.items():
            ok = [
                pid
                for pid, score, _ in per_mode[j]
                if (passing is None or pid in passing) and (mode == "dense" or score > 0)
            ]
            ids.extend(ok[:want])
        picked.append(list(dict.fromkeys(ids)))
    scoring = store.scoring
    if scoring == "auto" and not store.local:
        scoring = "engine"  # only scores cross the network
    elif scoring == "auto":
        union = len({p for ids in picked for p in ids})
        emb, colbert = store.embedder, store.colbert_dtype is not None
        lq = float(np.mean([len(c) for c in queries.colbert]))
        cheaper = engine_is_cheaper(
            len(store), len(queries), union, emb.dim, emb.colbert_dim or 0 if colbert else 0, lq
        )
        scoring = "engine" if cheaper else "client"
    if scoring == "client":
        return _score_client(store, queries, picked)
    return _score_engine(store, queries, picked)


def scroll_ids(store: QdrantStore, flt: Filter | None) -> list[str]:
    """Ids of the points whose metadata passes ``flt``: a filtered scroll, checked exactly where
    Qdrant's filter is a superset (see :func:`~m3_rag.index.qdrant_filter.qdrant_filter`)."""
    qf = qdrant_filter(flt)
    if qf.none:
        return []
    payload = ["id"] if qf.exact else ["id", "metadata"]
    out: list[str] = []
    offset = None
    while True:
        page, offset = store.client.scroll(
            store.collection, scroll_filter=qf.filter, limit=1000, offset=offset, with_payload=payload,
            with_vectors=False,
        )  # fmt: skip
        if not qf.exact:
            metas = MetadataColumns([dict((p.payload or {}).get("metadata") or {}) for p in page])
            page = [p for p, ok in zip(page, filter_mask(flt, metas).tolist()) if ok]
        out.extend(str(p.payload["id"]) for p in page)
        if offset is None:
            return out


def _retrieve(store: QdrantStore, pids: Sequence[str], *, vectors: bool) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for start in range(0, len(pids), _FETCH):
        chunk = list(pids[start : start + _FETCH])
        points = store.client.retrieve(
            store.collection, chunk, with_payload=["id", "text", "metadata"], with_vectors=vectors
        )
        out.update((str(p.id), p) for p in points)
    return out


def _candidates(points: dict[str, Any], pids: Sequence[str], dense: Any, sparse: Any, colbert: Any) -> Candidates:
    payloads = [points[p].payload for p in pids]
    return Candidates(
        [str(p["id"]) for p in payloads],
        [str(p["text"]) for p in payloads],
        [dict(p.get("metadata") or {}) for p in payloads],
        np.asarray(dense, dtype=np.float32),
        np.asarray(sparse, dtype=np.float32),
        None if colbert is None else np.asarray(colbert, dtype=np.float32),
    )


def _score_client(store: QdrantStore, queries: QueryBatch, picked: list[list[str]]) -> list[Candidates]:
    """Scores from the candidates' vectors, fetched with their points (one retrieve for all queries)."""
    union = list(dict.fromkeys(p for ids in picked for p in ids))
    points = _retrieve(store, union, vectors=True)
    alive = [p for p in union if p in points]  # a point deleted since the first stage is no candidate
    if not alive:
        return [Candidates.empty() for _ in picked]
    at = {p: i for i, p in enumerate(alive)}
    vecs = [points[p].vector or {} for p in alive]
    dense = np.asarray([v["dense"] for v in vecs], dtype=np.float32)  # (c, d)
    vocab = store.embedder.vocab_size
    rows = [SparseVector.from_arrays(v["sparse"].indices, v["sparse"].values) if "sparse" in v else {} for v in vecs]
    lexical = np.asarray((stack_csr(queries.sparse, vocab) @ stack_csr(rows, vocab).T).todense(), dtype=np.float32)
    has_colbert = store.colbert_dtype is not None
    if has_colbert:
        mats = [np.asarray(v["colbert"], dtype=np.float32) for v in vecs]
        lengths = np.array([len(x) for x in mats], dtype=np.int64)
        starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
        packed = np.concatenate(mats)
    out = []
    for j, ids in enumerate(picked):
        kept = [p for p in ids if p in at]
        pos = np.fromiter((at[p] for p in kept), dtype=np.int64, count=len(kept))
        q = np.asarray(queries.dense[j], dtype=np.float32)
        colbert = (
            colbert_scores_at(_colbert_query(store, queries.colbert[j]), packed, starts[pos], lengths[pos])
            if has_colbert and len(pos)
            else (np.zeros(0, np.float32) if has_colbert else None)
        )
        out.append(_candidates(points, kept, (dense[pos] * q).sum(axis=1, dtype=np.float32), lexical[j, pos], colbert))
    return out


def _score_engine(store: QdrantStore, queries: QueryBatch, picked: list[list[str]]) -> list[Candidates]:
    """Scores computed by Qdrant: queries restricted to each query's candidates, one batched request."""
    m = _models()
    requests, where = [], []
    # local mode applies no search params (and warns): exact scans, no quantization
    exact = None if store.local else m.SearchParams(exact=True)
    int8 = None if store.local else m.SearchParams(quantization=m.QuantizationSearchParams(rescore=False))
    for j, ids in enumerate(picked):
        if not ids:
            continue
        only = m.Filter(must=[m.HasIdCondition(has_id=ids)])
        sv = queries.sparse[j]
        asks: list[tuple[str, Any, Any]] = [("dense", np.asarray(queries.dense[j], dtype=np.float32).tolist(), exact)]
        if len(sv):
            asks.append(("sparse", m.SparseVector(indices=sv.indices.tolist(), values=sv.weights.tolist()), None))
        if store.colbert_dtype is not None:  # no HNSW graph (m=0): a plain scan of the candidates
            asks.append(
                (
                    "colbert",
                    _colbert_query(store, queries.colbert[j]).tolist(),
                    int8 if store.colbert_dtype == "int8" else None,
                )
            )
        for mode, query, params in asks:
            requests.append(m.QueryRequest(query=query, using=mode, filter=only, limit=len(ids), params=params))
            where.append((j, mode))
    scores: list[dict[str, dict[str, float]]] = [{"dense": {}, "sparse": {}, "colbert": {}} for _ in picked]
    if requests:
        responses = store.client.query_batch_points(store.collection, requests=requests)
        for (j, mode), response in zip(where, responses):
            scores[j][mode] = {str(p.id): float(p.score) for p in response.points}
    points = _retrieve(store, list(dict.fromkeys(p for ids in picked for p in ids)), vectors=False)
    out = []
    for j, ids in enumerate(picked):
        got = scores[j]
        kept = [p for p in ids if p in points and p in got["dense"]]  # deleted since the first stage: gone
        lq = len(queries.colbert[j])
        colbert = [got["colbert"].get(p, np.nan) / lq for p in kept] if store.colbert_dtype is not None else None
        sparse = [got["sparse"].get(p, 0.0) for p in kept]  # not returned: no shared token, score 0
        out.append(_candidates(points, kept, [got["dense"][p] for p in kept], sparse, colbert))
    return out
