"""langchain-milvus on milvus-lite: the documented recipe as written, one model pass per text, the reranker."""

from __future__ import annotations

import re
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from _langchain_helpers import CORPUS, TINY, count_encodes

pytest.importorskip("milvus_lite")
pytest.importorskip("langchain_milvus")

import pymilvus
from langchain_milvus import Milvus
from langchain_milvus.utils.sparse import BaseSparseEmbedding

import m3_rag.integrations.langchain_milvus as module
from m3_rag import M3Embedder
from m3_rag.integrations.langchain import M3Embeddings
from m3_rag.integrations.langchain_milvus import M3MilvusSparseEmbedding, milvus_reranker

INDEX_PARAMS = [
    {"metric_type": "IP", "index_type": "FLAT"},
    {"metric_type": "IP", "index_type": "SPARSE_INVERTED_INDEX"},
]
SEARCH_PARAMS = [{"metric_type": "IP", "params": {}}, {"metric_type": "IP", "params": {}}]


@pytest.fixture
def fresh() -> M3Embedder:
    """A model of its own, so that its cache starts empty and its encode calls can be counted."""
    return M3Embedder.from_pretrained(TINY, device="cpu")


def milvus(dense: M3Embeddings, uri: Path, texts: list[str], **kwargs: Any) -> Milvus:
    return Milvus.from_texts(
        texts, embedding=[dense, M3MilvusSparseEmbedding(dense)], vector_field=["dense", "sparse"],
        connection_args={"uri": str(uri)}, index_params=INDEX_PARAMS, search_params=SEARCH_PARAMS, **kwargs,
    )  # fmt: skip


def test_the_recipe_runs_as_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, embedder: M3Embedder) -> None:
    doc = module.__doc__ or ""
    code = re.search(r"::\n\n((?:    .*\n|\n)+)", doc)
    assert code is not None
    source = "\n".join(line[4:] for line in code.group(1).splitlines())
    assert '"BAAI/bge-m3"' in source and "ranker_type" not in source.replace("``ranker_type``", "")
    assert "ranker_type=" not in doc and "ranker_params=" not in doc  # no deprecated arguments
    monkeypatch.chdir(tmp_path)
    scope: dict[str, Any] = {}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        exec(compile(source.replace('"BAAI/bge-m3"', repr(str(TINY))), "langchain_milvus recipe", "exec"), scope)
    ours = [w for w in caught if "m3_rag" in w.filename]
    assert not ours, [str(w.message) for w in ours]
    texts = scope["texts"]
    assert len(scope["docs"]) == 3 and {d.page_content for d in scope["docs"]} == set(texts)
    # WeightedRanker(0.5, 0.5) without normalisation: the mean of the dense and lexical inner products
    query = "capital of Germany"
    scores = embedder.compute_score([(query, t) for t in texts])
    fused = (np.asarray(scores["dense"]) + np.asarray(scores["sparse"])) / 2
    found = scope["scored"]
    assert [d.page_content for d, _ in found] == [texts[i] for i in np.argsort(-fused)[:2]]
    np.testing.assert_allclose([s for _, s in found], np.sort(fused)[::-1][:2], rtol=1e-4)


def test_milvus_runs_the_model_once_per_text(fresh: M3Embedder, tmp_path: Path) -> None:
    dense = M3Embeddings(embedder=fresh)
    sparse = M3MilvusSparseEmbedding(dense)
    assert isinstance(sparse, BaseSparseEmbedding) and sparse.embeddings is dense
    with count_encodes(fresh) as counter:
        store = milvus(dense, tmp_path / "m.db", CORPUS)
        assert counter.texts == dict.fromkeys(CORPUS, 1)  # langchain-milvus asked for dense, then sparse
        found = store.similarity_search("capital of Germany", k=3, reranker=milvus_reranker(pymilvus.RRFRanker()))
        assert counter.texts["capital of Germany"] == 1 and len(found) == 3
    # what Milvus stores is what the encoder gives
    expected = fresh.encode_documents(CORPUS, colbert=False)
    assert expected.dense is not None and expected.sparse is not None
    rows = store.client.query(store.collection_name, filter="", output_fields=["text", "dense", "sparse"], limit=100)
    assert len(rows) == len(CORPUS)
    for row in rows:
        i = CORPUS.index(row["text"])
        np.testing.assert_allclose(row["dense"], expected.dense[i], rtol=1e-5, atol=1e-6)
        assert {int(t): w for t, w in row["sparse"].items()} == pytest.approx(dict(expected.sparse[i]), rel=1e-5)


