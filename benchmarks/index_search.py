"""Index benchmark: ``M3Index`` search latency and memory at 100k documents, and the hybrid rerank
of 100 candidates against FlagEmbedding's own scoring calls.

Synthetic data (timing depends on shapes, not on values): 100,000 documents with 1024-d unit
dense vectors, sparse rows of ~60-120 distinct token ids drawn Zipf-like from a 250,002-token
vocabulary with positive weights, and ColBERT matrices of 180-220 unit vectors of 1024 floats
stored float16 in one memory-mapped ``.npy`` (the layout of a loaded ``M3Index``).

Searches run through ``M3Index.search_batch`` itself; only the query encoder is replaced by a
stub that returns precomputed synthetic query encodings (24 tokens), so the timed part is
exactly the index's first stage (dense matrix product + sparse inverted index) and the exact
hybrid rerank of the candidates.

ColBERT on disk is ~410 kB per document (41 GB for 100k). By default only ``--colbert-docs``
documents (20,000, an 8 GB file) get their own matrices and document ``i`` uses those of
document ``i % colbert_docs``: the rerank work per candidate is the same, the file smaller.
"hot" timings search each query a second time (its candidates' ColBERT pages are in memory);
"cold" ones evict the file from the page cache before every query, so every candidate is read
from disk, as when the file is much larger than RAM (41 GB at 100k documents).

The rerank comparison interleaves the two libraries query by query (FlagEmbedding runs in its
own environment, in a worker process that stays up): m3-rag reranks from its store (ColBERT
scored straight from the float16 file), FlagEmbedding gets the same vectors as float32 matrices and
``{str(token_id): weight}`` dicts, the formats its ``encode`` returns.

Run (about 10-15 minutes on 2 busy cores)::

    python benchmarks/index_search.py
    python benchmarks/index_search.py --colbert-docs 100000   # the full 41 GB ColBERT file

It writes ``benchmarks/results/index_search.json``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch
from _common import CACHE, HERE, loadavg, summary, write_result
from _index_data import VOCAB, WEIGHTS, QueryStub, build_index, evict, index_memory, make_corpus, make_queries, rss_mb
from ref_env import ref_python

from m3_rag import M3Index, M3Output
from m3_rag.retrieval import rerank, top_k
from m3_rag.scoring import colbert_scores, lexical_scores, sparse_to_csr

QUIET_S = 0.25  # pause between the two processes' timed sections
STAGES: dict[str, Any] = {"dense": "dense", "sparse": "sparse", "dense+sparse": ("dense", "sparse")}


# ---------------------------------------------------------------------------- search latency
def time_searches(
    index: M3Index, stub: QueryStub, queries: list[M3Output], stage: Any, *, k: int, candidates: int, cold: bool
) -> dict[str, Any]:
    """``M3Index.search_batch`` per query, in milliseconds."""
    vectors = index._colbert.chunks[0]  # type: ignore[union-attr]
    if not cold:  # hot: a first pass over the same queries brings their candidates into memory
        for j, q in enumerate(queries):
            stub.use(q)
            index.search_batch([f"q{j}"], k=k, candidates=candidates, first_stage=stage)
    times, reranked, hits_n = [], [], []
    for j, q in enumerate(queries):
        stub.use(q)
        if cold:
            evict(vectors)
        t0 = time.perf_counter()
        hits = index.search_batch([f"q{j}"], k=k, candidates=candidates, first_stage=stage)[0]
        times.append((time.perf_counter() - t0) * 1000)
        hits_n.append(len(hits))
        reranked.append(len(first_stage(index, q, stage, candidates)))
    out = summary(times)
    out = {"p50_ms": out.pop("median"), "p95_ms": out.pop("p95"), **out}
    out["candidates_reranked_mean"] = float(np.mean(reranked))
    out["hits_mean"] = float(np.mean(hits_n))
    return out


def first_stage(index: M3Index, q: M3Output, stage: Any, candidates: int) -> np.ndarray:
    """The candidate rows ``search_batch`` reranks for this query."""
    stages = (stage,) if isinstance(stage, str) else stage
    found = []
    if "dense" in stages:
        found.append(top_k(dense_first_stage(index, q)[:, 0], candidates))
    if "sparse" in stages:
        lexical = np.asarray((sparse_to_csr(q.sparse, VOCAB) @ index._inverted_index()).todense()).ravel()
        found.append(top_k(np.where(lexical > 0, lexical, -np.inf), candidates))
    return np.unique(np.concatenate(found))


def breakdown(index: M3Index, queries: list[M3Output], *, k: int, candidates: int) -> dict[str, float]:
    """Median ms of each step of a hot dense+sparse search, the steps of ``search_batch`` one by one
    (the queries were searched before, so their candidates' ColBERT pages are in memory)."""
    steps: dict[str, list[float]] = {
        k_: [] for k_ in ("dense_matmul", "sparse_matmul", "top_k", "colbert_from_store", "hybrid_top_k")
    }
    inverted = index._inverted_index()
    for q in queries:
        t = [time.perf_counter()]
        dense_all = dense_first_stage(index, q)
        t.append(time.perf_counter())
        sparse_all = np.asarray((sparse_to_csr(q.sparse, VOCAB) @ inverted).todense(), dtype=np.float32)
        t.append(time.perf_counter())
        rows = np.unique(np.concatenate([
            top_k(dense_all[:, 0], candidates),
            top_k(np.where(sparse_all[0] > 0, sparse_all[0], -np.inf), candidates),
        ]))  # fmt: skip
        t.append(time.perf_counter())
        # gathered, cast to float32 and multiplied block by block (m3_rag.scoring.colbert_scores_at)
        colbert = index._candidate_colbert([rows])(q.colbert[0], rows)
        t.append(time.perf_counter())
        hybrid = (dense_all[rows, 0] + sparse_all[0, rows] + colbert) / 3
        top_k(hybrid, k)
        t.append(time.perf_counter())
        for name, a, b in zip(steps, t[:-1], t[1:]):
            steps[name].append((b - a) * 1000)
    return {name: round(float(np.median(v)), 3) for name, v in steps.items()}


def dense_first_stage(index: M3Index, q: M3Output) -> np.ndarray:
    """The dense scores of every document, as ``search_batch`` computes them."""
    return index._dense_scores(q.dense)


def roofline(vectors: np.ndarray, query: np.ndarray, flag_ms: float) -> dict[str, Any]:
    """The arithmetic floor of an exact ColBERT rerank on this machine.

    ``vectors`` are the (M, d) float32 ColBERT rows of 100 candidates. The token-score product
    alone, (M, d) x (d, Lq), costs ``2 * M * d * Lq`` flops; timed here as one torch matrix
    product on data already in memory and in float32 (the best case), and against the
    machine's square-matrix sgemm peak. ``flag_ms`` divided by these gives the largest ratio
    any exact implementation could reach against FlagEmbedding here.
    """
    x = torch.from_numpy(np.ascontiguousarray(vectors, dtype=np.float32))
    q = torch.zeros((-(-len(query) // 8) * 8, x.shape[1]))
    q[: len(query)] = torch.from_numpy(query)
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    skinny, square = [], []
    for _ in range(30):
        t0 = time.perf_counter()
        x @ q.T
        skinny.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        a @ b
        square.append(time.perf_counter() - t0)
    flops = 2.0 * x.shape[0] * x.shape[1] * len(query)
    skinny_s, peak = float(np.min(skinny)), 2.0 * 2048**3 / float(np.min(square))
    return {
        "colbert_rows": int(x.shape[0]),
        "flops": flops,
        "skinny_product_min_ms": round(skinny_s * 1000, 3),
        "skinny_product_gflops": round(flops / skinny_s / 1e9, 1),
        "square_sgemm_peak_gflops": round(peak / 1e9, 1),
        "floor_ms_at_peak": round(flops / peak * 1000, 3),
        "max_ratio_vs_flag_at_skinny_product": round(flag_ms / (skinny_s * 1000), 2),
        "max_ratio_vs_flag_at_peak": round(flag_ms / (flops / peak * 1000), 2),
    }


# ---------------------------------------------------------------------------- rerank comparison
def m3_rerank(index: M3Index, q: M3Output, rows: np.ndarray) -> np.ndarray:
    """Exact hybrid rerank of stored candidates (their dense and lexical scores from the stored
    rows, ColBERT scored from the float16 store as ``search_batch`` does, then ``rerank``);
    returns the hybrid scores."""
    dense = index._dense.matrix[rows] @ q.dense[0]
    s_ids, s_off = index._sparse_ids.gather(rows)
    s_weights = index._sparse_weights.gather(rows)[0]
    sparse = lexical_scores(q.sparse[0], sp.csr_matrix((s_weights, s_ids, s_off), shape=(len(rows), VOCAB)))
    colbert = index._candidate_colbert([rows])(q.colbert[0], rows)
    _, hybrid, _ = rerank(dense, sparse, colbert, weights=WEIGHTS, k=10)
    return hybrid


def m3_rerank_in_memory(q: M3Output, inputs: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]) -> None:
    """``colbert_scores`` and ``rerank`` on in-memory float32 inputs (what FlagEmbedding is given)."""
    dense, sparse, vecs, offs = inputs
    rerank(dense, sparse, colbert_scores(q.colbert[0], vecs, offs), weights=WEIGHTS, k=10)


class FlagWorker:
    """FlagEmbedding's rerank in the reference environment, one query per request."""

    def __init__(self, python: Path, folder: Path, colbert_docs: int, queries: Path) -> None:
        cmd = [str(python), str(HERE / "_rerank_worker.py"), str(folder), str(colbert_docs), str(queries)]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1)

    def run(self, j: int, threads: int = 0) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(f"{j} {threads}\n")
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the FlagEmbedding worker stopped (exit {self.proc.wait()})")
        return json.loads(line)

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        self.proc.wait(timeout=60)


def compare_rerank(
    index: M3Index, folder: Path, colbert_docs: int, queries: list[M3Output], *, candidates: int, reps: int
) -> dict[str, Any]:
    picked = [top_k(index._dense.matrix @ q.dense[0], candidates) for q in queries]
    arrays: dict[str, np.ndarray] = {"count": np.int64(len(queries))}
    in_memory = []
    for j, (q, rows) in enumerate(zip(queries, picked)):
        hybrid = m3_rerank(index, q, rows)
        vecs, offs = index._colbert.gather(rows)  # type: ignore[union-attr]
        s_ids, s_off = index._sparse_ids.gather(rows)
        csr = sp.csr_matrix((index._sparse_weights.gather(rows)[0], s_ids, s_off), shape=(len(rows), VOCAB))
        in_memory.append((index._dense.matrix[rows] @ q.dense[0], lexical_scores(q.sparse[0], csr),
                          vecs.astype(np.float32), offs))  # fmt: skip
        arrays |= {
            f"q{j}_dense": q.dense[0],
            f"q{j}_sparse_ids": np.fromiter(q.sparse[0], dtype=np.int64),
            f"q{j}_sparse_weights": np.fromiter(q.sparse[0].values(), dtype=np.float32),
            f"q{j}_colbert": q.colbert[0],
            f"q{j}_rows": rows,
            f"q{j}_m3_hybrid": hybrid,
        }
    target = CACHE / "rerank-queries.npz"
    np.savez(target, **arrays)
    worker = FlagWorker(ref_python(), folder, colbert_docs, target)
    m3_ms: list[float] = []
    m3_mem_ms: list[float] = []
    flag_ms: list[float] = []
    flag1_ms: list[float] = []
    paired: list[float] = []
    diff = 0.0
    try:
        worker.run(0)  # warm-up of both sides
        m3_rerank(index, queries[0], picked[0])
        for rep in range(reps):
            for j, (q, rows) in enumerate(zip(queries, picked)):
                libs = ("m3", "flag") if (rep + j) % 2 == 0 else ("flag", "m3")
                for lib in libs:
                    # let the other side's BLAS / OpenMP threads stop spinning before timing this one
                    time.sleep(QUIET_S)
                    if lib == "m3":
                        t0 = time.perf_counter()
                        m3_rerank(index, q, rows)
                        m3_ms.append((time.perf_counter() - t0) * 1000)
                        time.sleep(QUIET_S)
                        t0 = time.perf_counter()
                        m3_rerank_in_memory(q, in_memory[j])
                        m3_mem_ms.append((time.perf_counter() - t0) * 1000)
                    else:
                        res = worker.run(j)
                        flag_ms.append(res["ms"])
                        diff = max(diff, res["max_abs_diff_vs_m3"])
                        time.sleep(QUIET_S)
                        flag1_ms.append(worker.run(j, threads=1)["ms"])
                paired.append(flag_ms[-1] / m3_ms[-1])
        versions = worker.run(-1)
    finally:
        worker.close()
    m3_s, mem_s, flag_s, flag1_s = summary(m3_ms), summary(m3_mem_ms), summary(flag_ms), summary(flag1_ms)
    threads = versions.pop("threads", None)
    return {
        "candidates": candidates,
        "queries": len(queries),
        "reps": reps,
        "m3_rag_from_store": m3_s,
        "m3_rag_in_memory_float32": mem_s,
        "flagembedding": flag_s,
        "flagembedding_torch_threads": threads,
        "flagembedding_1_thread": flag1_s,
        "ratio_median": flag_s["median"] / m3_s["median"],
        "ratio_median_vs_flag_1_thread": flag1_s["median"] / m3_s["median"],
        "ratio_median_in_memory": flag_s["median"] / mem_s["median"],
        "ratio_paired_median": float(np.median(paired)),
        "max_abs_diff_hybrid": diff,
        "m3_rag_from_store_does": "dense and lexical scores from the stored rows, ColBERT scored from the float16 "
        "mmap store block by block (colbert_scores_at), hybrid_scores, top_k (the rerank step of "
        "M3Index.search_batch)",
        "m3_rag_in_memory_does": "colbert_scores and m3_rag.retrieval.rerank on float32 candidate matrices already "
        "in memory (the inputs FlagEmbedding is given)",
        "roofline": roofline(in_memory[0][2], queries[0].colbert[0], flag_s["median"]),
        "flagembedding_does": "per candidate: compute_lexical_matching_score(q, p) and colbert_score(q, p) "
        "(unbound M3Embedder methods, float32 matrices, str-keyed dicts as its encode returns them); dense by "
        "one numpy matmul; hybrid weighted sum; argsort",
        "flagembedding_env": versions,
    }


# ---------------------------------------------------------------------------- main
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--docs", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=1024)
    parser.add_argument("--colbert-docs", type=int, default=20_000, help="documents with their own ColBERT matrices")
    parser.add_argument("--queries", type=int, default=100, help="queries per hot search timing")
    parser.add_argument("--cold-queries", type=int, default=30, help="queries per cold search timing")
    parser.add_argument("--query-tokens", type=int, default=24)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--candidates", type=int, default=100)
    parser.add_argument("--rerank-queries", type=int, default=20)
    parser.add_argument("--reps", type=int, default=3, help="repetitions of the rerank comparison")
    parser.add_argument("--prepare-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()

    load_start = loadavg()
    t_start = time.perf_counter()
    folder = CACHE / f"index-{args.docs}-{args.dim}-{args.colbert_docs}"
    need = args.colbert_docs * 200 * args.dim * 2
    free = shutil.disk_usage(HERE).free
    if not (folder / "DONE.json").is_file() and free < need + 10 * 2**30:
        sys.exit(f"the ColBERT file needs {need / 2**30:.1f} GiB (+10 GiB spare) but {free / 2**30:.1f} GiB are "
                 "free: pass a smaller --colbert-docs")  # fmt: skip
    if args.prepare_only:
        make_corpus(folder, args.docs, args.dim, args.colbert_docs)
        return
    if not (folder / "DONE.json").is_file():  # in a child process: this one's RSS stays clean
        print(f"generating the corpus in {folder} ...", file=sys.stderr)
        subprocess.run([sys.executable, __file__, *sys.argv[1:], "--prepare-only"], check=True)
    corpus = make_corpus(folder, args.docs, args.dim, args.colbert_docs)

    stub = QueryStub(args.dim)
    rss0 = rss_mb()
    t0 = time.perf_counter()
    index = build_index(folder, args.docs, args.colbert_docs, stub)
    index._inverted_index()
    build_s = time.perf_counter() - t0
    memory = index_memory(index, args.docs)
    memory["rss_growth_per_doc_bytes"] = round((rss_mb() - rss0) * 2**20 / args.docs, 1)
    memory["rss_note"] = (
        "process RSS growth from loading the arrays and building the inverted index (ids, texts, metadata "
        "included; ColBERT is a memory map, not resident)"
    )
    memory["colbert_disk_bytes_per_doc"] = round(corpus["colbert_file_bytes"] / args.colbert_docs, 1)
    memory["colbert_disk_gb_at_docs"] = round(memory["colbert_disk_bytes_per_doc"] * args.docs / 1e9, 2)

    queries = make_queries(args.queries, args.dim, args.query_tokens)
    print("search timings ...", file=sys.stderr)
    search: dict[str, Any] = {}
    for name, stage in STAGES.items():
        search[name] = {"hot": time_searches(index, stub, queries, stage, k=args.k, candidates=args.candidates,
                                             cold=False)}  # fmt: skip
    steps = breakdown(index, queries[:30], k=args.k, candidates=args.candidates)  # hot: before the evictions
    for name, stage in STAGES.items():
        search[name]["cold"] = time_searches(index, stub, queries[: args.cold_queries], stage, k=args.k,
                                             candidates=args.candidates, cold=True)  # fmt: skip

    print("rerank comparison ...", file=sys.stderr)
    rerank_queries = make_queries(args.rerank_queries, args.dim, args.query_tokens, seed=2)
    comparison = compare_rerank(
        index, folder, args.colbert_docs, rerank_queries, candidates=args.candidates, reps=args.reps
    )
    payload = {
        "load_before": load_start,
        "load_after": loadavg(),
        "wall_s": round(time.perf_counter() - t_start, 1),
        "setup": {
            **corpus,
            "query_tokens": args.query_tokens,
            "query_colbert_vectors": args.query_tokens - 1,
            "k": args.k,
            "candidates_per_mode": args.candidates,
            "weights": WEIGHTS,
            "build_index_s": round(build_s, 2),
            "colbert_mapping": "document i uses the ColBERT matrices of document i % colbert_documents",
        },
        "search_ms": search,
        "search_breakdown_dense+sparse_hot_median_ms": steps,
        "memory": memory,
        "rerank_100_candidates_ms": comparison,
        "targets": {
            "search_p50_le_100ms_hot": {m: search[m]["hot"]["p50_ms"] <= 100 for m in search},
            "rerank_ge_20x": comparison["ratio_median"] >= 20,
        },
    }
    path = write_result("index_search", payload)
    print(json.dumps({
        "search_p50_ms_hot": {m: round(search[m]["hot"]["p50_ms"], 1) for m in search},
        "rerank_ratio": round(comparison["ratio_median"], 2),
        "result": str(path),
    }))  # fmt: skip


if __name__ == "__main__":
    main()
