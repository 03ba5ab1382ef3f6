"""``M3Index``: the embedded hybrid index (numpy + scipy.sparse), saved without pickle."""

from __future__ import annotations

import copy
import json
import threading
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import scipy.sparse as sp
import torch

from ..cross_encoder import CrossEncoderLike, search_with_final_stage
from ..encoder import M3Embedder, _check_texts
from ..errors import IndexFormatError
from ..retrieval import SearchHit, check_search_args, make_hits, rerank, top_k
from ..scoring import colbert_scores_at, sparse_to_csr
from .filters import MetadataFilter, MetadataIndex, check_filter, filter_mask
from .packed import DenseRows, PackedRows, inverted_index
from .storage import read_index, read_manifest, write_index

__all__ = ["ColbertStorage", "M3Index", "Record"]

ColbertStorage = Literal["float16", "float32"] | None
_COLBERT_DTYPES = {"float16": np.float16, "float32": np.float32}


@dataclass(frozen=True)
class Record:
    """A stored document: ``id``, ``text`` and ``metadata``."""

    id: str
    text: str
    metadata: dict[str, Any]


def _check_ids(ids: Sequence[str] | None, n: int) -> list[str]:
    if ids is None:
        return [uuid.uuid4().hex for _ in range(n)]
    if isinstance(ids, str) or len(ids) != n:
        raise ValueError(f"ids must be a list with one id per text ({n}), got {ids!r:.80}")
    for i, doc_id in enumerate(ids):
        if not isinstance(doc_id, str) or not doc_id:
            raise TypeError(f"ids[{i}] must be a non-empty str, got {doc_id!r:.80}")
    if len(set(ids)) != n:
        dup = next(x for x in ids if list(ids).count(x) > 1)
        raise ValueError(f"ids must be unique within one add call; {dup!r} appears more than once")
    return list(ids)


