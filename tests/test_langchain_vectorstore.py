"""``M3VectorStore``: LangChain's standard vector store suite on M3Index and MilvusStore, and its own behaviour."""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from _langchain_helpers import CORPUS, IDS, METADATAS, QUERIES, TINY, count_encodes, shared_tiny
from langchain_core.documents import Document
from langchain_core.embeddings import DeterministicFakeEmbedding
from langchain_core.vectorstores import VectorStore
from langchain_tests.integration_tests import VectorStoreIntegrationTests

from m3_rag import M3Embedder, M3Index
from m3_rag.integrations.langchain import M3Embeddings, M3VectorStore
from m3_rag.integrations.langchain.vectorstore import clip_relevance, mmr_order

SCORE_KEYS = ("relevance_score", "dense_score", "sparse_score", "colbert_score")


def corpus_store(embedder: M3Embedder | None = None, **kwargs: Any) -> M3VectorStore:
    store = M3VectorStore(M3Index(embedder or shared_tiny(), colbert_dtype="float32"), **kwargs)
    assert store.add_texts(CORPUS, METADATAS, ids=IDS) == IDS
    return store


def as_documents(hits: list[Any]) -> list[Document]:
    return [Document(id=h.id, page_content=h.text, metadata=h.metadata) for h in hits]


# ---------------------------------------------------------------------- the standard suite
class TestM3VectorStoreOnM3Index(VectorStoreIntegrationTests):
    @pytest.fixture
    def vectorstore(self) -> VectorStore:
        """An empty store per test, on the tiny checkpoint."""
        return M3VectorStore(M3Index(shared_tiny()))


@pytest.fixture(scope="module")
def milvus_uri(tmp_path_factory: pytest.TempPathFactory) -> str:
    pytest.importorskip("milvus_lite")
    return str(tmp_path_factory.mktemp("milvus") / "standard.db")


class TestM3VectorStoreOnMilvus(VectorStoreIntegrationTests):
    @pytest.fixture
    def vectorstore(self, milvus_uri: str) -> Iterator[VectorStore]:
        """An empty collection per test in one milvus-lite file."""
        from m3_rag.index import MilvusStore

        store = MilvusStore(shared_tiny(), milvus_uri, collection=f"t{uuid.uuid4().hex}")
        try:
            yield M3VectorStore(store)
        finally:
            store.client.drop_collection(store.collection)
            store.close()


# ---------------------------------------------------------------------- searching
def test_similarity_search_is_the_hybrid_search() -> None:
    vs = corpus_store()
    index = vs.store
    cases: list[tuple[str, dict[str, Any]]] = [
        (QUERIES[0], {}),
        (QUERIES[1], {"weights": (0.4, 0.2, 0.4)}),
        (QUERIES[2], {"filter": {"n": {"$gte": 3}}, "first_stage": "sparse"}),
        (QUERIES[3], {"filter": {"$or": [{"lang": "de"}, {"n": 7}]}, "candidates": 2}),
    ]
    for query, args in cases:
        hits = index.search(query, k=3, **{**args, "candidates": max(3, args.get("candidates", 100))})
        assert len(hits) == 3  # candidates=2 is raised to k
        docs = vs.similarity_search(query, k=3, **args)
        assert docs == as_documents(hits) and all(d.metadata == METADATAS[int(d.id[1:])] for d in docs)
        scored = vs.similarity_search_with_score(query, k=3, **args)
        assert [d for d, _ in scored] == docs
        np.testing.assert_allclose([s for _, s in scored], [h.score for h in hits], rtol=1e-6)
        detailed = vs.similarity_search_with_scores(query, k=3, **args)
        assert [d for d, _ in detailed] == docs
        for (_, scores), hit in zip(detailed, hits, strict=True):
            assert scores["relevance_score"] == pytest.approx(hit.score, rel=1e-6)
            assert [scores[f"{m}_score"] for m in ("dense", "sparse", "colbert")] == pytest.approx(
                [hit.scores[m] for m in ("dense", "sparse", "colbert")], rel=1e-6, abs=1e-7
            )
    # store-level defaults, per-call values override them
    tuned = M3VectorStore(index, weights=(1, 0, 0), candidates=2, first_stage="dense")
    assert tuned.similarity_search("capital", k=5) == as_documents(
        index.search("capital", k=5, weights=(1, 0, 0), candidates=5, first_stage="dense")
    )  # candidates is raised to k
    assert tuned.similarity_search("capital", k=2, weights=(1, 1, 1)) == as_documents(
        index.search("capital", k=2, weights=(1, 1, 1), candidates=2, first_stage="dense")
    )
    with pytest.raises(TypeError, match="unexpected argument"):
        vs.similarity_search("capital", top_k=2)
    with pytest.raises(ValueError, match="weights"):
        M3VectorStore(index, weights=(1, 1))
    with pytest.raises(TypeError, match="hybrid store"):
        M3VectorStore([Document("not a store")])  # type: ignore[arg-type]


