"""LlamaIndex adapters in real pipelines: query engines, ingestion, Qdrant hybrid, filters (offline, MockLLM)."""

from __future__ import annotations

import asyncio
import importlib
import socket
import sys
import threading
from collections.abc import Iterator

import numpy as np
import pytest

pytest.importorskip("llama_index.core")

from _llama_index_helpers import HYBRID, META, MODES, QUERY, TEXTS, Passes
from llama_index.core import Document, Settings, StorageContext, VectorStoreIndex
from llama_index.core.base.embeddings.base_sparse import BaseSparseEmbedding
from llama_index.core.embeddings import BaseEmbedding
from llama_index.core.ingestion import IngestionPipeline
from llama_index.core.instrumentation import get_dispatcher
from llama_index.core.instrumentation.event_handlers import BaseEventHandler
from llama_index.core.instrumentation.events import BaseEvent
from llama_index.core.instrumentation.events.rerank import ReRankEndEvent, ReRankStartEvent
from llama_index.core.llms import MockLLM
from llama_index.core.node_parser import SentenceSplitter
from llama_index.core.query_engine import RetrieverQueryEngine
from llama_index.core.schema import MetadataMode, NodeWithScore, QueryBundle, TextNode
from llama_index.core.vector_stores import (
    FilterCondition,
    FilterOperator,
    MetadataFilter,
    MetadataFilters,
    SimpleVectorStore,
    VectorStoreQuery,
)
from llama_index.core.vector_stores.types import VectorStoreQueryMode

from m3_rag import M3Embedder, M3Index
from m3_rag.encode_cache import cache_for
from m3_rag.integrations.llama_index import (
    M3Embedding,
    M3NodeWithScore,
    M3Reranker,
    M3Retriever,
    M3SparseEmbedding,
    scores_of,
    to_core_filter,
)
from m3_rag.integrations.llama_index.handoff import handoff_for


@pytest.fixture(autouse=True)
def fresh_caches(embedder: M3Embedder) -> None:
    """Every test starts with the shared encode cache and the store handoff of the session's model empty."""
    cache_for(embedder).clear()
    handoff_for(embedder).clear()


@pytest.fixture(autouse=True)
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(self: socket.socket, address: object) -> None:
        if self.family != socket.AF_UNIX:
            raise RuntimeError(f"the LlamaIndex tests must stay offline; something tried to connect to {address!r}")

    monkeypatch.setattr(socket.socket, "connect", refuse)


@pytest.fixture
def settings(embedder: M3Embedder) -> Iterator[None]:
    """Offline defaults, restored afterwards: MockLLM and M3Embedding."""
    saved = (Settings._llm, Settings._embed_model)
    Settings.llm = MockLLM()
    Settings.embed_model = M3Embedding(embedder=embedder)
    yield
    Settings._llm, Settings._embed_model = saved


class Collector(BaseEventHandler):
    events: list[BaseEvent]

    def handle(self, event: BaseEvent, **kwargs: object) -> None:
        self.events.append(event)


@pytest.fixture
def events() -> Iterator[list[BaseEvent]]:
    handler = Collector(events=[])
    root = get_dispatcher()
    root.add_event_handler(handler)
    yield handler.events
    root.event_handlers.remove(handler)


def docs() -> list[Document]:
    return [Document(text=t, id_=f"d{i}") for i, t in enumerate(TEXTS)]


def expected(embedder: M3Embedder, query: str, texts: list[str], weights=(1.0, 1.0, 1.0)) -> dict[str, list[float]]:
    return embedder.compute_score([(query, t) for t in texts], weights=weights)


