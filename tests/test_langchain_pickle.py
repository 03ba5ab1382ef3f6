"""Copies and pickles of every LangChain adapter share the model (by name in a new process), never copy it."""

from __future__ import annotations

import copy
import json
import os
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from _langchain_helpers import CORPUS, IDS, METADATAS, TINY, shared_tiny
from langchain_core.documents import Document

from m3_rag import M3Embedder, M3Index
from m3_rag.integrations.langchain import M3Embeddings, M3HybridRetriever, M3Reranker, M3VectorStore
from m3_rag.integrations.langchain_qdrant import M3QdrantSparseEmbeddings

ROOT = Path(__file__).parent.parent
QUERY = "capital of Germany"


def milvus_sparse(embeddings: M3Embeddings) -> Any:
    module = pytest.importorskip("m3_rag.integrations.langchain_milvus")
    return module.M3MilvusSparseEmbedding(embeddings)


def persistent_index(folder: Path) -> M3Index:
    index = M3Index.open(folder, shared_tiny(), colbert_dtype="float32")
    if not len(index):
        index.add(CORPUS, ids=IDS, metadatas=METADATAS)
    return index


def adapters(folder: Path) -> dict[str, Any]:
    emb = M3Embeddings(model_name=str(TINY), device="cpu", batch_size=4)
    index = persistent_index(folder)
    return {
        "embeddings": emb,
        "qdrant_sparse": M3QdrantSparseEmbeddings(emb),
        "milvus_sparse": milvus_sparse(emb),
        "retriever": M3HybridRetriever(index=index, k=3, weights=(0.4, 0.2, 0.4), filter={"n": {"$lt": 8}}),
        "reranker": M3Reranker(model_name=str(TINY), device="cpu", top_n=2),
        "vectorstore": M3VectorStore(index, weights=(1, 1, 0), candidates=5),
    }


def model_of(name: str, adapter: Any) -> M3Embedder:
    if name in ("qdrant_sparse", "milvus_sparse"):
        return adapter.embeddings.model
    if name == "retriever":
        return adapter.index.embedder
    if name == "vectorstore":
        return adapter.store.embedder
    return adapter.model if name == "embeddings" else adapter.embedder


def results(found: dict[str, Any]) -> dict[str, Any]:
    """What each adapter computes, as JSON (compared across copies and processes)."""
    docs = [Document(t, id=i) for t, i in zip(CORPUS[:5], IDS)]
    return {
        "embeddings": found["embeddings"].embed_query(QUERY),
        "qdrant_sparse": sorted(found["qdrant_sparse"].embed_query(QUERY).indices),
        "milvus_sparse": sorted(found["milvus_sparse"].embed_query(QUERY)),
        "retriever": [d.id for d in found["retriever"].invoke(QUERY)],
        "reranker": [(d.id, d.metadata["relevance_score"]) for d in found["reranker"].compress_documents(docs, QUERY)],
        "vectorstore": [(d.id, s) for d, s in found["vectorstore"].similarity_search_with_score(QUERY, k=3)],
    }


def assert_same_results(got: dict[str, Any], want: dict[str, Any]) -> None:
    assert got["embeddings"] == pytest.approx(want["embeddings"], rel=1e-5, abs=1e-6)
    for key in ("qdrant_sparse", "milvus_sparse", "retriever"):
        assert got[key] == want[key], key
    for key in ("reranker", "vectorstore"):
        assert [i for i, _ in got[key]] == [i for i, _ in want[key]]
        assert [s for _, s in got[key]] == pytest.approx([s for _, s in want[key]], rel=1e-5)


def test_deepcopy_shares_the_model_and_the_store(tmp_path: Path) -> None:
    found = adapters(tmp_path / "index")
    want = results(found)
    copies = copy.deepcopy(found)
    for name, adapter in found.items():
        twin = copies[name]
        assert twin is not adapter and type(twin) is type(adapter)
        assert model_of(name, twin) is model_of(name, adapter) is shared_tiny(), name
    assert copies["qdrant_sparse"].embeddings is not found["qdrant_sparse"].embeddings  # settings are copied
    assert copies["retriever"].index is found["retriever"].index  # the store is shared
    assert copies["vectorstore"].store is found["vectorstore"].store
    assert copies["vectorstore"].embeddings is not found["vectorstore"].embeddings
    assert_same_results(results(copies), want)
    copies["retriever"].k = 1
    assert found["retriever"].k == 3