def test_score_metadata_is_opt_in() -> None:
    vs = corpus_store(score_metadata=True)
    query = "vector database"
    plain = M3VectorStore(vs.store).similarity_search_with_scores(query, k=4)
    flagged = vs.similarity_search(query, k=4)
    assert [d.id for d in flagged] == [d.id for d, _ in plain]
    for doc, (base, scores) in zip(flagged, plain, strict=True):
        assert doc.metadata == {**base.metadata, **scores} and set(SCORE_KEYS) <= set(doc.metadata)
    assert vs.get_by_ids(["d0"]) == [Document(CORPUS[0], id="d0", metadata=METADATAS[0])]  # the store is untouched


def test_relevance_scores_and_the_threshold_retriever() -> None:
    vs = corpus_store()
    query = "capital of Germany"
    scored = vs.similarity_search_with_score(query, k=len(CORPUS))
    relevance = vs.similarity_search_with_relevance_scores(query, k=len(CORPUS))
    assert [d for d, _ in relevance] == [d for d, _ in scored]
    assert [r for _, r in relevance] == [min(1.0, max(0.0, s)) for _, s in scored]
    threshold = float(np.median([s for _, s in scored]))
    kept = [d for d, s in scored if s >= threshold]
    assert 0 < len(kept) < len(CORPUS)
    assert [d for d, _ in vs.similarity_search_with_relevance_scores(query, k=10, score_threshold=threshold)] == kept
    retriever = vs.as_retriever(search_type="similarity_score_threshold",
                                search_kwargs={"score_threshold": threshold, "k": 10})  # fmt: skip
    assert retriever.invoke(query) == kept
    assert clip_relevance(-0.5) == 0.0 and clip_relevance(1.5) == 1.0
    halved = M3VectorStore(vs.store, relevance_score_fn=lambda s: (s + 1) / 2)
    assert [r for _, r in halved.similarity_search_with_relevance_scores(query, k=3)] == pytest.approx(
        [(s + 1) / 2 for _, s in scored[:3]]
    )


def test_as_retriever_similarity_and_mmr(embedder: M3Embedder) -> None:
    vs = corpus_store()
    query = "capital of Germany"
    assert vs.as_retriever().invoke(query) == vs.similarity_search(query, k=4)
    assert vs.as_retriever(search_kwargs={"k": 2, "filter": {"lang": "de"}}).invoke(query) == as_documents(
        vs.store.search(query, k=2, filter={"lang": "de"})
    )
    hits = vs.store.search(query, k=8)
    vectors = embedder.encode_documents([h.text for h in hits], colbert=False).dense
    assert vectors is not None
    for lam in (0.0, 0.3, 1.0):
        order = mmr_order(np.array([h.score for h in hits]), vectors, 4, lam)
        want = [as_documents(hits)[i] for i in order]
        mmr = vs.as_retriever(search_type="mmr", search_kwargs={"k": 4, "fetch_k": 8, "lambda_mult": lam})
        assert mmr.invoke(query) == want
    assert vs.max_marginal_relevance_search(query, k=4, fetch_k=8, lambda_mult=1.0) == as_documents(hits[:4])
    diverse = vs.max_marginal_relevance_search(query, k=4, fetch_k=8, lambda_mult=0.0)
    assert diverse[0] == as_documents(hits)[0] and diverse != as_documents(hits[:4])
    with pytest.raises(ValueError, match="lambda_mult"):
        vs.max_marginal_relevance_search(query, lambda_mult=2)


def test_mmr_reads_stored_dense_vectors_and_encodes_only_the_query(monkeypatch: pytest.MonkeyPatch) -> None:
    vs = corpus_store()
    seen: list[str] = []
    real = M3Embedder.encode

    def spy(self: M3Embedder, texts: Any, *args: Any, **kwargs: Any) -> Any:
        seen.extend([texts] if isinstance(texts, str) else texts)
        return real(self, texts, *args, **kwargs)

    monkeypatch.setattr(M3Embedder, "encode", spy)
    query = "which river flows through the capital"
    found = vs.max_marginal_relevance_search(query, k=3, fetch_k=8, lambda_mult=0.2)
    assert seen == [query] and len(found) == 3  # the 8 candidates' vectors come from the store
    gone = ("gone-0", "a passage no store holds, gone since the search")  # encoded from its text
    pairs = [(str(d.id), d.page_content) for d in found] + [gone]
    vectors = vs._dense_vectors(pairs)
    assert seen == [query, gone[1]]
    want = vs.store.embedder.encode_documents([text for _, text in pairs]).dense
    np.testing.assert_allclose(vectors, want, atol=1e-6)