def assert_hybrid_order(embedder: M3Embedder, query: str, nodes: list[NodeWithScore], k: int, weights=(1.0, 1.0, 1.0)):
    """The nodes are the best ``k`` of TEXTS by compute_score, best first, with its scores."""
    scores = expected(embedder, query, TEXTS, weights)
    best = np.argsort(-np.asarray(scores[HYBRID]), kind="stable")[:k]
    assert [n.node.get_content() for n in nodes] == [TEXTS[i] for i in best]
    for n, i in zip(nodes, best):
        assert n.score == pytest.approx(scores[HYBRID][i], rel=1e-5, abs=1e-6)
        assert isinstance(n, M3NodeWithScore)
        for mode in MODES:  # next to the node, not in its metadata
            assert scores_of(n)[mode] == pytest.approx(scores[mode][i], rel=1e-5, abs=1e-6)


# ---------------------------------------------------------------------------- embeddings
def test_embedding_matches_the_embedder_and_batches(embedder: M3Embedder, monkeypatch: pytest.MonkeyPatch) -> None:
    embed = M3Embedding(embedder=embedder, embed_batch_size=2)
    assert isinstance(embed, BaseEmbedding) and embed.model_name == embedder.name
    query = embed.get_query_embedding(QUERY)
    assert type(query[0]) is float
    np.testing.assert_array_equal(query, embedder.encode_queries([QUERY]).dense[0])

    sizes: list[int] = []
    original = embedder.encode_documents
    monkeypatch.setattr(
        embedder, "encode_documents", lambda texts, **kw: sizes.append(len(texts)) or original(texts, **kw)
    )
    vectors = embed.get_text_embedding_batch(TEXTS[:5])
    assert sizes == [2, 2, 1]  # one model call per embed_batch_size texts
    assert all(type(v) is float for row in vectors for v in row)
    np.testing.assert_allclose(vectors, original(TEXTS[:5]).dense, rtol=1e-5, atol=1e-6)


