"""M3VectorStore in real LlamaIndex code: VectorStoreIndex, ingestion with upserts, query engines, fusion.

Offline (MockLLM, the tiny checkpoint). Scores are checked against ``compute_score`` (itself checked
against the reference's golden values in test_parity.py) to 1e-5; model passes are counted per text.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("llama_index.core")

from _llama_index_helpers import HYBRID, META, MODES, QUERY, TEXTS, Passes
from llama_index.core import Document, StorageContext, VectorStoreIndex, load_index_from_storage
from llama_index.core.ingestion import IngestionPipeline
from llama_index.core.llms import MockLLM
from llama_index.core.node_parser import SentenceSplitter
from llama_index.core.retrievers import QueryFusionRetriever
from llama_index.core.retrievers.fusion_retriever import FUSION_MODES
from llama_index.core.schema import MetadataMode, NodeRelationship, NodeWithScore, RelatedNodeInfo, TextNode
from llama_index.core.storage.docstore import SimpleDocumentStore
from llama_index.core.vector_stores import (
    FilterCondition,
    FilterOperator,
    MetadataFilter,
    MetadataFilters,
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
    M3VectorStore,
    M3VectorStoreQueryResult,
    scores_of,
)
from m3_rag.integrations.llama_index.handoff import EncodingHandoff, handoff_for
from m3_rag.integrations.llama_index.nodes import node_record, record_node


@pytest.fixture(autouse=True)
def fresh_caches(embedder: M3Embedder) -> Iterator[None]:
    cache_for(embedder).clear()
    handoff_for(embedder).clear()
    yield
    handoff_for(embedder).clear()


@pytest.fixture
def passes(embedder: M3Embedder, monkeypatch: pytest.MonkeyPatch) -> Passes:
    return Passes(embedder, monkeypatch)


def documents() -> list[Document]:
    """Documents whose metadata the embedding model sees (``lang: en`` lines) except ``year``."""
    return [
        Document(text=t, id_=f"d{i}", metadata=m, excluded_embed_metadata_keys=["year"])
        for i, (t, m) in enumerate(zip(TEXTS, META))
    ]


def rich_nodes() -> list[TextNode]:
    """Chunks with everything a node carries: source, neighbours, offsets, excluded keys, templates."""
    nodes = []
    for i, (text, meta) in enumerate(zip(TEXTS, META)):
        relationships = {NodeRelationship.SOURCE: RelatedNodeInfo(node_id=f"doc{i // 2}", metadata={"page": i})}
        if i % 2:
            relationships[NodeRelationship.PREVIOUS] = RelatedNodeInfo(node_id=f"n{i - 1}")
        nodes.append(
            TextNode(
                id_=f"n{i}",
                text=text,
                metadata={**meta, "tags": ["a", "b"], "nested": {"k": i}},
                relationships=relationships,
                excluded_embed_metadata_keys=["year", "nested"],
                excluded_llm_metadata_keys=["tags"],
                start_char_idx=i,
                end_char_idx=i + len(text),
                metadata_separator=" | ",
            )
        )
    return nodes


def hybrid(embedder: M3Embedder, query: str, texts: list[str], weights=(1.0, 1.0, 1.0)) -> dict[str, list[float]]:
    return embedder.compute_score([(query, t) for t in texts], weights=weights)


def embedded(nodes) -> list[str]:
    return [n.get_content(metadata_mode=MetadataMode.EMBED) for n in nodes]


def make_index(embedder: M3Embedder, nodes, **store_kwargs) -> tuple[VectorStoreIndex, M3VectorStore]:
    store = M3VectorStore(M3Index(embedder, colbert_dtype="float32"), **store_kwargs)
    context = StorageContext.from_defaults(vector_store=store)
    return VectorStoreIndex(nodes, storage_context=context, embed_model=M3Embedding(embedder=embedder)), store


# ---------------------------------------------------------------------------- storage context and round trip
def test_vector_store_index_one_pass_per_node_and_query(embedder: M3Embedder, passes: Passes) -> None:
    store = M3VectorStore(M3Index(embedder, colbert_dtype="float32"))
    assert len(store) == 0 and bool(store)  # empty but truthy: StorageContext keeps it
    context = StorageContext.from_defaults(vector_store=store)
    assert context.vector_store is store
    nodes = rich_nodes()
    index = VectorStoreIndex(nodes, storage_context=context, embed_model=M3Embedding(embedder=embedder))
    texts = embedded(nodes)
    assert dict(passes.texts) == {t: 1 for t in texts}  # the embedding model's pass fed the store
    assert handoff_for(embedder).stats()["handed"] >= len(nodes) and len(store) == len(nodes)

    # the store holds what the embedding model saw, and the whole node
    assert [r.text for r in store.store.get([n.node_id for n in nodes])] == texts
    for got, want in zip(store.get_nodes([n.node_id for n in nodes]), nodes):
        assert got.model_dump() == want.model_dump() and got.hash == want.hash
        assert got.get_content(MetadataMode.LLM) == want.get_content(MetadataMode.LLM)

    passes.reset()
    found = index.as_retriever(similarity_top_k=3).retrieve(QUERY)
    assert dict(passes.texts) == {QUERY: 1}  # the query: one pass, by the store (no separate embedding)
    want = hybrid(embedder, QUERY, texts)
    order = np.argsort(-np.asarray(want[HYBRID]), kind="stable")[:3]
    assert [n.node.node_id for n in found] == [nodes[i].node_id for i in order]
    by_id = {n.node_id: n for n in nodes}
    for n, i in zip(found, order):
        assert n.score == pytest.approx(want[HYBRID][i], rel=1e-5, abs=1e-6)
        assert n.node.hash == by_id[n.node.node_id].hash and n.node.ref_doc_id == nodes[i].ref_doc_id


def test_node_round_trip_without_llama_index_and_errors(embedder: M3Embedder) -> None:
    plain = M3Index(embedder, colbert_dtype=None)
    plain.add(["A text.", "Another."], ids=["a", "b"], metadatas=[{"ref_doc_id": "doc"}, {"lang": "en"}])
    store = M3VectorStore(plain)
    got = {n.node_id: n for n in store.get_nodes(["a", "b"])}
    assert (got["a"].ref_doc_id, got["b"].ref_doc_id) == ("doc", "b")  # a record is its own document
    assert got["b"].metadata == {"lang": "en"} and got["b"].get_content() == "Another."
    store.delete("b")
    assert plain.ids == ["a"]
    document = Document(text="x", id_="doc-1", metadata={"lang": "en"})
    back = record_node(document.id_, *node_record(document))
    assert type(back) is Document and back == document and back.hash == document.hash

    with pytest.raises(ValueError, match="_node_content"):
        node_record(TextNode(text="x", metadata={"_node_content": "mine"}))
    with pytest.raises(ValueError, match="does not parse"):
        record_node("x", "x", {"_node_content": "{not json"})
    with pytest.raises(TypeError, match="HybridStore"):
        M3VectorStore(embedder)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="not both"):
        M3VectorStore(plain, embedder=embedder)
    with pytest.raises(TypeError, match="no options"):
        store.add([TextNode(text="x")], batch=1)


# ---------------------------------------------------------------------------- query modes
def test_query_modes_alpha_filters_and_ids(embedder: M3Embedder) -> None:
    nodes = [TextNode(text=t, id_=f"n{i}", metadata=m) for i, (t, m) in enumerate(zip(TEXTS, META))]
    for i, node in enumerate(nodes):
        node.relationships[NodeRelationship.SOURCE] = RelatedNodeInfo(node_id=f"doc{i % 2}")
    _, store = make_index(embedder, nodes)
    texts = embedded(nodes)

    def check(result: M3VectorStoreQueryResult, scores: list[float], positions: list[int] | None = None) -> None:
        positions = list(range(len(texts))) if positions is None else positions
        want = sorted(positions, key=lambda i: -scores[i])
        assert result.ids == [f"n{i}" for i in want][: len(result.ids)]
        assert result.similarities == pytest.approx([scores[i] for i in want][: len(result.ids)], rel=1e-5, abs=1e-6)
        assert [n.node_id for n in result.nodes] == result.ids

    full = hybrid(embedder, QUERY, texts)
    default = store.query(VectorStoreQuery(query_str=QUERY, similarity_top_k=len(texts)))
    check(default, full[HYBRID])
    assert len(default.ids) == len(texts) and default.scores is not None
    for got, node_id in zip(default.scores, default.ids):
        for mode in MODES:
            assert got[mode] == pytest.approx(full[mode][int(node_id[1:])], rel=1e-5, abs=1e-6)

    alphas = ((None, (1, 1, 1)), (0.5, (1, 1, 1)), (1.0, (2, 0, 1)), (0.0, (0, 2, 1)), (0.25, (0.5, 1.5, 1)))
    for alpha, weights in alphas:
        mixed = hybrid(embedder, QUERY, texts, weights=weights)[HYBRID]
        query = VectorStoreQuery(query_str=QUERY, mode=VectorStoreQueryMode.HYBRID, alpha=alpha, hybrid_top_k=4)
        result = store.query(query)
        assert len(result.ids) == 4
        check(result, mixed)

    sparse = store.query(VectorStoreQuery(query_str=QUERY, mode=VectorStoreQueryMode.SPARSE, sparse_top_k=len(texts)))
    lexical = full["sparse"]
    check(sparse, lexical, [i for i, s in enumerate(lexical) if s > 0])  # nodes sharing a token with the query
    assert sparse.scores is not None and [s["sparse"] for s in sparse.scores] == sparse.similarities

    cities = MetadataFilters(
        filters=[
            MetadataFilter(key="topic", value="city"),
            MetadataFilters(
                condition=FilterCondition.OR,
                filters=[
                    MetadataFilter(key="year", value=2024, operator=FilterOperator.GTE),
                    MetadataFilter(key="lang", value=["de"], operator=FilterOperator.IN),
                ],
            ),
        ]
    )
    check(store.query(VectorStoreQuery(query_str=QUERY, similarity_top_k=6, filters=cities)), full[HYBRID], [1, 5])
    by_doc = store.query(VectorStoreQuery(query_str=QUERY, similarity_top_k=6, doc_ids=["doc1"]))
    check(by_doc, full[HYBRID], [1, 3, 5])
    by_node = VectorStoreQuery(query_str=QUERY, similarity_top_k=6, node_ids=["n0", "n4"], doc_ids=["doc0"])
    check(store.query(by_node), full[HYBRID], [0, 4])
    assert store.query(VectorStoreQuery(query_str=QUERY, similarity_top_k=6, node_ids=[])).ids == default.ids

    weighted = store.query(VectorStoreQuery(query_str=QUERY, similarity_top_k=6), weights=(0.4, 0.2, 0.4))
    check(weighted, hybrid(embedder, QUERY, texts, weights=(0.4, 0.2, 0.4))[HYBRID])
    with pytest.raises(ValueError, match="query_str"):
        store.query(VectorStoreQuery(query_embedding=[0.0] * embedder.dim))
    with pytest.raises(ValueError, match="query modes"):
        store.query(VectorStoreQuery(query_str=QUERY, mode=VectorStoreQueryMode.MMR))
    with pytest.raises(ValueError, match="alpha"):
        store.query(VectorStoreQuery(query_str=QUERY, mode=VectorStoreQueryMode.HYBRID, alpha=2.0))
    with pytest.raises(TypeError, match="unknown M3VectorStore query options"):
        store.query(VectorStoreQuery(query_str=QUERY), ef=10)
    with pytest.raises(ValueError, match="CONTAINS"):
        store.query(VectorStoreQuery(query_str=QUERY, filters=MetadataFilters(filters=[
            MetadataFilter(key="topic", value="c", operator=FilterOperator.CONTAINS)])))  # fmt: skip


def test_as_retriever_hybrid_and_sparse_modes(embedder: M3Embedder) -> None:
    nodes = [TextNode(text=t, id_=f"n{i}") for i, t in enumerate(TEXTS)]
    index, _ = make_index(embedder, nodes, weights=(0.4, 0.2, 0.4))
    texts = embedded(nodes)
    got = index.as_retriever(vector_store_query_mode="hybrid", alpha=1.0, similarity_top_k=2).retrieve(QUERY)
    want = hybrid(embedder, QUERY, texts, weights=(0.6, 0.0, 0.4))[HYBRID]  # alpha=1: all of the 0.6 to dense
    best = sorted(range(len(texts)), key=lambda i: -want[i])[:2]
    assert [n.node.node_id for n in got] == [f"n{i}" for i in best]
    assert [n.score for n in got] == pytest.approx([want[i] for i in best], rel=1e-5, abs=1e-6)
    lexical = index.as_retriever(vector_store_query_mode="sparse", sparse_top_k=1).retrieve(QUERY)
    sparse = hybrid(embedder, QUERY, texts)["sparse"]
    assert [n.node.node_id for n in lexical] == [f"n{int(np.argmax(sparse))}"]
    assert lexical[0].score == pytest.approx(max(sparse), rel=1e-5)


# ---------------------------------------------------------------------------- index operations
def test_insert_delete_and_refresh_ref_docs(embedder: M3Embedder, passes: Passes) -> None:
    store = M3VectorStore(M3Index(embedder, colbert_dtype="int8"))
    index = VectorStoreIndex.from_documents(
        documents()[:4], storage_context=StorageContext.from_defaults(vector_store=store),
        embed_model=M3Embedding(embedder=embedder), transformations=[SentenceSplitter(chunk_size=1024)],
    )  # fmt: skip
    assert passes.per_text() == 1.0 and passes.total == 4 == len(store)

    passes.reset()
    index.insert(documents()[4])
    assert passes.total == 1 and len(store) == 5
    [new] = store.get_nodes(filters=MetadataFilters(filters=[MetadataFilter(key="topic", value="model")]))
    assert new.ref_doc_id == "d4" and new.get_content() == TEXTS[4]

    index.delete_ref_doc("d1")
    assert len(store) == 4 and "d1" not in {n.ref_doc_id for n in store.get_nodes()}
    assert all(n.node.ref_doc_id != "d1" for n in index.as_retriever(similarity_top_k=10).retrieve(QUERY))

    passes.reset()
    changed = documents()[:5]
    changed[2] = Document(text="The Danube flows to the Black Sea.", id_="d2", metadata=META[2])
    refreshed = index.refresh_ref_docs(changed)
    # only d2 changed (the docstore still has d1's hash: LlamaIndex keeps it for stores that hold the text)
    assert refreshed == [False, False, True, False, False]
    assert passes.total == 1 and next(iter(passes.texts)).endswith("\n\nThe Danube flows to the Black Sea.")
    assert sorted(n.ref_doc_id for n in store.get_nodes()) == ["d0", "d2", "d3", "d4"]
    [danube] = [n for n in store.get_nodes() if n.ref_doc_id == "d2"]
    assert danube.get_content() == "The Danube flows to the Black Sea."


def test_ingestion_pipeline_upserts_encode_only_what_changed(embedder: M3Embedder, passes: Passes) -> None:
    store = M3VectorStore(M3Index(embedder))
    pipeline = IngestionPipeline(
        transformations=[SentenceSplitter(chunk_size=1024), M3Embedding(embedder=embedder)],
        vector_store=store, docstore=SimpleDocumentStore(),
    )  # fmt: skip
    nodes = pipeline.run(documents=documents())
    assert len(store) == len(TEXTS) and dict(passes.texts) == {t: 1 for t in embedded(nodes)}

    passes.reset()
    changed = documents()
    changed[3] = Document(text="K2 is the second highest mountain.", id_="d3", metadata=META[3])
    again = asyncio.run(pipeline.arun(documents=changed))
    assert [n.get_content() for n in again] == ["K2 is the second highest mountain."]
    assert passes.total == 1  # a second run with one changed document encodes exactly one text
    assert len(store) == len(TEXTS) and {n.ref_doc_id for n in store.get_nodes()} == {f"d{i}" for i in range(6)}
    assert "Mount Everest" not in " ".join(n.get_content() for n in store.get_nodes())

    passes.reset()
    assert pipeline.run(documents=changed) == [] and passes.total == 0


def test_from_vector_store_persist_and_load(embedder: M3Embedder, tmp_path: Path, passes: Passes) -> None:
    nodes = rich_nodes()
    index, _ = make_index(embedder, nodes)
    index.storage_context.persist(persist_dir=str(tmp_path))
    assert (tmp_path / "default__vector_store").is_dir()  # an M3Index folder next to LlamaIndex's JSON files
    passes.reset()
    loaded = M3VectorStore.from_persist_dir(tmp_path, embedder=embedder)
    again = load_index_from_storage(
        StorageContext.from_defaults(persist_dir=str(tmp_path), vector_store=loaded), embed_model=loaded.embed_model
    )
    fresh = VectorStoreIndex.from_vector_store(loaded, embed_model=loaded.embed_model)
    want = [(n.node.node_id, n.score) for n in index.as_retriever(similarity_top_k=4).retrieve(QUERY)]
    for other in (again, fresh):
        assert [(n.node.node_id, n.score) for n in other.as_retriever(similarity_top_k=4).retrieve(QUERY)] == want
    assert passes.total == 3  # three queries; loading encodes nothing
    assert [n.hash for n in loaded.get_nodes([n.node_id for n in nodes])] == [n.hash for n in nodes]

    # an index opened persistently commits each write; other processes' opens see it
    live = M3VectorStore(M3Index.open(tmp_path / "live", embedder))
    VectorStoreIndex(nodes[:2], storage_context=StorageContext.from_defaults(vector_store=live),
                     embed_model=live.embed_model)  # fmt: skip
    assert M3Index.open(tmp_path / "live", embedder).ids == ["n0", "n1"]
    live.persist(str(tmp_path / "elsewhere.json"))  # commits in place: the folder does not move
    assert not (tmp_path / "elsewhere").exists()


# ---------------------------------------------------------------------------- engines and fusion
async def test_query_engine_with_mock_llm(embedder: M3Embedder, passes: Passes) -> None:
    nodes = [TextNode(text=t, id_=f"n{i}", metadata=m) for i, (t, m) in enumerate(zip(TEXTS, META))]
    index, _ = make_index(embedder, nodes)
    engine = index.as_query_engine(llm=MockLLM(), similarity_top_k=2)
    want = hybrid(embedder, QUERY, embedded(nodes))[HYBRID]
    best = sorted(range(len(TEXTS)), key=lambda i: -want[i])[:2]
    passes.reset()
    for response in (engine.query(QUERY), await engine.aquery(QUERY)):
        assert TEXTS[best[0]] in str(response)  # MockLLM echoes the prompt with the retrieved context
        assert [n.node.node_id for n in response.source_nodes] == [f"n{i}" for i in best]
        assert [n.score for n in response.source_nodes] == pytest.approx([want[i] for i in best], rel=1e-5, abs=1e-6)
    assert dict(passes.texts) == {QUERY: 2}  # one pass per query
    reranked = index.as_query_engine(
        llm=MockLLM(), similarity_top_k=4, node_postprocessors=[M3Reranker(embedder=embedder, top_n=2)]
    ).query(QUERY)
    assert [n.node.node_id for n in reranked.source_nodes] == [f"n{i}" for i in best]


def _rrf(results: list[list[NodeWithScore]]) -> dict[str, float]:
    fused: dict[str, float] = {}
    for found in results:
        for rank, n in enumerate(sorted(found, key=lambda x: x.score or 0.0, reverse=True)):
            fused[n.node.node_id] = fused.get(n.node.node_id, 0.0) + 1.0 / (rank + 60.0)
    return fused


def _relative(results: list[list[NodeWithScore]], dist: bool) -> dict[str, float]:
    fused: dict[str, float] = {}
    for found in results:
        scores = [n.score or 0.0 for n in found]
        if dist:
            mean, std = float(np.mean(scores)), float(np.std(scores))
            low, high = mean - 3 * std, mean + 3 * std
        else:
            low, high = min(scores), max(scores)
        for n in found:
            value = (n.score - low) / (high - low) if high > low else float(high > 0)
            fused[n.node.node_id] = fused.get(n.node.node_id, 0.0) + value / len(results)
    return fused


@pytest.mark.parametrize("mode", list(FUSION_MODES))
def test_query_fusion_retriever_counts_a_node_once(embedder: M3Embedder, mode: FUSION_MODES) -> None:
    nodes = rich_nodes()
    index, store = make_index(embedder, nodes)
    elsewhere = VectorStoreIndex([n.model_copy() for n in nodes], embed_model=M3Embedding(embedder=embedder))
    retrievers = [
        M3Retriever(store, similarity_top_k=4),  # the m3-rag retriever over the store
        index.as_retriever(similarity_top_k=3),  # LlamaIndex's retriever over the same store
        elsewhere.as_retriever(similarity_top_k=3),  # dense search in LlamaIndex's own SimpleVectorStore
    ]
    separately = [r.retrieve(QUERY) for r in retrievers]
    texts = embedded(nodes)
    want = hybrid(embedder, QUERY, texts)
    for n in separately[0]:  # M3Retriever: hybrid scores, per-mode scores next to the node
        i = int(n.node.node_id[1:])
        assert isinstance(n, M3NodeWithScore) and n.score == pytest.approx(want[HYBRID][i], rel=1e-5, abs=1e-6)
        assert all(scores_of(n)[m] == pytest.approx(want[m][i], rel=1e-5, abs=1e-6) for m in MODES)
    for n in separately[2]:
        assert n.score == pytest.approx(want["dense"][int(n.node.node_id[1:])], rel=1e-5, abs=1e-6)

    fusion = QueryFusionRetriever(retrievers, llm=MockLLM(), mode=mode, num_queries=1, use_async=False,
                                  similarity_top_k=10)  # fmt: skip
    fused = fusion.retrieve(QUERY)
    union = {n.node.node_id for found in separately for n in found}
    assert sorted(n.node.node_id for n in fused) == sorted(union)  # each node once: one identity everywhere
    shared = set.intersection(*({n.node.node_id for n in found} for found in separately))
    assert shared  # the best nodes were found by all three retrievers
    if mode == FUSION_MODES.RECIPROCAL_RANK:
        expected = _rrf(separately)
        got = {n.node.node_id: n.score for n in fused}
        for node_id in shared:  # found by all three: all three contributions (the bug: counted as three nodes)
            ranked = [[n.node.node_id for n in sorted(f, key=lambda x: -(x.score or 0.0))] for f in separately]
            ranks = [r.index(node_id) for r in ranked]
            assert got[node_id] == pytest.approx(sum(1.0 / (60.0 + r) for r in ranks), rel=1e-9)
            assert got[node_id] > 2 / 60.0  # more than any node found by one or two retrievers can get
    elif mode in (FUSION_MODES.RELATIVE_SCORE, FUSION_MODES.DIST_BASED_SCORE):
        expected = _relative(separately, dist=mode == FUSION_MODES.DIST_BASED_SCORE)
    else:
        expected = {}
        for found in separately:
            for n in found:
                expected[n.node.node_id] = max(expected.get(n.node.node_id, 0.0), n.score or 0.0)
    assert {n.node.node_id: n.score for n in fused} == pytest.approx(expected, rel=1e-9)
    assert all(n.node.hash == nodes[int(n.node.node_id[1:])].hash for n in fused)


# ---------------------------------------------------------------------------- nodes, deletion, async
async def test_get_delete_clear_and_async_off_the_loop(embedder: M3Embedder, monkeypatch: pytest.MonkeyPatch) -> None:
    store = M3VectorStore(M3Index(embedder))
    nodes = [TextNode(text=t, id_=f"n{i}", metadata=m) for i, (t, m) in enumerate(zip(TEXTS, META))]
    threads: list[int] = []
    core = store.store
    for name in ("add_encoded", "search", "delete", "get"):
        original = getattr(core, name)
        spy = lambda *a, _f=original, **kw: threads.append(threading.get_ident()) or _f(*a, **kw)  # noqa: E731
        monkeypatch.setattr(core, name, spy)
    en = MetadataFilters(filters=[MetadataFilter(key="lang", value="en")])
    year = MetadataFilters(filters=[MetadataFilter(key="year", value=2024)])
    assert await store.async_add(nodes) == [n.node_id for n in nodes]
    result = await store.aquery(VectorStoreQuery(query_str=QUERY, similarity_top_k=2))
    assert [n.node_id for n in await store.aget_nodes(filters=en)] == [f"n{i}" for i in range(5)]
    await store.adelete_nodes(["n0", "n1"], filters=year)  # only those of the ids that pass the filter
    assert sorted(core.ids) == ["n0", "n2", "n3", "n4", "n5"]
    await store.adelete_nodes(["n0"])
    await store.adelete("n3")  # a node without a source document is its own
    assert len(threads) >= 6 and threading.get_ident() not in threads  # every async method ran off the loop

    want = hybrid(embedder, QUERY, embedded(nodes))[HYBRID]
    assert result.ids == [f"n{i}" for i in sorted(range(len(nodes)), key=lambda i: -want[i])[:2]]
    assert [n.node_id for n in store.get_nodes(["n5", "n2", "zz"], filters=en)] == ["n2"]
    store.delete_nodes(filters=MetadataFilters(filters=[MetadataFilter(key="topic", value="city")]))
    assert sorted(core.ids) == ["n2", "n4"]
    await store.aclear()
    assert len(store) == 0 and bool(store)


def test_deletes_and_filtered_reads_read_only_the_matching_records(
    embedder: M3Embedder, monkeypatch: pytest.MonkeyPatch
) -> None:
    plain = M3Index(embedder, colbert_dtype=None)
    refs = [
        {"ref_doc_id": "d0"},
        {"ref_doc_id": "d0"},
        {"ref_doc_id": "d1"},
        {},
        {"ref_doc_id": "n4"},
        {"ref_doc_id": "None"},
    ]
    plain.add([f"text {i}" for i in range(6)], ids=[f"n{i}" for i in range(6)], metadatas=refs)
    asked: list[str] = []
    original = plain.get
    monkeypatch.setattr(plain, "get", lambda ids: asked.extend([ids] if isinstance(ids, str) else ids) or original(ids))
    store = M3VectorStore(plain)
    store.delete("d0")
    assert sorted(plain.ids) == ["n2", "n3", "n4", "n5"] and asked == ["d0"]  # only the id check read a record
    store.delete("n3")  # a record without a source document is its own
    store.delete("n4")  # names itself: deleted once
    store.delete("None")  # "None" names no source document, and no record has that id
    assert sorted(plain.ids) == ["n2", "n5"]
    asked.clear()
    d1 = MetadataFilters(filters=[MetadataFilter(key="ref_doc_id", value="d1")])
    assert [n.node_id for n in store.get_nodes(filters=d1)] == ["n2"] and asked == ["n2"]


def test_handoff_checks_the_pass_and_falls_back(embedder: M3Embedder, passes: Passes) -> None:
    store = M3VectorStore(M3Index(embedder, colbert_dtype=None))  # keeps no ColBERT: the handoff needs none
    embed = M3Embedding(embedder=embedder)
    vectors = embed.get_text_embedding_batch(TEXTS[:3])
    nodes = [TextNode(text=t, id_=f"n{i}", embedding=v) for i, (t, v) in enumerate(zip(TEXTS, vectors))]
    nodes[1].embedding = [x * 0.5 for x in vectors[1]]  # not the pass that was kept: encoded again
    nodes.append(TextNode(text=TEXTS[3], id_="n3"))  # no embedding at all: encoded by the store
    passes.reset()
    store.add(nodes)
    assert dict(passes.texts) == {TEXTS[1]: 1, TEXTS[3]: 1}
    hits = store.store.search(QUERY, k=4)
    scores = hybrid(embedder, QUERY, TEXTS[:4])[HYBRID]
    assert {h.id: h.score for h in hits} == pytest.approx({f"n{i}": s for i, s in enumerate(scores)}, rel=1e-5)

    small = EncodingHandoff(max_bytes=1)  # keeps nothing: every text is the store's to encode
    small.attach(colbert=True)
    small.encode(embedder, TEXTS[:2])
    assert small.stats()["kept"] == 0
    with pytest.raises(ValueError, match="max_bytes"):
        EncodingHandoff(max_bytes=-1)


@pytest.mark.slow
def test_milvus_store_in_a_vector_store_index(embedder: M3Embedder, tmp_path: Path, passes: Passes) -> None:
    pytest.importorskip("milvus_lite")
    from m3_rag.index import MilvusStore

    with MilvusStore(embedder, str(tmp_path / "m3.db")) as milvus:
        store = M3VectorStore(milvus)
        index = VectorStoreIndex.from_documents(
            documents(), storage_context=StorageContext.from_defaults(vector_store=store),
            embed_model=store.embed_model, transformations=[SentenceSplitter(chunk_size=1024)],
        )  # fmt: skip
        texts = [r.text for r in milvus.get([n.node_id for n in store.get_nodes()])]
        assert passes.per_text() == 1.0 and passes.total == len(TEXTS) == len(texts)
        passes.reset()
        found = index.as_retriever(similarity_top_k=3).retrieve(QUERY)
        assert dict(passes.texts) == {QUERY: 1}
        want = dict(zip(texts, hybrid(embedder, QUERY, texts)[HYBRID]))
        for n in found:
            assert n.score == pytest.approx(want[n.node.get_content(MetadataMode.EMBED)], rel=1e-5, abs=1e-6)
        index.delete_ref_doc(found[0].node.ref_doc_id)
        assert len(store) == len(TEXTS) - 1