def test_mmr_order() -> None:
    rel = np.array([0.9, 0.85, 0.8, 0.1])
    vectors = np.array([[1.0, 0.0], [0.99, 0.141], [0.0, 1.0], [0.0, 1.0]])
    assert mmr_order(rel, vectors, 3, 1.0) == [0, 1, 2]  # relevance only
    assert mmr_order(rel, vectors, 3, 0.5) == [0, 2, 1]  # the near-duplicate of 0 waits
    assert mmr_order(rel, vectors, 10, 0.5) == [0, 2, 1, 3]  # at most n
    assert mmr_order(np.zeros(0), np.zeros((0, 2)), 3, 0.5) == []


def test_search_by_vector_is_dense_only(embedder: M3Embedder) -> None:
    vs = corpus_store()
    queries = QUERIES[:2]
    exact = embedder.compute_score([(q, t) for q in queries for t in CORPUS])["dense"]
    for j, query in enumerate(queries):
        vector = vs.embeddings.embed_query(query)
        dense = np.asarray(exact[j * len(CORPUS) : (j + 1) * len(CORPUS)])
        order = np.argsort(-dense, kind="stable")[:4]
        found = vs.similarity_search_with_score_by_vector(vector, k=4)
        assert [d for d, _ in found] == [Document(CORPUS[i], id=IDS[i], metadata=METADATAS[i]) for i in order]
        np.testing.assert_allclose([s for _, s in found], dense[order], rtol=1e-5, atol=1e-6)
        assert vs.similarity_search_by_vector(vector, k=4) == [d for d, _ in found]
        filtered = vs.similarity_search_by_vector(vector, k=10, filter={"lang": "de"})
        assert [d.id for d in filtered] == [IDS[i] for i in np.argsort(-dense, kind="stable") if i in (0, 2)]
    vector = vs.embeddings.embed_query("capital of Germany")
    candidates = vs.similarity_search_by_vector(vector, k=8)
    mmr = vs.max_marginal_relevance_search_by_vector(vector, k=3, fetch_k=8, lambda_mult=1.0)
    assert mmr == candidates[:3]
    with pytest.raises(ValueError, match="32 finite numbers"):
        vs.similarity_search_by_vector([0.1] * 5)
    with pytest.raises(TypeError, match="unexpected argument"):
        vs.similarity_search_by_vector(vector, weights=(1, 1, 1))


# ---------------------------------------------------------------------- writing
def test_adding_runs_the_model_once_per_text() -> None:
    model = M3Embedder.from_pretrained(TINY, device="cpu")
    vs = M3VectorStore(M3Index(model))
    docs = [Document(t, metadata=m) for t, m in zip(CORPUS, METADATAS)]
    docs[3].id = "given"
    with count_encodes(model) as counter:
        ids = vs.add_documents(docs)
        assert counter.calls == [CORPUS]  # dense, sparse and ColBERT in one pass, all texts together
    assert ids[3] == "given" and len(set(ids)) == len(CORPUS) and docs[0].id is None  # the input is unchanged
    assert vs.get_by_ids([ids[5], "missing", ids[5], ids[0]]) == [
        Document(CORPUS[5], id=ids[5], metadata=METADATAS[5]),
        Document(CORPUS[0], id=ids[0], metadata=METADATAS[0]),
    ]
    # upsert by id, delete, clear errors
    vs.add_texts(["Berlin is a city on the Spree."], [{"v": 2}], ids=["given"])
    assert vs.get_by_ids(["given"]) == [Document("Berlin is a city on the Spree.", id="given", metadata={"v": 2})]
    assert len(vs.store) == len(CORPUS)
    assert vs.delete([ids[0], "missing"]) is True and len(vs.store) == len(CORPUS) - 1
    with pytest.raises(ValueError, match="every document"):
        vs.delete()
    with pytest.raises(TypeError, match="unexpected argument"):
        vs.add_texts(["x"], upsert=True)
    with pytest.raises(ValueError, match="one id"):
        vs.add_texts(["x", "y"], ids=["only one"])
    with pytest.raises(TypeError, match="JSON"):
        vs.add_texts(["x"], [{"when": object()}])


