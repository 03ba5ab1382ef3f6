"""The cross-encoder final stage and sentence-transformers interop."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from sentence_transformers import CrossEncoder, SentenceTransformer

from m3_rag import M3Embedder, M3Index, rerank_texts
from m3_rag.cross_encoder import apply_cross_encoder, load_cross_encoder, write_sentence_transformers_config

DATA = Path(__file__).parent / "data"
CE = DATA / "tiny-cross-encoder"
CORPUS = [
    "Berlin is the capital of Germany.",
    "Paris is the capital of France.",
    "The quick brown fox jumps over the lazy dog.",
    "Hybrid retrieval reranks candidates with three scores.",
    "Die Hauptstadt von Deutschland ist Berlin.",
    "A vector database stores embeddings.",
    "repeat repeat repeat",
]


@pytest.fixture(scope="module")
def index() -> M3Index:
    idx = M3Index(M3Embedder.shared(DATA / "tiny-m3"), colbert_dtype="float32")
    idx.add(CORPUS, ids=[f"d{i}" for i in range(len(CORPUS))])
    return idx


@pytest.fixture(scope="module")
def cross_encoder() -> CrossEncoder:
    model = load_cross_encoder(str(CE), device="cpu")
    assert isinstance(model, CrossEncoder)
    return model


@pytest.mark.parametrize("top_n", [3, 5, 50])
def test_final_stage_orders_the_top_n_by_predict(index, cross_encoder, top_n) -> None:
    query = "capital of Germany"
    hybrid = index.search(query, k=len(CORPUS))
    final = index.search(query, k=3, cross_encoder=cross_encoder, cross_encoder_top_n=top_n)
    seen = hybrid[:top_n]
    predicted = cross_encoder.predict([(query, h.text) for h in seen])
    expected = [seen[i].id for i in np.argsort(-predicted, kind="stable")[:3]]
    assert [h.id for h in final] == expected
    by_id = {h.id: h for h in hybrid}
    for hit in final:
        assert hit.score == pytest.approx(hit.scores["cross_encoder"])
        assert hit.scores["hybrid"] == pytest.approx(by_id[hit.id].score)  # the hybrid score is kept
        assert hit.scores["dense"] == pytest.approx(by_id[hit.id].scores["dense"])


@pytest.mark.slow
def test_model_name_and_batch(index) -> None:
    queries = ["capital of Germany", "vector database"]
    batch = index.search_batch(queries, k=2, cross_encoder=str(CE), cross_encoder_top_n=4)
    single = [index.search(q, k=2, cross_encoder=str(CE), cross_encoder_top_n=4) for q in queries]
    assert [[h.id for h in hits] for hits in batch] == [[h.id for h in hits] for hits in single]
    assert all(len(hits) == 2 for hits in batch)


def test_apply_on_no_hits_and_bad_arguments(index, cross_encoder) -> None:
    assert apply_cross_encoder(cross_encoder, "q", []) == []
    with pytest.raises(ValueError, match="cross_encoder_top_n"):
        index.search("q", cross_encoder=cross_encoder, cross_encoder_top_n=0)
    with pytest.raises(TypeError, match="cross_encoder must be"):
        index.search("q", cross_encoder=42)  # type: ignore[arg-type]


def test_missing_sentence_transformers_names_the_extra(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "sentence_transformers", None)
    with pytest.raises(ImportError, match=r'pip install "m3-rag\[rerank\]"'):
        load_cross_encoder("some/other-model")


def test_sentence_transformer_dense_equals_m3(tmp_path) -> None:
    folder = tmp_path / "tiny-m3"
    shutil.copytree(DATA / "tiny-m3", folder)
    write_sentence_transformers_config(folder)
    st_model = SentenceTransformer(str(folder), device="cpu")
    texts = ["What is BGE-M3?", "Hybrid retrieval first finds candidates, then reranks them.", ""]
    ours = M3Embedder.from_pretrained(folder).encode(texts, sparse=False, colbert=False).dense
    theirs = st_model.encode(texts, convert_to_numpy=True)
    np.testing.assert_allclose(theirs, ours, atol=1e-5)
    write_sentence_transformers_config(folder)  # idempotent: existing files are kept


def test_rerank_texts_with_a_cross_encoder(cross_encoder) -> None:

    query = "capital of Germany"
    embedder = M3Embedder.shared(DATA / "tiny-m3")
    hybrid = rerank_texts(embedder, query, CORPUS)
    final = rerank_texts(embedder, query, CORPUS, top_n=2, cross_encoder=cross_encoder, cross_encoder_top_n=4)
    seen = hybrid[:4]
    predicted = cross_encoder.predict([(query, CORPUS[r.index]) for r in seen])
    assert [r.index for r in final] == [seen[i].index for i in np.argsort(-predicted, kind="stable")[:2]]
    by_index = {r.index: r for r in hybrid}
    for r in final:
        assert r.scores["hybrid"] == pytest.approx(by_index[r.index].score)
        assert r.score == r.scores["cross_encoder"]


def _expected(cross_encoder, query: str, texts: list[str], n: int) -> list[str]:
    predicted = cross_encoder.predict([(query, t) for t in texts])
    return [texts[i] for i in np.argsort(-predicted, kind="stable")[:n]]


def test_framework_adapters_take_the_final_stage(index, cross_encoder) -> None:
    from langchain_core.documents import Document
    from llama_index.core.schema import NodeWithScore, TextNode

    from m3_rag.integrations.langchain import M3HybridRetriever
    from m3_rag.integrations.langchain import M3Reranker as LangChainReranker
    from m3_rag.integrations.llama_index import M3Reranker as LlamaReranker
    from m3_rag.integrations.llama_index import M3Retriever, scores_of

    query = "capital of Germany"
    embedder = index.embedder
    top4 = [h.text for h in index.search(query, k=4)]
    expected = _expected(cross_encoder, query, top4, 2)

    docs = M3HybridRetriever(
        index=index, k=2, cross_encoder=cross_encoder, cross_encoder_top_n=4, score_metadata=True
    ).invoke(query)
    assert [d.page_content for d in docs] == expected
    assert docs[0].metadata["relevance_score"] == docs[0].metadata["cross_encoder_score"]
    assert "hybrid_score" in docs[0].metadata

    nodes = M3Retriever(index, similarity_top_k=2, cross_encoder=cross_encoder, cross_encoder_top_n=4).retrieve(query)
    assert [n.node.get_content() for n in nodes] == expected
    assert nodes[0].score == scores_of(nodes[0])["cross_encoder"]

    lc = LangChainReranker(embedder=embedder, top_n=2, cross_encoder=cross_encoder, cross_encoder_top_n=4)
    reranked = lc.compress_documents([Document(page_content=t) for t in CORPUS], query)
    hybrid_top4 = [CORPUS[r.index] for r in rerank_texts(embedder, query, CORPUS, top_n=4)]
    assert [d.page_content for d in reranked] == _expected(cross_encoder, query, hybrid_top4, 2)

    li = LlamaReranker(embedder=embedder, top_n=2, cross_encoder=cross_encoder, cross_encoder_top_n=4)
    out = li.postprocess_nodes([NodeWithScore(node=TextNode(text=t), score=0.0) for t in CORPUS], query_str=query)
    assert [n.node.get_content() for n in out] == _expected(cross_encoder, query, hybrid_top4, 2)
    assert "hybrid" in scores_of(out[0])


def test_milvus_store_takes_the_final_stage(index, cross_encoder, tmp_path) -> None:
    pytest.importorskip("pymilvus")
    from m3_rag import MilvusStore

    store = MilvusStore(index.embedder, str(tmp_path / "m3.db"), collection="ce")
    store.add(CORPUS, ids=[f"d{i}" for i in range(len(CORPUS))])
    query = "capital of Germany"
    expected = index.search(query, k=2, cross_encoder=cross_encoder, cross_encoder_top_n=4)
    got = store.search(query, k=2, cross_encoder=cross_encoder, cross_encoder_top_n=4)
    assert [h.id for h in got] == [h.id for h in expected]
    assert [h.score for h in got] == pytest.approx([h.score for h in expected], rel=1e-5)
    store.close()


@pytest.mark.slow
def test_an_unreachable_hub_fails_fast_in_one_line(tmp_path) -> None:
    """No network: one probe of the hub, then the cache; a one-line error when the model is not there."""
    import os
    import subprocess
    import sys
    import time

    code = (
        "from m3_rag.cross_encoder import load_cross_encoder\n"
        "load_cross_encoder('BAAI/bge-reranker-v2-m3')\n"
    )
    env = {**os.environ, "HF_ENDPOINT": "http://127.0.0.1:9", "HF_HOME": str(tmp_path / "hf")}
    env.pop("HF_HUB_OFFLINE", None)
    start = time.monotonic()
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 1 and time.monotonic() - start < 60
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("m3_rag.errors.CheckpointUnavailableError: cannot reach the Hugging Face hub")
    assert "Connection refused" in last and "not in the cache" in last
