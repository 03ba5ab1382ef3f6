"""LangChain adapters: standard suites, values against the core, LCEL, reranking, import errors."""

from __future__ import annotations

import asyncio
import doctest
import importlib
import sys
import threading
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from _langchain_helpers import CORPUS, IDS, METADATAS, QUERIES, TINY, count_encodes, shared_tiny
from langchain_classic.retrievers import ContextualCompressionRetriever
from langchain_core.callbacks import BaseCallbackHandler, CallbackManagerForRetrieverRun
from langchain_core.documents import Document
from langchain_core.language_models import FakeListChatModel
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.retrievers import BaseRetriever
from langchain_core.runnables import RunnableLambda, RunnablePassthrough
from langchain_tests.integration_tests import EmbeddingsIntegrationTests, RetrieversIntegrationTests
from langchain_tests.unit_tests import EmbeddingsUnitTests
from pydantic import ValidationError

from m3_rag import M3Embedder, M3Index
from m3_rag.encode_cache import EncodingCache, cache_for
from m3_rag.integrations.langchain import M3Embeddings, M3HybridRetriever, M3Reranker

MODEL = {"model_name": str(TINY), "device": "cpu"}
SCORE_KEYS = ("relevance_score", "dense_score", "sparse_score", "colbert_score")
_INDEX: list[M3Index] = []


def tiny_index() -> M3Index:
    """One index of CORPUS on the shared tiny model, built on first use."""
    if not _INDEX:
        index = M3Index(shared_tiny(), colbert_dtype="float32")
        index.add(CORPUS, ids=IDS, metadatas=METADATAS)
        _INDEX.append(index)
    return _INDEX[0]


# ---------------------------------------------------------------------- standard suites
class TestM3EmbeddingsStandardUnit(EmbeddingsUnitTests):
    @property
    def embeddings_class(self) -> type[M3Embeddings]:
        return M3Embeddings

    @property
    def embedding_model_params(self) -> dict[str, Any]:
        return dict(MODEL)


class TestM3EmbeddingsStandardIntegration(EmbeddingsIntegrationTests):
    @property
    def embeddings_class(self) -> type[M3Embeddings]:
        return M3Embeddings

    @property
    def embedding_model_params(self) -> dict[str, Any]:
        return dict(MODEL)


class TestM3HybridRetrieverStandard(RetrieversIntegrationTests):
    @property
    def retriever_constructor(self) -> type[M3HybridRetriever]:
        return M3HybridRetriever

    @property
    def retriever_constructor_params(self) -> dict[str, Any]:
        return {"index": tiny_index(), "k": 4}

    @property
    def retriever_query_example(self) -> str:
        return "capital of Germany"


# ---------------------------------------------------------------------- embeddings
def test_embeddings_equal_the_encoder(embedder: M3Embedder) -> None:
    emb = M3Embeddings(**MODEL, query_max_length=6, passage_max_length=12)
    docs = emb.embed_documents(CORPUS)
    assert all(type(x) is float for vector in docs for x in vector)
    expected = embedder.encode_documents(CORPUS, max_length=12, colbert=False)
    assert expected.dense is not None and expected.sparse is not None
    np.testing.assert_allclose(docs, expected.dense, rtol=1e-5, atol=1e-6)
    query = emb.embed_query(CORPUS[4])
    query_dense = embedder.encode_queries(CORPUS[4], max_length=6).dense
    assert query_dense is not None
    np.testing.assert_allclose(query, query_dense[0], rtol=1e-5, atol=1e-6)
    assert not np.allclose(query, docs[4], atol=1e-3)  # the query was cut at 6 tokens, the document at 12
    sparse = emb.embed_documents_sparse(CORPUS)
    for got, want in zip(sparse, expected.sparse):
        assert sorted(got) == sorted(want) and all(type(i) is int for i in got)
        np.testing.assert_allclose([got[i] for i in sorted(got)], [want[i] for i in sorted(want)], rtol=1e-5)


