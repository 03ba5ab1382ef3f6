"""Rerank from an EncodingStore: scores against compute_score, and only the query is encoded once the
documents went into a vector store through the embedding adapters (LangChain and LlamaIndex)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from m3_rag import EncodingStore, M3Embedder, rerank_texts

CORPUS = [
    "Berlin is the capital and largest city of Germany.",
    "Paris is the capital of France, on the river Seine.",
    "The Rhine flows from the Swiss Alps to the North Sea.",
    "Mount Everest is the highest mountain above sea level.",
    "BGE-M3 gives dense, sparse and multi-vector embeddings.",
    "Die Hauptstadt von Deutschland ist Berlin.",
    "Hybrid retrieval reranks dense and sparse candidates with all three scores.",
    "北京是中国的首都，也是一座历史悠久的城市。",
]
QUERY = "capital of Germany"
# largest |difference| to compute_score on these texts, weights 0.4:0.2:0.4: measured 2.4e-8 / 1.6e-5 / 8.4e-5
# (hybrid) and 1.2e-7 / 4.1e-5 / 2.1e-4 (ColBERT) for float32 / float16 / int8; pinned with a margin
HYBRID_BOUND = {"float32": 1e-6, "float16": 6e-5, "int8": 4e-4}
COLBERT_BOUND = {"float32": 1e-6, "float16": 1.5e-4, "int8": 1e-3}


@contextmanager
def seen_by_model(m3: M3Embedder) -> Iterator[list[str]]:
    """Every text the model encodes while inside (``encode`` and the store both go through ``iter_encode``)."""
    seen: list[str] = []
    original = m3.iter_encode

    def counting(texts: Any, **kwargs: Any) -> Any:
        seen.extend([texts] if isinstance(texts, str) else texts)
        return original(texts, **kwargs)

    m3.iter_encode = counting  # type: ignore[method-assign]
    try:
        yield seen
    finally:
        del m3.iter_encode


@pytest.mark.parametrize("dtype", ["float32", "float16", "int8"])
def test_rerank_from_the_store_scores_like_compute_score(embedder: M3Embedder, tmp_path: Path, dtype: str) -> None:
    store = EncodingStore(tmp_path / "enc.sqlite", embedder, colbert_dtype=dtype)  # type: ignore[arg-type]
    weights = (0.4, 0.2, 0.4)
    reference = embedder.compute_score([(QUERY, t) for t in CORPUS], weights=weights)
    with seen_by_model(embedder) as seen:
        first = rerank_texts(embedder, QUERY, CORPUS, weights=weights, encoding_store=store)  # all misses
        assert sorted(seen) == sorted([QUERY, *CORPUS])
        seen.clear()
        second = rerank_texts(embedder, QUERY, CORPUS, weights=weights, encoding_store=store)  # all hits
        assert seen == [QUERY]  # only the query is encoded
    assert first == second  # a miss scores exactly as its hit does later
    by_index = {r.index: r for r in second}
    for mode, bound in (("dense", 1e-5), ("sparse", 1e-5), ("colbert", COLBERT_BOUND[dtype])):
        ours = [by_index[i].scores[mode] for i in range(len(CORPUS))]
        np.testing.assert_allclose(ours, reference[mode], atol=bound, rtol=0)
    hybrid = [by_index[i].score for i in range(len(CORPUS))]
    np.testing.assert_allclose(hybrid, reference["colbert+sparse+dense"], atol=HYBRID_BOUND[dtype], rtol=0)
    if dtype == "float32":
        np.testing.assert_allclose(hybrid, reference["colbert+sparse+dense"], rtol=1e-5)
    assert store.stats().hits == len(CORPUS) and len(store) == len(CORPUS)


def test_langchain_vector_store_then_rerank_encodes_only_the_query(embedder: M3Embedder, tmp_path: Path) -> None:
    pytest.importorskip("langchain_core")
    from langchain_classic.retrievers import ContextualCompressionRetriever
    from langchain_core.vectorstores import InMemoryVectorStore

    from m3_rag.integrations.langchain import M3Embeddings, M3Reranker

    path = tmp_path / "enc.sqlite"
    embeddings = M3Embeddings(embedder=embedder, encoding_store=path)  # a path: opened by the adapter
    vectors = InMemoryVectorStore(embedding=embeddings)
    with seen_by_model(embedder) as seen:
        vectors.add_texts(CORPUS, metadatas=[{"n": i} for i in range(len(CORPUS))])
        assert sorted(seen) == sorted(CORPUS)  # one pass gives dense for the store and sparse + ColBERT for later
    assert isinstance(embeddings.encoding_store, EncodingStore) and len(embeddings.encoding_store) == len(CORPUS)
    reranker = M3Reranker(embedder=embedder, encoding_store=path, top_n=3)
    retriever = ContextualCompressionRetriever(
        base_compressor=reranker, base_retriever=vectors.as_retriever(search_kwargs={"k": 6})
    )
    with seen_by_model(embedder) as seen:
        found = retriever.invoke(QUERY)
    assert set(seen) == {QUERY}  # the vector store's query embedding and the reranker's: never a document
    assert len(found) == 3 and reranker.encoding_store.stats().hits == 6  # type: ignore[union-attr]
    scores = embedder.compute_score([(QUERY, d.page_content) for d in found])
    np.testing.assert_allclose(
        [d.metadata["relevance_score"] for d in found], scores["colbert+sparse+dense"], atol=HYBRID_BOUND["float16"]
    )
    stored_sparse = embeddings.embed_documents_sparse(CORPUS[:2])  # read from the store: no model pass
    for got, want in zip(stored_sparse, embedder.encode(CORPUS[:2]).sparse):  # type: ignore[arg-type]
        assert got == pytest.approx(want, rel=1e-5, abs=1e-6)
    with pytest.raises(TypeError, match="encoding_store must be"):
        M3Reranker(embedder=embedder, encoding_store=42)


def test_llama_index_vector_store_index_then_rerank_encodes_only_the_query(
    embedder: M3Embedder, tmp_path: Path
) -> None:
    pytest.importorskip("llama_index.core")
    from llama_index.core import Document, VectorStoreIndex
    from llama_index.core.llms import MockLLM
    from llama_index.core.schema import MetadataMode

    from m3_rag.integrations.llama_index import M3Embedding, M3Reranker

    store = EncodingStore(tmp_path / "enc.sqlite", embedder, colbert_dtype="int8")
    docs = [Document(text=t, metadata={"n": i, "lang": "de" if "Berlin" in t else "x"}) for i, t in enumerate(CORPUS)]
    embed = M3Embedding(embedder=embedder, encoding_store=store)
    with seen_by_model(embedder) as seen:
        index = VectorStoreIndex.from_documents(docs, embed_model=embed)
    embedded = [d.get_content(metadata_mode=MetadataMode.EMBED) for d in docs]
    assert sorted(seen) == sorted(embedded) and "lang: de" in embedded[0]  # metadata included, as LlamaIndex embeds
    reranker = M3Reranker(embedder=embedder, encoding_store=store, top_n=2)
    engine = index.as_query_engine(llm=MockLLM(), similarity_top_k=5, node_postprocessors=[reranker])
    with seen_by_model(embedder) as seen:
        answer = engine.query(QUERY)
    assert set(seen) == {QUERY} and len(answer.source_nodes) == 2
    texts = [n.node.get_content(metadata_mode=MetadataMode.EMBED) for n in answer.source_nodes]
    scores = embedder.compute_score([(QUERY, t) for t in texts])
    np.testing.assert_allclose(
        [n.score for n in answer.source_nodes], scores["colbert+sparse+dense"], atol=HYBRID_BOUND["int8"]
    )
    # another metadata mode scores other strings: not stored, so they are encoded (and stored) once
    other = M3Reranker(embedder=embedder, encoding_store=store, metadata_mode=MetadataMode.NONE)
    nodes = index.as_retriever(similarity_top_k=3).retrieve(QUERY)
    with seen_by_model(embedder) as seen:
        other.postprocess_nodes(nodes, query_str=QUERY)
    assert sorted(seen) == sorted([QUERY, *(n.node.get_content() for n in nodes)])