async def test_sparse_adapter_values(fresh: M3Embedder) -> None:
    dense = M3Embeddings(embedder=fresh)
    sparse = M3MilvusSparseEmbedding(dense)
    weights = sparse.embed_documents(CORPUS)
    expected = fresh.encode_documents(CORPUS, colbert=False).sparse
    assert expected is not None and all(type(i) is int and type(w) is float for d in weights for i, w in d.items())
    for got, want in zip(weights, expected, strict=True):
        assert got == pytest.approx(dict(want), rel=1e-5, abs=1e-6)
    query = fresh.encode_queries("capital of Germany", colbert=False).sparse
    assert query is not None and sparse.embed_query("capital of Germany") == pytest.approx(dict(query[0]), rel=1e-5)
    assert await sparse.aembed_query("capital of Germany") == sparse.embed_query("capital of Germany")
    by_name = M3MilvusSparseEmbedding(model_name=str(TINY), device="cpu")
    assert by_name.embeddings.model is M3Embedder.shared(str(TINY), device="cpu")
    with pytest.raises(TypeError, match="not both"):
        M3MilvusSparseEmbedding(dense, device="cpu")


def test_milvus_reranker_gives_the_rankers_scores(tmp_path: Path) -> None:
    """The Function made from a WeightedRanker / RRFRanker ranks and scores as the ranker does in pymilvus."""
    dense = M3Embeddings(model_name=str(TINY), device="cpu")
    store = milvus(dense, tmp_path / "r.db", CORPUS)
    query = "capital of Germany"
    requests = [
        pymilvus.AnnSearchRequest([dense.embed_query(query)], "dense", SEARCH_PARAMS[0], limit=6),
        pymilvus.AnnSearchRequest([M3MilvusSparseEmbedding(dense).embed_query(query)], "sparse", SEARCH_PARAMS[1],
                                  limit=6),
    ]  # fmt: skip
    for ranker in (pymilvus.WeightedRanker(0.7, 0.3), pymilvus.WeightedRanker(0.5, 0.5, norm_score=False),
                   pymilvus.RRFRanker(20)):  # fmt: skip
        direct = store.client.hybrid_search(store.collection_name, requests, ranker, limit=4, output_fields=["text"])
        via = store.similarity_search_with_score(query, k=4, fetch_k=6, reranker=milvus_reranker(ranker))
        assert [d.page_content for d, _ in via] == [h["entity"]["text"] for h in direct[0]]
        np.testing.assert_allclose([s for _, s in via], [h["distance"] for h in direct[0]], rtol=1e-5)
    function = milvus_reranker(pymilvus.RRFRanker())
    assert milvus_reranker(function) is function
    with pytest.raises(TypeError, match="WeightedRanker"):
        milvus_reranker("weighted")
    with pytest.raises(AttributeError, match="type"):  # why the helper exists (langchain-milvus 0.4)
        store.similarity_search(query, k=2, reranker=pymilvus.WeightedRanker(0.5, 0.5))


def test_docstring_examples_run(monkeypatch: pytest.MonkeyPatch) -> None:
    import doctest

    monkeypatch.chdir(Path(__file__).parent.parent)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.failed == 0 and result.attempted > 0
