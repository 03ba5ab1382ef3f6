"""Fidelity of float16 and int8 ColBERT storage against float32 on the mid-size checkpoint.

The corpus is 3,000 benchmark passages of 24-200 tokens (``assets.corpus``); 250 queries are
spans of 4-8 words of random passages plus 0-3 words of others. The passages are encoded once
(into a float32 ``EncodingStore``, which is lossless) and put into a float16 and an int8 store;
every query is then scored against every passage (dense, sparse, ColBERT, hybrid 1:1:1) from
what each store returns. Reported per dtype: the largest absolute ColBERT (and hybrid) score
error against float32, the share of queries whose hybrid top-10 is identical in order and as a
set, and for the queries whose top-10 differs, how far apart float32 scored the passages that
changed places (how near a tie it was). tests/test_encoding_fidelity.py measures and pins the same
on the tiny checkpoints.

    python benchmarks/encoding_fidelity.py        # ~2-4 minutes (encoding 3,000 passages); results/encoding_fidelity.json
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from _common import ROOT, loadavg, write_result
from assets import checkpoint, corpus

sys.path.insert(0, str(ROOT))

import torch

from m3_rag import EncodingStore, M3Embedder, encode_with_store, fetch_encodings
from m3_rag.colbert_codec import dequantize
from m3_rag.scoring import hybrid_scores
from m3_rag.sparse import stack_csr


def make_queries(texts: list[str], n: int, seed: int = 5) -> list[str]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        words = texts[int(rng.integers(len(texts)))].split()
        k = int(rng.integers(4, 9))
        start = int(rng.integers(0, max(1, len(words) - k)))
        extra = texts[int(rng.integers(len(texts)))].split()[: int(rng.integers(0, 4))]
        out.append(" ".join(words[start : start + k] + extra))
    return out


def colbert_all(queries: list[np.ndarray], vectors: np.ndarray, offsets: np.ndarray, group: int = 16) -> np.ndarray:
    """(n_queries, n_passages) exhaustive ColBERT scores, ``group`` queries per matrix product."""
    passages = torch.from_numpy(np.ascontiguousarray(vectors, dtype=np.float32))
    out = np.empty((len(queries), len(offsets) - 1), dtype=np.float32)
    for a in range(0, len(queries), group):
        chunk = queries[a : a + group]
        sizes = [len(x) for x in chunk]
        tokens = (passages @ torch.from_numpy(np.concatenate(chunk).astype(np.float32)).T).numpy()
        best = np.maximum.reduceat(tokens, offsets[:-1], axis=0)
        starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
        out[a : a + len(chunk)] = (np.add.reduceat(best, starts, axis=1) / np.array(sizes, np.float32)).T
    return out


def fidelity(m3: M3Embedder, passages: list[str], queries: list[str], folder: Path) -> dict[str, Any]:
    t0 = time.perf_counter()
    q = m3.encode_queries(queries)
    exact = EncodingStore(folder / "float32.sqlite", m3, colbert_dtype="float32")
    out = encode_with_store(m3, passages, exact, show_progress=True)
    encode_s = time.perf_counter() - t0
    scores, dense, sparse = {}, None, None
    for dtype in ("float32", "float16", "int8"):
        store = exact if dtype == "float32" else EncodingStore(folder / f"{dtype}.sqlite", m3, colbert_dtype=dtype)  # type: ignore[arg-type]
        if dtype != "float32":
            store.put(passages, out, max_length=m3.passage_max_length)
        packed = fetch_encodings(m3, passages, store)
        scores[dtype] = colbert_all(q.colbert, dequantize(packed.colbert, packed.scales), packed.offsets)  # type: ignore[arg-type]
        if dtype == "float32":
            dense = q.dense @ packed.dense.T  # type: ignore[operator]
            sparse = (stack_csr(q.sparse, m3.vocab_size) @ stack_csr(packed.sparse, m3.vocab_size).T).toarray()  # type: ignore[arg-type]
    hybrid = {dtype: hybrid_scores(dense, sparse, colbert) for dtype, colbert in scores.items()}  # type: ignore[arg-type]
    top = np.argsort(-hybrid["float32"], axis=1, kind="stable")[:, :10]
    ordered = np.sort(hybrid["float32"], axis=1)[:, ::-1][:, :11]
    figures: dict[str, Any] = {
        "encode_s": encode_s,
        "float32_top11_smallest_gap_median": float(np.median(np.diff(-ordered, axis=1).min(axis=1))),
        "colbert_score_mean": float(scores["float32"].mean()),
    }
    for dtype in ("float16", "int8"):
        mine = np.argsort(-hybrid[dtype], axis=1, kind="stable")[:, :10]
        same = np.all(mine == top, axis=1)
        same_set = np.array([set(a) == set(b) for a, b in zip(mine.tolist(), top.tolist())])
        gaps = [
            float(abs(hybrid["float32"][j, top[j, i]] - hybrid["float32"][j, mine[j, i]]))
            for j in np.flatnonzero(~same)
            for i in np.flatnonzero(mine[j] != top[j])[:1]
        ]
        figures[dtype] = {
            "colbert_error_max": float(np.abs(scores[dtype] - scores["float32"]).max()),
            "colbert_error_mean": float(np.abs(scores[dtype] - scores["float32"]).mean()),
            "hybrid_error_max": float(np.abs(hybrid[dtype] - hybrid["float32"]).max()),
            "same_top10": float(same.mean()),
            "same_top10_set": float(same_set.mean()),
            "largest_gap_swapped": max(gaps, default=0.0),
        }
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--passages", type=int, default=3000)
    parser.add_argument("--queries", type=int, default=250)
    args = parser.parse_args()
    ckpt = checkpoint("cpu")
    texts, tokens = corpus("passages", ckpt, count=args.passages)
    queries = make_queries(texts, args.queries)
    m3 = M3Embedder.from_pretrained(ckpt, device="cpu")
    load_before = loadavg()
    with tempfile.TemporaryDirectory(prefix="m3-fidelity-") as folder:
        figures = fidelity(m3, texts, queries, Path(folder))
    setup = {"checkpoint": ckpt.name, "passages": len(texts), "passage_tokens": int(sum(tokens)),
             "queries": len(queries), "colbert_dim": m3.colbert_dim, "weights": [1, 1, 1], "top_k": 10}  # fmt: skip
    path = write_result("encoding_fidelity", {"setup": setup, "figures": figures, "load_before": load_before,
                                               "load_after": loadavg()})  # fmt: skip
    print(figures, path)


if __name__ == "__main__":
    main()
