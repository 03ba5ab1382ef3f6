"""Sparse adapters in LangChain vector stores: Qdrant in memory (Milvus: tests/test_langchain_milvus.py); the README."""

from __future__ import annotations

import re
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from _langchain_helpers import CORPUS, TINY, count_encodes
from langchain_qdrant import QdrantVectorStore, RetrievalMode, SparseEmbeddings, SparseVector
from qdrant_client import QdrantClient, models

from m3_rag import M3Embedder
from m3_rag.integrations.langchain import M3Embeddings
from m3_rag.integrations.langchain_qdrant import M3QdrantSparseEmbeddings

UUIDS = [str(uuid.UUID(int=i + 1)) for i in range(len(CORPUS))]


@pytest.fixture
def fresh() -> M3Embedder:
    """A model of its own, so that its cache starts empty and its encode calls can be counted."""
    return M3Embedder.from_pretrained(TINY, device="cpu")


def test_qdrant_hybrid_runs_the_model_once_per_text(fresh: M3Embedder, embedder: M3Embedder) -> None:
    dense = M3Embeddings(embedder=fresh)
    sparse = M3QdrantSparseEmbeddings(dense)
    assert sparse.embeddings is dense
    assert isinstance(sparse, SparseEmbeddings)
    client = QdrantClient(":memory:")
    client.create_collection(
        "docs",
        vectors_config={"dense": models.VectorParams(size=fresh.dim, distance=models.Distance.COSINE)},
        sparse_vectors_config={"sparse": models.SparseVectorParams()},
    )
    with count_encodes(fresh) as counter:
        store = QdrantVectorStore(
            client=client, collection_name="docs", embedding=dense, sparse_embedding=sparse,
            retrieval_mode=RetrievalMode.HYBRID, vector_name="dense", sparse_vector_name="sparse",
        )  # fmt: skip
        ids = store.add_texts(CORPUS, metadatas=[{"n": i} for i in range(len(CORPUS))], ids=UUIDS)
        assert ids == UUIDS
        # Qdrant asked for dense and then sparse vectors of the same texts: one pass per text
        assert counter.texts == {**dict.fromkeys(CORPUS, 1), "dummy_text": 1}
        query = "capital of Germany"
        found = store.similarity_search(query, k=3)
        assert counter.texts[query] == 1 and len(counter.calls) == 3  # the query once, for both modes

    # what Qdrant stores is what the encoder gives
    expected = embedder.encode_documents(CORPUS, colbert=False)
    assert expected.dense is not None and expected.sparse is not None
    points = {p.id: p for p in client.retrieve("docs", UUIDS, with_vectors=True)}
    for i, point_id in enumerate(UUIDS):
        vectors: Any = points[point_id].vector
        np.testing.assert_allclose(vectors["dense"], expected.dense[i], rtol=1e-5, atol=1e-6)
        stored = dict(zip(vectors["sparse"].indices, vectors["sparse"].values))
        assert sorted(stored) == sorted(expected.sparse[i])
        np.testing.assert_allclose([stored[t] for t in sorted(stored)], [expected.sparse[i][t] for t in sorted(stored)],
                                   rtol=1e-5)  # fmt: skip

    # the hybrid results fuse the dense and the sparse rankings of the same scores
    scores = embedder.compute_score([(query, t) for t in CORPUS])
    dense_top = set(np.argsort(scores["dense"])[::-1][:3].tolist())
    sparse_top = {i for i in np.argsort(scores["sparse"])[::-1][:3].tolist() if scores["sparse"][i] > 0}
    assert len(found) == 3
    assert {d.metadata["n"] for d in found} <= dense_top | sparse_top
    assert all(d.page_content == CORPUS[d.metadata["n"]] for d in found)

    # sparse-only search scores equal the lexical scores of compute_score
    lexical = QdrantVectorStore(
        client=client, collection_name="docs", sparse_embedding=sparse,
        retrieval_mode=RetrievalMode.SPARSE, sparse_vector_name="sparse",
    )  # fmt: skip
    ranked = lexical.similarity_search_with_score(query, k=3)
    want = sorted((s for s in scores["sparse"] if s > 0), reverse=True)[:3]
    np.testing.assert_allclose([s for _, s in ranked], want, rtol=1e-5)
    for doc, score in ranked:
        assert score == pytest.approx(scores["sparse"][doc.metadata["n"]], rel=1e-5)


