"""How a LlamaIndex ``VectorStoreQuery`` becomes an m3-rag search: weights of HYBRID queries, filters, folders."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from llama_index.core.vector_stores.types import VectorStoreQuery

from m3_rag.scoring import Weights, normalize_weights

from .filters import to_core_filter
from .nodes import NODE_ID_KEY

__all__ = ["hybrid_weights", "persist_folder", "query_filter"]


def hybrid_weights(weights: Sequence[float], alpha: float | None) -> Weights:
    """The weights of a HYBRID query: ``alpha`` splits the dense + sparse share, ColBERT keeps its own.

    >>> hybrid_weights((1, 1, 1), 0.5), hybrid_weights((1, 1, 1), 1.0), hybrid_weights((0.4, 0.2, 0.4), None)
    ((1.0, 1.0, 1.0), (2.0, 0.0, 1.0), (0.4, 0.2, 0.4))
    """
    w_dense, w_sparse, w_colbert = normalize_weights(weights)
    if alpha is None:
        return w_dense, w_sparse, w_colbert
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be a number in [0, 1] (1: dense only, 0: sparse only) or None, got {alpha!r}")
    share = (w_dense + w_sparse) or 1.0  # a ColBERT-only weighting: alpha splits a share of 1
    return normalize_weights((alpha * share, (1.0 - alpha) * share, w_colbert))


def persist_folder(persist_path: str | os.PathLike[str]) -> Path:
    """The index folder for LlamaIndex's ``persist_path``: the path without ``.json``.

    >>> persist_folder("storage/default__vector_store.json").as_posix()
    'storage/default__vector_store'
    """
    path = Path(persist_path)
    return path.with_suffix("") if path.suffix == ".json" else path


def query_filter(query: VectorStoreQuery) -> dict[str, Any] | None:
    """``filters``, ``doc_ids`` and ``node_ids`` of a query as one core filter."""
    terms = []
    core = to_core_filter(query.filters)
    if core:
        terms.append(core)
    if query.doc_ids:
        terms.append({"ref_doc_id": {"$in": list(query.doc_ids)}})
    if query.node_ids:  # VectorStoreIndex passes [] when it restricts nothing
        terms.append({NODE_ID_KEY: {"$in": list(query.node_ids)}})
    if not terms:
        return None
    return terms[0] if len(terms) == 1 else {"$and": terms}