def test_from_texts_and_from_documents(tmp_path: Path) -> None:
    emb = M3Embeddings(model_name=str(TINY), device="cpu")
    vs = M3VectorStore.from_texts(CORPUS, emb, METADATAS, ids=IDS, weights=(0.4, 0.2, 0.4))
    assert isinstance(vs.store, M3Index) and vs.store.embedder is emb.model and vs.embeddings is emb
    assert vs.similarity_search("hybrid search", k=2) == as_documents(
        vs.store.search("hybrid search", k=2, weights=(0.4, 0.2, 0.4))
    )
    docs = [Document(CORPUS[0], id="berlin", metadata={"src": "a"}), Document(CORPUS[1], metadata={"src": "b"})]
    other = M3VectorStore.from_documents(docs, emb, colbert_dtype=None)
    assert other.store.colbert_dtype is None and "berlin" in other.store.ids and len(other.store) == 2
    folder = M3Index.open(tmp_path / "index", emb.model)
    into = M3VectorStore.from_documents(docs, store=folder)
    assert into.store is folder and into.embeddings.model is emb.model
    assert M3Index.load(tmp_path / "index").get("berlin")[0].metadata == {"src": "a"}  # committed
    with pytest.raises(TypeError, match="M3Embeddings"):
        M3VectorStore.from_texts(CORPUS, DeterministicFakeEmbedding(size=6))
    with pytest.raises(ValueError, match="not the store's"):
        M3VectorStore(M3Index(M3Embedder.from_pretrained(TINY, device="cpu")), embedding=emb)
    with pytest.raises(ValueError, match="query_max_length=8 differs"):
        M3VectorStore.from_texts(CORPUS, M3Embeddings(embedder=emb.model, query_max_length=8))


async def test_async_methods_run_off_the_event_loop() -> None:
    model = M3Embedder.from_pretrained(TINY, device="cpu")
    vs = M3VectorStore(M3Index(model))
    loop_thread = threading.get_ident()
    with count_encodes(model) as counter:
        ids = await vs.aadd_texts(CORPUS, METADATAS, ids=IDS)
        found, scored, relevant, mmr, by_vector = await asyncio.gather(
            vs.asimilarity_search("capital of Germany", k=3),
            vs.asimilarity_search_with_score("capital of Germany", k=3),
            vs.asimilarity_search_with_relevance_scores("capital of Germany", k=3),
            vs.amax_marginal_relevance_search("capital of Germany", k=3, fetch_k=6),
            vs.asimilarity_search_by_vector(vs.embeddings.embed_query("capital of Germany"), k=3),
        )
        retrieved = await vs.as_retriever(search_type="mmr", search_kwargs={"k": 3, "fetch_k": 6}).ainvoke(
            "capital of Germany"
        )
        assert await vs.aget_by_ids(["d1"]) == vs.get_by_ids(["d1"])
        assert await vs.adelete(["d1"]) is True
    assert ids == IDS and loop_thread not in counter.threads[:1] + counter.threads[2:]
    assert counter.calls[0] == CORPUS
    assert found == [d for d, _ in scored] == [d for d, _ in relevant] and mmr == retrieved
    assert by_vector == vs.similarity_search_by_vector(vs.embeddings.embed_query("capital of Germany"), k=3)
    assert len(vs.store) == len(CORPUS) - 1
    again = await M3VectorStore.afrom_texts(CORPUS[:2], M3Embeddings(embedder=model), ids=["a", "b"])
    assert again.get_by_ids(["b"])[0].page_content == CORPUS[1]


# ---------------------------------------------------------------------- Milvus
@pytest.mark.slow
def test_the_same_results_on_milvus(milvus_uri: str) -> None:
    from m3_rag.index import MilvusStore

    memory = corpus_store()
    store = MilvusStore(shared_tiny(), milvus_uri, collection="corpus")
    try:
        milvus = M3VectorStore(store)
        milvus.add_texts(CORPUS, METADATAS, ids=IDS)
        for query in QUERIES:
            for args in ({}, {"filter": {"$or": [{"n": {"$lt": 3}}, {"lang": "de"}]}}, {"first_stage": "sparse"}):
                assert milvus.similarity_search(query, k=4, **args) == memory.similarity_search(query, k=4, **args)
            vector = memory.embeddings.embed_query(query)
            got = milvus.similarity_search_with_score_by_vector(vector, k=4, filter={"n": {"$gte": 2}})
            want = memory.similarity_search_with_score_by_vector(vector, k=4, filter={"n": {"$gte": 2}})
            assert [d for d, _ in got] == [d for d, _ in want]
            np.testing.assert_allclose([s for _, s in got], [s for _, s in want], rtol=1e-5)
            mmr = {"k": 3, "fetch_k": 6, "lambda_mult": 0.3}
            assert milvus.max_marginal_relevance_search(query, **mmr) == memory.max_marginal_relevance_search(
                query, **mmr
            )
    finally:
        store.close()
