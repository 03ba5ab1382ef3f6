"""``QdrantStore``: the hybrid index on Qdrant, all three BGE-M3 representations in one point.

Each document is one Qdrant point holding its dense vector (``"dense"``, dot product), its
lexical weights (``"sparse"``, a Qdrant sparse vector of token ids) and its ColBERT vectors
(``"colbert"``, a multivector with the MAX_SIM comparator), with the payload ``id`` (the string
id), ``text``, ``metadata`` and ``m3_filter`` (the view that filters run on, see
:mod:`m3_rag.index.qdrant_filter`). Point ids are ``uuid5`` of the string id, so any string is
an id and the same id is always the same point (an upsert replaces it).

Search: the first stage is Qdrant's dense and sparse searches, one batched request for all
queries and both modes; the union of each query's candidates is then scored exactly -- dense,
lexical and ColBERT -- and reranked by the shared pipeline (:mod:`m3_rag.retrieval`), so hits and
scores equal :class:`~m3_rag.M3Index`'s (to 1e-5 with float32 storage). Where the candidates are
scored is ``scoring``:

- ``"engine"``: by Qdrant, with queries restricted to the candidates (``HasIdCondition``): one
  batched request with a dense, a sparse and a ColBERT query per search query. Qdrant's MAX_SIM
  sums over the query vectors; BGE-M3 averages, so the score is divided by their number.
- ``"client"``: the candidates' vectors are fetched with their points and scored here.

``"auto"`` (the default) is ``"engine"`` with a server: otherwise every candidate's ColBERT
vectors would cross the network, ~40 MB per query for 100 candidates of 200 tokens at 1024 dims
in float16, against a few KB of scores. In local mode (pure Python) the engine scores a
restricted query against every point of the collection and masks afterwards, while a fetch costs
per candidate (each vector becomes Python floats). Measured (``benchmarks/qdrant_store.py``):
at 1024 dims and 300 points the ColBERT step takes 0.08 s by the engine and 0.96 s fetched; with
the tiny checkpoint (32 dims) fetching wins from a few hundred points on (133 vs 349 ms per query
at 5,000). So ``"auto"`` in local mode picks by a cost model with those constants
(:func:`~m3_rag.index.qdrant_search.engine_is_cheaper`); the scores are the same either way.

ColBERT storage (``colbert_dtype``): ``"float32"``; ``"float16"`` (the default; Qdrant's
``Datatype.FLOAT16``); ``"int8"``: float16 vectors plus Qdrant's int8 scalar quantization kept
in RAM, which the engine scores with (``rescore=False``; points its optimizer has not indexed
yet are scored from float16; put the float16 originals on disk with ``on_disk=True``);
``None``: no ColBERT vectors (the candidates are re-encoded at query time).
Local mode applies neither datatypes nor quantization, so the store rounds vectors to float16
itself -- and the ColBERT query too, as the server does -- so that local mode computes what a
server computes; int8's quantization exists only on a server (see ``benchmarks/README.md``).

Local mode (``location=":memory:"`` or ``path=``) is qdrant-client's in-process engine: for
tests, notebooks and small collections (qdrant-client advises a server beyond ~20,000 points).
A ``path`` folder can be open in one client at a time, and it is qdrant-client's own format (it
unpickles the points it stores): open only folders you trust. The collection records the model
(name, fingerprint, dimensions, ColBERT dtype) in its metadata; another model is refused.

Example (needs ``pip install "m3-rag[qdrant]"``; skipped without it):
    >>> import pytest; _ = pytest.importorskip("qdrant_client")
    >>> from m3_rag import M3Embedder
    >>> from m3_rag.index import QdrantStore
    >>> store = QdrantStore(M3Embedder.from_pretrained("tests/data/tiny-m3"), location=":memory:")
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
import re
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

from ..colbert_codec import ColbertDtype
from ..encoder import M3Embedder
from ..filters import Filter, parse_filter
from ..output import M3Output, check_output
from ..progress import tqdm
from ..records import Record, check_ids, check_metadatas, check_texts
from ..retrieval import Candidates, HybridStore, QueryBatch, SearchRequest
from ..sparse import SparseVector
from .qdrant_filter import FILTER_FIELD, filter_view
from .qdrant_schema import create_collection, open_collection
from .qdrant_search import find_candidates, scroll_ids

__all__ = ["QdrantStore", "point_id", "qdrant_location", "recorded_model"]

_INSTALL = 'pip install "m3-rag[qdrant]"'
_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,254}$")
_SERVER = re.compile(r"^https?://", re.IGNORECASE)
_ID_NAMESPACE = uuid.UUID("5b0c6f0e-9a43-5d8e-a1f4-6d332d2b6a51")  # fixed: ids must map the same forever
_MAX_FLOATS = 1 << 21  # numbers per upsert request (~20 MB of JSON; Qdrant's default request limit is 32 MB)
Scoring = Literal["auto", "engine", "client"]


def _qdrant() -> Any:
    try:
        import qdrant_client
    except ImportError as exc:
        raise ImportError(f"QdrantStore needs qdrant-client: {_INSTALL}") from exc
    return qdrant_client


def point_id(doc_id: str) -> str:
    """The Qdrant point id (a UUID) of a string id: ``uuid5`` in m3-rag's namespace.

    >>> point_id("de")
    '97202551-ff0f-5e2d-b1cf-c6392ca3e242'
    """
    return str(uuid.uuid5(_ID_NAMESPACE, doc_id))


def qdrant_location(target: str | os.PathLike[str]) -> dict[str, Any]:
    """Keyword arguments for :class:`QdrantStore` from one string (what the CLI's ``--qdrant`` takes).

    >>> qdrant_location("http://localhost:6333"), qdrant_location(":memory:"), qdrant_location("./qd")
    ({'url': 'http://localhost:6333'}, {'location': ':memory:'}, {'path': './qd'})
    """
    text = os.fspath(target)
    if _SERVER.match(text):
        return {"url": text}
    return {"location": ":memory:"} if text == ":memory:" else {"path": text}


class QdrantStore(HybridStore):
    """BGE-M3 hybrid retrieval on Qdrant, with the methods and results of :class:`~m3_rag.M3Index`.

    Give exactly one of ``location`` (``":memory:"``, or a server URL), ``path`` (a local folder)
    and ``url`` (``http://host:6333``), or a ready ``client`` (a ``qdrant_client.QdrantClient``,
    left open by :meth:`close`). See the module docs for the layout and the choices.

    Args:
        embedder: the model (the collection records its name, fingerprint and dimensions).
        api_key: for a server (Qdrant Cloud).
        collection: the collection name (created when missing; checked when it exists).
        colbert_dtype: ``"float32"``, ``"float16"``, ``"int8"`` or ``None`` for a new collection;
            ``"auto"`` (the default): the collection's own, or ``"float16"`` for a new one.
        on_disk: keep the ColBERT vectors on disk (memory-mapped) on a server.
        scoring: ``"auto"``, ``"engine"`` or ``"client"``: where candidates are scored.
        hnsw_ef: the dense first stage's ``hnsw_ef`` on a server (default ``max(candidates, 64)``).
        timeout: seconds for each request to a server.
        insert_batch_size: points per upsert request (fewer when their vectors are large).
        **client_kwargs: passed to ``qdrant_client.QdrantClient`` (e.g. ``prefer_grpc=True``).
    """

    def __init__(
        self,
        embedder: M3Embedder,
        *,
        location: str | None = None,
        path: str | os.PathLike[str] | None = None,
        url: str | None = None,
        api_key: str | None = None,
        client: Any = None,
        collection: str = "m3",
        colbert_dtype: ColbertDtype | Literal["auto"] | None = "auto",
        on_disk: bool = False,
        scoring: Scoring = "auto",
        hnsw_ef: int | None = None,
        timeout: float = 30.0,
        insert_batch_size: int = 64,
        **client_kwargs: Any,
    ) -> None:
        if not isinstance(embedder, M3Embedder):
            raise TypeError(f"embedder must be an m3_rag.M3Embedder, got {type(embedder).__name__}")
        if not (embedder.has_sparse and embedder.has_colbert):
            embedder.model.check_modes(sparse=True, colbert=True, source=embedder.name)
        given = [name for name, v in (("location", location), ("path", path), ("url", url), ("client", client)) if v]
        if len(given) != 1:
            raise ValueError(
                "give exactly one of location=':memory:', path='./qdrant' (local mode), url='http://host:6333' or "
                f"client=QdrantClient(...); got {given or 'none'}"
            )
        if not isinstance(collection, str) or not _NAME.match(collection):
            raise ValueError(f"collection must match {_NAME.pattern}, got {collection!r}")
        if colbert_dtype not in ("auto", "float32", "float16", "int8", None):
            raise ValueError(
                f"colbert_dtype must be 'auto', 'float32', 'float16', 'int8' or None, got {colbert_dtype!r}"
            )
        if scoring not in ("auto", "engine", "client"):
            raise ValueError(f"scoring must be 'auto', 'engine' or 'client', got {scoring!r}")
        for name, value in (("insert_batch_size", insert_batch_size), ("hnsw_ef", hnsw_ef or 1)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        qc = _qdrant()
        self.embedder = embedder
        self.collection = collection
        self.timeout = timeout
        self.insert_batch_size = insert_batch_size
        self.hnsw_ef = hnsw_ef
        self.on_disk = bool(on_disk)
        self._own_client = client is None
        if client is not None:
            self.client, self.where = client, f"{type(client).__name__}"
            self.local = type(getattr(client, "_client", None)).__name__ == "QdrantLocal"
        else:
            self.local = url is None and (path is not None or location == ":memory:")
            self.where = str(url or location or os.fspath(path))  # type: ignore[arg-type]
            kwargs: dict[str, Any] = {"location": location, "url": url, "api_key": api_key, **client_kwargs}
            if path is not None:
                kwargs["path"] = os.fspath(path)
            if not self.local:
                kwargs.setdefault("timeout", int(max(1, round(timeout))))
                kwargs.setdefault("check_compatibility", False)  # the first request below says if it is reachable
            self.client = qc.QdrantClient(**{k: v for k, v in kwargs.items() if v is not None})
        self.scoring: Scoring = scoring
        try:
            self.colbert_dtype: ColbertDtype | None = self._open_collection(colbert_dtype)
        except BaseException:
            self.close()
            raise

    # ------------------------------------------------------------------ connection and schema
    def _exists(self) -> bool:
        try:
            return bool(self.client.collection_exists(self.collection))
        except Exception as exc:  # transport errors differ between REST and gRPC; all mean "not reachable"
            raise ConnectionError(
                f"could not reach Qdrant at {self.where!r} (timeout {self.timeout} s): {exc}. Check that the server "
                "runs and the url/api_key are right, or use local mode: location=':memory:' or path='./qdrant'"
            ) from exc

    def _open_collection(self, colbert_dtype: ColbertDtype | Literal["auto"] | None) -> ColbertDtype | None:
        if not self._exists():
            dtype: ColbertDtype | None = "float16" if colbert_dtype == "auto" else colbert_dtype
            models = _qdrant().models
            create_collection(self.client, models, self.collection, self.embedder, dtype, on_disk=self.on_disk)
        return open_collection(self.client, self.collection, self.where, self.embedder, colbert_dtype)

    # ------------------------------------------------------------------ basics
    def __len__(self) -> int:
        return int(self.client.count(self.collection, exact=True).count)

    def __contains__(self, doc_id: object) -> bool:
        return isinstance(doc_id, str) and bool(self._points([doc_id], payload=["id"]))

    def __repr__(self) -> str:
        return (
            f"QdrantStore({self.where!r}, collection={self.collection!r}, model={self.embedder.name!r}, "
            f"colbert_dtype={self.colbert_dtype!r}, scoring={self.scoring!r})"
        )

    def close(self) -> None:
        """Release the client (a local folder's lock too); the data stays in Qdrant. A given ``client`` stays open."""
        if self._own_client and getattr(self, "client", None) is not None:
            self.client.close()

    def _points(self, ids: Sequence[str], *, payload: Any = True, vectors: Any = False) -> dict[str, Any]:
        """Stored points by string id (a point whose payload names another id is not it)."""
        wanted = list(dict.fromkeys(i for i in ids if isinstance(i, str)))
        out: dict[str, Any] = {}
        for start in range(0, len(wanted), 1000):
            chunk = wanted[start : start + 1000]
            found = self.client.retrieve(
                self.collection, [point_id(i) for i in chunk], with_payload=payload, with_vectors=vectors
            )
            by_point = {str(p.id): p for p in found}
            for i in chunk:
                p = by_point.get(point_id(i))
                if p is not None and (p.payload or {}).get("id") == i:
                    out[i] = p
        return out

    def dense_vectors(self, ids: Sequence[str]) -> dict[str, np.ndarray]:
        """The stored dense vectors ``{id: (dim,) float32}`` of these ids, read from Qdrant (unknown ids skipped)."""
        found = self._points(list(ids), payload=["id"], vectors=["dense"])
        return {i: np.asarray(p.vector["dense"], dtype=np.float32) for i, p in found.items()}

    def ids_where(self, filter: Filter | Mapping[str, Any] | None = None) -> list[str]:
        """Ids of the stored documents whose metadata passes ``filter`` (None: every id), scrolled page
        by page with the filter in Qdrant; where Qdrant's is a superset, the metadata is checked exactly."""
        return scroll_ids(self, parse_filter(filter))

    def get(self, ids: str | Sequence[str]) -> list[Record]:
        """The stored documents with these ids, in the order asked; unknown ids are skipped."""
        wanted = [ids] if isinstance(ids, str) else list(ids)
        found = self._points(wanted, payload=["id", "text", "metadata"])
        return [
            Record(i, found[i].payload["text"], dict(found[i].payload.get("metadata") or {}))
            for i in wanted
            if i in found
        ]

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
        """Encode and upsert texts in batches (an id already stored is replaced).

        Not all-or-nothing: if it fails midway, the batches before stay stored; upserting is
        idempotent, so run it again. ``batch_size`` caps texts per forward pass; a progress bar
        shows from 1,000 texts on (``show_progress=None``).
        """
        items = check_texts(texts)
        doc_ids, metas = check_ids(ids, len(items)), check_metadatas(metadatas, len(items))
        if not items:
            return []
        show = len(items) >= 1000 if show_progress is None else show_progress
        colbert = self.colbert_dtype is not None
        with tqdm(total=len(items), desc="Indexing into Qdrant", unit="text", disable=not show) as bar:
            pending: list[Any] = []
            for batch in self.embedder.iter_encode(
                items, dense=True, sparse=True, colbert=colbert, max_length=self.embedder.passage_max_length,
                batch_size=batch_size, show_progress=False,
            ):  # fmt: skip
                assert batch.dense is not None
                mats = batch.colbert_list() if colbert else [None] * len(batch)
                for j, (i, sparse) in enumerate(zip(batch.indices.tolist(), batch.sparse_vectors())):
                    pending.append(self._point(doc_ids[i], items[i], metas[i], batch.dense[j], sparse, mats[j]))
                bar.update(self._flush(pending, final=False))
            bar.update(self._flush(pending, final=True))
        return doc_ids

    def add_encoded(
        self,
        texts: Sequence[str],
        output: M3Output,
        *,
        ids: Sequence[str] | None = None,
        metadatas: Sequence[Mapping[str, Any] | None] | None = None,
    ) -> list[str]:
        """Upsert texts whose outputs were computed already (e.g. on a GPU cluster); no model pass."""
        items = check_texts(texts)
        doc_ids, metas = check_ids(ids, len(items)), check_metadatas(metadatas, len(items))
        check_output(output, len(items), self.embedder, colbert=self.colbert_dtype is not None)
        assert output.dense is not None and output.sparse is not None
        mats = output.colbert if self.colbert_dtype is not None else None
        pending = [
            self._point(
                doc_ids[i],
                items[i],
                metas[i],
                np.asarray(output.dense[i]),
                SparseVector.from_dict(output.sparse[i]),
                None if mats is None else np.asarray(mats[i]),
            )
            for i in range(len(items))
        ]
        self._flush(pending, final=True)
        return doc_ids

    def _point(
        self, doc_id: str, text: str, metadata: dict[str, Any], dense: np.ndarray, sparse: SparseVector, colbert: Any
    ) -> Any:
        m = _qdrant().models
        vector: dict[str, Any] = {"dense": np.asarray(dense, dtype=np.float32).tolist()}
        if len(sparse):  # a text without lexical weights has no sparse vector (it scores 0)
            vector["sparse"] = m.SparseVector(indices=sparse.indices.tolist(), values=sparse.weights.tolist())
        if colbert is not None:
            mat = np.asarray(colbert, dtype=np.float32)
            if self.colbert_dtype != "float32":  # what a server stores, in local mode too
                mat = mat.astype(np.float16).astype(np.float32)
            vector["colbert"] = mat.tolist()
        payload = {"id": doc_id, "text": text, "metadata": metadata, FILTER_FIELD: filter_view(metadata)}
        return m.PointStruct(id=point_id(doc_id), vector=vector, payload=payload)

    def _flush(self, pending: list[Any], *, final: bool) -> int:
        """Upsert full batches of ``pending`` points (all of them when ``final``); returns how many."""
        done, dim = 0, self.embedder.colbert_dim or 0
        while pending:
            n = floats = 0
            while n < len(pending) and n < self.insert_batch_size and floats < _MAX_FLOATS:
                floats += len(pending[n].vector["dense"]) + len(pending[n].vector.get("colbert", ())) * dim
                n += 1
            if n == len(pending) and not final and n < self.insert_batch_size and floats < _MAX_FLOATS:
                break  # a partial batch: wait for more points
            self.client.upsert(self.collection, pending[:n], wait=True)
            del pending[:n]
            done += n
        return done

    def delete(self, ids: str | Sequence[str]) -> int:
        """Remove documents by id; returns how many were stored (unknown ids are ignored)."""
        wanted = [ids] if isinstance(ids, str) else list(ids)
        found = list(self._points(wanted, payload=["id"]))
        m = _qdrant().models
        for start in range(0, len(found), 1000):
            chunk = [point_id(i) for i in found[start : start + 1000]]
            self.client.delete(self.collection, points_selector=m.PointIdsList(points=chunk), wait=True)
        return len(found)

    # ------------------------------------------------------------------ searching (see qdrant_search)
    def _candidates(self, queries: QueryBatch, request: SearchRequest) -> list[Candidates]:
        """Qdrant's dense / sparse first stage for all queries, then exact scores of the candidates."""
        return find_candidates(self, queries, request)


def recorded_model(target: str | os.PathLike[str], collection: str = "m3", api_key: str | None = None) -> str | None:
    """The model an m3-rag collection was made with (None when there is no such collection)."""
    qc = _qdrant()
    where = qdrant_location(target)
    if "path" in where and not Path(where["path"]).is_dir():  # qdrant-client would create the folder
        return None
    client = qc.QdrantClient(**where, api_key=api_key) if "url" in where else qc.QdrantClient(**where)
    try:
        if not client.collection_exists(collection):
            return None
        record = (client.get_collection(collection).config.metadata or {}).get("m3_rag") or {}
        return str(record["model"]) if record.get("model") else None
    finally:
        client.close()
