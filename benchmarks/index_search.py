"""Index benchmark: ``M3Index`` at 100k documents in a folder -- search latency, memory, the cost of
a commit, and the hybrid rerank of 100 candidates against FlagEmbedding's own scoring calls.

Synthetic data (timing depends on shapes, not on values): 100,000 documents with 1024-d unit
dense vectors, sparse rows of ~60-120 distinct token ids drawn Zipf-like from a 250,002-token
vocabulary with positive weights, and ColBERT matrices of 180-220 unit vectors of 1024 floats
stored float16. The index is a real ``M3Index`` folder (SQLite catalog + immutable segments),
written with the storage code (see ``_index_data.build_folder``) and opened with ``M3Index.load``.

ColBERT is ~410 kB per document (41 GB for 100k). Only ``--colbert-docs`` documents (20,000, an
8 GB file) get their own matrices: the index has ``docs / colbert_docs`` segments (5) of
``colbert_docs`` documents, and every segment's ``colbert.npy`` is a hard link to that one file,
so document ``i`` uses the matrices of document ``i % colbert_docs``. The rerank work per
candidate is that of a full-size index; the file is smaller.

Searches run through ``M3Index.search_batch`` itself; only the query encoder is a stub that
returns precomputed synthetic query encodings (24 tokens), so the timed part is exactly the
index's first stage (dense matrix products + sparse inverted indexes over the segments) and the
exact hybrid rerank of the candidates. "hot" timings search each query a second time (its
candidates' ColBERT pages are in memory); "cold" ones evict the ColBERT file from the page cache
before every query, so every candidate is read from disk, as when the file is much larger than
RAM (41 GB at 100k documents).

Commit costs (issue 14): on a copy of the 100k folder (segment files hard-linked, catalog
copied), one fresh process per case does ``M3Index.load`` -> ``add_encoded`` -> ``save()`` or
``M3Index.open`` -> ``add_encoded`` (each add commits), for no change, 10 documents and 1% of the
corpus (synthetic encodings, no model), and reports the bytes it wrote (``/proc/self/io``), the
change of the folder's size, its peak RSS over the RSS after loading, and the time.

The rerank comparison interleaves the two libraries query by query (FlagEmbedding runs in its
own environment, in a worker process that stays up): m3-rag reranks from its segments (ColBERT
scored straight from the float16 memory map), FlagEmbedding gets the same vectors as float32
matrices and ``{str(token_id): weight}`` dicts, the formats its ``encode`` returns.

Run (about 10-15 minutes on 2 busy cores, plus ~3 minutes to generate the data the first time)::

    python benchmarks/index_search.py
    python benchmarks/index_search.py --docs 20000 --colbert-docs 4000   # a quick check

The full run writes ``benchmarks/results/index_search.json``; a run with other sizes writes
``benchmarks/results/index_search_reduced.json`` (not in the README table).
"""

from __future__ import annotations

import argparse
import gc
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
from _common import CACHE, HERE, RESULTS, loadavg, run_json, summary, write_result
from _index_data import (
    VOCAB,
    WEIGHTS,
    SyntheticEmbedder,
    build_folder,
    clone_folder,
    colbert_source,
    evict,
    folder_bytes,
    index_memory,
    make_corpus,
    make_queries,
    rss_mb,
    segments_of,
)
from ref_env import ref_python

from m3_rag import M3Index, M3Output
from m3_rag.ranking import make_hits, rerank, top_k
from m3_rag.scoring import colbert_scores, lexical_scores
from m3_rag.sparse import stack_csr

QUIET_S = 0.25  # pause between the two processes' timed sections
STAGES: dict[str, Any] = {"dense": "dense", "sparse": "sparse", "dense+sparse": ("dense", "sparse")}
FULL = {"docs": 100_000, "dim": 1024, "colbert_docs": 20_000}  # the sizes of results/index_search.json


# ---------------------------------------------------------------------------- the first stage, step by step
def dense_all(index: M3Index, q: M3Output) -> np.ndarray:
    """(N,) dense scores of every row, segment by segment as the search computes them."""
    query = torch.from_numpy(np.ascontiguousarray(q.dense, dtype=np.float32))
    return torch.cat([s.dense_scores(query) for s in segments_of(index)]).numpy()[:, 0]


