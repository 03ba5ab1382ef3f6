"""``MilvusStore``: the hybrid index on Milvus (milvus-lite in-process, or a server / cluster).

The same search as :class:`~m3_rag.M3Index`, with the first stage in Milvus: one dense search
(FLOAT_VECTOR, inner product) and one sparse search (SPARSE_FLOAT_VECTOR,
SPARSE_INVERTED_INDEX, inner product) per query batch, union of their candidates, then the
exact hybrid rerank of :mod:`m3_rag.retrieval`: dense and lexical scores are recomputed from the
stored vectors and ColBERT from the candidates' multi-vectors, so scores equal ``M3Index``'s
(with an exact first stage -- FLAT, the default on milvus-lite -- the hits are the same too).

Where the ColBERT vectors live. Milvus cannot hold them here (milvus-lite 3.2 refuses struct /
embedding-list fields), so they live in an :class:`~m3_rag.EncodingStore` (``encoding_store``):
one SQLite file of every text's encodings, keyed by the model, the passage ``max_length`` and the
text, so a missing or stale entry is re-encoded (and stored) rather than trusted -- the same store
that the LangChain and LlamaIndex rerankers read. With ``encoding_store=None`` the candidates are
re-encoded at query time.

Measured (``benchmarks/rerank_store.py``, 2 shared CPU cores), 100 candidates of ~190 tokens: reading
and checking their encodings takes ~37 ms at 384 dimensions (float16, 15 MB), about 2.7x that at
BGE-M3's 1024 (2 KiB per token); re-encoding them is ~0.03-0.12 s on one H100 but 16 s for the
mid-size 384-d model on such a CPU, and BGE-M3 needs ~29x its FLOPs per token.

Decision: ``encoding_store="auto"`` (the default) keeps one next to a milvus-lite file
(``<uri>.encodings.sqlite``; one machine by definition) and re-encodes with a Milvus server, where
several machines search one collection and a local file would hold only what this machine added
(a miss is re-encoded, so the store is never wrong, only sometimes slow). Give a server-backed store
an encoding store when queries run on CPU; with a GPU, re-encoding 100 candidates costs about as
much as reading their vectors.

Example (needs ``pip install "m3-rag[milvus]"``; skipped without it):
    >>> import pytest; _ = pytest.importorskip("milvus_lite")
    >>> import tempfile
    >>> from m3_rag import M3Embedder
    >>> from m3_rag.index import MilvusStore
    >>> store = MilvusStore(M3Embedder.from_pretrained("tests/data/tiny-m3"), f"{tempfile.mkdtemp()}/m3.db")
    >>> store.add(["Berlin is the capital of Germany.", "Paris is in France."], ids=["de", "fr"])
    ['de', 'fr']
    >>> [hit.id for hit in store.search("capital of Germany", k=1, filter={"missing": 1})]
    []
    >>> len(store), sorted(store.search("capital of Germany", k=1)[0].scores)
    (2, ['colbert', 'dense', 'sparse'])
    >>> store.close()
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np

from ..encoder import M3Embedder
from ..encoding_store import EncodingStore
from ..filters import Filter, MetadataColumns, filter_mask, parse_filter
from ..output import M3Output, check_output
from ..progress import tqdm
from ..records import Record, check_ids, check_metadatas, check_texts
from ..retrieval import Candidates, HybridStore, QueryBatch, SearchRequest
from ..sparse import SparseVector
from ..store_encode import fetch_encodings, open_encoding_store
from .milvus_collection import NAME, SERVER, connect, open_collection, recorded_model
from .milvus_expr import ids_expression, milvus_expression
from .milvus_search import find_candidates

__all__ = ["MilvusStore", "recorded_model"]

_FETCH = 1000  # ids per query expression
_Output = tuple[np.ndarray, SparseVector, np.ndarray | None]


class MilvusStore(HybridStore):
    """BGE-M3 hybrid retrieval on Milvus, with the methods and results of :class:`~m3_rag.M3Index`.

    Args:
        embedder: the model (the collection records its name and fingerprint).
        uri: a local ``.db`` path (milvus-lite, in-process) or ``http(s)://host:19530``.
        collection: the collection name (created when missing; checked when it exists).
        token: ``"user:password"`` or an API key for a server.
        encoding_store: where the ColBERT vectors live: ``"auto"`` (a file next to a milvus-lite
            ``.db``; none with a server), an :class:`~m3_rag.EncodingStore` or its file path, or
            ``None`` (re-encode the candidates); see the module docs.
        dense_index: ``{"index_type": ..., "params": {...}}`` for the dense field (metric IP);
            default FLAT (exact) for milvus-lite, HNSW (M 16, efConstruction 200) for a server.
        sparse_index: the same for the sparse field (default SPARSE_INVERTED_INDEX).
        dense_search_params: search params of the dense field, e.g. ``{"ef": 256}`` or
            ``{"nprobe": 32}``; HNSW gets ``ef = max(candidates, 64)`` when not given.
        timeout: seconds for connecting and for each request.
        insert_batch_size: rows per upsert request.
        max_text_bytes: the ``text`` field's VARCHAR size (UTF-8 bytes) for a new collection.
        consistency_level: of every request (``"Strong"``: reads see all writes).
        **client_kwargs: passed to ``pymilvus.MilvusClient`` (e.g. ``db_name``).

    Thread-safe: the pymilvus client and the encoding store are. Several processes (or machines)
    may share a collection, and processes of one machine may share an encoding store.
    """

    def __init__(
        self,
        embedder: M3Embedder,
        uri: str | os.PathLike[str] = "./m3.db",
        collection: str = "m3",
        token: str | None = None,
        *,
        encoding_store: EncodingStore | str | os.PathLike[str] | Literal["auto"] | None = "auto",
        dense_index: Mapping[str, Any] | None = None,
        sparse_index: Mapping[str, Any] | None = None,
        dense_search_params: Mapping[str, Any] | None = None,
        timeout: float | None = 30.0,
        insert_batch_size: int = 256,
        max_text_bytes: int = 65535,
        consistency_level: str = "Strong",
        **client_kwargs: Any,
    ) -> None:
        if not (embedder.has_sparse and embedder.has_colbert):
            embedder.model.check_modes(sparse=True, colbert=True, source=embedder.name)
        if not isinstance(collection, str) or not NAME.match(collection):
            raise ValueError(f"collection must match {NAME.pattern} (letters, digits, _), got {collection!r}")
        if isinstance(insert_batch_size, bool) or not isinstance(insert_batch_size, int) or insert_batch_size < 1:
            raise ValueError(f"insert_batch_size must be an int >= 1, got {insert_batch_size!r}")
        self.embedder = embedder
        self.uri = os.fspath(uri)
        self.collection = collection
        self.local = not SERVER.match(self.uri)
        self.timeout = timeout
        self.insert_batch_size = insert_batch_size
        self.max_text_bytes = max_text_bytes
        self._consistency = consistency_level
        self._dense_search_params = dict(dense_search_params or {})
        if isinstance(encoding_store, str) and encoding_store == "auto":
            encoding_store = f"{self.uri}.encodings.sqlite" if self.local else None
        self.client = connect(self.uri, local=self.local, token=token, timeout=timeout, client_kwargs=client_kwargs)
        try:
            self.dense_index_type = open_collection(
                self.client, collection, embedder, uri=self.uri, local=self.local, timeout=timeout,
                consistency_level=consistency_level, max_text_bytes=max_text_bytes,
                dense_index=dense_index, sparse_index=sparse_index,
            )  # fmt: skip
            #: The :class:`~m3_rag.EncodingStore` that holds the documents' ColBERT vectors (or None).
            self.encoding_store: EncodingStore | None = open_encoding_store(encoding_store, embedder)
        except BaseException:
            self.client.close()
            raise

    def _rpc(self) -> dict[str, Any]:
        return {"timeout": self.timeout, "consistency_level": self._consistency}

    # ------------------------------------------------------------------ basics
    def __len__(self) -> int:
        rows = self.client.query(self.collection, filter="", output_fields=["count(*)"], **self._rpc())
        return int(rows[0]["count(*)"])

    def __contains__(self, doc_id: object) -> bool:
        return isinstance(doc_id, str) and bool(self._fetch([doc_id], ["id"]))

    def __repr__(self) -> str:
        return (
            f"MilvusStore({self.uri!r}, collection={self.collection!r}, model={self.embedder.name!r}, "
            f"encoding_store={None if self.encoding_store is None else str(self.encoding_store.path)!r})"
        )

    def close(self) -> None:
        """Release the connection (the data stays in Milvus); idempotent.

        A milvus-lite file is released as soon as no other store of this process uses it, so
        another process (or a new store here) can open it right after.
        """
        self.client.close()
        if self.encoding_store is not None:
            self.encoding_store.close()

    def _fetch(self, ids: Sequence[str], fields: list[str]) -> list[dict[str, Any]]:
        """Rows by id, in chunks; the ids are escaped (pymilvus's own ``get(ids=)`` does not escape them)."""
        out: list[dict[str, Any]] = []
        unique = list(dict.fromkeys(ids))
        for start in range(0, len(unique), _FETCH):
            expr = ids_expression(unique[start : start + _FETCH])
            out.extend(self.client.query(self.collection, filter=expr, output_fields=fields, **self._rpc()))
        return out

    def dense_vectors(self, ids: Sequence[str]) -> dict[str, np.ndarray]:
        """The stored dense vectors ``{id: (dim,) float32}`` of these ids, read from Milvus (unknown ids skipped)."""
        rows = {str(r["id"]): r["dense"] for r in self._fetch(list(ids), ["id", "dense"])}
        return {i: np.asarray(rows[i], dtype=np.float32) for i in dict.fromkeys(ids) if i in rows}

    def ids_where(self, filter: Filter | Mapping[str, Any] | None = None) -> list[str]:
        """Ids of the stored documents whose metadata passes ``filter`` (None: every id), read page by
        page from Milvus; where Milvus's expression is a superset, the metadata is checked exactly."""
        flt = parse_filter(filter)
        expr, exact = milvus_expression(flt)
        if expr is None:
            return []
        fields = ["id"] if exact else ["id", "metadata"]
        out: list[str] = []
        iterator = self.client.query_iterator(
            self.collection, batch_size=1000, filter=expr, output_fields=fields, timeout=self.timeout
        )
        try:
            while page := iterator.next():
                if not exact:
                    passing = filter_mask(flt, MetadataColumns([dict(row["metadata"] or {}) for row in page]))
                    page = [row for row, ok in zip(page, passing.tolist()) if ok]
                out.extend(str(row["id"]) for row in page)
        finally:
            iterator.close()
        return out

    def get(self, ids: str | Sequence[str]) -> list[Record]:
        """The stored documents with these ids, in the order asked; unknown ids are skipped."""
        wanted = [ids] if isinstance(ids, str) else list(ids)
        rows = {r["id"]: r for r in self._fetch(wanted, ["id", "text", "metadata"])}
        return [Record(i, rows[i]["text"], dict(rows[i]["metadata"] or {})) for i in wanted if i in rows]

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
        """Encode and upsert texts in batches (an id already stored is replaced), then flush.

        Unlike ``M3Index.add`` this is not all-or-nothing: if it fails midway, the batches
        before stay stored; upserting is idempotent, so run it again. ``batch_size`` caps texts
        per forward pass; a progress bar shows from 1,000 texts on (``show_progress=None``).
        """
        items = check_texts(texts)
        doc_ids, metas = check_ids(ids, len(items)), check_metadatas(metadatas, len(items))
        self._check_sizes(doc_ids, items)
        if not items:
            return []
        show = len(items) >= 1000 if show_progress is None else show_progress
        pending: list[int] = []
        outputs: dict[int, _Output] = {}
        with tqdm(total=len(items), desc="Indexing into Milvus", unit="text", disable=not show) as bar:
            for batch in self.embedder.iter_encode(
                items,
                dense=True,
                sparse=True,
                colbert=self.encoding_store is not None,
                max_length=self.embedder.passage_max_length,
                batch_size=batch_size,
                show_progress=False,
            ):
                assert batch.dense is not None
                if self.encoding_store is not None:  # the vectors first: a row in Milvus then has them
                    batch_texts = [items[i] for i in batch.indices.tolist()]
                    self.encoding_store.put(batch_texts, batch, max_length=self.embedder.passage_max_length)
                for j, (i, sparse) in enumerate(zip(batch.indices.tolist(), batch.sparse_vectors())):
                    outputs[i] = (batch.dense[j], sparse, None)
                    pending.append(i)
                while len(pending) >= self.insert_batch_size:
                    bar.update(self._write(pending[: self.insert_batch_size], items, doc_ids, metas, outputs))
                    del pending[: self.insert_batch_size]
            if pending:
                bar.update(self._write(pending, items, doc_ids, metas, outputs))
        self.client.flush(self.collection, timeout=self.timeout)
        return doc_ids

    def add_encoded(
        self,
        texts: Sequence[str],
        output: M3Output,
        *,
        ids: Sequence[str] | None = None,
        metadatas: Sequence[Mapping[str, Any] | None] | None = None,
    ) -> list[str]:
        """Upsert texts whose outputs were computed already (e.g. on a cluster); no model pass."""
        items = check_texts(texts)
        doc_ids, metas = check_ids(ids, len(items)), check_metadatas(metadatas, len(items))
        self._check_sizes(doc_ids, items)
        check_output(output, len(items), self.embedder, colbert=self.encoding_store is not None)
        assert output.dense is not None and output.sparse is not None
        if self.encoding_store is not None:
            self.encoding_store.put(items, output, max_length=self.embedder.passage_max_length)
        outputs: dict[int, _Output] = {
            i: (np.asarray(output.dense[i]), SparseVector.from_dict(output.sparse[i]), None) for i in range(len(items))
        }
        order = list(range(len(items)))
        for start in range(0, len(order), self.insert_batch_size):
            self._write(order[start : start + self.insert_batch_size], items, doc_ids, metas, outputs)
        self.client.flush(self.collection, timeout=self.timeout)
        return doc_ids

    def _check_sizes(self, doc_ids: list[str], items: list[str]) -> None:
        for i, (doc_id, text) in enumerate(zip(doc_ids, items)):
            if len(doc_id.encode("utf-8")) > 512 or len(text.encode("utf-8")) > self.max_text_bytes:
                raise ValueError(
                    f"document {i} is too long for Milvus: ids take up to 512 bytes, texts up to "
                    f"max_text_bytes={self.max_text_bytes} (UTF-8); split the text into passages"
                )

    def _write(
        self,
        positions: list[int],
        items: list[str],
        doc_ids: list[str],
        metas: list[dict[str, Any]],
        outputs: dict[int, _Output],
    ) -> int:
        empty = {self.embedder.vocab_size: 1.0}  # Milvus refuses empty sparse rows; no query has this id
        rows = []
        for i in positions:
            dense, sparse, _ = outputs[i]
            rows.append(
                {
                    "id": doc_ids[i],
                    "text": items[i],
                    "metadata": metas[i],
                    "dense": dense,
                    "sparse": sparse.to_dict() or empty,
                }
            )
        self.client.upsert(self.collection, rows, timeout=self.timeout)
        for i in positions:
            del outputs[i]
        return len(rows)

    def delete(self, ids: str | Sequence[str]) -> int:
        """Remove documents by id; returns how many were stored (unknown ids are ignored)."""
        wanted = [ids] if isinstance(ids, str) else list(ids)
        found = [r["id"] for r in self._fetch(wanted, ["id"])]
        for start in range(0, len(found), _FETCH):
            chunk = ids_expression(found[start : start + _FETCH])
            self.client.delete(self.collection, filter=chunk, timeout=self.timeout)
        return len(found)

    # ------------------------------------------------------------------ the first stage (see HybridStore)
    def _candidates(self, queries: QueryBatch, request: SearchRequest) -> list[Candidates]:
        """One Milvus search per first-stage mode for all queries (see :mod:`m3_rag.index.milvus_search`)."""
        return find_candidates(self, queries, request)

    def _colbert_scores(self, queries: Sequence[np.ndarray], texts: Sequence[Sequence[str]]) -> list[np.ndarray]:
        """ColBERT scores by text, from the encoding store (its misses encoded once and stored)."""
        if self.encoding_store is None:
            return super()._colbert_scores(queries, texts)
        unique = list(dict.fromkeys(t for group in texts for t in group))
        if not unique:
            return [np.zeros(0, np.float32) for _ in texts]
        packed = fetch_encodings(self.embedder, unique, self.encoding_store)
        where = {t: i for i, t in enumerate(unique)}
        return [
            packed.colbert_scores(query, np.fromiter((where[t] for t in group), dtype=np.int64, count=len(group)))
            for query, group in zip(queries, texts)
        ]
