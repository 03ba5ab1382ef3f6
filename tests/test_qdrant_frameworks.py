"""The LangChain and LlamaIndex vector stores and retrievers over QdrantStore give M3Index's hits."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("qdrant_client")

from test_index import CORPUS, QUERIES

from m3_rag import M3Embedder, M3Index, QdrantStore

IDS = [f"d{i}" for i in range(len(CORPUS))]
METAS = [{"n": i, "lang": "zh" if i == 3 else "x"} for i in range(len(CORPUS))]


@pytest.fixture(scope="module")
def stores(embedder: M3Embedder) -> tuple[QdrantStore, M3Index]:
    qdrant = QdrantStore(embedder, location=":memory:", collection="frameworks", colbert_dtype="float32")
    qdrant.add(CORPUS, ids=IDS, metadatas=METAS)
    index = M3Index(embedder, colbert_dtype="float32")
    index.add(CORPUS, ids=IDS, metadatas=METAS)
    return qdrant, index


def test_langchain_vector_store_and_retriever(stores) -> None:
    pytest.importorskip("langchain_core")
    from m3_rag.integrations.langchain import M3HybridRetriever, M3VectorStore

    qdrant, index = stores
    store = M3VectorStore(qdrant)
    for query in QUERIES:
        expected = index.search(query, k=4)
        got = store.similarity_search_with_score(query, k=4)
        assert [d.id for d, _ in got] == [h.id for h in expected]
        np.testing.assert_allclose([s for _, s in got], [h.score for h in expected], rtol=1e-5)
        assert got[0][0].metadata == METAS[IDS.index(expected[0].id)]  # stored metadata, unchanged
    filtered = store.similarity_search("capital", k=10, filter={"n": {"$gte": 7}})
    assert {d.id for d in filtered} == {"d7", "d8", "d9"}
    docs = M3HybridRetriever(index=qdrant, k=2).invoke(QUERIES[0])
    assert [d.id for d in docs] == [h.id for h in index.search(QUERIES[0], k=2)]


def test_llama_index_vector_store_and_retriever(stores, embedder) -> None:
    pytest.importorskip("llama_index.core")
    from llama_index.core.vector_stores.types import VectorStoreQuery

    from m3_rag.integrations.llama_index import M3Retriever, M3VectorStore

    qdrant, index = stores
    nodes = M3Retriever(qdrant, similarity_top_k=3).retrieve(QUERIES[1])
    assert [n.node.node_id for n in nodes] == [h.id for h in index.search(QUERIES[1], k=3)]
    from llama_index.core.schema import TextNode

    inner = QdrantStore(embedder, location=":memory:", collection="llama", colbert_dtype="float32")
    store = M3VectorStore(inner)
    store.add([TextNode(text=t, id_=i, metadata=m) for t, i, m in zip(CORPUS, IDS, METAS)])
    stored = inner.get(IDS)  # the text the embedding model sees (metadata included) and the node's JSON
    same = M3Index(embedder, colbert_dtype="float32")
    same.add([r.text for r in stored], ids=[r.id for r in stored], metadatas=[r.metadata for r in stored])
    result = store.query(VectorStoreQuery(query_str=QUERIES[1], similarity_top_k=3))
    expected = same.search(QUERIES[1], k=3)
    assert result.ids == [h.id for h in expected]
    np.testing.assert_allclose(result.similarities, [h.score for h in expected], rtol=1e-5)
    assert [n.node_id for n in result.nodes] == result.ids and result.nodes[0].metadata["n"] == IDS.index(result.ids[0])