async def test_async_embedding_runs_off_the_event_loop(embedder: M3Embedder, monkeypatch: pytest.MonkeyPatch) -> None:
    embed = M3Embedding(embedder=embedder)
    threads: list[int] = []
    for name in ("encode_queries", "encode_documents"):
        original = getattr(embedder, name)
        monkeypatch.setattr(
            embedder, name, lambda texts, _f=original, **kw: threads.append(threading.get_ident()) or _f(texts, **kw)
        )
    query = await embed.aget_query_embedding(QUERY)
    batch = await embed.aget_text_embedding_batch(TEXTS[:3])
    single = await embed.aget_text_embedding(TEXTS[3])
    assert len(threads) == 3 and threading.get_ident() not in threads
    assert query == embed.get_query_embedding(QUERY)
    np.testing.assert_allclose(batch, embed.get_text_embedding_batch(TEXTS[:3]), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(single, embedder.encode_documents([TEXTS[3]]).dense[0], rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_sparse_embedding_and_qdrant_functions(embedder: M3Embedder) -> None:
    sparse = M3SparseEmbedding(embedder=embedder)
    assert isinstance(sparse, BaseSparseEmbedding)
    assert sparse.get_query_embedding(QUERY) == embedder.encode_queries([QUERY]).sparse[0]
    docs_sparse = embedder.encode_documents(TEXTS).sparse
    assert sparse.get_text_embedding_batch(TEXTS) == docs_sparse
    indices, values = sparse.sparse_doc_fn(TEXTS)
    assert indices == [list(w) for w in docs_sparse] and values == [list(w.values()) for w in docs_sparse]
    assert all(type(i) is int for row in indices for i in row) and all(type(v) is float for row in values for v in row)
    q_indices, q_values = sparse.sparse_query_fn([QUERY])
    assert dict(zip(q_indices[0], q_values[0])) == sparse.get_query_embedding(QUERY)
    # the inner product of the sparse embeddings is BGE-M3's sparse score
    lexical = [sum(v * d.get(k, 0.0) for k, v in sparse.get_query_embedding(QUERY).items()) for d in docs_sparse]
    np.testing.assert_allclose(lexical, expected(embedder, QUERY, TEXTS)["sparse"], rtol=1e-5, atol=1e-6)
    assert asyncio.run(sparse.aget_query_embedding(QUERY)) == sparse.get_query_embedding(QUERY)


def test_adapters_share_one_model_and_check_arguments(tiny_path, embedder: M3Embedder) -> None:
    shared = M3Embedder.shared(tiny_path, device="cpu")
    built = [M3Embedding(str(tiny_path), device="cpu"), M3SparseEmbedding(tiny_path, device="cpu"),
             M3Reranker(tiny_path, device="cpu")]  # fmt: skip
    assert all(a.embedder is shared for a in built)
    assert M3Retriever.from_nodes([], model_name=tiny_path, device="cpu").embedder is shared
    assert M3Embedding(embedder=embedder).embedder is embedder
    with pytest.raises(ValueError, match="either model_name or embedder"):
        M3Embedding(tiny_path, embedder=embedder)
    with pytest.raises(ValueError, match="already loaded"):
        M3Reranker(embedder=embedder, device="cpu")
    with pytest.raises(TypeError, match=r"m3_rag\.M3Embedder"):
        M3SparseEmbedding(embedder="BAAI/bge-m3")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="weights"):
        M3Reranker(embedder=embedder, weights=(1.0, -1.0, 1.0))
    with pytest.raises(TypeError, match="HybridStore"):
        M3Retriever(embedder)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------- reranker
def test_reranker_scores_metadata_and_events(embedder: M3Embedder, events: list[BaseEvent]) -> None:
    weights = (0.4, 0.2, 0.4)
    reranker = M3Reranker(embedder=embedder, top_n=3, weights=weights, keep_retrieval_score=True)
    nodes = [NodeWithScore(node=TextNode(text=t, id_=f"n{i}"), score=i / 10) for i, t in enumerate(TEXTS)]
    out = reranker.postprocess_nodes(nodes, query_str=QUERY)
    assert_hybrid_order(embedder, QUERY, out, 3, weights)
    by_id = {n.node.node_id: n for n in nodes}
    for n in out:
        assert n.node.metadata["retrieval_score"] == by_id[n.node.node_id].score == scores_of(n)["retrieval"]
        assert "score" not in n.node.get_content(metadata_mode=MetadataMode.LLM)  # hidden from the LLM
    assert all(n.node.metadata == {} and n.score == i / 10 for i, n in enumerate(nodes))  # inputs unchanged
    start = [e for e in events if isinstance(e, ReRankStartEvent)]
    end = [e for e in events if isinstance(e, ReRankEndEvent)]
    assert len(start) == len(end) == 1
    assert (start[0].top_n, start[0].model_name, len(start[0].nodes)) == (3, embedder.name, len(TEXTS))
    assert [n.node.node_id for n in end[0].nodes] == [n.node.node_id for n in out]

    assert reranker.postprocess_nodes([], query_str=QUERY) == []
    with pytest.raises(ValueError, match="needs the query"):
        reranker.postprocess_nodes(nodes)
    everything = M3Reranker(embedder=embedder).postprocess_nodes(nodes, query_bundle=QueryBundle(QUERY))
    assert len(everything) == len(TEXTS) and "retrieval_score" not in everything[0].node.metadata
    # without keep_retrieval_score the nodes are the ones that came in: same hash, same metadata
    assert {n.node.node_id: n.node.hash for n in everything} == {n.node.node_id: n.node.hash for n in nodes}
    assert all(n.node is by_id[n.node.node_id].node for n in everything)
    assert sorted(scores_of(n)["retrieval"] for n in everything) == sorted(n.score for n in nodes)


async def test_reranker_async_matches_sync(embedder: M3Embedder, events: list[BaseEvent]) -> None:
    reranker = M3Reranker(embedder=embedder, top_n=2)
    nodes = [NodeWithScore(node=TextNode(text=t), score=0.0) for t in TEXTS]
    out = await reranker.apostprocess_nodes(nodes, query_str=QUERY)
    assert_hybrid_order(embedder, QUERY, out, 2)
    assert sum(isinstance(e, ReRankEndEvent) for e in events) == 1


# ---------------------------------------------------------------------------- query engines
@pytest.mark.slow
async def test_vector_store_index_query_engine_with_reranker(embedder: M3Embedder, settings: None) -> None:
    index = VectorStoreIndex.from_documents(
        docs(), embed_model=M3Embedding(embedder=embedder), transformations=[SentenceSplitter(chunk_size=1024)]
    )
    engine = index.as_query_engine(
        llm=MockLLM(), similarity_top_k=len(TEXTS),
        node_postprocessors=[M3Reranker(embedder=embedder, top_n=3, keep_retrieval_score=True)],
    )  # fmt: skip
    dense = expected(embedder, QUERY, TEXTS)["dense"]
    for response in (engine.query(QUERY), await engine.aquery(QUERY)):
        assert response.response and TEXTS[0] in str(response)  # MockLLM echoes its prompt, context included
        assert "colbert_score" not in str(response)
        assert_hybrid_order(embedder, QUERY, response.source_nodes, 3)
        for n in response.source_nodes:  # the dense retrieval score, kept by the reranker
            i = TEXTS.index(n.node.get_content())
            assert n.node.metadata["retrieval_score"] == pytest.approx(dense[i], rel=1e-5, abs=1e-6)


@pytest.fixture
def m3_index(embedder: M3Embedder) -> M3Index:
    index = M3Index(embedder, colbert_dtype="float32")
    index.add(TEXTS, ids=[f"d{i}" for i in range(len(TEXTS))], metadatas=META)
    return index


async def test_retriever_query_engine_with_filters(embedder: M3Embedder, m3_index: M3Index, settings: None) -> None:
    filters = MetadataFilters(filters=[
        MetadataFilter(key="topic", value="city"),
        MetadataFilter(key="year", value=[2023, 2022], operator=FilterOperator.IN),
    ])  # fmt: skip
    retriever = M3Retriever(m3_index, similarity_top_k=5, filters=filters, weights=(0.4, 0.2, 0.4))
    engine = RetrieverQueryEngine.from_args(retriever, llm=MockLLM())
    allowed = [i for i, m in enumerate(META) if m["topic"] == "city" and m["year"] in (2023, 2022)]
    scores = expected(embedder, QUERY, [TEXTS[i] for i in allowed], weights=(0.4, 0.2, 0.4))
    order = [allowed[j] for j in np.argsort(-np.asarray(scores[HYBRID]), kind="stable")]
    hits = m3_index.search(QUERY, k=5, filter={"topic": "city", "year": [2023, 2022]}, weights=(0.4, 0.2, 0.4))
    for response in (engine.query(QUERY), await engine.aquery(QUERY)):
        nodes = response.source_nodes
        assert [n.node.node_id for n in nodes] == [f"d{i}" for i in order] == [h.id for h in hits]
        for n, i in zip(nodes, order):
            assert isinstance(n.node, TextNode) and n.node.text == TEXTS[i]
            assert n.node.metadata == META[i] and n.node.ref_doc_id == f"d{i}"  # a plain record is its own document
            j = allowed.index(i)
            assert n.score == pytest.approx(scores[HYBRID][j], rel=1e-5, abs=1e-6)
            for mode in MODES:
                assert scores_of(n)[mode] == pytest.approx(scores[mode][j], rel=1e-5, abs=1e-6)
        assert TEXTS[order[0]] in str(response) and "dense_score" not in str(response)


async def test_retriever_async_runs_off_the_loop(m3_index: M3Index, monkeypatch: pytest.MonkeyPatch) -> None:
    threads: list[int] = []
    original = m3_index.search
    monkeypatch.setattr(
        m3_index, "search", lambda *a, **kw: threads.append(threading.get_ident()) or original(*a, **kw)
    )
    retriever = M3Retriever(m3_index, similarity_top_k=2, first_stage="sparse", candidates=3)
    got = await retriever.aretrieve(QUERY)
    assert threads and threading.get_ident() not in threads
    assert [n.node.node_id for n in got] == [h.id for h in original(QUERY, k=2, first_stage="sparse", candidates=3)]


def test_filters_map_to_the_core_filter_language(m3_index: M3Index) -> None:
    nested = MetadataFilters(filters=[
        MetadataFilter(key="lang", value="en"),
        MetadataFilters(filters=[MetadataFilter(key="year", value=[2024, 2022], operator="in")]),
        MetadataFilter(key="year", value=2024),
    ])  # fmt: skip
    got = M3Retriever(m3_index, filters=nested).retrieve(QUERY)
    assert sorted(n.node.node_id for n in got) == ["d1", "d2", "d4"]
    contradiction = MetadataFilters(
        filters=[MetadataFilter(key="lang", value="en"), MetadataFilter(key="lang", value="de")]
    )
    assert M3Retriever(m3_index, filters=contradiction).retrieve(QUERY) == []
    newer = MetadataFilters(filters=[MetadataFilter(key="year", value=2023, operator=">")])
    assert sorted(n.node.node_id for n in M3Retriever(m3_index, filters=newer).retrieve(QUERY)) == ["d1", "d2", "d4"]
    either = MetadataFilters(
        filters=[MetadataFilter(key="lang", value="de"), MetadataFilter(key="year", value=2022)],
        condition=FilterCondition.OR,
    )
    assert sorted(n.node.node_id for n in M3Retriever(m3_index, filters=either).retrieve(QUERY)) == ["d3", "d5"]
    assert to_core_filter(either) == {"$or": [{"lang": {"$eq": "de"}}, {"year": {"$eq": 2022}}]}
    text_match = MetadataFilter(key="lang", value="e", operator="text_match")
    with pytest.raises(ValueError, match="TEXT_MATCH"):
        M3Retriever(m3_index, filters=MetadataFilters(filters=[text_match]))
    with pytest.raises(TypeError, match="MetadataFilters"):
        M3Retriever(m3_index, filters=[("lang", "en")])  # type: ignore[arg-type]


def test_retriever_from_nodes(embedder: M3Embedder) -> None:
    nodes = [TextNode(text=t, id_=f"d{i}", metadata=m) for i, (t, m) in enumerate(zip(TEXTS, META))]
    retriever = M3Retriever.from_nodes(nodes, embedder=embedder, similarity_top_k=3, filters={"lang": "en"})
    got = retriever.retrieve(QUERY)
    assert len(got) == 3 and all(n.node.metadata["lang"] == "en" for n in got)
    assert [n.node.text for n in got] == [TEXTS[int(n.node.node_id[1:])] for n in got]
    by_id = {n.node_id: n for n in nodes}
    assert all(n.node.hash == by_id[n.node.node_id].hash for n in got)  # the nodes come back whole


# ---------------------------------------------------------------------------- ingestion and stores
async def test_ingestion_pipeline_fills_a_vector_store(embedder: M3Embedder) -> None:
    documents = [Document(text=t, id_=f"d{i}", metadata=m) for i, (t, m) in enumerate(zip(TEXTS, META))]
    for run_async in (False, True):
        store = SimpleVectorStore()
        pipeline = IngestionPipeline(
            transformations=[SentenceSplitter(chunk_size=1024), M3Embedding(embedder=embedder)], vector_store=store
        )
        nodes = await pipeline.arun(documents=documents) if run_async else pipeline.run(documents=documents)
        assert len(nodes) == len(TEXTS) == len(store.data.embedding_dict)
        embedded = [n.get_content(metadata_mode=MetadataMode.EMBED) for n in nodes]
        want = embedder.encode_documents(embedded).dense
        got = np.array([store.data.embedding_dict[n.node_id] for n in nodes])
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
        query = M3Embedding(embedder=embedder).get_query_embedding(QUERY)
        result = store.query(VectorStoreQuery(query_embedding=query, similarity_top_k=2))
        scores = want @ embedder.encode_queries([QUERY]).dense[0]  # cosine of unit vectors
        assert result.similarities == pytest.approx(sorted(scores.tolist(), reverse=True)[:2], rel=1e-5, abs=1e-6)
        assert result.ids == [nodes[i].node_id for i in np.argsort(-scores)[:2]]


@pytest.mark.filterwarnings("ignore:Payload indexes have no effect in the local Qdrant:UserWarning")
def test_qdrant_hybrid_with_m3_sparse_functions(
    embedder: M3Embedder, settings: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    qdrant_client = pytest.importorskip("qdrant_client")
    QdrantVectorStore = pytest.importorskip("llama_index.vector_stores.qdrant").QdrantVectorStore
    sparse = M3SparseEmbedding(embedder=embedder)
    store = QdrantVectorStore(
        client=qdrant_client.QdrantClient(location=":memory:"), collection_name="m3", enable_hybrid=True,
        sparse_doc_fn=sparse.sparse_doc_fn, sparse_query_fn=sparse.sparse_query_fn,
    )  # fmt: skip
    passes = Passes(embedder, monkeypatch)
    index = VectorStoreIndex.from_documents(
        docs(), storage_context=StorageContext.from_defaults(vector_store=store),
        embed_model=M3Embedding(embedder=embedder), transformations=[SentenceSplitter(chunk_size=1024)],
    )  # fmt: skip
    assert dict(passes.texts) == {t: 1 for t in TEXTS}  # dense and sparse of each text from one pass
    river = "Which river flows into the North Sea?"
    assert len(index.as_retriever(vector_store_query_mode="hybrid", similarity_top_k=2).retrieve(river)) == 2
    assert passes.texts[river] == 1  # and of the query
    want = expected(embedder, QUERY, TEXTS)
    lexical = store.query(VectorStoreQuery(query_str=QUERY, mode=VectorStoreQueryMode.SPARSE, sparse_top_k=len(TEXTS)))
    got = {TEXTS.index(n.get_content()): s for n, s in zip(lexical.nodes, lexical.similarities)}
    assert sorted(got) == [i for i, s in enumerate(want["sparse"]) if s > 0]  # Qdrant drops texts with no shared token
    for i, s in got.items():  # Qdrant's sparse dot product is BGE-M3's sparse score
        assert s == pytest.approx(want["sparse"][i], rel=1e-5, abs=1e-6)

    retriever = index.as_retriever(vector_store_query_mode="hybrid", similarity_top_k=3, sparse_top_k=3)
    hybrid = retriever.retrieve(QUERY)
    assert 1 <= len(hybrid) <= 3 and all(n.node.get_content() in TEXTS for n in hybrid)
    engine = index.as_query_engine(
        llm=MockLLM(), vector_store_query_mode="hybrid", similarity_top_k=4, sparse_top_k=4,
        node_postprocessors=[M3Reranker(embedder=embedder, top_n=2)],
    )  # fmt: skip
    nodes = engine.query(QUERY).source_nodes
    texts = [n.node.get_content() for n in nodes]
    scores = expected(embedder, QUERY, texts)[HYBRID]
    assert len(nodes) == 2 and scores[0] >= scores[1]
    assert [n.score for n in nodes] == pytest.approx(scores, rel=1e-5, abs=1e-6)


# ---------------------------------------------------------------------------- missing framework
def test_missing_llama_index_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "llama_index.core", None)
    for name in [m for m in sys.modules if m.startswith("m3_rag.integrations.llama_index")]:
        monkeypatch.delitem(sys.modules, name)
    with pytest.raises(ImportError, match=r'pip install "m3-rag\[llama-index\]"') as info:
        importlib.import_module("m3_rag.integrations.llama_index")
    assert isinstance(info.value.__cause__, ImportError)


def test_docstring_examples() -> None:
    """The adapters live outside pytest's doctest paths (``integrations/``): run their examples here."""
    import doctest

    from m3_rag.integrations import llama_index

    attempted = 0
    for name in ("", ".embeddings", ".postprocessor", ".retriever", ".nodes", ".handoff", ".vectorstore", ".query"):
        module = importlib.import_module(llama_index.__name__ + name)
        result = doctest.testmod(module)
        assert result.failed == 0, module.__name__
        attempted += result.attempted
    assert attempted >= 40