async def test_async_embeddings_run_off_the_event_loop() -> None:
    emb = M3Embeddings(**MODEL)
    emb.cache.clear()
    loop_thread = threading.get_ident()
    with count_encodes(emb.model) as counter:
        docs, query = await asyncio.gather(emb.aembed_documents(["a b c", "d e"]), emb.aembed_query("a b"))
        assert len(counter.calls) == 2 and loop_thread not in counter.threads
        assert docs == emb.embed_documents(["a b c", "d e"]) and query == emb.embed_query("a b")
    assert counter.texts == {"a b c": 1, "d e": 1, "a b": 1}  # the sync calls were served by the cache


def test_adapters_share_one_model_and_forbid_unknown_fields(embedder: M3Embedder) -> None:
    first, second = M3Embeddings(**MODEL), M3Embeddings(model_name=str(TINY), device="cpu", batch_size=2)
    assert first.model is second.model is shared_tiny() is M3Reranker(**MODEL).embedder
    given = M3Embeddings(embedder=embedder)
    assert given.model is embedder and given.model_name == embedder.name
    assert "embedder" not in given.model_dump()
    with pytest.raises(ValidationError, match="extra"):
        M3Embeddings(**MODEL, normalize=True)
    with pytest.raises(ValueError, match="is more than the model takes"):
        M3Embeddings(**MODEL, passage_max_length=embedder.max_length + 1)
    with pytest.raises(ValidationError, match="embedder"):
        M3Embeddings(embedder="tests/data/tiny-m3")


def test_one_model_pass_per_text_through_the_core_cache() -> None:
    model = M3Embedder.from_pretrained(TINY, device="cpu")  # its own cache
    emb = M3Embeddings(embedder=model)
    assert emb.cache is cache_for(model) and isinstance(emb.cache, EncodingCache)
    with count_encodes(model) as counter:
        dense = emb.embed_documents(["alpha", "beta", "alpha"])
        sparse = emb.embed_documents_sparse(["beta", "alpha"])
        assert counter.calls == [["alpha", "beta"]]
        alpha = dict(sparse[1])
        assert alpha  # "alpha" has lexical weights in the tiny model
        sparse[1].clear()  # the caller's copy: the cache keeps its own
        assert emb.embed_documents_sparse(["alpha"])[0] == alpha  # a repeated text: from the recent encodings
        emb.embed_query("alpha")  # a query is another kind: encoded again, with the query length
        assert counter.calls[1] == ["alpha"] and len(counter.calls) == 2
        assert dense[0] == dense[2] and dense[0] != emb.embed_query("beta")
        # sparse first, dense later, in other batch sizes: still one pass per text
        texts = [f"text number {i}" for i in range(40)]
        before = len(counter.calls)
        emb.embed_documents_sparse(texts[:25])
        for start in range(0, 40, 7):
            emb.embed_documents(texts[start : start + 7])
        emb.embed_documents_sparse(texts[25:])
        assert counter.texts - Counter(["alpha", "beta", "alpha", "beta"]) == Counter(texts)
        assert len(counter.calls) == before + 1 + 3  # texts[25:] came in 3 of the dense batches
    assert emb.cache.stats()["texts_encoded"] == 2 + 2 + 40
    want = model.encode_documents(texts, colbert=False)
    assert want.dense is not None and want.sparse is not None
    np.testing.assert_allclose(emb.embed_documents(texts), want.dense, rtol=1e-5, atol=1e-6)
    for got, expected in zip(emb.embed_documents_sparse(texts), want.sparse, strict=True):
        assert got == pytest.approx(dict(expected), rel=1e-5, abs=1e-6)


# ---------------------------------------------------------------------- retriever
def check_scores_equal_hits(scores: list[dict[str, float]], hits: list[Any]) -> None:
    """Scores as ``invoke_with_scores`` (or ``score_metadata=True``) gives them equal the core's hits."""
    for got, hit in zip(scores, hits, strict=True):
        assert got["relevance_score"] == pytest.approx(hit.score, rel=1e-5, abs=1e-7)
        for mode in ("dense", "sparse", "colbert"):
            assert got[f"{mode}_score"] == pytest.approx(hit.scores[mode], rel=1e-5, abs=1e-7)


