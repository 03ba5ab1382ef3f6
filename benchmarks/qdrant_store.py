"""QdrantStore: ColBERT storage options (bytes per document, fidelity) and search latency in local mode.

1. **Engine fidelity** (needs ``pip install qdrant-edge-py``, Qdrant's engine in-process; skipped
   without it): the tiny checkpoints, 200 passages, 200 queries. For each ``colbert_dtype`` a shard
   with the vector parameters that ``QdrantStore`` creates (float32, float16, float16 + int8 scalar
   quantization scored with ``rescore=False``); each query's ColBERT scores of its 30 best dense
   candidates come from the engine (``HasIdCondition``, MAX_SIM / number of query vectors), as in
   ``scoring="engine"``. Reported: the largest absolute ColBERT error against exact float32 and the
   share of queries whose hybrid top-10 is identical.
2. **Bytes per document in the engine** (qdrant-edge): BGE-M3's sizes (1024-d dense and ColBERT,
   200 ColBERT vectors, 100 sparse weights, a 1 KB text), the files of the shard's segments
   (allocated blocks, write-ahead log excluded) per document, for each option.
3. **Local mode** (qdrant-client, pure Python -- not a server figure): bytes per document of a
   ``path=`` collection (qdrant-client pickles each point into SQLite); search latency with the
   tiny checkpoint (median ms per query, 100 candidates per mode) next to ``M3Index``; the first
   stage + candidate scores per ``scoring`` choice at 500 and 5,000 documents (32-d, synthetic);
   and the ColBERT step alone at BGE-M3's width (restricted MAX_SIM query vs fetching the vectors).

Run from the repository root: ``python benchmarks/qdrant_store.py`` (a few minutes on 2 cores).
Writes ``benchmarks/results/qdrant_store.json``.
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
from _common import loadavg, write_result
from qdrant_client import QdrantClient
from qdrant_client import models as qm

from m3_rag import M3Embedder, M3Index, M3Output, QdrantStore
from m3_rag.retrieval import QueryBatch, SearchRequest
from m3_rag.scoring import hybrid_scores
from m3_rag.sparse import SparseVector

ROOT = Path(__file__).resolve().parent.parent
WORDS = (ROOT / "scripts" / "tiny_corpus.txt").read_text(encoding="utf-8").split()
OPTIONS = ("float32", "float16", "int8")


def texts(n: int, words: tuple[int, int], seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    lengths, starts = rng.integers(*words, n), rng.integers(0, len(WORDS) - words[1], n)
    return [" ".join(WORDS[s : s + w]) for s, w in zip(starts.tolist(), lengths.tolist())]


def folder_bytes(path: Path, skip: str = "wal") -> int:
    """Bytes the files under ``path`` take on disk (allocated blocks: the engine preallocates sparse files)."""
    return sum(
        f.stat().st_blocks * 512 for f in path.rglob("*") if f.is_file() and skip not in f.relative_to(path).parts
    )


def edge_shard(folder: str, dim: int, colbert_dim: int, dtype: str | None) -> Any:
    import qdrant_edge as E

    vectors = {"dense": E.EdgeVectorParams(size=dim, distance=E.Distance.Dot)}
    if dtype is not None:
        vectors["colbert"] = E.EdgeVectorParams(
            size=colbert_dim,
            distance=E.Distance.Dot,
            multivector_config=E.MultiVectorConfig(E.MultiVectorComparator.MaxSim),
            datatype=E.VectorStorageDatatype.Float32 if dtype == "float32" else E.VectorStorageDatatype.Float16,
            quantization_config=E.ScalarQuantizationConfig(E.ScalarType.Int8, always_ram=True)
            if dtype == "int8"
            else None,
            hnsw_config=E.HnswIndexConfig(m=0, ef_construct=100, full_scan_threshold=10000),
            on_disk=dtype == "int8",
        )
    optimizers = E.EdgeOptimizersConfig(
        indexing_threshold=1, default_segment_number=1
    )  # build indexes and int8 at once
    config = E.EdgeConfig(vectors=vectors, sparse_vectors={"sparse": E.EdgeSparseVectorParams()}, optimizers=optimizers)
    return E.EdgeShard.create(folder, config)


def engine_fidelity(checkpoint: str) -> dict[str, Any]:
    import qdrant_edge as E

    model = M3Embedder.from_pretrained(ROOT / "tests" / "data" / checkpoint, device="cpu")
    docs, queries = texts(200, (8, 40), 1), texts(200, (2, 8), 2)
    d = model.encode_documents(docs, dense=True, sparse=True, colbert=True)
    q = model.encode_queries(queries, dense=True, sparse=True, colbert=True)
    dense = np.asarray(q.dense) @ np.asarray(d.dense).T  # (m, n) exact
    from m3_rag.sparse import stack_csr

    lexical = np.asarray((stack_csr(q.sparse, model.vocab_size) @ stack_csr(d.sparse, model.vocab_size).T).todense())
    cands = np.argsort(-dense, axis=1)[:, :30]
    exact = np.array([[(qc @ d.colbert[i].T).max(1).mean() for i in row] for qc, row in zip(q.colbert, cands)])
    out: dict[str, Any] = {}
    for dtype in OPTIONS:
        with tempfile.TemporaryDirectory() as folder:
            shard = edge_shard(folder, model.dim, model.colbert_dim or 0, dtype)
            rounding = np.float32 if dtype == "float32" else np.float16
            points = [
                E.Point(
                    i,
                    {
                        "dense": d.dense[i].tolist(),
                        "colbert": d.colbert[i].astype(rounding).astype(np.float32).tolist(),
                    },
                )
                for i in range(len(docs))
            ]
            shard.update(E.UpdateOperation.upsert_points(points))
            shard.flush()
            shard.optimize()  # an optimized segment: what a server holds once its optimizer ran
            params = E.SearchParams(quantization=E.QuantizationSearchParams(rescore=False)) if dtype == "int8" else None
            got = np.zeros_like(exact)
            for j, (qc, row) in enumerate(zip(q.colbert, cands)):
                query = qc.astype(rounding).astype(np.float32).tolist()
                hits = shard.query(
                    E.QueryRequest(limit=len(row), query=E.Query.Nearest(query, using="colbert"),
                                   filter=E.Filter(must=[E.HasIdCondition({int(i) for i in row})]), params=params)
                )  # fmt: skip
                score = {int(h.id): h.score / len(qc) for h in hits}
                got[j] = [score[int(i)] for i in row]
            shard.close()
        same = 0
        for j, row in enumerate(cands):
            a = hybrid_scores(dense[j, row], lexical[j, row], exact[j], (1.0, 1.0, 1.0))
            b = hybrid_scores(dense[j, row], lexical[j, row], got[j], (1.0, 1.0, 1.0))
            same += list(row[np.argsort(-a, kind="stable")[:10]]) == list(row[np.argsort(-b, kind="stable")[:10]])
        out[dtype] = {"max_abs_colbert_error": float(np.abs(got - exact).max()), "top10_identical": same / len(queries)}
    return out


def synthetic_points(n: int, rng: np.random.Generator, dim: int = 1024, tokens: int = 200) -> list[dict[str, Any]]:
    def unit(*shape: int) -> np.ndarray:
        x = rng.standard_normal(shape).astype(np.float32)
        return x / np.linalg.norm(x, axis=-1, keepdims=True)

    text = " ".join(WORDS)[:1000]
    return [
        {
            "dense": unit(dim), "colbert": unit(tokens, dim),
            "sparse": (np.sort(rng.choice(250_000, 100, replace=False)), rng.random(100).astype(np.float32)),
            "payload": {"id": f"doc-{i}", "text": text, "metadata": {"source": f"file{i}.md", "chunk": i}},
        }
        for i in range(n)
    ]  # fmt: skip


def _engine_folder_bytes(n: int, dtype: str | None) -> int:
    import qdrant_edge as E

    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as folder:
        shard = edge_shard(folder, 1024, 1024, dtype)
        for _ in range(0, n, 10):
            pts = []
            for p in synthetic_points(10, rng):
                vec: dict[str, Any] = {
                    "dense": p["dense"].tolist(),
                    "sparse": E.SparseVector(*map(np.ndarray.tolist, p["sparse"])),
                }
                if dtype is not None:
                    vec["colbert"] = p["colbert"].tolist()
                pts.append(E.Point(str(uuid.uuid4()), vec, p["payload"]))
            shard.update(E.UpdateOperation.upsert_points(pts))
        shard.flush()
        shard.optimize()
        shard.flush()
        size = folder_bytes(Path(folder))
        shard.close()
    return size


def engine_bytes() -> dict[str, float]:
    """Marginal bytes per document between 40 and 80 documents (files are allocated in chunks)."""
    return {
        str(dtype): (_engine_folder_bytes(80, dtype) - _engine_folder_bytes(40, dtype)) / 40
        for dtype in (*OPTIONS, None)
    }


def _fake_encodings(n: int, rng: np.random.Generator, tokens: int, dim: int = 32, vocab: int = 450) -> M3Output:
    def unit(*shape: int) -> np.ndarray:
        x = rng.standard_normal(shape).astype(np.float32)
        return x / np.linalg.norm(x, axis=-1, keepdims=True)

    sparse = [
        SparseVector.from_arrays(np.sort(rng.choice(np.arange(4, vocab), 20, replace=False)), rng.random(20))
        for _ in range(n)
    ]
    return M3Output(dense=unit(n, dim), sparse=sparse, colbert=[unit(tokens, dim) for _ in range(n)])


def scoring_choice(model: M3Embedder, repeats: int = 3) -> dict[str, dict[str, float]]:
    """ms per query of ``_candidates`` (first stage + candidate scores), 8 queries, 100 candidates per mode."""
    rng = np.random.default_rng(5)
    q = _fake_encodings(8, rng, tokens=10)
    batch = QueryBatch(q.dense, q.sparse, q.colbert)  # type: ignore[arg-type]
    request = SearchRequest.make(k=10, candidates=100, first_stage=("dense", "sparse"), weights=(1, 1, 1), filter=None)
    out = {}
    for n in (500, 5000):
        docs = _fake_encodings(n, rng, tokens=50)
        stores = {s: QdrantStore(model, location=":memory:", scoring=s) for s in ("client", "engine")}  # type: ignore[arg-type]
        for store in stores.values():
            store.add_encoded([f"t{i}" for i in range(n)], docs, ids=[f"p{i}" for i in range(n)])
        times: dict[str, list[float]] = {s: [] for s in stores}
        for _ in range(repeats):  # alternated
            for name, store in stores.items():
                start = time.perf_counter()
                store._candidates(batch, request)
                times[name].append((time.perf_counter() - start) / len(q) * 1000)
        out[str(n)] = {name: statistics.median(v) for name, v in times.items()}
        for store in stores.values():
            store.close()
    return out


def local_mode(repeats: int = 5) -> dict[str, Any]:
    model = M3Embedder.from_pretrained(ROOT / "tests" / "data" / "tiny-m3", device="cpu")
    docs, queries = texts(500, (20, 60), 3), texts(20, (2, 8), 4)
    ids = [f"p{i}" for i in range(len(docs))]
    encoded = model.encode_documents(docs, dense=True, sparse=True, colbert=True, show_progress=False)
    out: dict[str, Any] = {"documents": len(docs), "bytes_per_document": {}, "search_ms": {}}
    with tempfile.TemporaryDirectory() as folder:
        for dtype in (*OPTIONS, None):
            path = Path(folder) / str(dtype)
            with QdrantStore(model, path=path, colbert_dtype=dtype) as store:  # type: ignore[arg-type]
                store.add_encoded(docs, encoded, ids=ids)
            out["bytes_per_document"][str(dtype)] = folder_bytes(path) / len(docs)
    index = M3Index(model, colbert_dtype="float16")
    index.add_encoded(docs, encoded, ids=ids)
    qdrant = QdrantStore(model, location=":memory:")
    qdrant.add_encoded(docs, encoded, ids=ids)
    for name, searched in (("m3index", index), ("qdrant_auto", qdrant)):
        searched.search_batch(queries[:2])
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            searched.search_batch(queries, k=10, candidates=100)
            times.append((time.perf_counter() - start) / len(queries) * 1000)
        out["search_ms"][name] = statistics.median(times)
    qdrant.close()
    out["candidates_ms_by_scoring"] = scoring_choice(model)
    # the ColBERT step alone at BGE-M3's width: 300 points of 100 vectors, 100 candidates, 32 query vectors
    rng = np.random.default_rng(1)
    client = QdrantClient(":memory:")
    multi = qm.MultiVectorConfig(comparator=qm.MultiVectorComparator.MAX_SIM)
    client.create_collection(
        "c", vectors_config={"colbert": qm.VectorParams(size=1024, distance=qm.Distance.DOT, multivector_config=multi)}
    )
    points = synthetic_points(300, rng, tokens=100)
    client.upsert("c", [qm.PointStruct(id=i, vector={"colbert": p["colbert"].tolist()}) for i, p in enumerate(points)])
    query, chosen = points[0]["colbert"][:32].tolist(), list(range(0, 300, 3))
    engine, fetch = [], []
    for _ in range(3):
        start = time.perf_counter()
        client.query_points(
            "c",
            query=query,
            using="colbert",
            limit=100,
            query_filter=qm.Filter(must=[qm.HasIdCondition(has_id=chosen)]),
        )
        engine.append(time.perf_counter() - start)
        start = time.perf_counter()
        fetched = client.retrieve("c", chosen, with_vectors=True)
        _ = [(np.asarray(query) @ np.asarray(p.vector["colbert"], np.float32).T).max(1).sum() for p in fetched]
        fetch.append(time.perf_counter() - start)
    out["colbert_step_1024d_s"] = {
        "engine_restricted_query": statistics.median(engine),
        "client_fetch_and_score": statistics.median(fetch),
    }
    client.close()
    return out


def main() -> None:
    results: dict[str, Any] = {"note": "local mode = qdrant-client in-process (pure Python), not a server figure"}
    results["load_before"] = loadavg()
    try:
        import qdrant_edge  # noqa: F401

        results["engine_fidelity"] = {c: engine_fidelity(c) for c in ("tiny-m3", "tiny-m3-bin")}
        results["engine_bytes_per_document_bge_m3"] = engine_bytes()
    except ImportError:
        print("qdrant-edge-py is not installed: skipping the engine figures")
    results["local_mode"] = local_mode()
    results["load_after"] = loadavg()
    print(json.dumps(results, indent=2))
    print(write_result("qdrant_store", results))


if __name__ == "__main__":
    main()