def _check_metadatas(metadatas: Sequence[Mapping[str, Any] | None] | None, n: int) -> list[dict[str, Any]]:
    if metadatas is None:
        return [{} for _ in range(n)]
    if len(metadatas) != n:
        raise ValueError(f"metadatas must have one entry per text ({n}), got {len(metadatas)}")
    out = []
    for i, meta in enumerate(metadatas):
        if meta is None:
            meta = {}
        if not isinstance(meta, Mapping):
            raise TypeError(f"metadatas[{i}] must be a dict, got {type(meta).__name__}")
        try:
            json.dumps(meta, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise TypeError(f"metadatas[{i}] must be JSON-serialisable (it is saved as JSON): {exc}") from exc
        if not all(isinstance(k, str) for k in meta):
            raise TypeError(f"metadatas[{i}] keys must be str")
        out.append(copy.deepcopy(dict(meta)))
    return out


class M3Index:
    """An in-process hybrid index over BGE-M3's three outputs.

    Search = first-stage candidates (exact dense top-``candidates`` by matrix product, and/or
    sparse top-``candidates`` from an inverted index) -> exact hybrid rerank of their union
    with the reference formulas. ColBERT vectors are stored packed (float16 by default); with
    ``colbert=None`` nothing is stored and the candidates are re-encoded at query time.

    Thread safety: every method may be called from several threads; searches see either the
    state before or after a concurrent ``add``/``delete``, never a mix.

    Example:
        >>> from m3_rag import M3Embedder, M3Index
        >>> index = M3Index(M3Embedder.from_pretrained("tests/data/tiny-m3"))
        >>> index.add(["Berlin is the capital of Germany.", "Paris is in France."], ids=["de", "fr"])
        ['de', 'fr']
        >>> hit = index.search("capital of Germany", k=1)[0]
        >>> sorted(hit.scores)
        ['colbert', 'dense', 'sparse']
    """

    def __init__(self, embedder: M3Embedder, *, colbert: ColbertStorage = "float16") -> None:
        if colbert is not None and colbert not in _COLBERT_DTYPES:
            raise ValueError(f"colbert must be 'float16', 'float32' or None, got {colbert!r}")
        if not (embedder.has_sparse and embedder.has_colbert):
            embedder.model.check_modes(sparse=True, colbert=True, source=embedder.name)
        self.embedder = embedder
        self.colbert_storage: ColbertStorage = colbert
        self._lock = threading.RLock()
        self._ids: list[str] = []  # by row; rows of deleted documents stay until save/compaction
        self._texts: list[str] = []
        self._metadatas: list[dict[str, Any]] = []
        self._alive = np.zeros(0, dtype=bool)
        self._row_of: dict[str, int] = {}
        self._dense = DenseRows(embedder.dim)
        self._sparse_ids, self._sparse_weights = PackedRows(), PackedRows()
        self._colbert = PackedRows() if colbert is not None else None
        self._inverted: sp.csr_matrix | None = None
        self._meta_index = MetadataIndex()

    # ------------------------------------------------------------------ basics
    def __len__(self) -> int:
        return len(self._row_of)

    def __contains__(self, doc_id: object) -> bool:
        return doc_id in self._row_of

    def __repr__(self) -> str:
        return f"M3Index({len(self)} documents, model={self.embedder.name!r}, colbert={self.colbert_storage!r})"

    @property
    def ids(self) -> list[str]:
        """Ids of the stored documents, in insertion order."""
        with self._lock:
            return [self._ids[r] for r in np.flatnonzero(self._alive).tolist()]

    def get(self, ids: str | Sequence[str]) -> list[Record]:
        """The stored documents with these ids, in the order asked; unknown ids are skipped."""
        wanted = [ids] if isinstance(ids, str) else list(ids)
        with self._lock:
            rows = [self._row_of[i] for i in wanted if i in self._row_of]
            return [Record(self._ids[r], self._texts[r], copy.deepcopy(self._metadatas[r])) for r in rows]

    def __iter__(self) -> Iterator[Record]:
        return iter(self.get(self.ids))

    # ------------------------------------------------------------------ writing
    def add(
        self,
        texts: str | Sequence[str],
        *,
        ids: Sequence[str] | None = None,
        metadatas: Sequence[Mapping[str, Any] | None] | None = None,
        batch_size: int | None = None,
        show_progress: bool | None = None,
    ) -> list[str]:
        """Encode and store texts; returns their ids (generated when not given).

        An id that is already stored is replaced (upsert). The documents become visible to
        searches all at once when encoding has finished; if encoding fails, nothing changes.
        """
        items = _check_texts(texts)
        doc_ids = _check_ids(ids, len(items))
        metas = _check_metadatas(metadatas, len(items))
        colbert = self._colbert is not None
        with self._lock:  # reserve rows in input order; they stay dead until all are encoded
            first = len(self._ids)
            self._ids.extend(doc_ids)
            self._texts.extend(items)
            self._metadatas.extend(metas)
            self._alive = np.concatenate([self._alive, np.zeros(len(items), dtype=bool)])
            for store in (self._dense, self._sparse_ids, self._sparse_weights, self._colbert):
                if store is not None:
                    store.reserve(len(items))
            self._changed()
        rows = np.arange(first, first + len(items))
        for batch in self.embedder.iter_encode(
            items,
            dense=True,
            sparse=True,
            colbert=colbert,
            max_length=self.embedder.passage_max_length,
            batch_size=batch_size,
            show_progress=show_progress,
        ):
            assert batch.dense is not None and batch.sparse_ids is not None
            assert batch.sparse_weights is not None and batch.sparse_offsets is not None
            where = rows[batch.indices]
            with self._lock:
                self._dense.put(where, batch.dense)
                self._sparse_ids.put(where, batch.sparse_ids.astype(np.int32), batch.sparse_offsets)
                self._sparse_weights.put(where, batch.sparse_weights, batch.sparse_offsets)
                if self._colbert is not None and batch.colbert is not None and batch.colbert_offsets is not None:
                    dtype = _COLBERT_DTYPES[str(self.colbert_storage)]
                    self._colbert.put(where, batch.colbert.astype(dtype), batch.colbert_offsets)
        with self._lock:
            for doc_id, row in zip(doc_ids, rows.tolist()):
                old = self._row_of.get(doc_id)
                if old is not None:
                    self._alive[old] = False
                self._row_of[doc_id] = row
                self._alive[row] = True
            self._changed()
        return doc_ids

    def delete(self, ids: str | Sequence[str]) -> int:
        """Remove documents by id; returns how many were stored (unknown ids are ignored)."""
        wanted = [ids] if isinstance(ids, str) else list(ids)
        with self._lock:
            removed = 0
            for doc_id in wanted:
                row = self._row_of.pop(doc_id, None)
                if row is not None:
                    self._alive[row] = False
                    removed += 1
            if removed:
                self._changed()
            return removed

    def _changed(self) -> None:
        self._inverted = None
        self._meta_index.clear()

    def _inverted_index(self) -> sp.csr_matrix:
        if self._inverted is None:
            n = len(self._ids)
            all_rows = np.arange(n)
            if self._sparse_ids.chunks:
                ids, offsets = self._sparse_ids.gather(all_rows)
                weights = self._sparse_weights.gather(all_rows)[0]
            else:
                ids, offsets, weights = np.zeros(0, np.int32), np.zeros(n + 1, np.int64), np.zeros(0, np.float32)
            self._inverted = inverted_index(ids, weights, offsets, self.embedder.vocab_size)
        return self._inverted

    # ------------------------------------------------------------------ searching
    def search(
        self,
        query: str,
        *,
        k: int = 10,
        candidates: int = 100,
        first_stage: str | Sequence[str] = ("dense", "sparse"),
        weights: Sequence[float] = (1.0, 1.0, 1.0),
        filter: MetadataFilter | None = None,
        rerank_with: str | CrossEncoderLike | None = None,
        rerank_top_n: int | None = None,
    ) -> list[SearchHit]:
        """The ``k`` best documents for ``query`` by hybrid score (see :meth:`search_batch`)."""
        if not isinstance(query, str):
            raise TypeError(f"query must be a str, got {type(query).__name__}")
        return self.search_batch(
            [query],
            k=k,
            candidates=candidates,
            first_stage=first_stage,
            weights=weights,
            filter=filter,
            rerank_with=rerank_with,
            rerank_top_n=rerank_top_n,
        )[0]

    def search_batch(
        self,
        queries: Sequence[str],
        *,
        k: int = 10,
        candidates: int = 100,
        first_stage: str | Sequence[str] = ("dense", "sparse"),
        weights: Sequence[float] = (1.0, 1.0, 1.0),
        filter: MetadataFilter | None = None,
        rerank_with: str | CrossEncoderLike | None = None,
        rerank_top_n: int | None = None,
    ) -> list[list[SearchHit]]:
        """Search several queries, encoded together in one pass.

        Args:
            queries: the query texts.
            k: hits per query.
            candidates: how many the first stage takes from each of its modes.
            first_stage: ``"dense"``, ``"sparse"`` or both (the union of their candidates).
            weights: ``(w_dense, w_sparse, w_colbert)`` of the hybrid score.
            filter: metadata equalities, ``{"lang": "en", "year": [2023, 2024]}`` (a list: any of).
            rerank_with: an optional final stage: a cross-encoder (``sentence_transformers.CrossEncoder``
                or a model name such as ``"BAAI/bge-reranker-v2-m3"``) that reorders the top
                ``rerank_top_n`` hybrid hits (default ``k``); the hit's ``score`` becomes the
                cross-encoder's and ``scores`` keeps ``"hybrid"`` and ``"cross_encoder"``.

        Returns:
            One list of :class:`SearchHit` per query, best first.
        """
        items = _check_texts(queries)
        stages, w = check_search_args(k, candidates, first_stage, weights)
        conditions = check_filter(filter)
        if not items:
            return []
        if rerank_with is not None:
            return search_with_final_stage(
                self.search_batch,
                items,
                k=k,
                rerank_with=rerank_with,
                rerank_top_n=rerank_top_n,
                candidates=candidates,
                first_stage=stages,
                weights=w,
                filter=filter,
            )
        q = self.embedder.encode_queries(items, dense=True, sparse=True, colbert=True)
        assert q.dense is not None and q.sparse is not None and q.colbert is not None
        with self._lock:
            n = len(self._ids)
            if len(self._row_of) == 0:
                return [[] for _ in items]
            allowed = self._alive.copy()
            mask = filter_mask(conditions, self._metadatas, self._meta_index)
            if mask is not None:
                allowed &= mask
            dense_all = self._dense_scores(q.dense, n)
            q_csr = sparse_to_csr(q.sparse, self.embedder.vocab_size)
            sparse_all = np.asarray((q_csr @ self._inverted_index()).todense(), dtype=np.float32)  # (m, n)
            picked: list[np.ndarray] = []
            for j in range(len(items)):
                found = []
                if "dense" in stages:
                    found.append(top_k(np.where(allowed, dense_all[:, j], -np.inf), candidates))
                if "sparse" in stages:
                    lexical = np.where(allowed & (sparse_all[j] > 0), sparse_all[j], -np.inf)
                    found.append(top_k(lexical, candidates))
                picked.append(np.unique(np.concatenate(found)))
            colbert_of = self._candidate_colbert(picked)
            results: list[list[SearchHit]] = []
            for j, rows in enumerate(picked):
                if len(rows) == 0:
                    results.append([])
                    continue
                colbert = colbert_of(q.colbert[j], rows)
                order, hybrid, per_mode = rerank(dense_all[rows, j], sparse_all[j, rows], colbert, weights=w, k=k)
                results.append(
                    make_hits(
                        order,
                        hybrid,
                        per_mode,
                        [self._ids[r] for r in rows.tolist()],
                        [self._texts[r] for r in rows.tolist()],
                        [self._metadatas[r] for r in rows.tolist()],
                    )
                )
            return results

    def _dense_scores(self, queries: np.ndarray, n: int | None = None) -> np.ndarray:
        """(n, m) inner products of the first ``n`` stored rows (default: all) with (m, d) ``queries``.

        One torch product, so that the whole search runs in torch's thread pool (numpy's BLAS
        pool, idle-spinning beside it, slows the ColBERT step on a small machine).
        """
        matrix = torch.from_numpy(self._dense.matrix[:n])
        return torch.mm(matrix, torch.from_numpy(np.ascontiguousarray(queries, dtype=np.float32)).T).numpy()

    def _candidate_colbert(self, picked: list[np.ndarray]) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
        """A function (query ColBERT vectors, rows) -> (len(rows),) ColBERT scores.

        Scores come straight from the packed store (gathered and cast block by block), or, with
        ``colbert=None``, from the candidates of all queries re-encoded once.
        """
        store = self._colbert
        if store is not None:
            if picked:  # a memory-mapped store: start reading every candidate of every query now
                store.prefetch(np.unique(np.concatenate(picked)))

            def from_store(query: np.ndarray, rows: np.ndarray) -> np.ndarray:
                scores = np.zeros(len(rows), dtype=np.float32)
                for positions, values, starts, lengths in store.locate(rows):
                    scores[positions] = colbert_scores_at(query, values, starts, lengths)
                return scores

            return from_store
        unique = np.unique(np.concatenate(picked)) if picked else np.zeros(0, np.int64)
        out = self.embedder.encode_documents(
            [self._texts[r] for r in unique.tolist()], dense=False, sparse=False, colbert=True
        )
        assert out.colbert is not None
        packed = np.concatenate(out.colbert) if len(unique) else np.zeros((0, self.embedder.colbert_dim or 0))
        lengths = np.array([len(c) for c in out.colbert], dtype=np.int64)
        starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)

        def re_encoded(query: np.ndarray, rows: np.ndarray) -> np.ndarray:
            where = np.searchsorted(unique, rows)
            return colbert_scores_at(query, packed, starts[where], lengths[where])

        return re_encoded

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | Path) -> Path:
        """Write the index to the folder ``path`` atomically (see :mod:`m3_rag.index.storage`)."""
        path = Path(path)
        with self._lock:
            rows = np.flatnonzero(self._alive)
            sparse_ids, sparse_offsets = (
                self._sparse_ids.gather(rows) if len(rows) else (np.zeros(0, np.int32), np.zeros(1, np.int64))
            )
            arrays = {
                "dense": self._dense.matrix[rows],
                "sparse_ids": sparse_ids,
                "sparse_weights": self._sparse_weights.gather(rows)[0] if len(rows) else np.zeros(0, np.float32),
                "sparse_offsets": sparse_offsets,
            }
            if self._colbert is not None:
                dim = self.embedder.colbert_dim or 0
                dtype = _COLBERT_DTYPES[str(self.colbert_storage)]
                vectors, offsets = (
                    self._colbert.gather(rows) if len(rows) else (np.zeros((0, dim), dtype), np.zeros(1, np.int64))
                )
                arrays["colbert"], arrays["colbert_offsets"] = vectors, offsets
            manifest = {
                "model": self.embedder.name,
                "model_fingerprint": self.embedder.fingerprint,
                "dim": self.embedder.dim,
                "colbert_dim": self.embedder.colbert_dim,
                "colbert": self.colbert_storage,
                "vocab_size": self.embedder.vocab_size,
                "count": len(rows),
            }
            documents = (
                {"id": self._ids[r], "text": self._texts[r], "metadata": self._metadatas[r]} for r in rows.tolist()
            )
            write_index(path, manifest, documents, arrays)
        return path

    @classmethod
    def load(cls, path: str | Path, embedder: M3Embedder | None = None, *, mmap: bool = True) -> M3Index:
        """Open a saved index. Without ``embedder`` the model named in its manifest is loaded.

        ColBERT vectors stay memory-mapped (``mmap=True``) so a large index opens instantly.
        Raises :class:`~m3_rag.errors.IndexFormatError` for a missing, damaged or other-version
        folder, or when ``embedder`` is not the model that built the index.
        """
        manifest = read_manifest(Path(path))
        if embedder is None:
            embedder = M3Embedder.from_pretrained(str(manifest.get("model")))
        if manifest.get("model_fingerprint") != embedder.fingerprint or manifest.get("dim") != embedder.dim:
            raise IndexFormatError(
                f"{path} was built with model {manifest.get('model')!r} (dim {manifest.get('dim')}), but the "
                f"embedder is {embedder.name!r} (dim {embedder.dim}) with other weights; load it with the same "
                "model, or re-index"
            )
        manifest, documents, arrays = read_index(Path(path), mmap_colbert=mmap)
        index = cls(embedder, colbert=manifest.get("colbert"))
        try:
            index._restore(manifest, documents, arrays)
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise IndexFormatError(f"{path} is damaged: {type(exc).__name__}: {exc}") from exc
        return index

    def _restore(
        self, manifest: dict[str, Any], documents: list[dict[str, Any]], arrays: dict[str, np.ndarray]
    ) -> None:
        n = int(manifest["count"])
        dense, s_off = arrays["dense"], arrays["sparse_offsets"]
        if len(documents) != n or dense.shape != (n, self.embedder.dim) or s_off.shape != (n + 1,):
            raise ValueError(f"the manifest says {n} documents but the files disagree")
        if s_off[0] != 0 or np.any(np.diff(s_off) < 0) or s_off[-1] != len(arrays["sparse_ids"]):
            raise ValueError("sparse offsets are inconsistent")
        self._ids = [str(d["id"]) for d in documents]
        self._texts = [str(d["text"]) for d in documents]
        self._metadatas = [dict(d["metadata"]) for d in documents]
        if len(set(self._ids)) != n:
            raise ValueError("duplicate ids")
        self._row_of = {doc_id: row for row, doc_id in enumerate(self._ids)}
        self._alive = np.ones(n, dtype=bool)
        self._dense = DenseRows(self.embedder.dim, np.array(dense, dtype=np.float32))
        self._sparse_ids.append(np.asarray(arrays["sparse_ids"], dtype=np.int32), s_off)
        self._sparse_weights.append(np.asarray(arrays["sparse_weights"], dtype=np.float32), s_off)
        if self._colbert is not None:
            vectors, c_off = arrays["colbert"], arrays["colbert_offsets"]
            if c_off.shape != (n + 1,) or c_off[-1] != len(vectors) or np.any(np.diff(c_off) < 1):
                raise ValueError("ColBERT offsets are inconsistent")
            if vectors.ndim != 2 or vectors.shape[1] != self.embedder.colbert_dim:
                raise ValueError(f"ColBERT vectors have shape {vectors.shape}")
            self._colbert.append(vectors, c_off)
