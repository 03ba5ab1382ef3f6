"""Synthetic data for the index benchmark, and an ``M3Index`` folder built over it.

Timing depends on shapes, not on values, so the corpus is random: unit dense vectors, sparse
rows of Zipf-distributed token ids with positive weights, float16 ColBERT matrices in one
``.npy``. Queries and added documents are synthetic encodings, fed to the index through a stub
embedder (:class:`SyntheticEmbedder`), so that ``M3Index.load`` / ``open`` / ``search_batch`` /
``add_encoded`` / ``save`` run unchanged without a model.

The index folder is written with the storage code (:mod:`m3_rag.index.segment`,
:mod:`m3_rag.index.files`, :mod:`m3_rag.index.catalog`): ``docs / colbert_docs`` segments of
``colbert_docs`` documents each, committed one by one like ``IndexFolder`` commits a segment.
Only ``colbert_docs`` documents have their own ColBERT matrices (an 8 GB file at 20,000): every
segment's ``colbert.npy`` is a hard link to that one file, so row ``r`` of every segment uses the
matrices of corpus document ``r`` (document ``i`` those of ``i % colbert_docs``). Hard links are
regular files, so the index's checks accept them; the rerank work per candidate is that of a
full-size index, the disk use a fifth of it.
"""

from __future__ import annotations

import json
import mmap
import os
import resource
import shutil
import sqlite3
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from m3_rag import M3Embedder, M3Index, M3Output
from m3_rag.index.catalog import CATALOG, SEGMENT_NAME, DocRow, SegmentEntry
from m3_rag.index.files import NpyWriter, SegmentLock, file_entry, fsync_dir
from m3_rag.index.folder import SEGMENTS, IndexFolder
from m3_rag.index.segment import Segment, SegmentArrays, write_segment
from m3_rag.records import metadata_json
from m3_rag.sparse import SparseVector

