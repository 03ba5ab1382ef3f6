"""``M3VectorStore``: a LangChain ``VectorStore`` over any hybrid store (``M3Index``, ``MilvusStore``...).

LangChain's own machinery is built on ``VectorStore``: ``as_retriever()``, the indexing API
(``langchain_core.indexing.index`` with a record manager), ``ParentDocumentRetriever``,
``MultiVectorRetriever``. This adapter gives them m3-rag's hybrid search.

Scores. ``similarity_search_with_score`` returns the hybrid score of the core pipeline,
``(w_d*dense + w_s*sparse + w_c*colbert) / (w_d + w_s + w_c)`` (higher is better; a similarity,
not a distance), or, with a cross-encoder final stage, the cross-encoder's score. Dense and
ColBERT scores of BGE-M3's unit vectors lie in [-1, 1] and lexical scores are >= 0, so the
hybrid score is about [-1, 1] (a near-duplicate with large lexical weights can pass 1). The
relevance score of ``similarity_search_with_relevance_scores`` (and of ``as_retriever(
search_type="similarity_score_threshold")``) is that score clipped to [0, 1]: a threshold of 0.5
keeps the hits whose hybrid score is at least 0.5 (pass ``relevance_score_fn`` to map it otherwise).

Documents. Every returned Document has ``id`` (the store's id) and the stored metadata
unchanged, so the same stored document always compares equal; the per-mode scores come from
:meth:`M3VectorStore.similarity_search_with_scores` (or, opt-in, ``score_metadata=True`` puts them
into the metadata).

Search by vector. Hybrid search needs the query text (its lexical weights and ColBERT vectors
come from the same pass as its dense vector), so ``similarity_search_by_vector`` and
``max_marginal_relevance_search_by_vector`` take a dense query vector and search the store's
dense vectors only: exact inner products over an ``M3Index``, Milvus' dense index over a
``MilvusStore``; their scores are dense inner products.

Example:
    >>> from m3_rag import M3Embedder, M3Index
    >>> store = M3VectorStore(M3Index(M3Embedder.shared("tests/data/tiny-m3", device="cpu")))
    >>> store.add_texts(["Berlin is the capital of Germany.", "Paris is in France."], [{"lang": "en"}, {}],
    ...                 ids=["de", "fr"])
    ['de', 'fr']
    >>> doc = store.similarity_search("capital of Germany", k=1)[0]
    >>> doc.id, doc.metadata
    ('de', {'lang': 'en'})
    >>> [d.id for d in store.similarity_search("capital of Germany", k=2, filter={"lang": {"$ne": "en"}})]
    ['fr']
    >>> retriever = store.as_retriever(search_type="mmr", search_kwargs={"k": 2, "fetch_k": 2})
    >>> sorted(d.id for d in retriever.invoke("capital of Germany"))
    ['de', 'fr']
"""

from __future__ import annotations

import copy
import uuid
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
from langchain_core.documents import Document
from langchain_core.embeddings import Embeddings
from langchain_core.vectorstores import VectorStore

from m3_rag.colbert_codec import ColbertDtype
from m3_rag.encode_cache import cache_for
from m3_rag.index import M3Index
from m3_rag.ranking import SearchHit, top_k
from m3_rag.records import copy_metadata
from m3_rag.retrieval import HybridStore, QueryBatch, SearchRequest, check_first_stage
from m3_rag.scoring import normalize_weights
from m3_rag.sparse import SparseVector

from ._common import hit_scores, score_metadata
from ._mmr import check_mmr, mmr_order
from ._sharing import pickle_refs, restore_refs, shared_memo
from .embeddings import M3Embeddings

__all__ = ["M3VectorStore", "clip_relevance", "mmr_order"]

_SEARCH_ARGS = ("filter", "weights", "candidates", "first_stage", "cross_encoder", "cross_encoder_top_n")
_VECTOR_ARGS = ("filter", "candidates")


def clip_relevance(score: float) -> float:
    """The default relevance of a hybrid score: the score clipped to [0, 1].

    >>> clip_relevance(0.42), clip_relevance(-0.3), clip_relevance(1.2)
    (0.42, 0.0, 1.0)
    """
    return min(1.0, max(0.0, float(score)))


