"""LangChain's own machinery over m3-rag: the indexing API, parent / multi-vector, ensemble, multi-query and
compression retrievers, each in real LangChain code."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from _langchain_helpers import CORPUS, IDS, METADATAS, TINY, count_encodes, shared_tiny
from langchain_classic.retrievers import (
    ContextualCompressionRetriever,
    EnsembleRetriever,
    MultiQueryRetriever,
    MultiVectorRetriever,
    ParentDocumentRetriever,
)
from langchain_classic.retrievers.multi_vector import SearchType
from langchain_core.documents import Document
from langchain_core.indexing import InMemoryRecordManager, aindex, index
from langchain_core.language_models import FakeListLLM
from langchain_core.retrievers import BaseRetriever
from langchain_core.stores import InMemoryStore
from langchain_text_splitters import CharacterTextSplitter

from m3_rag import M3Embedder, M3Index
from m3_rag.integrations.langchain import M3HybridRetriever, M3Reranker, M3VectorStore


def corpus_store(embedder: M3Embedder | None = None) -> M3VectorStore:
    store = M3VectorStore(M3Index(embedder or shared_tiny(), colbert_dtype="float32"))
    store.add_texts(CORPUS, METADATAS, ids=IDS)
    return store


def stored(i: int) -> Document:
    return Document(CORPUS[i], id=IDS[i], metadata=METADATAS[i])


# ---------------------------------------------------------------------- the indexing API
def source_docs() -> list[Document]:
    return [Document(text, metadata={"source": f"s{i % 3}", "n": i}) for i, text in enumerate(CORPUS[:6])]


@pytest.mark.slow
def test_indexing_api_with_a_record_manager() -> None:
    model = M3Embedder.from_pretrained(TINY, device="cpu")
    vs = M3VectorStore(M3Index(model))
    manager = InMemoryRecordManager(namespace="m3")
    manager.create_schema()
    docs = source_docs()
    with count_encodes(model) as counter:
        first = index(docs, manager, vs, cleanup="incremental", source_id_key="source", key_encoder="sha256")
        assert first == {"num_added": 6, "num_updated": 0, "num_skipped": 0, "num_deleted": 0}
        assert counter.texts == dict.fromkeys(CORPUS[:6], 1)
        again = index(docs, manager, vs, cleanup="incremental", source_id_key="source", key_encoder="sha256")
        assert again == {"num_added": 0, "num_updated": 0, "num_skipped": 6, "num_deleted": 0}
        assert len(counter.calls) == 1  # nothing changed: nothing encoded

        changed = source_docs()
        changed[4].page_content = "Berlin has more than three million inhabitants."
        before = len(counter.calls)
        second = index(changed, manager, vs, cleanup="incremental", source_id_key="source", key_encoder="sha256")
        assert second == {"num_added": 1, "num_updated": 0, "num_skipped": 5, "num_deleted": 1}
        assert counter.calls[before:] == [[changed[4].page_content]]  # exactly one text encoded
    assert len(vs.store) == 6 and sorted(manager.list_keys()) == sorted(vs.store.ids)
    found = vs.similarity_search("inhabitants of Berlin", k=6)
    assert changed[4].page_content in [d.page_content for d in found] and CORPUS[4] not in {
        d.page_content for d in found
    }
    assert {d.metadata["n"]: d.metadata for d in found} == {i: {"source": f"s{i % 3}", "n": i} for i in range(6)}

    # full cleanup: what is not in this run goes
    full = index(changed[:2], manager, vs, cleanup="full", key_encoder="sha256")
    assert full == {"num_added": 0, "num_updated": 0, "num_skipped": 2, "num_deleted": 4}
    assert sorted(d.page_content for d in vs.get_by_ids(vs.store.ids)) == sorted(CORPUS[:2])


async def test_async_indexing_api() -> None:
    vs = M3VectorStore(M3Index(shared_tiny()))
    manager = InMemoryRecordManager(namespace="m3-async")
    await manager.acreate_schema()
    docs = source_docs()
    assert await aindex(docs, manager, vs, cleanup="incremental", source_id_key="source", key_encoder="sha256") == {
        "num_added": 6, "num_updated": 0, "num_skipped": 0, "num_deleted": 0,
    }  # fmt: skip
    assert await aindex(docs[:1], manager, vs, cleanup="full", key_encoder="sha256") == {
        "num_added": 0, "num_updated": 0, "num_skipped": 1, "num_deleted": 5,
    }  # fmt: skip
    assert [d.page_content for d in await vs.asimilarity_search("anything", k=3)] == [CORPUS[0]]


# ---------------------------------------------------------------------- parent and multi-vector retrievers
PARENTS = [
    Document("\n\n".join(CORPUS[0:3]), id="p0", metadata={"topic": "capitals"}),
    Document("\n\n".join(CORPUS[3:6]), id="p1", metadata={"topic": "mixed"}),
    Document("\n\n".join(CORPUS[6:10]), id="p2", metadata={"topic": "ml"}),
]
PARENT_OF = {text: f"p{0 if i < 3 else 1 if i < 6 else 2}" for i, text in enumerate(CORPUS)}


@pytest.mark.parametrize("search_type", [SearchType.similarity, SearchType.mmr])
def test_parent_document_retriever(search_type: SearchType) -> None:
    vs = M3VectorStore(M3Index(shared_tiny()))
    docstore: InMemoryStore = InMemoryStore()
    retriever = ParentDocumentRetriever(
        vectorstore=vs, docstore=docstore, search_type=search_type, search_kwargs={"k": 3},
        child_splitter=CharacterTextSplitter(separator="\n\n", chunk_size=30, chunk_overlap=0),
    )  # fmt: skip
    retriever.add_documents(PARENTS, ids=["p0", "p1", "p2"])
    children = vs.get_by_ids(vs.store.ids)
    assert sorted(c.page_content for c in children) == sorted(CORPUS)  # one chunk per sentence
    assert all(c.metadata == {**PARENTS[int(PARENT_OF[c.page_content][1])].metadata,
                              "doc_id": PARENT_OF[c.page_content]} for c in children)  # fmt: skip
    query = "capital of Germany"
    if search_type == SearchType.mmr:
        hits = vs.max_marginal_relevance_search(query, k=3)
    else:
        hits = vs.similarity_search(query, k=3)
    parents = list(dict.fromkeys(PARENT_OF[h.page_content] for h in hits))
    found = retriever.invoke(query)
    assert [d.page_content for d in found] == [PARENTS[int(p[1])].page_content for p in parents]


def test_multi_vector_retriever() -> None:
    vs = M3VectorStore(M3Index(shared_tiny()))
    summaries = ["German capital city", "French capital and museums", "nearest neighbour search in vector databases"]
    full = [Document(CORPUS[0] + " " + CORPUS[2], id="de"), Document(CORPUS[1], id="fr"), Document(CORPUS[7], id="db")]
    vs.add_texts(summaries, [{"doc_id": d.id} for d in full])
    docstore: InMemoryStore = InMemoryStore()
    docstore.mset([(str(d.id), d) for d in full])
    retriever = MultiVectorRetriever(vectorstore=vs, docstore=docstore, search_kwargs={"k": 2})
    found = retriever.invoke("capital of Germany")
    order = [d.metadata["doc_id"] for d in vs.similarity_search("capital of Germany", k=2)]
    assert [d.id for d in found] == order and found == [next(d for d in full if d.id == i) for i in order]
    scored = vs.similarity_search_with_relevance_scores("vector database", k=3)
    threshold = scored[1][1]
    thresholded = MultiVectorRetriever(
        vectorstore=vs, docstore=docstore, search_type=SearchType.similarity_score_threshold,
        search_kwargs={"k": 3, "score_threshold": threshold},
    )  # fmt: skip
    assert [d.id for d in thresholded.invoke("vector database")] == [d.metadata["doc_id"] for d, _ in scored[:2]]


# ---------------------------------------------------------------------- ensemble and multi-query
def test_ensemble_retriever_fuses_equal_documents() -> None:
    vs = corpus_store()
    dense = vs.as_retriever(search_kwargs={"k": 4, "weights": (1, 0, 0), "first_stage": "dense"})
    lexical = M3HybridRetriever(index=vs.store, k=4, weights=(0, 1, 0), first_stage="sparse")
    ensemble = EnsembleRetriever(retrievers=[dense, lexical], weights=[0.6, 0.4])
    query = "capital of Germany"
    lists = [dense.invoke(query), lexical.invoke(query)]
    fused: dict[str, float] = {}
    for docs, weight in zip(lists, [0.6, 0.4]):
        for rank, doc in enumerate(docs, start=1):
            fused[str(doc.id)] = fused.get(str(doc.id), 0.0) + weight / (rank + 60)
    expected = sorted(fused, key=lambda i: -fused[i])
    found = ensemble.invoke(query)
    assert [d.id for d in found] == expected and found == [stored(IDS.index(i)) for i in expected]
    assert len(found) < len(lists[0]) + len(lists[1])  # a document found by both came back once


def fake_llm() -> FakeListLLM:
    return FakeListLLM(responses=["capital of Germany\nGerman capital city\nBerlin Germany"])


QUERY_VARIANTS = ["capital of Germany", "German capital city", "Berlin Germany"]


@pytest.mark.parametrize("kind", ["vectorstore", "hybrid"])
def test_multi_query_retriever_returns_each_document_once(kind: str) -> None:
    vs = corpus_store()
    base: BaseRetriever = (
        vs.as_retriever(search_kwargs={"k": 3}) if kind == "vectorstore" else M3HybridRetriever(index=vs.store, k=3)
    )
    per_query = [base.invoke(q) for q in QUERY_VARIANTS]
    found = MultiQueryRetriever.from_llm(retriever=base, llm=fake_llm()).invoke("Where is the German government?")
    every = [d for docs in per_query for d in docs]
    unique_ids = list(dict.fromkeys(str(d.id) for d in every))
    assert len(unique_ids) < len(every)  # some documents were found by several queries
    assert [d.id for d in found] == unique_ids and found == [stored(IDS.index(i)) for i in unique_ids]


def test_score_metadata_breaks_multi_query_dedup_so_it_is_off_by_default() -> None:
    """Why the default: scores in metadata make one stored document several different Documents."""
    vs = corpus_store()
    flagged = M3HybridRetriever(index=vs.store, k=3, score_metadata=True)
    found = MultiQueryRetriever.from_llm(retriever=flagged, llm=fake_llm()).invoke("Where is the German government?")
    ids = [d.id for d in found]
    assert len(ids) > len(set(ids))
    scored = flagged.invoke_with_scores(QUERY_VARIANTS[0])  # the scores stay available without the flag too
    assert [s for _, s in scored] == [s for _, s in M3HybridRetriever(index=vs.store, k=3).invoke_with_scores(
        QUERY_VARIANTS[0])]  # fmt: skip


# ---------------------------------------------------------------------- compression
@pytest.mark.parametrize("weights", [(1.0, 1.0, 1.0), (0.4, 0.2, 0.4)])
async def test_contextual_compression_with_m3_reranker(embedder: M3Embedder, weights: Any) -> None:
    vs = corpus_store()
    base = vs.as_retriever(search_kwargs={"k": 6, "weights": (1, 0, 0)})
    reranker = M3Reranker(embedder=shared_tiny(), top_n=3, weights=weights)
    retriever = ContextualCompressionRetriever(base_compressor=reranker, base_retriever=base)
    query = "vector database"
    candidates = base.invoke(query)
    found = retriever.invoke(query)
    scores = embedder.compute_score([(query, d.page_content) for d in candidates], weights=weights)
    order = np.argsort(-np.asarray(scores["colbert+sparse+dense"]), kind="stable")[:3]
    assert [d.id for d in found] == [candidates[i].id for i in order]
    np.testing.assert_allclose(
        [d.metadata["relevance_score"] for d in found], np.asarray(scores["colbert+sparse+dense"])[order], rtol=1e-5
    )
    for doc in found:
        assert {k: v for k, v in doc.metadata.items() if not k.endswith("_score")} == METADATAS[IDS.index(str(doc.id))]
    assert await retriever.ainvoke(query) == found