__all__ = [
    "VOCAB",
    "WEIGHTS",
    "SyntheticEmbedder",
    "Zipf",
    "build_folder",
    "clone_folder",
    "colbert_source",
    "evict",
    "folder_bytes",
    "index_memory",
    "make_corpus",
    "make_documents",
    "make_queries",
    "proc_io",
    "rss_mb",
    "segments_of",
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
        """Sparse rows from ``draws[i]`` draws each (repeats merged, ids sorted): ids, weights, offsets."""
        n = len(draws)
        row = np.repeat(np.arange(n, dtype=np.int64), draws)
        ids = self.ids[np.minimum(np.searchsorted(self.cdf, rng.random(len(row))), len(self.ids) - 1)]
        keys = np.unique(row * VOCAB + ids)
        row, ids = keys // VOCAB, (keys % VOCAB).astype(np.int32)
        offsets = np.concatenate([[0], np.cumsum(np.bincount(row, minlength=n))]).astype(np.int64)
        weights = np.clip(rng.gamma(2.0, 0.06, size=len(ids)), 1e-3, None).astype(np.float32)
        return ids, weights, offsets


def make_corpus(folder: Path, n: int, dim: int, colbert_docs: int, seed: int = 0) -> dict[str, Any]:
    """Write (once) the synthetic corpus as plain ``.npy`` files under ``folder``; returns its description.

    (The FlagEmbedding worker reads these files; the index folder is built from them.)
    """
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


def _sparse_vectors(ids: np.ndarray, weights: np.ndarray, offsets: np.ndarray) -> list[SparseVector]:
    return [
        SparseVector.from_arrays(ids[a:b], weights[a:b]) for a, b in zip(offsets[:-1].tolist(), offsets[1:].tolist())
    ]


def make_queries(count: int, dim: int, tokens: int, seed: int = 1) -> list[M3Output]:
    """Synthetic query encodings of ``tokens`` tokens: dense, sparse (``tokens - 2`` draws) and ColBERT."""
    rng = np.random.default_rng(seed)
    zipf = Zipf(np.random.default_rng(0))  # the corpus's id permutation: queries share its popular ids
    ids, weights, offsets = zipf.rows(rng, np.full(count, tokens - 2))
    sparse = _sparse_vectors(ids, weights * 2, offsets)
    return [
        M3Output(dense=_unit(rng, 1, dim), sparse=[sparse[j]], colbert=[_unit(rng, tokens - 1, dim)])
        for j in range(count)
    ]


def make_documents(count: int, dim: int, seed: int = 3) -> M3Output:
    """Synthetic encodings of ``count`` new documents, shaped like the corpus's (float32 ColBERT
    of 180-220 vectors, as ``M3Embedder.encode_documents`` returns them)."""
    rng = np.random.default_rng(seed)
    ids, weights, offsets = Zipf(np.random.default_rng(0)).rows(rng, rng.integers(66, 136, size=count))
    lengths = rng.integers(180, 221, size=count)
    return M3Output(
        dense=_unit(rng, count, dim),
        sparse=_sparse_vectors(ids, weights, offsets),
        colbert=[_unit(rng, int(n), dim) for n in lengths],
    )


# ---------------------------------------------------------------------------- the stub embedder
class SyntheticEmbedder(M3Embedder):
    """Stands in for BGE-M3 without a model: the shapes and facts an index checks, and
    ``encode_queries`` that returns the encodings registered in :attr:`queries` (by query text).

    ``M3Embedder.__init__`` is not called (there is no model); the index only reads the facts
    below and, in a search, calls ``encode_queries``.
    """

    def __init__(self, dim: int) -> None:
        self.name = "synthetic-bge-m3"
        self._dim = dim
        self.vocab_size = VOCAB
        self.max_length = self.passage_max_length = 8192
        self.query_max_length = 512
        self.queries: dict[str, M3Output] = {}

    def __repr__(self) -> str:
        return f"SyntheticEmbedder(dim={self._dim})"

    @property
    def dim(self) -> int:
        return self._dim

    @property
    def colbert_dim(self) -> int:
        return self._dim

    @property
    def fingerprint(self) -> str:
        return f"synthetic-{self._dim}"

    @property
    def has_sparse(self) -> bool:
        return True

    @property
    def has_colbert(self) -> bool:
        return True

    def register(self, prefix: str, encodings: Sequence[M3Output]) -> list[str]:
        """Make ``encodings`` the answers to queries ``f"{prefix}{j}"``; returns those texts."""
        names = [f"{prefix}{j}" for j in range(len(encodings))]
        self.queries.update(zip(names, encodings))
        return names

    def encode_queries(self, queries: Any, **_: Any) -> M3Output:
        found = [self.queries[q] for q in ([queries] if isinstance(queries, str) else queries)]
        return M3Output(
            dense=np.concatenate([e.dense for e in found]),  # type: ignore[misc]
            sparse=[e.sparse[0] for e in found],  # type: ignore[index]
            colbert=[e.colbert[0] for e in found],  # type: ignore[index]
        )

    def encode_documents(self, *_: Any, **__: Any) -> M3Output:
        raise RuntimeError("the benchmark has no model: add documents with add_encoded")


# ---------------------------------------------------------------------------- the index folder
def colbert_source(rows: np.ndarray, colbert_docs: int) -> np.ndarray:
    """The corpus document whose ColBERT matrices global row ``rows`` uses."""
    return rows % colbert_docs


def build_folder(corpus: Path, target: Path, embedder: SyntheticEmbedder, colbert_docs: int) -> dict[str, Any]:
    """Write (once) the index folder ``target`` over the corpus: one segment per ``colbert_docs``
    documents, each ``colbert.npy`` a hard link to the corpus's; returns its description.

    Each segment is written and committed as ``IndexFolder`` does it (files under ``.tmp-<name>``
    with its ``.lock`` held, fsynced, renamed, then one catalog transaction), with the storage
    code's own writers; only ColBERT is linked instead of written.
    """
    done = target.with_name(target.name + ".json")
    if done.is_file() and (target / CATALOG).is_file():
        return json.loads(done.read_text())
    shutil.rmtree(target, ignore_errors=True)
    t0 = time.perf_counter()
    dense = np.load(corpus / "dense.npy", mmap_mode="r")
    s_ids, s_weights = np.load(corpus / "sparse_ids.npy"), np.load(corpus / "sparse_weights.npy")
    s_off = np.load(corpus / "sparse_offsets.npy")
    c_off = np.load(corpus / "colbert_offsets.npy")
    n = len(dense)
    if n % colbert_docs:
        raise SystemExit(f"--docs ({n}) must be a multiple of --colbert-docs ({colbert_docs})")
    folder = IndexFolder.open(target, embedder, create=True, colbert_dtype="float16", mmap=True)
    segments = target / SEGMENTS
    try:
        for start in range(0, n, colbert_docs):
            stop = start + colbert_docs
            lo, hi = int(s_off[start]), int(s_off[stop])
            source = Segment(  # dense and sparse only: write_segment then writes no ColBERT files
                SegmentArrays(
                    dense=np.ascontiguousarray(dense[start:stop]),
                    sparse_ids=s_ids[lo:hi],
                    sparse_weights=s_weights[lo:hi],
                    sparse_offsets=s_off[start : stop + 1] - lo,
                )
            )
            name = "s" + uuid.uuid4().hex[:24]
            tmp, final = segments / f".tmp-{name}", segments / name
            tmp.mkdir()
            lock = SegmentLock.create_exclusive(tmp)
            try:
                write_segment(tmp, [(source, np.arange(colbert_docs))], dim=embedder.dim, colbert_dim=embedder.dim)
                os.link(corpus / "colbert.npy", tmp / "colbert.npy")
                with NpyWriter(tmp / "colbert_offsets.npy", np.int64, (len(c_off),)) as out:
                    out.write(c_off)
                files = {p.name: file_entry(p) for p in sorted(tmp.iterdir()) if p.suffix == ".npy"}
                fsync_dir(tmp)
                os.rename(tmp, final)
                fsync_dir(segments)
                docs = [
                    DocRow(f"doc-{i}", name, i - start, f"document {i}", metadata_json({})) for i in range(start, stop)
                ]
                folder.catalog.commit(segment=SegmentEntry(name, colbert_docs, 0, files), docs=docs)
            finally:
                lock.release()
    finally:
        folder.close()
    info = {"segments": n // colbert_docs, "built_in_s": round(time.perf_counter() - t0, 1), **folder_bytes(target)}
    done.write_text(json.dumps(info, indent=2))
    return info


def clone_folder(source: Path, target: Path) -> None:
    """A copy of the index folder ``source`` that can be changed without changing ``source``:
    segment files hard-linked (the index never writes a segment file after its commit), new
    ``.lock`` files, and the catalog copied with SQLite's backup API."""
    shutil.rmtree(target, ignore_errors=True)
    (target / SEGMENTS).mkdir(parents=True)
    for segment in (source / SEGMENTS).iterdir():
        if not SEGMENT_NAME.match(segment.name):
            continue
        copy = target / SEGMENTS / segment.name
        copy.mkdir()
        for file in segment.iterdir():
            if file.name == ".lock":
                (copy / ".lock").touch()
            else:
                os.link(file, copy / file.name)
    src, dst = sqlite3.connect(source / CATALOG), sqlite3.connect(target / CATALOG)
    try:
        src.backup(dst)
        dst.execute("PRAGMA journal_mode = WAL")
    finally:
        src.close()
        dst.close()


def folder_bytes(path: Path) -> dict[str, int]:
    """Files under ``path``: their count, apparent bytes and allocated bytes, each inode once
    (hard links are counted once)."""
    seen: set[int] = set()
    files = size = allocated = 0
    for root, _, names in os.walk(path):
        for name in names:
            st = os.lstat(os.path.join(root, name))
            if st.st_ino in seen:
                continue
            seen.add(st.st_ino)
            files += 1
            size += st.st_size
            allocated += st.st_blocks * 512
    return {"files": files, "bytes": size, "allocated_bytes": allocated}


# ---------------------------------------------------------------------------- measuring
def segments_of(index: M3Index) -> tuple[Segment, ...]:
    """The segments a search of ``index`` reads.

    A private touch (``index._view``, the immutable snapshot a search takes): the benchmark
    needs the segments' memory maps to evict them, their arrays to count their bytes, and their
    scoring methods to time the steps of a search one by one.
    """
    return index._view.segments


def rss_mb() -> float:
    return _status("VmRSS")


def _status(key: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def reset_peak_rss() -> bool:
    """Reset this process's peak RSS (``VmHWM``) to its current RSS; False where Linux refuses."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def peak_rss_since_reset_mb() -> float:
    return _status("VmHWM")


def max_rss_mb() -> float:
    """``ru_maxrss`` of this process (its lifetime peak RSS), in MiB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def proc_io() -> dict[str, int]:
    """``/proc/self/io``: bytes read and written by this process (``wchar``: passed to write calls;
    ``write_bytes``: sent to the storage layer, counted when pages are dirtied)."""
    out = {}
    for line in Path("/proc/self/io").read_text().splitlines():
        key, value = line.split(":")
        out[key.strip()] = int(value)
    return out


def index_memory(index: M3Index, n: int) -> dict[str, Any]:
    """Bytes per document of the in-RAM parts of every segment (ColBERT is a memory map: on disk)."""
    segments = segments_of(index)
    inverted = [s.inverted(VOCAB) for s in segments]
    parts = {
        "dense": sum(s.arrays.dense.nbytes for s in segments),
        "sparse_rows": sum(
            s.arrays.sparse_ids.nbytes + s.arrays.sparse_weights.nbytes + s.arrays.sparse_offsets.nbytes
            for s in segments
        ),
        "inverted_index": sum(m.data.nbytes + m.indices.nbytes + m.indptr.nbytes for m in inverted),
        "colbert_offsets": sum(
            s.arrays.colbert_offsets.nbytes for s in segments if s.arrays.colbert_offsets is not None
        ),
        "alive_masks": sum(a.nbytes for a in index._view.alive),
    }
    return {
        "bytes_per_doc": {k: round(v / n, 1) for k, v in parts.items()},
        "total_bytes_per_doc": round(sum(parts.values()) / n, 1),
    }


def _mapping(values: np.ndarray) -> mmap.mmap | None:
    """The ``mmap`` under a memory-mapped array (numpy 2 puts a ``memoryview`` of it between them)."""
    base = values.base
    while isinstance(base, (np.ndarray, memoryview)):
        base = base.obj if isinstance(base, memoryview) else base.base
    return base if isinstance(base, mmap.mmap) else None


def evict(index: M3Index) -> None:
    """Drop the segments' memory-mapped ColBERT files from this process and from the page cache
    (pages still mapped by the process are not dropped by ``posix_fadvise``: unmap them first)."""
    for segment in segments_of(index):
        if segment.arrays.colbert is None:
            continue
        mapped = _mapping(segment.arrays.colbert)
        if mapped is None:
            raise RuntimeError(f"cannot find the memory map under {segment}'s ColBERT array: cold timings would be hot")
        mapped.madvise(mmap.MADV_DONTNEED)
    assert index.path is not None
    for file in (index.path / SEGMENTS).glob("s*/colbert.npy"):  # hard links: one inode, dropped once
        fd = os.open(file, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