def check_docs_equal_hits(docs: list[Document], hits: list[Any]) -> None:
    """The Documents are the hits: id, text and the stored metadata as it is (no score keys)."""
    assert [Document(id=h.id, page_content=h.text, metadata=h.metadata) for h in hits] == docs
    assert not any(key in doc.metadata for doc in docs for key in SCORE_KEYS)


def test_retriever_returns_the_hybrid_ranking(embedder: M3Embedder) -> None:
    index = tiny_index()
    args = {"index": index, "k": len(CORPUS), "candidates": len(CORPUS), "weights": (0.4, 0.2, 0.4)}
    retriever = M3HybridRetriever(**args)
    with_metadata = M3HybridRetriever(**args, score_metadata=True)
    for query in QUERIES:
        docs = retriever.invoke(query)
        scores = embedder.compute_score([(query, t) for t in CORPUS], weights=(0.4, 0.2, 0.4))
        expected = sorted(range(len(CORPUS)), key=lambda i: -scores["colbert+sparse+dense"][i])
        assert docs == [Document(CORPUS[i], id=IDS[i], metadata=METADATAS[i]) for i in expected]
        pairs = retriever.invoke_with_scores(query)
        assert [d for d, _ in pairs] == docs
        flagged = with_metadata.invoke(query)
        assert [d.id for d in flagged] == [d.id for d in docs]
        for got in ({d.id: s for d, s in pairs}, {d.id: d.metadata for d in flagged}):
            for key, mode in (("relevance_score", "colbert+sparse+dense"), ("dense_score", "dense"),
                              ("sparse_score", "sparse"), ("colbert_score", "colbert")):  # fmt: skip
                np.testing.assert_allclose([got[i][key] for i in IDS], scores[mode], rtol=1e-5, atol=1e-7)
        assert all({k: v for k, v in d.metadata.items() if k not in SCORE_KEYS} == METADATAS[int(d.id[1:])]
                   for d in flagged)  # fmt: skip
    assert "relevance_score" not in index.get("d0")[0].metadata  # the store's metadata is untouched


def test_retriever_per_call_arguments() -> None:
    index = tiny_index()
    retriever = M3HybridRetriever(index=index, k=4)
    docs = retriever.invoke("capital of Germany", k=2, filter={"lang": "de"})
    hits = index.search("capital of Germany", k=2, filter={"lang": "de"})
    check_docs_equal_hits(docs, hits)
    check_scores_equal_hits([s for _, s in retriever.invoke_with_scores("capital of Germany", k=2,
                                                                        filter={"lang": "de"})], hits)  # fmt: skip
    assert sorted(d.id for d in docs) == ["d0", "d2"]
    ranged = retriever.invoke("capital", k=10, filter={"$or": [{"n": {"$gte": 8}}, {"lang": "de"}]})
    assert sorted(d.id for d in ranged) == ["d0", "d2", "d8", "d9"]
    sparse_only = retriever.invoke_with_scores("capital", first_stage="sparse", k=10)
    assert sparse_only and all(s["sparse_score"] > 0 for _, s in sparse_only)
    assert len(retriever.invoke("capital")) == 4  # per-call values do not stick
    filtered = M3HybridRetriever(index=index, filter={"n": [1, 3, 5]}, k=10).invoke("capital")
    assert sorted(d.id for d in filtered) == ["d1", "d3", "d5"]
    with pytest.raises(TypeError, match="unexpected argument"):
        retriever.invoke("capital", top_k=2)
    with pytest.raises(ValidationError):
        M3HybridRetriever(index=index, weights=(1, 1))
    with pytest.raises(TypeError, match="hybrid store"):
        M3HybridRetriever(index=[Document("not a store")])


class Recorder(BaseCallbackHandler):
    def __init__(self) -> None:
        self.events: list[tuple[str, Any]] = []

    def on_retriever_start(self, serialized: Any, query: str, **kwargs: Any) -> None:
        self.events.append(("start", query))

    def on_retriever_end(self, documents: Any, **kwargs: Any) -> None:
        self.events.append(("end", [d.id for d in documents]))

    def on_retriever_error(self, error: BaseException, **kwargs: Any) -> None:
        self.events.append(("error", type(error).__name__))