class FakeCrossEncoder:
    def predict(self, pairs: Any, batch_size: int = 32, show_progress_bar: bool | None = None) -> list[float]:
        return [float(len(text)) for _, text in pairs]


def test_deepcopy_shares_a_cross_encoder_object() -> None:
    model = FakeCrossEncoder()
    index = M3Index(shared_tiny())
    index.add(CORPUS, ids=IDS)
    retriever = M3HybridRetriever(index=index, k=2, cross_encoder=model)
    store = M3VectorStore(index, cross_encoder=model)
    assert copy.deepcopy(retriever).cross_encoder is model and copy.deepcopy(store).cross_encoder is model
    longest = sorted(CORPUS, key=len)[-1]
    assert copy.deepcopy(store).similarity_search(QUERY, k=1, candidates=10, cross_encoder_top_n=10)[
        0
    ].page_content == (longest)


def test_pickle_in_this_process_gives_back_the_same_model(tmp_path: Path) -> None:
    found = adapters(tmp_path / "index")
    want = results(found)
    loaded = pickle.loads(pickle.dumps(found))
    for name, adapter in loaded.items():
        assert model_of(name, adapter) is shared_tiny(), name
    assert loaded["retriever"].index is loaded["vectorstore"].store  # one store, reopened once
    assert loaded["retriever"].index is not found["retriever"].index
    assert loaded["retriever"].index.path == found["retriever"].index.path
    assert_same_results(results(loaded), want)
    given = M3Embedder.from_pretrained(TINY, device="cpu")  # not the shared instance
    assert pickle.loads(pickle.dumps(M3Embeddings(embedder=given))).model is given


def test_stores_that_cannot_travel_refuse_with_a_clear_error(tmp_path: Path) -> None:
    memory = M3Index(shared_tiny())
    for adapter in (M3VectorStore(memory), M3HybridRetriever(index=memory)):
        with pytest.raises(TypeError, match=r"M3Index in memory.*M3Index\.open"):
            pickle.dumps(adapter)
        assert copy.deepcopy(adapter) is not adapter  # copying is fine: the index is shared
    memory.save(tmp_path / "saved")
    with pytest.raises(TypeError, match=r"with load\(\)"):
        pickle.dumps(M3VectorStore(M3Index.load(tmp_path / "saved")))
    pytest.importorskip("milvus_lite")
    from m3_rag.index import MilvusStore

    with MilvusStore(shared_tiny(), str(tmp_path / "m.db")) as store, pytest.raises(TypeError, match="MilvusStore"):
        pickle.dumps(M3VectorStore(store))


CHILD = """
import json, pickle, sys
sys.path.insert(0, "tests")
from test_langchain_pickle import model_of, results
from m3_rag import M3Embedder
found = pickle.load(open(sys.argv[1], "rb"))
shared = M3Embedder.shared(sys.argv[2], device="cpu")
models = {name: model_of(name, a) is shared for name, a in found.items()}
out = results(found)
found["vectorstore"].add_texts(["Added by the child process."], ids=["child"])  # committed to the folder
print(json.dumps({"models": models, "batch": found["embeddings"].batch_size, "results": out}))
"""


@pytest.mark.slow
def test_pickle_round_trip_in_a_new_process(tmp_path: Path) -> None:
    found = adapters(tmp_path / "index")
    want = results(found)
    blob = tmp_path / "adapters.pkl"
    blob.write_bytes(pickle.dumps(found))
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(CHILD), str(blob), str(TINY.resolve())],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    child = json.loads(done.stdout.strip().splitlines()[-1])
    assert child["models"] == dict.fromkeys(found, True)  # one model, shared by name, in the new process
    assert child["batch"] == 4
    assert_same_results(child["results"], json.loads(json.dumps(want)))
    index = found["vectorstore"].store
    assert index.get("child")[0].text == "Added by the child process."  # the same folder