class M3VectorStore(VectorStore):
    """A LangChain ``VectorStore`` with BGE-M3 hybrid search over a :class:`~m3_rag.retrieval.HybridStore`.

    Args:
        store: where the documents live: an :class:`~m3_rag.M3Index` (in memory, or a folder opened
            with ``M3Index.open``), a :class:`~m3_rag.index.MilvusStore`, or any ``HybridStore``.
        embedding: the :class:`M3Embeddings` that :attr:`embeddings` returns (default: one over
            the store's model). Adding texts does not use it: the store encodes each text once,
            dense, sparse and ColBERT in one pass.
        weights, candidates, first_stage, cross_encoder, cross_encoder_top_n: defaults of the
            search (see :meth:`HybridStore.search`); each can also be passed per call.
            ``candidates`` is raised to ``k`` when a search asks for more.
        score_metadata: put the scores into returned Documents' metadata (``relevance_score``,
            ``dense_score``, ``sparse_score``, ``colbert_score``). Off by default: metadata is
            returned as stored, and the same document compares equal across queries.
        relevance_score_fn: maps a score to [0, 1] for the relevance-score methods (default
            :func:`clip_relevance`).

    See the module docs for what the scores are and what search by vector does.
    ``copy.deepcopy`` shares the store and the model. Pickling writes the model by name and the
    store by reference: an ``M3Index`` opened with ``M3Index.open`` is reopened in the new process;
    an in-memory ``M3Index`` (or one read with ``load``) and a ``MilvusStore`` refuse to be pickled
    with a TypeError that says what to do (their documents or credentials would not travel).
    """

    def __init__(
        self,
        store: HybridStore,
        *,
        embedding: M3Embeddings | None = None,
        weights: Sequence[float] = (1.0, 1.0, 1.0),
        candidates: int = 100,
        first_stage: str | Sequence[str] = ("dense", "sparse"),
        cross_encoder: Any = None,
        cross_encoder_top_n: int | None = None,
        score_metadata: bool = False,
        relevance_score_fn: Callable[[float], float] | None = None,
    ) -> None:
        if not isinstance(store, HybridStore):
            raise TypeError(
                "store must be an m3_rag hybrid store (M3Index, MilvusStore...), got "
                f"{type(store).__name__}; build one with M3VectorStore.from_texts(texts, M3Embeddings(...))"
            )
        if embedding is None:
            embedding = M3Embeddings(embedder=store.embedder)
        _check_embedding(embedding, store)
        # checked now, so that a bad default fails here rather than at the first search
        SearchRequest.make(k=1, candidates=candidates, first_stage=first_stage, weights=weights, filter=None,
                           cross_encoder_top_n=cross_encoder_top_n)  # fmt: skip
        self.store = store
        self.embedding = embedding
        self.weights = normalize_weights(weights)
        self.candidates = int(candidates)
        self.first_stage = check_first_stage(first_stage)
        self.cross_encoder = cross_encoder
        self.cross_encoder_top_n = cross_encoder_top_n
        self.score_metadata = bool(score_metadata)
        self.relevance_score_fn = relevance_score_fn

    def __repr__(self) -> str:
        return f"M3VectorStore({self.store!r})"

    @property
    def embeddings(self) -> M3Embeddings:
        """BGE-M3 dense embeddings of the store's model (LangChain's query embedding object)."""
        return self.embedding

    # ------------------------------------------------------------------ building
    @classmethod
    def from_texts(
        cls,
        texts: list[str],
        embedding: Embeddings | None = None,
        metadatas: list[dict[str, Any]] | None = None,
        *,
        ids: list[str] | None = None,
        store: HybridStore | None = None,
        colbert_dtype: ColbertDtype | None = "float16",
        batch_size: int | None = None,
        **kwargs: Any,
    ) -> M3VectorStore:
        """A vector store holding ``texts``: a new in-memory :class:`~m3_rag.M3Index` of ``embedding``'s
        model (ColBERT vectors as ``colbert_dtype``), or ``store``.

        ``embedding`` must be an :class:`M3Embeddings` (or None with a ``store``: its model's);
        ``kwargs`` are the constructor's search defaults (``weights``, ``candidates``...).

        >>> emb = M3Embeddings(model_name="tests/data/tiny-m3", device="cpu")
        >>> M3VectorStore.from_texts(["a text", "another"], emb, ids=["a", "b"]).get_by_ids(["b"])[0].page_content
        'another'
        """
        if embedding is not None and not isinstance(embedding, M3Embeddings):
            raise TypeError(
                f"embedding must be an m3_rag M3Embeddings (the store encodes with BGE-M3), got "
                f"{type(embedding).__name__}; pass M3Embeddings(model_name=...)"
            )
        if store is None:
            if embedding is None:
                raise TypeError("pass embedding=M3Embeddings(...) (a new M3Index of its model) or store=")
            store = M3Index(embedding.model, colbert_dtype=colbert_dtype)
        vectorstore = cls(store, embedding=embedding, **kwargs)
        vectorstore.add_texts(texts, metadatas, ids=ids, batch_size=batch_size)
        return vectorstore

    @classmethod
    def from_documents(
        cls, documents: list[Document], embedding: Embeddings | None = None, **kwargs: Any
    ) -> M3VectorStore:
        """:meth:`from_texts` with the Documents' text, metadata and ids (a new id where ``id`` is None)."""
        docs = list(documents)
        if "ids" not in kwargs and any(doc.id for doc in docs):
            kwargs["ids"] = [doc.id for doc in docs]
        return cls.from_texts([d.page_content for d in docs], embedding, [d.metadata for d in docs], **kwargs)

    # ------------------------------------------------------------------ writing
    def add_texts(
        self,
        texts: Iterable[str],
        metadatas: list[dict[str, Any]] | None = None,
        *,
        ids: Sequence[str | None] | None = None,
        batch_size: int | None = None,
        **kwargs: Any,
    ) -> list[str]:
        """Encode (one pass per text: dense, sparse and ColBERT) and store; an id already stored is replaced.

        ``ids`` may hold None for texts that should get a new id (as ``add_documents`` passes
        ``Document.id``); ``batch_size`` caps texts per forward pass. Returns the ids.
        """
        _no_extra("add_texts", kwargs, ())
        items = list(texts)
        if ids is not None:
            if isinstance(ids, str) or len(ids) != len(items):
                raise ValueError(f"ids must be a list with one id (or None) per text ({len(items)}), got {ids!r:.80}")
            ids = [str(uuid.uuid4()) if doc_id is None or doc_id == "" else doc_id for doc_id in ids]
        return self.store.add(items, ids=ids, metadatas=metadatas, batch_size=batch_size)  # type: ignore[arg-type]

    def delete(self, ids: list[str] | None = None, **kwargs: Any) -> bool:
        """Remove documents by id (unknown ids are ignored); True when done."""
        _no_extra("delete", kwargs, ())
        if ids is None:
            raise ValueError(
                "delete(ids=None) would delete every document; pass the ids, e.g. store.delete(store.store.ids)"
            )
        self.store.delete([ids] if isinstance(ids, str) else list(ids))
        return True

    def get_by_ids(self, ids: Sequence[str], /) -> list[Document]:
        """The stored Documents with these ids (unknown ids skipped, each id once), in the order asked."""
        wanted = list(dict.fromkeys(i for i in ([ids] if isinstance(ids, str) else ids) if isinstance(i, str)))
        return [Document(id=r.id, page_content=r.text, metadata=r.metadata) for r in self.store.get(wanted)]

    # ------------------------------------------------------------------ hybrid search
    def search_hits(self, query: str, k: int = 4, **kwargs: Any) -> list[SearchHit]:
        """The core's hits for ``query`` (id, text, metadata, hybrid score, per-mode scores), best first.

        ``kwargs``: ``filter``, ``weights``, ``candidates``, ``first_stage``, ``cross_encoder``,
        ``cross_encoder_top_n`` (defaults from the constructor).
        """
        if not isinstance(query, str):
            raise TypeError(f"the query must be a str, got {type(query).__name__}: {query!r:.80}")
        _no_extra("similarity_search", kwargs, _SEARCH_ARGS)
        args: dict[str, Any] = {
            "weights": self.weights,
            "candidates": self.candidates,
            "first_stage": self.first_stage,
            "cross_encoder": self.cross_encoder,
            "cross_encoder_top_n": self.cross_encoder_top_n,
        }
        args.update({name: value for name, value in kwargs.items() if value is not None})
        if isinstance(k, int) and not isinstance(k, bool) and isinstance(args["candidates"], int):
            args["candidates"] = max(args["candidates"], k)
        return self.store.search(query, k=k, **args)

    def _document(self, hit: SearchHit) -> Document:
        metadata = score_metadata(hit.metadata, hit.score, hit.scores) if self.score_metadata else hit.metadata
        return Document(id=hit.id, page_content=hit.text, metadata=metadata)

    def similarity_search(self, query: str, k: int = 4, **kwargs: Any) -> list[Document]:
        """The ``k`` best Documents by hybrid score (``filter=``, ``weights=``... as in :meth:`search_hits`)."""
        return [self._document(hit) for hit in self.search_hits(query, k, **kwargs)]

    def similarity_search_with_score(self, query: str, k: int = 4, **kwargs: Any) -> list[tuple[Document, float]]:
        """``(Document, hybrid score)`` pairs, best first (the cross-encoder's score after that stage)."""
        return [(self._document(hit), hit.score) for hit in self.search_hits(query, k, **kwargs)]

    def similarity_search_with_scores(
        self, query: str, k: int = 4, **kwargs: Any
    ) -> list[tuple[Document, dict[str, float]]]:
        """``(Document, scores)`` pairs: ``{"relevance_score": hybrid, "dense_score", "sparse_score", "colbert_score"}``
        (plus ``"hybrid_score"`` and ``"cross_encoder_score"`` after a cross-encoder stage)."""
        return [(self._document(hit), hit_scores(hit)) for hit in self.search_hits(query, k, **kwargs)]

    def _select_relevance_score_fn(self) -> Callable[[float], float]:
        return self.relevance_score_fn or clip_relevance

    def max_marginal_relevance_search(
        self, query: str, k: int = 4, fetch_k: int = 20, lambda_mult: float = 0.5, **kwargs: Any
    ) -> list[Document]:
        """``k`` of the best ``fetch_k`` hybrid hits, picked by maximal marginal relevance.

        Relevance is the hybrid score; redundancy is the inner product of the documents' dense
        vectors, as the store keeps them (``HybridStore.dense_vectors``: no model pass for the
        documents; one removed since the search is encoded from its text).
        """
        check_mmr(k, fetch_k, lambda_mult)
        hits = self.search_hits(query, max(k, fetch_k), **kwargs)
        vectors = self._dense_vectors([(hit.id, hit.text) for hit in hits])
        order = mmr_order(np.array([hit.score for hit in hits]), vectors, k, lambda_mult)
        return [self._document(hits[i]) for i in order]

    # ------------------------------------------------------------------ dense search by vector
    def similarity_search_with_score_by_vector(
        self, embedding: list[float], k: int = 4, **kwargs: Any
    ) -> list[tuple[Document, float]]:
        """``(Document, dense inner product)`` pairs for a dense query vector (see the module docs).

        ``kwargs``: ``filter`` and ``candidates``.
        """
        return [(doc, float(score)) for doc, score, _ in self._by_vector(embedding, k, kwargs)]

    def similarity_search_by_vector(self, embedding: list[float], k: int = 4, **kwargs: Any) -> list[Document]:
        """The ``k`` Documents whose dense vectors have the largest inner product with ``embedding``."""
        return [doc for doc, _ in self.similarity_search_with_score_by_vector(embedding, k, **kwargs)]

    def max_marginal_relevance_search_by_vector(
        self, embedding: list[float], k: int = 4, fetch_k: int = 20, lambda_mult: float = 0.5, **kwargs: Any
    ) -> list[Document]:
        """Maximal marginal relevance over the ``fetch_k`` best dense matches of ``embedding``."""
        check_mmr(k, fetch_k, lambda_mult)
        found = self._by_vector(embedding, max(k, fetch_k), kwargs)
        vectors = self._dense_vectors([(str(doc.id), doc.page_content) for doc, _, _ in found])
        order = mmr_order(np.array([score for _, score, _ in found]), vectors, k, lambda_mult)
        return [found[i][0] for i in order]

    def _by_vector(self, embedding: Any, k: int, kwargs: dict[str, Any]) -> list[tuple[Document, float, str]]:
        _no_extra("similarity_search_by_vector", kwargs, _VECTOR_ARGS)
        model = self.store.embedder
        vector = np.asarray(embedding, dtype=np.float32)
        if vector.shape != (model.dim,) or not np.all(np.isfinite(vector)):
            raise ValueError(
                f"embedding must be {model.dim} finite numbers (a dense vector of {model.name}), got shape "
                f"{vector.shape}; make one with M3Embeddings.embed_query"
            )
        request = SearchRequest.make(
            k=k,
            candidates=max(k, int(kwargs.get("candidates") or k)),
            first_stage="dense",
            weights=(1.0, 0.0, 0.0),
            filter=kwargs.get("filter"),
        )
        colbert = np.zeros((1, model.colbert_dim or 1), np.float32)  # unused: the weights take dense only
        found = self.store._candidates(QueryBatch(vector[None, :], [SparseVector.empty()], [colbert]), request)[0]
        if len(found) == 0:
            return []
        out = []
        for i in top_k(found.dense, request.k).tolist():
            metadata = copy_metadata(found.metadatas[i] or {})
            if self.score_metadata:
                metadata = score_metadata(metadata, float(found.dense[i]), {"dense": float(found.dense[i])})
            doc = Document(id=str(found.ids[i]), page_content=str(found.texts[i]), metadata=metadata)
            out.append((doc, float(found.dense[i]), doc.page_content))
        return out

    def _dense_vectors(self, found: list[tuple[str, str]]) -> np.ndarray:
        """(n, d) stored dense vectors of ``(id, text)`` hits; a hit no longer stored is encoded from its text."""
        model = self.store.embedder
        stored = self.store.dense_vectors([doc_id for doc_id, _ in found]) if found else {}
        missing = [text for doc_id, text in found if doc_id not in stored]
        encoded = iter(cache_for(model).encode(model, missing, kind="document", want="both") if missing else [])
        rows: list[Any] = [stored[doc_id] if doc_id in stored else next(encoded).dense for doc_id, _ in found]
        return np.stack(rows).astype(np.float32, copy=False) if rows else np.zeros((0, model.dim), np.float32)

    # ------------------------------------------------------------------ copying and pickling
    def __getstate__(self) -> dict[str, Any]:
        return pickle_refs(self.__dict__)

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(restore_refs(state))

    def __deepcopy__(self, memo: dict[int, Any] | None = None) -> M3VectorStore:
        also = () if self.cross_encoder is None or isinstance(self.cross_encoder, str) else (self.cross_encoder,)
        memo = shared_memo(self.__dict__.values(), memo, also)
        new = type(self).__new__(type(self))
        memo[id(self)] = new
        new.__dict__.update(copy.deepcopy(self.__dict__, memo))
        return new


def _no_extra(method: str, kwargs: dict[str, Any], allowed: Sequence[str]) -> None:
    unknown = sorted(set(kwargs) - set(allowed))
    if unknown:
        raise TypeError(f"M3VectorStore.{method} got unexpected argument(s) {unknown}; it takes {list(allowed)}")


def _check_embedding(embedding: Any, store: HybridStore) -> None:
    if not isinstance(embedding, M3Embeddings):
        raise TypeError(f"embedding must be an m3_rag M3Embeddings, got {type(embedding).__name__}")
    if embedding.model is not store.embedder:
        raise ValueError(
            f"the embedding's model ({embedding.model!r}) is not the store's ({store.embedder!r}); build it on the "
            "store's model: M3Embeddings(embedder=store.embedder)"
        )
    model = store.embedder
    for name, value, limit in (
        ("passage_max_length", embedding.passage_max_length, model.passage_max_length),
        ("query_max_length", embedding.query_max_length, model.query_max_length),
    ):
        if value is not None and value != limit:
            raise ValueError(
                f"the embedding's {name}={value} differs from the model's ({limit}), which the store encodes "
                f"with; set it on the model instead (M3Embedder.from_pretrained(..., "
                f"{name}={value})) or leave it None"
            )
