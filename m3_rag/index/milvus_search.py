"""The first stage of :class:`~m3_rag.index.milvus.MilvusStore`: Milvus's dense and sparse searches.

One Milvus search per first-stage mode for all queries of a block; the candidates' dense and
lexical scores are then recomputed from their stored vectors (the exact reference formulas, not
Milvus's scores), and ColBERT is left to the pipeline (from the encoding store or re-encoded,
outside any lock). Where Milvus cannot evaluate a filter exactly (it compares JSON ``true == 1``),
its result is a superset: the stored metadata is checked exactly, and the search asks for more
candidates until each query has enough that pass, so the hits equal ``M3Index``'s.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from ..filters import MetadataColumns, filter_mask
from ..retrieval import Candidates, QueryBatch, SearchRequest
from ..sparse import stack_csr
from .milvus_expr import milvus_expression

if TYPE_CHECKING:
    from .milvus import MilvusStore

__all__ = ["find_candidates"]

_MAX_TOPK = 16384  # Milvus's largest search limit


def find_candidates(store: MilvusStore, queries: QueryBatch, request: SearchRequest) -> list[Candidates]:
    """One Milvus search per first-stage mode for all queries; scores recomputed from the stored vectors.

    Where Milvus cannot evaluate the filter exactly (it compares JSON ``true == 1``), its result is a
    superset: the stored metadata is checked exactly, and the search asks for more candidates until
    each query has ``candidates`` that pass (or Milvus has no more), so the hits equal ``M3Index``'s.
    """
    m = len(queries)
    expr, exact = milvus_expression(request.filter)
    if expr is None:
        return [Candidates.empty() for _ in range(m)]
    want = int(request.candidates)
    limit = min(want, _MAX_TOPK)
    sparse_queries = [s.to_dict() for s in queries.sparse]
    while True:
        stages = {
            "dense": _first_stage(store, "dense", list(queries.dense), limit, expr)
            if "dense" in request.first_stage
            else None,
            "sparse": _first_stage(store, "sparse", sparse_queries, limit, expr)
            if "sparse" in request.first_stage
            else None,
        }
        found = sorted({i for per_query in stages.values() for ids in per_query or [] for i in ids})
        rows = {r["id"]: r for r in store._fetch(found, ["id", "text", "metadata", "dense", "sparse"])}
        ids = sorted(rows)
        passing = filter_mask(request.filter, MetadataColumns([dict(rows[i]["metadata"] or {}) for i in ids]))
        allowed = {i for i, ok in zip(ids, passing.tolist()) if ok}
        short = any(
            len(got) == limit and sum(i in allowed for i in got) < want
            for per_query in stages.values()
            for got in per_query or []
        )
        if exact or not short or limit >= _MAX_TOPK:
            break
        limit = min(_MAX_TOPK, limit * 2)
    return _score(store, queries, stages, rows, allowed, want)


def _score(
    store: MilvusStore,
    queries: QueryBatch,
    stages: dict[str, list[list[str]] | None],
    rows: dict[str, dict[str, Any]],
    allowed: set[str],
    want: int,
) -> list[Candidates]:
    vocab = store.embedder.vocab_size
    ids = sorted(allowed)
    if not ids:
        return [Candidates.empty() for _ in range(len(queries))]
    position = {i: p for p, i in enumerate(ids)}
    dense = np.asarray([rows[i]["dense"] for i in ids], dtype=np.float32)
    stored = stack_csr([{t: v for t, v in rows[i]["sparse"].items() if t < vocab} for i in ids], vocab)
    sparse_all = np.asarray((stack_csr(queries.sparse, vocab) @ stored.T).todense(), dtype=np.float32)  # (m, c)
    out = []
    for j in range(len(queries)):
        picked = [position[i] for i in (stages["dense"] or [[]] * len(queries))[j] if i in allowed][:want]
        lexical = [position[i] for i in (stages["sparse"] or [[]] * len(queries))[j] if i in allowed]
        picked += [p for p in lexical if sparse_all[j, p] > 0][:want]
        pos = np.unique(np.asarray(picked, dtype=np.int64))
        q = np.asarray(queries.dense[j], dtype=np.float32)
        out.append(
            Candidates(
                [ids[p] for p in pos.tolist()],
                [rows[ids[p]]["text"] for p in pos.tolist()],
                [dict(rows[ids[p]]["metadata"] or {}) for p in pos.tolist()],
                (dense[pos] * q).sum(axis=1, dtype=np.float32),
                sparse_all[j, pos],
                None,  # ColBERT: from the encoding store or re-encoded, by the pipeline, outside any lock
            )
        )
    return out


def _first_stage(store: MilvusStore, field: str, data: Sequence[Any], limit: int, expr: str) -> list[list[str]]:
    """Candidate ids per query from one Milvus search of ``field`` (empty sparse queries: none)."""
    asked = [j for j, x in enumerate(data) if field == "dense" or len(x) > 0]
    out: list[list[str]] = [[] for _ in data]
    if not asked:
        return out
    params: dict[str, Any] = {}
    if field == "dense":
        if store.dense_index_type.startswith("HNSW"):
            params["ef"] = max(limit, 64)
        params.update(store._dense_search_params)
    hits = store.client.search(
        store.collection,
        data=[data[j] for j in asked],
        anns_field=field,
        limit=limit,
        filter=expr,
        output_fields=["id"],
        search_params={"metric_type": "IP", "params": params},
        **store._rpc(),
    )
    for j, found in zip(asked, hits):
        out[j] = [h["id"] for h in found]
    return out