async def test_batch_encodes_all_queries_in_one_pass() -> None:
    index = tiny_index()
    retriever = M3HybridRetriever(index=index, k=3)
    expected = [retriever.invoke(q, k=2) for q in QUERIES]
    recorder = Recorder()
    with count_encodes(index.embedder) as counter:
        batched = retriever.batch(QUERIES, {"callbacks": [recorder]}, k=2)
        assert counter.calls == [QUERIES]
        abatched = await retriever.abatch(QUERIES, k=2)
        assert len(counter.calls) == 2
    for got, agot, want in zip(batched, abatched, expected):
        assert got == want and agot == want
    assert [e for e in recorder.events if e[0] == "start"] == [("start", q) for q in QUERIES]
    assert [e for e in recorder.events if e[0] == "end"] == [("end", [d.id for d in docs]) for docs in expected]
    assert await retriever.ainvoke(QUERIES[0], k=2) == expected[0]
    mixed = retriever.batch([QUERIES[0], 7], return_exceptions=True)
    assert mixed[0] == retriever.invoke(QUERIES[0])
    assert isinstance(mixed[1], TypeError)
    with pytest.raises(TypeError, match="must be a str"):
        retriever.batch([QUERIES[0], 7])
    assert retriever.batch([]) == []


@pytest.mark.slow
def test_from_documents_and_from_texts(embedder: M3Embedder) -> None:
    docs = [Document(CORPUS[0], id="berlin", metadata={"src": "a"}), Document(CORPUS[1], metadata={"src": "b"})]
    retriever = M3HybridRetriever.from_documents(docs, embedder=embedder, k=2, colbert_dtype=None)
    assert retriever.index.embedder is embedder and len(retriever.index) == 2
    found = retriever.invoke("capital of Germany")
    assert {d.page_content: d.metadata["src"] for d in found} == {CORPUS[0]: "a", CORPUS[1]: "b"}
    assert "berlin" in [d.id for d in found] and all(d.id for d in found)
    shared = M3HybridRetriever.from_texts(CORPUS, METADATAS, ids=IDS, **MODEL, k=3, colbert_dtype="float32")
    assert shared.index.embedder is shared_tiny()
    check_docs_equal_hits(shared.invoke("hybrid search"), tiny_index().search("hybrid search", k=3))
    with pytest.raises(TypeError, match="must be a str"):
        shared.invoke_with_scores(["not", "a", "str"])  # type: ignore[arg-type]


# ---------------------------------------------------------------------- reranker
class ListRetriever(BaseRetriever):
    """Any retriever: returns its documents as they are."""

    docs: list[Document]

    def _get_relevant_documents(self, query: str, *, run_manager: CallbackManagerForRetrieverRun) -> list[Document]:
        return self.docs


@pytest.mark.parametrize("weights", [(1.0, 1.0, 1.0), (0.4, 0.2, 0.4)])
async def test_compression_retriever_reranks_with_compute_score(embedder: M3Embedder, weights: Any) -> None:
    docs = [Document(text, id=doc_id, metadata={"n": i}) for i, (text, doc_id) in enumerate(zip(CORPUS, IDS))]
    base = ListRetriever(docs=docs[::-1])
    compressor = M3Reranker(**MODEL, top_n=5, weights=weights)
    retriever = ContextualCompressionRetriever(base_compressor=compressor, base_retriever=base)
    query = "capital of Germany"
    found = retriever.invoke(query)
    scores = embedder.compute_score([(query, t) for t in CORPUS], weights=weights)
    expected = sorted(range(len(CORPUS)), key=lambda i: -scores["colbert+sparse+dense"][i])[:5]
    assert [d.id for d in found] == [IDS[i] for i in expected]
    assert [d.metadata["n"] for d in found] == expected
    for key, mode in (("relevance_score", "colbert+sparse+dense"), ("dense_score", "dense"),
                      ("sparse_score", "sparse"), ("colbert_score", "colbert")):  # fmt: skip
        np.testing.assert_allclose([d.metadata[key] for d in found], [scores[mode][i] for i in expected], rtol=1e-5)
    assert all(d.metadata == {"n": i} for i, d in enumerate(docs))  # the input was not changed
    assert await retriever.ainvoke(query) == found
    assert len(M3Reranker(**MODEL, top_n=None).compress_documents(docs, query)) == len(CORPUS)
    assert M3Reranker(**MODEL).compress_documents([], query) == []


