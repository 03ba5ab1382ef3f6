"""Fidelity of float16 and int8 ColBERT storage against float32, on the tiny checkpoints.

A corpus of 2,000 synthetic passages and 250 queries (made as the benchmarks make theirs: words
drawn Zipf-like from the tokenizer's vocabulary, a share of them pseudo-words that split into
several tokens; each query a span of one passage plus a few random words), encoded once and put
into an EncodingStore of each dtype. For every query, every passage is scored exhaustively
(dense, sparse, ColBERT, hybrid 1:1:1) from what each store returns. Measured (tiny-m3 /
tiny-m3-bin; the mid-size checkpoint's figures are in benchmarks/README.md):

=========  ===================  ===================  =============  ===============  ====================
dtype      largest ColBERT err  largest hybrid err   same top-10    same top-10 set  largest gap swapped
=========  ===================  ===================  =============  ===============  ====================
float16    2.0e-4 / 1.7e-4      6.6e-5 / 5.7e-5      97.2% / 92.0%  100% / 99.2%     6.4e-6 / 1.7e-5
int8       8.7e-4 / 1.5e-3      2.9e-4 / 5.1e-4      91.2% / 81.2%  97.6% / 97.6%    8.7e-5 / 5.6e-5
=========  ===================  ===================  =============  ===============  ====================

"Largest gap swapped": of the two passages a differing top-10 puts in each other's place, how
far apart float32 scores them. These random checkpoints score many passages almost alike (the
hybrid scores of a query's top 11 are often within 1e-5 to 1e-4 of each other), so the order of
a top-10 flips even under float16; storage never swaps passages that float32 tells apart by more
than its own error. The bounds below pin these figures with a margin; float32 storage is exact
(tests/test_rerank_store.py).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from m3_rag import EncodingStore, M3Embedder, encode_with_store, fetch_encodings
from m3_rag.colbert_codec import dequantize
from m3_rag.scoring import hybrid_scores
from m3_rag.sparse import stack_csr

PASSAGES, QUERIES = 2000, 250
BOUNDS = {
    "float16": {"colbert_error": 4e-4, "same_top10": 0.88, "same_top10_set": 0.98, "largest_gap_swapped": 1e-4},
    "int8": {"colbert_error": 3e-3, "same_top10": 0.76, "same_top10_set": 0.95, "largest_gap_swapped": 1e-3},
}


def synthetic_corpus(tokenizer_json: Path, seed: int = 0) -> tuple[list[str], list[str]]:
    """Passages of 8-60 words and queries (a 3-8 word span of a passage, plus 0-3 random words)."""
    vocab = [piece for piece, _ in json.loads(tokenizer_json.read_text(encoding="utf-8"))["model"]["vocab"]]
    words = [p[1:] for p in vocab if p.startswith("▁") and p[1:].isalpha()]
    parts = [p for p in vocab if p.isalpha() and len(p) > 1]
    rng = np.random.default_rng(seed)
    made = ["".join(rng.choice(parts, size=int(rng.integers(2, 4)))) for _ in range(300)]  # split into tokens
    pool = np.array(words + made)
    p = 1.0 / (np.arange(len(pool)) + 2.7)
    p /= p.sum()
    passages = [" ".join(rng.choice(pool, size=int(rng.integers(8, 61)), p=p)) for _ in range(PASSAGES)]
    queries = []
    for _ in range(QUERIES):
        source = passages[int(rng.integers(PASSAGES))].split()
        n = int(rng.integers(3, 9))
        start = int(rng.integers(0, max(1, len(source) - n)))
        extra = list(rng.choice(pool, size=int(rng.integers(0, 4)), p=p))
        queries.append(" ".join(source[start : start + n] + extra))
    return passages, queries


def colbert_all(queries: list[np.ndarray], vectors: np.ndarray, offsets: np.ndarray, group: int = 32) -> np.ndarray:
    """(n_queries, n_passages) ColBERT scores, queries taken ``group`` at a time in one product.

    Exhaustive scoring of every pair; equal to ``colbert_scores_at`` (tests/test_colbert_codec.py
    checks the stored-dtype path against float32 values), only batched over queries.
    """
    passages = torch.from_numpy(np.ascontiguousarray(vectors, dtype=np.float32))
    out = np.empty((len(queries), len(offsets) - 1), dtype=np.float32)
    for a in range(0, len(queries), group):
        chunk = queries[a : a + group]
        sizes = [len(x) for x in chunk]
        tokens = (passages @ torch.from_numpy(np.concatenate(chunk).astype(np.float32)).T).numpy()  # (M, sum Lq)
        best = np.maximum.reduceat(tokens, offsets[:-1], axis=0)  # (n, sum Lq)
        starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
        out[a : a + len(chunk)] = (np.add.reduceat(best, starts, axis=1) / np.array(sizes, np.float32)).T
    return out


def fidelity(m3: M3Embedder, passages: list[str], queries: list[str], folder: Path) -> dict[str, dict[str, Any]]:
    """Per dtype, against float32 storage: the largest ColBERT score error, the share of queries whose
    hybrid top-10 (1:1:1, over all passages) is identical in order and as a set, and the smallest
    float32 score gap between two passages that a differing top-10 swapped (how near a tie it was)."""
    q = m3.encode_queries(queries)
    assert q.dense is not None and q.sparse is not None and q.colbert is not None
    exact = EncodingStore(folder / "float32.sqlite", m3, colbert_dtype="float32")
    out = encode_with_store(m3, passages, exact)  # the one model pass; float32 storage is lossless
    scores = {}
    for dtype in ("float32", "float16", "int8"):
        store = exact if dtype == "float32" else EncodingStore(folder / f"{dtype}.sqlite", m3, colbert_dtype=dtype)  # type: ignore[arg-type]
        if dtype != "float32":
            store.put(passages, out, max_length=m3.passage_max_length)
        packed = fetch_encodings(m3, passages, store)
        assert store.stats().hits >= len(passages) and packed.colbert.dtype.name == dtype
        vectors = dequantize(packed.colbert, packed.scales)
        scores[dtype] = colbert_all(q.colbert, vectors, packed.offsets)
        if dtype == "float32":
            dense = q.dense @ packed.dense.T
            sparse = (stack_csr(q.sparse, m3.vocab_size) @ stack_csr(packed.sparse, m3.vocab_size).T).toarray()
    hybrid = {dtype: hybrid_scores(dense, sparse, colbert) for dtype, colbert in scores.items()}
    top = np.argsort(-hybrid["float32"], axis=1, kind="stable")[:, :10]
    figures: dict[str, dict[str, Any]] = {}
    for dtype in ("float16", "int8"):
        mine = np.argsort(-hybrid[dtype], axis=1, kind="stable")[:, :10]
        same = np.all(mine == top, axis=1)
        same_set = np.array([set(a) == set(b) for a, b in zip(mine.tolist(), top.tolist())])
        gaps = [
            float(np.abs(np.diff(hybrid["float32"][j, [top[j, i], mine[j, i]]])).max())
            for j in np.flatnonzero(~same)
            for i in np.flatnonzero(mine[j] != top[j])[:1]
        ]
        figures[dtype] = {
            "colbert_error": float(np.abs(scores[dtype] - scores["float32"]).max()),
            "hybrid_error": float(np.abs(hybrid[dtype] - hybrid["float32"]).max()),
            "same_top10": float(same.mean()),
            "same_top10_set": float(same_set.mean()),
            "largest_gap_swapped": max(gaps, default=0.0),
        }
    return figures


@pytest.mark.slow
def test_float16_and_int8_rank_like_float32(checkpoint: tuple[str, M3Embedder, Any], tmp_path: Path) -> None:
    name, m3, _ = checkpoint
    passages, queries = synthetic_corpus(Path("tests/data") / name / "tokenizer.json")
    assert len(set(passages)) == PASSAGES and len(queries) >= 200
    figures = fidelity(m3, passages, queries, tmp_path)
    for dtype, bound in BOUNDS.items():
        got = figures[dtype]
        assert got["colbert_error"] <= bound["colbert_error"], (dtype, figures)
        swapped = got["largest_gap_swapped"]
        assert swapped <= bound["largest_gap_swapped"] and swapped <= 2 * got["hybrid_error"], (dtype, figures)
        assert got["same_top10"] >= bound["same_top10"] and got["same_top10_set"] >= bound["same_top10_set"], figures
    assert figures["float16"]["colbert_error"] < figures["int8"]["colbert_error"] / 3
