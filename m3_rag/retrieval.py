"""The one search pipeline of every store: :class:`HybridStore`.

``search_batch`` is written once, here: it checks the arguments, encodes the queries (outside
every store lock), asks the store for each query's first-stage candidates with their dense,
lexical and (when the store keeps them) ColBERT scores, scores ColBERT for the candidates of
stores that do not keep the vectors (from an encoding store, or by re-encoding their texts,
once per distinct text and still outside every lock), reranks with the exact hybrid formula,
and runs the optional cross-encoder stage on the best hits -- without calling the store again.

A store implements storage only: ``add`` / ``add_encoded`` / ``delete`` / ``get`` / ``__len__``,
``ids_where`` and :meth:`HybridStore._candidates` (and ``dense_vectors`` where it keeps them).
Queries are searched in blocks (see :meth:`HybridStore._query_block`) so that memory stays
bounded however many queries come in.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from .cross_encoder import CrossEncoderLike, apply_cross_encoder, load_cross_encoder
from .errors import IndexFormatError
from .filters import Filter, parse_filter
from .ranking import SearchHit, make_hits, rerank, top_k
from .records import Record, check_queries
from .scoring import Weights, colbert_scores_at, normalize_weights
from .sparse import SparseVector

if TYPE_CHECKING:
    from .encoder import M3Embedder
    from .output import M3Output

__all__ = [
    "FIRST_STAGES",
    "Candidates",
    "HybridStore",
    "QueryBatch",
    "SearchHit",
    "SearchRequest",
    "check_first_stage",
    "top_k",
]

_S = TypeVar("_S", bound="HybridStore")

#: Modes that can pick first-stage candidates.
FIRST_STAGES = ("dense", "sparse")
#: Queries searched together at most (query ColBERT vectors take up to 2 MB each at 1024 dims).
MAX_QUERY_BLOCK = 256


def check_first_stage(first_stage: str | Sequence[str]) -> tuple[str, ...]:
    """Normalise ``first_stage`` to a tuple of ``"dense"`` / ``"sparse"``.

    >>> check_first_stage("dense")
    ('dense',)
    """
    stages = (first_stage,) if isinstance(first_stage, str) else tuple(first_stage)
    if not stages or any(s not in FIRST_STAGES for s in stages):
        raise ValueError(f"first_stage must be one or both of {FIRST_STAGES}, got {first_stage!r}")
    return tuple(dict.fromkeys(stages))


def _check_count(name: str, value: Any, *, allow_none: bool = False) -> int | None:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be an int >= 1{' or None' if allow_none else ''}, got {value!r}")
    return int(value)


@dataclass(frozen=True)
class SearchRequest:
    """Checked search arguments, as a store's first stage receives them.

    ``limit`` is how many hits the rerank keeps per query: ``k``, or the cross-encoder's
    ``cross_encoder_top_n`` when that is larger.
    """

    k: int
    candidates: int
    first_stage: tuple[str, ...]
    weights: Weights
    filter: Filter | None
    cross_encoder_top_n: int | None = None

    @classmethod
    def make(
        cls,
        *,
        k: int,
        candidates: int,
        first_stage: str | Sequence[str],
        weights: Sequence[float],
        filter: Mapping[str, Any] | Filter | None,
        cross_encoder_top_n: int | None = None,
    ) -> SearchRequest:
        return cls(
            k=_check_count("k", k) or 1,
            candidates=_check_count("candidates", candidates) or 1,
            first_stage=check_first_stage(first_stage),
            weights=normalize_weights(weights),
            filter=parse_filter(filter),
            cross_encoder_top_n=_check_count("cross_encoder_top_n", cross_encoder_top_n, allow_none=True),
        )

    @property
    def limit(self) -> int:
        return max(self.k, self.cross_encoder_top_n or 0)


@dataclass(frozen=True)
class QueryBatch:
    """Encoded queries: ``dense`` (m, d) float32, one :class:`SparseVector` and one (Lq, d) ColBERT
    matrix per query."""

    dense: np.ndarray
    sparse: list[SparseVector]
    colbert: list[np.ndarray]

    def __len__(self) -> int:
        return len(self.sparse)


@dataclass(frozen=True)
class Candidates:
    """One query's candidates, as a store returns them (``c`` candidates, any order).

    ``dense``, ``sparse`` and ``colbert`` are (c,) scores; ``colbert`` is None when the store
    does not keep ColBERT vectors (the pipeline then scores the texts).
    """

    ids: list[str]
    texts: list[str]
    metadatas: list[dict[str, Any]]
    dense: np.ndarray
    sparse: np.ndarray
    colbert: np.ndarray | None = None

    @classmethod
    def empty(cls) -> Candidates:
        none = np.zeros(0, np.float32)
        return cls([], [], [], none, none, none)

    def __len__(self) -> int:
        return len(self.ids)


class HybridStore(ABC):
    """Base class of every store: storage methods to implement, and the one search pipeline.

    A store is truthy even when empty (frameworks treat a falsy vector store as absent).
    """

    embedder: M3Embedder

    # ------------------------------------------------------------------ storage (per store)
    @abstractmethod
    def __len__(self) -> int: ...

    @abstractmethod
    def add(
        self,
        texts: str | Sequence[str],
        *,
        ids: Sequence[str] | None = None,
        metadatas: Sequence[Mapping[str, Any] | None] | None = None,
        batch_size: int | None = None,
        show_progress: bool | None = None,
    ) -> list[str]:
        """Encode and store texts (an id already stored is replaced); returns the ids."""

    @abstractmethod
    def add_encoded(
        self,
        texts: Sequence[str],
        output: M3Output,
        *,
        ids: Sequence[str] | None = None,
        metadatas: Sequence[Mapping[str, Any] | None] | None = None,
    ) -> list[str]:
        """Store texts whose dense, sparse and ColBERT outputs were computed already (no model pass)."""

    @abstractmethod
    def delete(self, ids: str | Sequence[str]) -> int:
        """Remove documents by id; returns how many were stored (unknown ids are ignored)."""

    @abstractmethod
    def get(self, ids: str | Sequence[str]) -> list[Record]:
        """The stored documents with these ids, in the order asked; unknown ids are skipped."""

    @abstractmethod
    def ids_where(self, filter: Filter | Mapping[str, Any] | None = None) -> list[str]:
        """Ids of the stored documents whose metadata passes ``filter`` (the filter language of
        :mod:`m3_rag.filters`, evaluated as in ``search``; None: every id), without reading texts
        or vectors of the others."""

    @property
    def ids(self) -> list[str]:
        """Ids of every stored document."""
        return self.ids_where(None)

    def dense_vectors(self, ids: Sequence[str]) -> dict[str, np.ndarray]:
        """The stored dense vectors ``{id: (dim,) float32}`` of these ids, in the order asked (unknown ids are skipped).

        Stores that keep the vectors read them (no model pass); this default encodes the stored
        texts, once each, in one pass."""
        records = self.get(list(dict.fromkeys(ids)))
        if not records:
            return {}
        out = self.embedder.encode_documents([r.text for r in records], dense=True, sparse=False, colbert=False)
        assert out.dense is not None
        return {r.id: np.asarray(out.dense[i], dtype=np.float32) for i, r in enumerate(records)}

    def close(self) -> None:
        """Release what the store holds open (files, connections); the stored data stays."""
        return None

    def __enter__(self: _S) -> _S:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @abstractmethod
    def _candidates(self, queries: QueryBatch, request: SearchRequest) -> list[Candidates]:
        """First stage for every query: the union of the dense and/or sparse top-``candidates``
        among the documents that pass ``request.filter``, with their scores."""

    def _query_block(self) -> int:
        """How many queries to search together (a store whose first stage makes (queries x
        documents) score matrices returns fewer, to bound memory)."""
        return MAX_QUERY_BLOCK

    def _colbert_scores(self, queries: Sequence[np.ndarray], texts: Sequence[Sequence[str]]) -> list[np.ndarray]:
        """ColBERT scores of candidates given by text (for stores that keep no ColBERT vectors):
        every distinct text is encoded once for the whole block of queries."""
        unique = list(dict.fromkeys(t for group in texts for t in group))
        if not unique:
            return [np.zeros(0, np.float32) for _ in texts]
        out = self.embedder.encode_documents(unique, dense=False, sparse=False, colbert=True)
        assert out.colbert is not None
        lengths = np.array([len(m) for m in out.colbert], dtype=np.int64)
        starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
        vectors = np.concatenate(out.colbert)
        where = {t: i for i, t in enumerate(unique)}
        result = []
        for query, group in zip(queries, texts):
            pos = np.fromiter((where[t] for t in group), dtype=np.int64, count=len(group))
            result.append(colbert_scores_at(query, vectors, starts[pos], lengths[pos]))
        return result

    def __bool__(self) -> bool:
        return True

    # ------------------------------------------------------------------ the pipeline
    def search(
        self,
        query: str,
        *,
        k: int = 10,
        candidates: int = 100,
        first_stage: str | Sequence[str] = FIRST_STAGES,
        weights: Sequence[float] = (1.0, 1.0, 1.0),
        filter: Mapping[str, Any] | None = None,
        cross_encoder: str | CrossEncoderLike | None = None,
        cross_encoder_top_n: int | None = None,
    ) -> list[SearchHit]:
        """The ``k`` best documents for ``query`` by hybrid score (see :meth:`search_batch`)."""
        if not isinstance(query, str):
            raise TypeError(f"query must be a str, got {type(query).__name__}; use search_batch for several")
        return self.search_batch(
            [query],
            k=k,
            candidates=candidates,
            first_stage=first_stage,
            weights=weights,
            filter=filter,
            cross_encoder=cross_encoder,
            cross_encoder_top_n=cross_encoder_top_n,
        )[0]

    def search_batch(
        self,
        queries: Sequence[str],
        *,
        k: int = 10,
        candidates: int = 100,
        first_stage: str | Sequence[str] = FIRST_STAGES,
        weights: Sequence[float] = (1.0, 1.0, 1.0),
        filter: Mapping[str, Any] | None = None,
        cross_encoder: str | CrossEncoderLike | None = None,
        cross_encoder_top_n: int | None = None,
    ) -> list[list[SearchHit]]:
        """Search several queries: first-stage candidates, exact hybrid rerank, optional cross-encoder.

        Args:
            queries: the query texts (encoded together, in blocks).
            k: hits per query.
            candidates: how many the first stage takes from each of its modes.
            first_stage: ``"dense"``, ``"sparse"`` or both (the union of their candidates).
            weights: ``(w_dense, w_sparse, w_colbert)`` of the hybrid score.
            filter: a metadata filter (see :mod:`m3_rag.filters`), e.g. ``{"lang": "en"}``.
            cross_encoder: an optional final stage: a cross-encoder (``sentence_transformers.CrossEncoder``
                or a model name such as ``"BAAI/bge-reranker-v2-m3"``) that reorders the best
                ``cross_encoder_top_n`` hybrid hits (default ``k``); the hit's ``score`` becomes the
                cross-encoder's and ``scores`` keeps ``"hybrid"`` and ``"cross_encoder"``.

        Returns:
            One list of :class:`SearchHit` per query, best first. With ``candidates`` at least
            the number of documents (and an exact first stage), the hits and scores equal
            exhaustive ``compute_score``.
        """
        items = check_queries(queries)
        request = SearchRequest.make(
            k=k,
            candidates=candidates,
            first_stage=first_stage,
            weights=weights,
            filter=filter,
            cross_encoder_top_n=cross_encoder_top_n,
        )
        final = load_cross_encoder(cross_encoder) if cross_encoder is not None else None  # fail before searching
        results: list[list[SearchHit]] = []
        block = max(1, int(self._query_block()))
        for start in range(0, len(items), block):
            chunk = items[start : start + block]
            hits = self._search_block(chunk, request)
            if final is not None:
                top_n = request.cross_encoder_top_n or request.k
                hits = [apply_cross_encoder(final, q, found[:top_n], k=request.k) for q, found in zip(chunk, hits)]
            results.extend(hits)
        return results

    def _search_block(self, queries: list[str], request: SearchRequest) -> list[list[SearchHit]]:
        out = self.embedder.encode_queries(queries, dense=True, sparse=True, colbert=True)
        assert out.dense is not None and out.sparse is not None and out.colbert is not None
        encoded = QueryBatch(out.dense, [SparseVector.from_dict(s) for s in out.sparse], list(out.colbert))
        found = self._candidates(encoded, request)
        missing = [j for j, c in enumerate(found) if c.colbert is None and len(c)]
        late = self._colbert_scores([encoded.colbert[j] for j in missing], [found[j].texts for j in missing])
        colbert = {j: scores for j, scores in zip(missing, late)}
        results: list[list[SearchHit]] = []
        for j, cands in enumerate(found):
            if len(cands) == 0:
                results.append([])
                continue
            scores = colbert[j] if cands.colbert is None else cands.colbert
            order, hybrid, per_mode = rerank(
                cands.dense, cands.sparse, scores, weights=request.weights, k=request.limit
            )
            if not np.all(np.isfinite(hybrid)):
                bad = [cands.ids[i] for i in np.flatnonzero(~np.isfinite(hybrid))[:5].tolist()]
                raise IndexFormatError(
                    f"{self!r} holds vectors that give non-finite scores (documents {bad}); the store's files "
                    "are damaged: re-index those documents"
                )
            results.append(make_hits(order, hybrid, per_mode, cands.ids, cands.texts, cands.metadatas))
        return results