def test_reranker_over_the_hybrid_retriever(embedder: M3Embedder) -> None:
    base = M3HybridRetriever(index=tiny_index(), k=6, weights=(1, 0, 0))  # dense only ranks the candidates
    reranker = M3Reranker(embedder=embedder, top_n=3, weights=(0.4, 0.2, 0.4))
    query = "vector database"
    first = base.invoke(query)
    found = ContextualCompressionRetriever(base_compressor=reranker, base_retriever=base).invoke(query)
    exact = reranker.compress_documents(first, query)
    assert found == exact and len(found) == 3
    hybrid = embedder.compute_score([(query, d.page_content) for d in found], weights=(0.4, 0.2, 0.4))
    np.testing.assert_allclose(
        [d.metadata["relevance_score"] for d in found], hybrid["colbert+sparse+dense"], rtol=1e-5
    )
    with pytest.raises(ValidationError):
        M3Reranker(**MODEL, top_n=0)


# ---------------------------------------------------------------------- LCEL
def test_lcel_chain_runs_end_to_end_offline() -> None:
    index = tiny_index()
    retriever = M3HybridRetriever(index=index, k=2)
    prompts: list[str] = []

    def record(prompt: Any) -> Any:
        prompts.append(prompt.to_string())
        return prompt

    prompt = ChatPromptTemplate.from_template("Answer from the context.\nContext:\n{context}\nQuestion: {question}")
    llm = FakeListChatModel(responses=["Berlin."])

    def inputs(x: dict[str, Any]) -> dict[str, Any]:
        return {"context": "\n".join(d.page_content for d in x["docs"]), "question": x["question"]}

    answer_chain = RunnableLambda(inputs) | prompt | RunnableLambda(record) | llm | StrOutputParser()
    chain = {"docs": retriever, "question": RunnablePassthrough()} | RunnablePassthrough.assign(answer=answer_chain)
    out = chain.invoke("capital of Germany")
    hits = index.search("capital of Germany", k=2)
    assert out["answer"] == "Berlin."
    check_docs_equal_hits(out["docs"], hits)
    assert prompts[0].index(hits[0].text) < prompts[0].index(hits[1].text) < prompts[0].index("Question:")


# ---------------------------------------------------------------------- import errors and doctests
def _forget(prefix: str, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [n for n in sys.modules if n.startswith(prefix)]:
        monkeypatch.delitem(sys.modules, name)


@pytest.mark.parametrize(
    ("module", "hidden", "hint"),
    [
        ("m3_rag.integrations.langchain", "langchain_core", 'pip install "m3-rag[langchain]"'),
        ("m3_rag.integrations.langchain_qdrant", "langchain_core", 'pip install "m3-rag[langchain]" langchain-qdrant'),
        ("m3_rag.integrations.langchain_qdrant", "langchain_qdrant", "langchain-qdrant"),
        ("m3_rag.integrations.langchain_milvus", "langchain_milvus", "langchain-milvus"),
    ],
)
def test_missing_framework_names_the_extra(
    monkeypatch: pytest.MonkeyPatch, module: str, hidden: str, hint: str
) -> None:
    _forget("m3_rag.integrations.langchain", monkeypatch)  # and langchain_qdrant, langchain_milvus
    for name in [n for n in sys.modules if n.startswith(f"{hidden}.")]:  # submodules imported by other tests
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setitem(sys.modules, hidden, None)
    with pytest.raises(ImportError, match=hint.replace("[", r"\[").replace("]", r"\]")) as info:
        importlib.import_module(module)
    assert isinstance(info.value.__cause__, ImportError)


def test_docstring_examples_run(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(Path(__file__).parent.parent)  # the examples name tests/data/tiny-m3
    names = ["", "._common", "._mmr", "._sharing", ".embeddings", ".retriever", ".reranker", ".vectorstore", "_qdrant"]
    for name in names:
        module = importlib.import_module(f"m3_rag.integrations.langchain{name}")
        result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
        assert result.failed == 0 and result.attempted > 0, module.__name__