def test_qdrant_sparse_vectors(fresh: M3Embedder) -> None:
    sparse = M3QdrantSparseEmbeddings(embedder=fresh, query_max_length=4)
    assert sparse.embeddings.model is fresh
    query = sparse.embed_query(CORPUS[4])
    assert isinstance(query, SparseVector)
    assert all(type(i) is int for i in query.indices) and all(type(v) is float for v in query.values)
    want = fresh.encode_queries(CORPUS[4], max_length=4, colbert=False).sparse
    assert want is not None and dict(zip(query.indices, query.values)) == pytest.approx(want[0], rel=1e-5)
    docs = sparse.embed_documents(CORPUS[:3])
    assert [len(v.indices) for v in docs] == [len(w) for w in fresh.encode_documents(CORPUS[:3]).sparse or []]
    with pytest.raises(TypeError, match="not both"):
        M3QdrantSparseEmbeddings(M3Embeddings(embedder=fresh), device="cpu")


async def test_qdrant_sparse_async(fresh: M3Embedder) -> None:
    sparse = M3QdrantSparseEmbeddings(embedder=fresh)
    assert await sparse.aembed_query("capital") == sparse.embed_query("capital")
    assert await sparse.aembed_documents(CORPUS[:2]) == sparse.embed_documents(CORPUS[:2])


def test_readme_langchain_example_runs(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """The README's LangChain section runs as written, with the tiny checkpoint for BAAI/bge-m3."""
    root = Path(__file__).parent.parent
    readme = (root / "README.md").read_text(encoding="utf-8")
    start = readme.index("## LangChain")
    section = readme[start : readme.index("\n## ", start + 1)]
    code = "\n".join(re.findall(r"```python\n(.*?)```", section, re.S))
    assert code.count('"BAAI/bge-m3"') >= 3
    monkeypatch.chdir(root)
    scope: dict[str, Any] = {}
    exec(compile(code.replace('"BAAI/bge-m3"', '"tests/data/tiny-m3"'), "README.md", "exec"), scope)
    assert capsys.readouterr().out.strip() == "It reranks candidates with dense, sparse and ColBERT scores."
    assert [len(v) for v in scope["vectors"]] == [32, 32, 32]
    texts = scope["texts"]
    # the vector store: hybrid search under the filter, stored metadata unchanged; the indexing API
    assert sorted((d.page_content, d.metadata) for d in scope["docs"]) == sorted(
        (texts[i], {"source": f"doc{i}", "year": 2022 + i}) for i in (1, 2)
    )
    assert scope["store"].store.embedder is scope["embeddings"].model is scope["retriever"].index.embedder
    assert sorted(d.page_content for d in scope["synced"].get_by_ids(scope["synced"].store.ids)) == sorted(texts)
    assert sorted(scope["manager"].list_keys()) == sorted(scope["synced"].store.ids)
    assert scope["mmr"].search_type == "mmr"
    # the retriever: stored metadata, scores on the side
    found, scored = scope["found"], scope["scored"]
    assert [d for d, _ in scored] == found and {d.page_content for d in found} <= set(texts) and len(found) == 2
    assert all(d.metadata == {"source": f"doc{texts.index(d.page_content)}"} for d in found)
    assert all({"relevance_score", "dense_score", "sparse_score", "colbert_score"} == set(s) for _, s in scored)
    assert len(scope["qdrant"].similarity_search("What is hybrid search?", k=2)) == 2


def test_readme_langchain_imports_come_with_the_extras() -> None:
    """``pip install "m3-rag[langchain]"`` (``[qdrant]`` for the Qdrant example) installs what the section imports."""
    import importlib.metadata

    tomllib = pytest.importorskip("tomllib")
    root = Path(__file__).parent.parent
    project = tomllib.loads((root / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    readme = (root / "README.md").read_text(encoding="utf-8")
    start = readme.index("## LangChain")
    code = "\n".join(re.findall(r"```python\n(.*?)```", readme[start : readme.index("\n## ", start + 1)], re.S))

    def names(requirements: list[str]) -> set[str]:
        return {re.split(r"[<>=!\[; ]", r, maxsplit=1)[0].lower().replace("_", "-") for r in requirements}

    extras = project["optional-dependencies"]
    langchain = names(project["dependencies"]) | names(extras["langchain"])
    qdrant = names(extras["qdrant"])
    assert qdrant == {"qdrant-client", "langchain-qdrant"} and "langchain-classic" in langchain
    distributions = importlib.metadata.packages_distributions()
    modules = set(re.findall(r"^\s*(?:from|import) (\w+)", code, re.M)) - {"m3_rag"}
    assert {"langchain_core", "langchain_classic", "langchain_qdrant"} <= modules
    for module in modules:
        provided = {d.lower().replace("_", "-") for d in distributions[module]}
        needed = langchain | qdrant if module in ("langchain_qdrant", "qdrant_client") else langchain
        assert provided & needed, f"README's LangChain section imports {module}, which no extra installs"
    assert 'pip install "m3-rag[qdrant]"' in code  # the Qdrant example says what it needs
