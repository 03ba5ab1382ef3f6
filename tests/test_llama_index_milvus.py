"""LlamaIndex's own Milvus store with BGE-M3 sparse weights: one model pass per text, batched.

Needs llama-index-vector-stores-milvus, which wants pymilvus < 3: skipped in the main environment,
run by .ci/run in its pymilvus-2 environment (with tests/test_milvus.py).
"""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("llama_index.vector_stores.milvus")
pytest.importorskip("milvus_lite")

from _llama_index_helpers import QUERY, TEXTS, Passes
from llama_index.core import Document, StorageContext, VectorStoreIndex
from llama_index.core.node_parser import SentenceSplitter
from llama_index.core.schema import MetadataMode
from llama_index.vector_stores.milvus import MilvusVectorStore

from m3_rag import M3Embedder
from m3_rag.encode_cache import cache_for
from m3_rag.integrations.llama_index import M3Embedding, M3SparseEmbedding
from m3_rag.integrations.llama_index.milvus import M3MilvusSparseFunction, M3MilvusVectorStore


@pytest.fixture(autouse=True)
def fresh_cache(embedder: M3Embedder) -> None:
    cache_for(embedder).clear()


def test_sparse_function_answers_node_by_node_from_the_dense_pass(embedder: M3Embedder, monkeypatch) -> None:
    passes = Passes(embedder, monkeypatch)
    embed = M3Embedding(embedder=embedder, embed_batch_size=4)
    function = M3MilvusSparseFunction(embed)
    embed.get_text_embedding_batch(TEXTS)
    one_by_one = [function.encode_documents([t])[0] for t in TEXTS]  # as MilvusVectorStore.add calls it
    assert passes.per_text() == 1.0 and passes.calls == 2  # two dense batches; the sparse calls cost nothing
    for got, want in zip(one_by_one, embedder.encode_documents(TEXTS).sparse):  # batches may differ in the last bits
        assert list(got) == list(want) and list(got.values()) == pytest.approx(list(want.values()), rel=1e-5, abs=1e-6)
    assert all(type(k) is int and type(v) is float for w in one_by_one for k, v in w.items())
    embed.get_query_embedding(QUERY)
    passes.reset()
    assert function.encode_queries([QUERY]) == [embedder.encode_queries([QUERY]).sparse[0].to_dict()]  # one text
    assert passes.texts[QUERY] == 1  # only the reference call above: the function's own came from the cache
    assert function.encode_documents([""]) == [{embedder.vocab_size: 1.0}]  # Milvus refuses empty rows
    with pytest.raises(TypeError, match="not both"):
        M3MilvusSparseFunction(embed, embedder=embedder)

    passes.reset()  # announced calls: each asked text gets the weights of its encoded text, in order
    function.expect_documents(["a", "a", "b"], [TEXTS[0], TEXTS[1], TEXTS[2]])
    assert passes.total == 0  # those texts were encoded by the dense pass above
    answers = [function.encode_documents([t])[0] for t in ("a", "b", "a")]
    assert answers == [one_by_one[0], one_by_one[2], one_by_one[1]]
    with pytest.raises(ValueError, match="same length"):
        function.expect_documents(["a"], [])
    assert isinstance(M3MilvusSparseFunction(embedder=embedder).embedder, M3Embedder)
    assert M3MilvusSparseFunction(M3SparseEmbedding(embedder=embedder)).embedder is embedder


@pytest.mark.slow
@pytest.mark.parametrize("store_class", [MilvusVectorStore, M3MilvusVectorStore])
@pytest.mark.parametrize("with_metadata", [False, True])
def test_milvus_hybrid_passes_per_text(
    embedder: M3Embedder, monkeypatch, tmp_path: Path, store_class: type, with_metadata: bool
) -> None:
    embed = M3Embedding(embedder=embedder)
    store = store_class(
        uri=str(tmp_path / "li.db"), dim=embedder.dim, overwrite=True, enable_sparse=True,
        sparse_embedding_function=M3MilvusSparseFunction(embed), similarity_metric="IP",
    )  # fmt: skip
    meta = [{"source": f"file{i}.txt"} for i in range(len(TEXTS))] if with_metadata else [{}] * len(TEXTS)
    docs = [Document(text=t, id_=f"d{i}", metadata=m) for i, (t, m) in enumerate(zip(TEXTS, meta))]
    passes = Passes(embedder, monkeypatch)
    index = VectorStoreIndex.from_documents(
        docs, storage_context=StorageContext.from_defaults(vector_store=store), embed_model=embed,
        transformations=[SentenceSplitter(chunk_size=1024)],
    )  # fmt: skip
    assert passes.per_text() == 1.0  # every distinct text once
    if with_metadata and store_class is MilvusVectorStore:  # it asks for node.text, one node per call
        assert passes.total == 2 * len(TEXTS) and passes.calls == 1 + len(TEXTS)
    else:  # the sparse weights come from the dense pass: one pass per node
        assert passes.total == len(TEXTS) and passes.calls == 1

    passes.reset()
    found = index.as_retriever(vector_store_query_mode="hybrid", similarity_top_k=3).retrieve(QUERY)
    assert dict(passes.texts) == {QUERY: 1} and len(found) == 3  # one pass per query (dense, then sparse)
    # the stored sparse rows are BGE-M3's weights of node.text (LlamaIndex's SPARSE query mode cannot be run on
    # milvus-lite 3.2: it hard-codes drop_ratio_search=0.2, which milvus-lite refuses)
    rows = store.client.query(store.collection_name, filter="", limit=100, output_fields=["id", "sparse_embedding"])
    assert len(rows) == len(TEXTS)
    mode = MetadataMode.EMBED if store_class is M3MilvusVectorStore else MetadataMode.NONE
    texts = {f"{n.node_id}": n.node.get_content(mode) for n in found}  # what the sparse field is of
    for row in rows:
        if row["id"] in texts:  # the nodes found: their text is known
            want = embedder.encode_documents([texts[row["id"]]]).sparse[0]
            got = {int(k): v for k, v in row["sparse_embedding"].items()}
            assert list(got) == list(want)
            assert list(got.values()) == pytest.approx(list(want.values()), rel=1e-5, abs=1e-6)