def sparse_all(index: M3Index, q: M3Output) -> np.ndarray:
    """(N,) lexical scores of every row from the segments' inverted indexes."""
    query = stack_csr(q.sparse, VOCAB)  # type: ignore[arg-type]
    return np.concatenate([np.asarray((query @ s.inverted(VOCAB)).todense()) for s in segments_of(index)], axis=1)[0]


def first_stage(index: M3Index, q: M3Output, stage: Any, candidates: int) -> np.ndarray:
    """The global candidate rows ``search_batch`` reranks for this query (every row is alive)."""
    stages = (stage,) if isinstance(stage, str) else stage
    found = []
    if "dense" in stages:
        found.append(top_k(dense_all(index, q), candidates))
    if "sparse" in stages:
        lexical = sparse_all(index, q)
        found.append(top_k(np.where(lexical > 0, lexical, -np.inf), candidates))
    return np.unique(np.concatenate(found))


def locate(index: M3Index, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(segment number, row in that segment) of global rows."""
    bases = np.concatenate([[0], np.cumsum([s.n for s in segments_of(index)])])
    seg_of = np.searchsorted(bases, rows, side="right") - 1
    return seg_of, rows - bases[seg_of]


def corpus_rows(index: M3Index, rows: np.ndarray) -> np.ndarray:
    """The corpus documents (``doc-<i>``) at global rows of the index (the view's segment order is
    not the order they were committed in)."""
    segments = segments_of(index)
    seg_of, local = locate(index, rows)
    ids = [segments[s].ids[r] for s, r in zip(seg_of.tolist(), local.tolist())]
    return np.array([int(str(i).removeprefix("doc-")) for i in ids], dtype=np.int64)


# ---------------------------------------------------------------------------- search latency
def time_searches(
    index: M3Index, names: list[str], stage: Any, *, k: int, candidates: int, cold: bool
) -> dict[str, Any]:
    """``M3Index.search_batch`` per query, in milliseconds."""
    if not cold:  # hot: a first pass over the same queries brings their candidates into memory
        for name in names:
            index.search_batch([name], k=k, candidates=candidates, first_stage=stage)
    times, hits_n = [], []
    for name in names:
        if cold:
            evict(index)
        t0 = time.perf_counter()
        hits = index.search_batch([name], k=k, candidates=candidates, first_stage=stage)[0]
        times.append((time.perf_counter() - t0) * 1000)
        hits_n.append(len(hits))
    out = summary(times)
    out = {"p50_ms": out.pop("median"), "p95_ms": out.pop("p95"), **out}
    out["hits_mean"] = float(np.mean(hits_n))
    return out


def breakdown(
    index: M3Index, stub: SyntheticEmbedder, names: list[str], *, k: int, candidates: int
) -> dict[str, float]:
    """Median ms of each step of a hot dense+sparse search, done with the segments' own methods
    in the order ``M3Index.search_batch`` does them (the queries were searched before, so their
    candidates' ColBERT pages are in memory), and of the whole ``search_batch`` of the same query
    (``pipeline_rest``: what the steps do not account for: query stub, candidate lists, checks)."""
    steps: dict[str, list[float]] = {
        s: [] for s in ("dense_matmul", "sparse_matmul", "top_k", "candidate_scores", "colbert_from_store",
                        "rerank_and_hits", "search_batch_total", "pipeline_rest")
    }  # fmt: skip
    segments = segments_of(index)
    for name in names:
        q = stub.queries[name]
        t = [time.perf_counter()]
        dense = dense_all(index, q)
        t.append(time.perf_counter())
        lexical = sparse_all(index, q)
        t.append(time.perf_counter())
        rows = np.unique(np.concatenate([
            top_k(dense, candidates), top_k(np.where(lexical > 0, lexical, -np.inf), candidates),
        ]))  # fmt: skip
        t.append(time.perf_counter())
        seg_of, local = locate(index, rows)
        groups = [(s, np.flatnonzero(seg_of == s)) for s in np.unique(seg_of).tolist()]
        d_scores = np.zeros(len(rows), np.float32)
        for s, pos in groups:  # as the view does: dense products of the candidates' stored rows
            d_scores[pos] = (segments[s].arrays.dense[local[pos]] * q.dense[0]).sum(axis=1, dtype=np.float32)  # type: ignore[index]
        s_scores = lexical[rows]
        t.append(time.perf_counter())
        colbert = np.zeros(len(rows), np.float32)
        for s, pos in groups:
            colbert[pos] = segments[s].colbert_scores(q.colbert[0], local[pos])  # type: ignore[index]
        t.append(time.perf_counter())
        places = list(zip(seg_of.tolist(), local.tolist()))
        ids = [segments[s].ids[r] for s, r in places]
        texts = [segments[s].texts[r] for s, r in places]
        metas = [segments[s].metadatas[r] for s, r in places]
        order, hybrid, per_mode = rerank(d_scores, s_scores, colbert, weights=WEIGHTS, k=k)
        make_hits(order, hybrid, per_mode, ids, texts, metas)  # type: ignore[arg-type]
        t.append(time.perf_counter())
        for step, a, b in zip(steps, t[:-1], t[1:]):
            steps[step].append((b - a) * 1000)
        t0 = time.perf_counter()
        index.search_batch([name], k=k, candidates=candidates, first_stage=("dense", "sparse"))
        total = (time.perf_counter() - t0) * 1000
        steps["search_batch_total"].append(total)
        steps["pipeline_rest"].append(total - (t[-1] - t[0]) * 1000)
    return {step: round(float(np.median(v)), 3) for step, v in steps.items()}


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
    """Exact hybrid rerank of stored candidates (global ``rows``): dense and lexical scores from
    the segments' stored rows, ColBERT scored from the float16 memory maps
    (``Segment.colbert_scores``, as ``search_batch`` does), then ``rerank``; returns the hybrid scores."""
    segments = segments_of(index)
    seg_of, local = locate(index, rows)
    dense = np.zeros(len(rows), np.float32)
    sparse = np.zeros(len(rows), np.float32)
    colbert = np.zeros(len(rows), np.float32)
    for s in np.unique(seg_of).tolist():
        pos = np.flatnonzero(seg_of == s)
        segment, mine = segments[s], local[pos]
        dense[pos] = segment.arrays.dense[mine] @ q.dense[0]  # type: ignore[index]
        ids, weights, offsets = segment.sparse_rows(mine)
        sparse[pos] = lexical_scores(q.sparse[0], sp.csr_matrix((weights, ids, offsets), shape=(len(pos), VOCAB)))  # type: ignore[index]
        colbert[pos] = segment.colbert_scores(q.colbert[0], mine)  # type: ignore[index]
    _, hybrid, _ = rerank(dense, sparse, colbert, weights=WEIGHTS, k=10)
    return hybrid


def m3_rerank_in_memory(q: M3Output, inputs: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]) -> None:
    """``colbert_scores`` and ``rerank`` on in-memory float32 inputs (what FlagEmbedding is given)."""
    dense, sparse, vecs, offs = inputs
    rerank(dense, sparse, colbert_scores(q.colbert[0], vecs, offs), weights=WEIGHTS, k=10)  # type: ignore[index]


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


def in_memory_inputs(corpus: Path, colbert_docs: int, q: M3Output, rows: np.ndarray) -> tuple[np.ndarray, ...]:
    """The candidates' dense and lexical scores and float32 ColBERT matrices, from the corpus files."""
    dense = np.load(corpus / "dense.npy", mmap_mode="r")
    s_ids, s_w = (
        np.load(corpus / "sparse_ids.npy", mmap_mode="r"),
        np.load(corpus / "sparse_weights.npy", mmap_mode="r"),
    )
    s_off = np.load(corpus / "sparse_offsets.npy")
    vectors, c_off = np.load(corpus / "colbert.npy", mmap_mode="r"), np.load(corpus / "colbert_offsets.npy")
    src = colbert_source(rows, colbert_docs)
    vecs = np.concatenate([vectors[a:b] for a, b in zip(c_off[src].tolist(), c_off[src + 1].tolist())]).astype(
        np.float32
    )
    offs = np.concatenate([[0], np.cumsum(np.diff(c_off)[src])]).astype(np.int64)
    parts = [(s_ids[a:b], s_w[a:b]) for a, b in zip(s_off[rows].tolist(), s_off[rows + 1].tolist())]
    lengths = np.array([len(p[0]) for p in parts], dtype=np.int64)
    csr = sp.csr_matrix(
        (np.concatenate([p[1] for p in parts]), np.concatenate([p[0] for p in parts]),
         np.concatenate([[0], np.cumsum(lengths)])), shape=(len(rows), VOCAB),
    )  # fmt: skip
    return np.asarray(dense[rows]) @ q.dense[0], lexical_scores(q.sparse[0], csr), vecs, offs  # type: ignore[index]


def compare_rerank(
    index: M3Index, corpus: Path, colbert_docs: int, queries: list[M3Output], *, candidates: int, reps: int
) -> dict[str, Any]:
    picked = [top_k(dense_all(index, q), candidates) for q in queries]
    arrays: dict[str, np.ndarray] = {"count": np.int64(len(queries))}
    in_memory = []
    for j, (q, rows) in enumerate(zip(queries, picked)):
        hybrid = m3_rerank(index, q, rows)
        docs = corpus_rows(index, rows)  # what FlagEmbedding's worker and the in-memory inputs read
        in_memory.append(in_memory_inputs(corpus, colbert_docs, q, docs))
        sparse = q.sparse[0]  # type: ignore[index]
        arrays |= {
            f"q{j}_dense": q.dense[0],  # type: ignore[index]
            f"q{j}_sparse_ids": np.asarray(sparse.indices, dtype=np.int64),
            f"q{j}_sparse_weights": np.asarray(sparse.weights, dtype=np.float32),
            f"q{j}_colbert": q.colbert[0],  # type: ignore[index]
            f"q{j}_rows": docs,
            f"q{j}_m3_hybrid": hybrid,
        }
    target = CACHE / "rerank-queries.npz"
    np.savez(target, **arrays)
    worker = FlagWorker(ref_python(), corpus, colbert_docs, target)
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
                        m3_rerank_in_memory(q, in_memory[j])  # type: ignore[arg-type]
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
        "m3_rag_from_store_does": "dense and lexical scores from the segments' stored rows, ColBERT scored from the "
        "float16 memory maps block by block (Segment.colbert_scores -> colbert_scores_at), rerank (hybrid scores, "
        "top_k): the rerank step of M3Index.search_batch",
        "m3_rag_in_memory_does": "colbert_scores and m3_rag.ranking.rerank on float32 candidate matrices already "
        "in memory (the inputs FlagEmbedding is given)",
        "roofline": roofline(in_memory[0][2], queries[0].colbert[0], flag_s["median"]),  # type: ignore[index]
        "flagembedding_does": "per candidate: compute_lexical_matching_score(q, p) and colbert_score(q, p) "
        "(unbound M3Embedder methods, float32 matrices, str-keyed dicts as its encode returns them); dense by "
        "one numpy matmul; hybrid weighted sum; argsort",
        "flagembedding_env": versions,
    }


# ---------------------------------------------------------------------------- commit costs
def commit_costs(folder: Path, *, dim: int, adds: list[int], reps: int) -> dict[str, Any]:
    """Each case in a fresh process on its own copy of ``folder`` (see ``_commit_worker.py``)."""
    clone = CACHE / "commit-clone"
    runs: dict[str, list[dict[str, Any]]] = {}
    for rep in range(reps):
        for mode in ("load", "open"):
            for add in [0, *adds]:
                clone_folder(folder, clone)
                try:
                    res = run_json(
                        [sys.executable, str(HERE / "_commit_worker.py"), str(clone), mode, str(add), str(dim)]
                    )
                finally:
                    shutil.rmtree(clone, ignore_errors=True)
                if res["documents_seen_by_a_new_load"] != res["documents_before"] + add:
                    raise RuntimeError(
                        f"commit case {mode} +{add}: a new load sees {res['documents_seen_by_a_new_load']}"
                    )
                runs.setdefault(f"{mode}+{add}", []).append(res)
                print(f"  commit {mode} +{add} (rep {rep}): {res['write_bytes'] / 2**20:.1f} MiB written, "
                      f"{res['commit_s']:.2f} s", file=sys.stderr)  # fmt: skip
    cases = {}
    for name, results in runs.items():
        median = {key: float(np.median([r[key] for r in results])) for key in (
            "load_s", "commit_s", "add_encoded_s", "wchar", "write_bytes", "folder_bytes_change",
            "peak_over_loaded_mb", "peak_over_ready_mb", "rss_loaded_mb")}  # fmt: skip
        added = results[0]["added"]
        median["write_bytes_per_added_doc"] = median["write_bytes"] / added if added else None
        median["folder_bytes_change_per_added_doc"] = median["folder_bytes_change"] / added if added else None
        cases[name] = {"mode": results[0]["mode"], "added": added, "median": median, "runs": results}
    return cases


# ---------------------------------------------------------------------------- main
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--docs", type=int, default=FULL["docs"])
    parser.add_argument("--dim", type=int, default=FULL["dim"])
    parser.add_argument("--colbert-docs", type=int, default=FULL["colbert_docs"],
                        help="documents with their own ColBERT matrices (= documents per segment)")  # fmt: skip
    parser.add_argument("--queries", type=int, default=100, help="queries per hot search timing")
    parser.add_argument("--cold-queries", type=int, default=30, help="queries per cold search timing")
    parser.add_argument("--query-tokens", type=int, default=24)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--candidates", type=int, default=100)
    parser.add_argument("--rerank-queries", type=int, default=20)
    parser.add_argument("--reps", type=int, default=3, help="repetitions of the rerank comparison")
    parser.add_argument("--commit-reps", type=int, default=2, help="repetitions of each commit case")
    parser.add_argument("--prepare-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.docs % args.colbert_docs:
        sys.exit(f"--docs ({args.docs}) must be a multiple of --colbert-docs ({args.colbert_docs})")

    load_start = loadavg()
    t_start = time.perf_counter()
    corpus_dir = CACHE / f"index-{args.docs}-{args.dim}-{args.colbert_docs}"
    index_dir = corpus_dir / "m3index"
    stub = SyntheticEmbedder(args.dim)
    need = args.colbert_docs * 200 * args.dim * 2 + 2 * args.docs * args.dim * 4
    free = shutil.disk_usage(HERE).free
    if not (corpus_dir / "DONE.json").is_file() and free < need + 10 * 2**30:
        sys.exit(f"the corpus needs {need / 2**30:.1f} GiB (+10 GiB spare) but {free / 2**30:.1f} GiB are "
                 "free: pass a smaller --colbert-docs")  # fmt: skip
    if args.prepare_only:
        make_corpus(corpus_dir, args.docs, args.dim, args.colbert_docs)
        build_folder(corpus_dir, index_dir, stub, args.colbert_docs)
        return
    if not (index_dir.with_name("m3index.json")).is_file():  # in a child process: this one's RSS stays clean
        print(f"generating the corpus and the index folder in {corpus_dir} ...", file=sys.stderr)
        subprocess.run([sys.executable, __file__, *sys.argv[1:], "--prepare-only"], check=True)
    corpus = make_corpus(corpus_dir, args.docs, args.dim, args.colbert_docs)
    built = build_folder(corpus_dir, index_dir, stub, args.colbert_docs)

    queries = make_queries(args.queries, args.dim, args.query_tokens)
    names = stub.register("q", queries)
    rss0 = rss_mb()
    t0 = time.perf_counter()
    index = M3Index.load(index_dir, stub)
    load_s = time.perf_counter() - t0
    rss_loaded = rss_mb()
    t0 = time.perf_counter()
    index.search_batch([names[0]], k=args.k, candidates=args.candidates, first_stage="sparse")
    first_search_s = time.perf_counter() - t0  # builds every segment's inverted index
    memory = index_memory(index, args.docs)
    memory["rss_growth_per_doc_bytes"] = round((rss_mb() - rss0) * 2**20 / args.docs, 1)
    memory["rss_growth_load_per_doc_bytes"] = round((rss_loaded - rss0) * 2**20 / args.docs, 1)
    memory["rss_note"] = (
        "process RSS growth from M3Index.load (arrays read and checked, ids, texts and metadata from the catalog) "
        "and the first search (inverted indexes built); ColBERT is a memory map, not resident"
    )
    memory["colbert_disk_bytes_per_doc"] = round(corpus["colbert_file_bytes"] / args.colbert_docs, 1)
    memory["colbert_disk_gb_at_docs"] = round(memory["colbert_disk_bytes_per_doc"] * args.docs / 1e9, 2)

    print("search timings ...", file=sys.stderr)
    search: dict[str, Any] = {}
    for mode, stage in STAGES.items():
        hot = time_searches(index, names, stage, k=args.k, candidates=args.candidates, cold=False)
        reranked = [len(first_stage(index, q, stage, args.candidates)) for q in queries]
        hot["candidates_reranked_mean"] = float(np.mean(reranked))
        search[mode] = {"hot": hot}
    steps = breakdown(index, stub, names[:30], k=args.k, candidates=args.candidates)  # hot: before the evictions
    for mode, stage in STAGES.items():
        cold = time_searches(index, names[: args.cold_queries], stage, k=args.k, candidates=args.candidates, cold=True)
        reranked = [len(first_stage(index, q, stage, args.candidates)) for q in queries[: args.cold_queries]]
        cold["candidates_reranked_mean"] = float(np.mean(reranked))
        search[mode]["cold"] = cold

    print("rerank comparison ...", file=sys.stderr)
    rerank_queries = make_queries(args.rerank_queries, args.dim, args.query_tokens, seed=2)
    comparison = compare_rerank(
        index, corpus_dir, args.colbert_docs, rerank_queries, candidates=args.candidates, reps=args.reps
    )
    index.close()
    del index
    gc.collect()

    print("commit costs ...", file=sys.stderr)
    adds = sorted({10, max(1, args.docs // 100)})
    commits = commit_costs(index_dir, dim=args.dim, adds=adds, reps=args.commit_reps)
    on_disk = folder_bytes(index_dir)
    per_doc_full = (on_disk["bytes"] - corpus["colbert_file_bytes"]) / args.docs + memory["colbert_disk_bytes_per_doc"]

    full = args.docs == FULL["docs"] and args.dim == FULL["dim"] and args.colbert_docs == FULL["colbert_docs"]
    payload = {
        "load_before": load_start,
        "load_after": loadavg(),
        "wall_s": round(time.perf_counter() - t_start, 1),
        "reduced": not full,
        "setup": {
            **corpus,
            "query_tokens": args.query_tokens,
            "query_colbert_vectors": args.query_tokens - 1,
            "k": args.k,
            "candidates_per_mode": args.candidates,
            "weights": WEIGHTS,
            "index_folder": {**built, "segments_of_docs": args.colbert_docs},
            "load_s": round(load_s, 2),
            "first_search_s": round(first_search_s, 2),
            "colbert_mapping": "segments of colbert_documents rows whose colbert.npy are hard links to one file: "
            "document i uses the ColBERT matrices of document i % colbert_documents",
        },
        "search_ms": search,
        "search_breakdown_dense+sparse_hot_median_ms": steps,
        "memory": memory,
        "rerank_100_candidates_ms": comparison,
        "commit": {
            "documents": args.docs,
            "index_bytes_on_disk": on_disk["bytes"],
            "index_bytes_if_every_doc_had_its_own_colbert": round(per_doc_full * args.docs),
            "index_bytes_per_doc": round(per_doc_full, 1),
            "cases": commits,
            "how": "one fresh process per case on a copy of the folder; bytes from /proc/self/io around the commit "
            "(write_bytes: sent to storage, counted when pages are dirtied; wchar: passed to write calls), "
            "the folder's files (each inode once) before and after, peak RSS since a VmHWM reset just before the "
            "commit minus the RSS after loading (peak_over_loaded includes the caller's input encodings; "
            "peak_over_ready does not); load_peak_rss_mb is VmHWM after the load. ru_maxrss_mb is not the "
            "worker's own: Linux folds the parent's RSS at spawn into it",
        },
        "targets": {
            "search_p50_le_100ms_hot": {m: search[m]["hot"]["p50_ms"] <= 100 for m in search},
            "rerank_ge_20x": comparison["ratio_median"] >= 20,
        },
    }
    # a reduced run never overwrites the committed 100k results
    path = write_result("index_search" if full else "index_search_reduced", payload)
    print(json.dumps({
        "search_p50_ms_hot": {m: round(search[m]["hot"]["p50_ms"], 1) for m in search},
        "rerank_ratio": round(comparison["ratio_median"], 2),
        "commit_write_mb": {c: round(v["median"]["write_bytes"] / 2**20, 2) for c, v in commits.items()},
        "result": str(path.relative_to(RESULTS.parent.parent)),
    }))  # fmt: skip


if __name__ == "__main__":
    main()
