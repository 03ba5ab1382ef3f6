"""Synthetic data for the index benchmark, and an ``M3Index`` built over it.

Timing depends on shapes, not on values, so the corpus is random: unit dense vectors, sparse
rows of Zipf-distributed token ids with positive weights, float16 ColBERT matrices in one
memory-mapped ``.npy``. Queries are synthetic encodings, fed to the index through a stub
encoder, so that ``M3Index.search_batch`` runs unchanged without a model.
"""

from __future__ import annotations

import json
import mmap
import os
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

from m3_rag import M3Index, M3Output
from m3_rag.index.packed import DenseRows

__all__ = [
    "VOCAB",
    "WEIGHTS",
    "QueryStub",
    "Zipf",
    "build_index",
    "colbert_source",
    "evict",
    "index_memory",
    "make_corpus",
    "make_queries",
    "rss_mb",
]

VOCAB = 250_002
FIRST_ID, LAST_ID = 4, VOCAB - 2  # no <s>, <pad>, </s>, <unk>, <mask>
WEIGHTS = (1.0, 1.0, 1.0)


# ---------------------------------------------------------------------------- synthetic data
def _unit(rng: np.random.Generator, rows: int, dim: int) -> np.ndarray:
    x = rng.standard_normal((rows, dim), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


class Zipf:
    """Token ids with Zipf-like frequencies (p ~ 1 / (rank + 10)^1.1), popular ids scattered."""

    def __init__(self, rng: np.random.Generator) -> None:
        ranks = np.arange(LAST_ID - FIRST_ID + 1, dtype=np.float64)
        p = 1.0 / (ranks + 10.0) ** 1.1
        self.cdf = np.cumsum(p / p.sum())
        self.ids = rng.permutation(np.arange(FIRST_ID, LAST_ID + 1)).astype(np.int32)

    def rows(self, rng: np.random.Generator, draws: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Sparse rows from ``draws[i]`` draws each (repeats merged): ids, weights, offsets."""
        n = len(draws)
        row = np.repeat(np.arange(n, dtype=np.int64), draws)
        ids = self.ids[np.minimum(np.searchsorted(self.cdf, rng.random(len(row))), len(self.ids) - 1)]
        keys = np.unique(row * VOCAB + ids)
        row, ids = keys // VOCAB, (keys % VOCAB).astype(np.int32)
        offsets = np.concatenate([[0], np.cumsum(np.bincount(row, minlength=n))]).astype(np.int64)
        weights = np.clip(rng.gamma(2.0, 0.06, size=len(ids)), 1e-3, None).astype(np.float32)
        return ids, weights, offsets


def make_corpus(folder: Path, n: int, dim: int, colbert_docs: int, seed: int = 0) -> dict[str, Any]:
    """Write (once) the synthetic corpus under ``folder``; returns its description."""
    done = folder / "DONE.json"
    if done.is_file():
        return json.loads(done.read_text())
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    t0 = time.perf_counter()
    dense = np.empty((n, dim), dtype=np.float32)
    for start in range(0, n, 10_000):
        stop = min(n, start + 10_000)
        dense[start:stop] = _unit(rng, stop - start, dim)
    np.save(folder / "dense.npy", dense)
    del dense
    ids, weights, offsets = Zipf(rng).rows(rng, rng.integers(66, 136, size=n))
    np.save(folder / "sparse_ids.npy", ids)
    np.save(folder / "sparse_weights.npy", weights)
    np.save(folder / "sparse_offsets.npy", offsets)
    lengths = rng.integers(180, 221, size=colbert_docs)
    c_off = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    np.save(folder / "colbert_offsets.npy", c_off)
    colbert = np.lib.format.open_memmap(
        folder / "colbert.npy", mode="w+", dtype=np.float16, shape=(int(c_off[-1]), dim)
    )
    block = 50_000
    for start in range(0, len(colbert), block):
        stop = min(len(colbert), start + block)
        colbert[start:stop] = _unit(rng, stop - start, dim).astype(np.float16)
    colbert.flush()
    del colbert
    counts = np.diff(offsets)
    info = {
        "documents": n,
        "dim": dim,
        "sparse_ids_per_doc": {"mean": float(counts.mean()), "min": int(counts.min()), "max": int(counts.max())},
        "colbert_documents": colbert_docs,
        "colbert_vectors_per_doc": {
            "mean": float(lengths.mean()),
            "min": int(lengths.min()),
            "max": int(lengths.max()),
        },
        "colbert_file_bytes": (folder / "colbert.npy").stat().st_size,
        "generated_in_s": round(time.perf_counter() - t0, 1),
    }
    done.write_text(json.dumps(info, indent=2))
    return info


def make_queries(count: int, dim: int, tokens: int, seed: int = 1) -> list[M3Output]:
    """Synthetic query encodings of ``tokens`` tokens: dense, sparse (ids < tokens) and ColBERT."""
    rng = np.random.default_rng(seed)
    zipf = Zipf(np.random.default_rng(0))  # the corpus's id permutation: queries share its popular ids
    ids, weights, offsets = zipf.rows(rng, np.full(count, tokens - 2))
    out = []
    for j in range(count):
        lo, hi = offsets[j], offsets[j + 1]
        out.append(
            M3Output(
                dense=_unit(rng, 1, dim),
                sparse=[dict(zip(ids[lo:hi].tolist(), (weights[lo:hi] * 2).tolist()))],
                colbert=[_unit(rng, tokens - 1, dim)],
            )
        )
    return out


# ---------------------------------------------------------------------------- the index
class QueryStub:
    """Stands in for ``M3Embedder``: ``encode_queries`` returns the encoding set with :meth:`use`."""

    name = "synthetic"
    fingerprint = "synthetic"
    has_sparse = has_colbert = True
    passage_max_length = 8192

    def __init__(self, dim: int) -> None:
        self.dim = self.colbert_dim = dim
        self.vocab_size = VOCAB
        self._next: M3Output | None = None

    def use(self, encoding: M3Output) -> None:
        self._next = encoding

    def encode_queries(self, queries: list[str], **_: Any) -> M3Output:
        assert self._next is not None and len(queries) == 1
        return self._next


def colbert_source(rows: np.ndarray, colbert_docs: int) -> np.ndarray:
    """The document whose ColBERT matrices document ``rows`` uses (all have their own when
    ``colbert_docs`` equals the corpus size)."""
    return rows % colbert_docs


def build_index(folder: Path, n: int, colbert_docs: int, stub: QueryStub) -> M3Index:
    """An ``M3Index`` holding the corpus, filled through its storage the way ``M3Index.load`` does."""
    index = M3Index(stub, colbert="float16")  # type: ignore[arg-type]
    index._ids = [f"doc-{i}" for i in range(n)]
    index._texts = [f"document {i}" for i in range(n)]
    index._metadatas = [{} for _ in range(n)]
    index._row_of = {doc_id: row for row, doc_id in enumerate(index._ids)}
    index._alive = np.ones(n, dtype=bool)
    index._dense = DenseRows(stub.dim, np.load(folder / "dense.npy"))
    s_off = np.load(folder / "sparse_offsets.npy")
    index._sparse_ids.append(np.load(folder / "sparse_ids.npy"), s_off)
    index._sparse_weights.append(np.load(folder / "sparse_weights.npy"), s_off)
    vectors = np.load(folder / "colbert.npy", mmap_mode="r")
    c_off = np.load(folder / "colbert_offsets.npy")
    store = index._colbert
    assert store is not None
    rows = store.reserve(n)
    source = colbert_source(rows, colbert_docs)
    store.chunks.append(vectors)
    store._chunk[rows] = 0
    store._start[rows] = c_off[source]
    store._len[rows] = np.diff(c_off)[source]
    return index


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def index_memory(index: M3Index, n: int) -> dict[str, Any]:
    """Bytes per document of the in-RAM parts (dense, sparse, inverted index, row bookkeeping)."""
    inverted = index._inverted_index()
    parts = {
        "dense": index._dense._data.nbytes,
        "sparse_rows": sum(c.nbytes for c in index._sparse_ids.chunks + index._sparse_weights.chunks),
        "inverted_index": inverted.data.nbytes + inverted.indices.nbytes + inverted.indptr.nbytes,
        "row_bookkeeping": sum(
            a.nbytes
            for store in (index._sparse_ids, index._sparse_weights, index._colbert)
            if store is not None
            for a in (store._chunk, store._start, store._len)
        )
        + index._alive.nbytes,
    }
    return {
        "bytes_per_doc": {k: round(v / n, 1) for k, v in parts.items()},
        "total_bytes_per_doc": round(sum(parts.values()) / n, 1),
    }


def evict(vectors: np.ndarray) -> None:
    """Drop the memory-mapped ColBERT file from this process and from the page cache."""
    mapped = getattr(vectors, "_mmap", None)
    if mapped is not None:
        mapped.madvise(mmap.MADV_DONTNEED)
    fd = os.open(vectors.filename, os.O_RDONLY)  # type: ignore[attr-defined]
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)
