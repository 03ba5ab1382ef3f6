"""Segments: immutable blocks of documents' vectors, in memory or in a folder of ``.npy`` files.

A segment holds ``n`` documents' dense vectors, packed sparse weights and packed ColBERT vectors
(float32, float16, or int8 with per-vector scales). Texts, metadata and which rows are alive live
in the catalog (:mod:`m3_rag.index.catalog`), not here. Files of a segment folder::

    dense.npy            (n, d) float32
    sparse_ids.npy       (nnz,) int32, sorted within each document
    sparse_weights.npy   (nnz,) float32
    sparse_offsets.npy   (n + 1,) int64
    colbert.npy          (M, dc) float32 | float16 | int8     (absent without ColBERT)
    colbert_scales.npy   (M,) float32                         (int8 only)
    colbert_offsets.npy  (n + 1,) int64
    .lock                held with flock: exclusively by the writer until its commit, shared by
                         every process that has the segment open (see :mod:`m3_rag.index.files`)

Every file is validated when a segment is opened (:func:`open_segment`); ColBERT values, which can
be tens of GB, are memory-mapped and checked where they are used (non-finite scores are refused).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch

from ..colbert_codec import ColbertDtype, numpy_dtype, quantize
from ..scoring import colbert_scores_at
from .files import NpyWriter, SegmentLock, damaged, file_entry, load_npy, prefetch_rows

__all__ = ["Segment", "SegmentArrays", "encoded_arrays", "merge_arrays", "open_segment", "write_segment"]

_BLOCK_TOKENS = 32768  # ColBERT rows copied per block when a segment is written from others


def _packed_rows(offsets: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(source positions, new offsets) to gather packed rows ``rows`` in that order."""
    lengths = offsets[rows + 1] - offsets[rows]
    new = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    within = np.arange(int(new[-1]), dtype=np.int64) - np.repeat(new[:-1], lengths)
    return np.repeat(offsets[rows], lengths) + within, new


@dataclass(frozen=True)
class SegmentArrays:
    """The arrays of a segment (see the module docs for shapes and dtypes)."""

    dense: np.ndarray
    sparse_ids: np.ndarray
    sparse_weights: np.ndarray
    sparse_offsets: np.ndarray
    colbert: np.ndarray | None = None
    colbert_scales: np.ndarray | None = None
    colbert_offsets: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.dense)


def encoded_arrays(output: Any, colbert_dtype: ColbertDtype | None, dim: int, colbert_dim: int) -> SegmentArrays:
    """Segment arrays from an :class:`~m3_rag.M3Output` (ColBERT quantized to ``colbert_dtype``)."""
    n = len(output.sparse)
    dense = np.ascontiguousarray(output.dense, dtype=np.float32).reshape(n, dim)
    counts = np.fromiter((len(s) for s in output.sparse), dtype=np.int64, count=n)
    sparse_offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    ids = [np.asarray(s.indices, dtype=np.int32) for s in output.sparse]
    weights = [np.asarray(s.weights, dtype=np.float32) for s in output.sparse]
    arrays: dict[str, Any] = {
        "dense": dense,
        "sparse_ids": np.concatenate(ids) if n and sparse_offsets[-1] else np.zeros(0, np.int32),
        "sparse_weights": np.concatenate(weights) if n and sparse_offsets[-1] else np.zeros(0, np.float32),
        "sparse_offsets": sparse_offsets,
    }
    if colbert_dtype is not None:
        lengths = np.fromiter((len(m) for m in output.colbert), dtype=np.int64, count=n)
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        # quantized text by text into the final array: no float32 copy of all the vectors
        values = np.empty((int(offsets[-1]), colbert_dim), dtype=numpy_dtype(colbert_dtype))
        scales = np.empty(int(offsets[-1]), dtype=np.float32) if colbert_dtype == "int8" else None
        for i, matrix in enumerate(output.colbert):
            part, part_scales = quantize(np.asarray(matrix).reshape(-1, colbert_dim), colbert_dtype)
            values[offsets[i] : offsets[i + 1]] = part
            if scales is not None and part_scales is not None:
                scales[offsets[i] : offsets[i + 1]] = part_scales
        arrays.update(colbert=values, colbert_scales=scales, colbert_offsets=offsets)
    return SegmentArrays(**arrays)


class Segment:
    """A block of documents' vectors (see the module docs); ``name`` is None while only in memory.

    Rows are never changed after construction; which rows are alive is the store's business.
    Per-row ``ids``, ``texts`` and ``metadatas`` are filled by the store (None: a dead row).
    """

    def __init__(self, arrays: SegmentArrays, *, name: str | None = None, lock: SegmentLock | None = None) -> None:
        self.name = name
        self.arrays = arrays
        self.n = len(arrays)
        self.ids: list[str | None] = [None] * self.n
        self.texts: list[str | None] = [None] * self.n
        self.metadatas: list[dict[str, Any] | None] = [None] * self.n
        self._lock = lock
        self._inverted: sp.csr_matrix | None = None
        self.filter_cache: Any = None  # metadata columns for filters, built by the store

    def __repr__(self) -> str:
        return f"Segment({self.name or 'in memory'}, {self.n} rows)"

    def close(self) -> None:
        """Release the shared lock (the segment's files may then be removed once it is dropped)."""
        if self._lock is not None:
            self._lock.release()

    @property
    def has_colbert(self) -> bool:
        return self.arrays.colbert is not None

    def nbytes(self) -> int:
        a = self.arrays
        parts = (a.dense, a.sparse_ids, a.sparse_weights, a.colbert, a.colbert_scales)
        return int(sum(p.nbytes for p in parts if p is not None))

    # ------------------------------------------------------------------ scoring
    def dense_scores(self, queries: torch.Tensor) -> torch.Tensor:
        """(n, m) inner products with (m, d) float32 ``queries`` (in torch's thread pool)."""
        return torch.mm(torch.from_numpy(self.arrays.dense), queries.T)

    def inverted(self, vocab_size: int) -> sp.csr_matrix:
        """Posting lists: a (vocab_size, n) CSR whose row ``t`` holds the weights of token ``t``."""
        if self._inverted is None:
            a = self.arrays
            forward = sp.csr_matrix((a.sparse_weights, a.sparse_ids, a.sparse_offsets), shape=(self.n, vocab_size))
            self._inverted = forward.T.tocsr()
        return self._inverted

    def colbert_scores(self, query: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """(len(rows),) ColBERT scores of ``rows`` for (Lq, dc) ``query``, straight from the store."""
        a = self.arrays
        assert a.colbert is not None and a.colbert_offsets is not None
        starts = a.colbert_offsets[rows]
        return colbert_scores_at(
            query, a.colbert, starts, a.colbert_offsets[rows + 1] - starts, scales=a.colbert_scales
        )

    def prefetch(self, rows: np.ndarray) -> None:
        """Ask the kernel to start reading the memory-mapped ColBERT rows of ``rows``."""
        a = self.arrays
        if a.colbert is not None and a.colbert_offsets is not None and len(rows):
            starts = a.colbert_offsets[rows]
            prefetch_rows(a.colbert, starts, a.colbert_offsets[rows + 1] - starts)

    def sparse_rows(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(ids, weights, offsets) of ``rows``, packed in that order."""
        a = self.arrays
        where, offsets = _packed_rows(a.sparse_offsets, rows)
        return a.sparse_ids[where], a.sparse_weights[where], offsets


def merge_arrays(sources: Sequence[tuple[Segment, np.ndarray]]) -> SegmentArrays:
    """In-memory arrays of the given rows of several segments, in order (for small merges)."""
    dense = np.concatenate([s.arrays.dense[r] for s, r in sources]) if sources else np.zeros((0, 0), np.float32)
    parts = [s.sparse_rows(r) for s, r in sources]
    arrays: dict[str, Any] = {
        "dense": np.ascontiguousarray(dense, dtype=np.float32),
        "sparse_ids": np.concatenate([p[0] for p in parts]).astype(np.int32),
        "sparse_weights": np.concatenate([p[1] for p in parts]).astype(np.float32),
        "sparse_offsets": _concat_offsets([p[2] for p in parts]),
    }
    if sources and sources[0][0].has_colbert:
        chunks, scales, offsets = [], [], []
        for segment, rows in sources:
            a = segment.arrays
            assert a.colbert_offsets is not None and a.colbert is not None
            where, new = _packed_rows(a.colbert_offsets, rows)
            chunks.append(np.asarray(a.colbert[where]))
            if a.colbert_scales is not None:
                scales.append(np.asarray(a.colbert_scales[where]))
            offsets.append(new)
        arrays.update(
            colbert=np.concatenate(chunks),
            colbert_scales=np.concatenate(scales) if scales else None,
            colbert_offsets=_concat_offsets(offsets),
        )
    return SegmentArrays(**arrays)


def _concat_offsets(parts: Sequence[np.ndarray]) -> np.ndarray:
    out, base = [np.zeros(1, np.int64)], 0
    for offsets in parts:
        out.append(offsets[1:] + base)
        base += int(offsets[-1])
    return np.concatenate(out).astype(np.int64)


def write_segment(
    folder: Path, sources: Sequence[tuple[Segment, np.ndarray]], *, dim: int, colbert_dim: int | None
) -> dict[str, dict[str, Any]]:
    """Write the given rows of ``sources`` as segment files in ``folder`` (which exists, empty but for
    ``.lock``), streaming ColBERT block by block; returns the file list for the catalog
    (``{name: {"bytes": ..., "sha256": ...}}``). Every file is fsynced."""
    n = sum(len(r) for _, r in sources)
    with NpyWriter(folder / "dense.npy", np.float32, (n, dim)) as out:
        for segment, rows in sources:
            out.write(segment.arrays.dense[rows])
    sparse = [segment.sparse_rows(rows) for segment, rows in sources]
    nnz = sum(len(p[0]) for p in sparse)
    for name, dtype, column in (("sparse_ids", np.int32, 0), ("sparse_weights", np.float32, 1)):
        with NpyWriter(folder / f"{name}.npy", dtype, (nnz,)) as out:
            for part in sparse:
                out.write(part[column])
    with NpyWriter(folder / "sparse_offsets.npy", np.int64, (n + 1,)) as out:
        out.write(_concat_offsets([p[2] for p in sparse]))
    if colbert_dim is not None and sources and sources[0][0].has_colbert:
        _write_colbert(folder, sources, colbert_dim)
    # ColBERT values (~400 KB a document) are checked by size, not hashed: a hash would be read at every
    # open (a second per GB); the small files are hashed (they are read in full at open anyway)
    files = sorted(p for p in folder.iterdir() if p.suffix == ".npy")
    return {p.name: file_entry(p, checksum=p.name != "colbert.npy") for p in files}


def _write_colbert(folder: Path, sources: Sequence[tuple[Segment, np.ndarray]], colbert_dim: int) -> None:
    first = sources[0][0].arrays
    assert first.colbert is not None
    dtype, int8 = first.colbert.dtype, first.colbert_scales is not None
    plans = []
    for segment, rows in sources:
        a = segment.arrays
        assert a.colbert_offsets is not None
        plans.append(_packed_rows(a.colbert_offsets, rows))
    total = sum(int(new[-1]) for _, new in plans)
    values = NpyWriter(folder / "colbert.npy", dtype, (total, colbert_dim))
    scales = NpyWriter(folder / "colbert_scales.npy", np.float32, (total,)) if int8 else None
    with values:
        for (segment, _), (where, _) in zip(sources, plans):
            a = segment.arrays
            assert a.colbert is not None
            for start in range(0, len(where), _BLOCK_TOKENS):
                block = where[start : start + _BLOCK_TOKENS]
                values.write(a.colbert[block])
                if scales is not None and a.colbert_scales is not None:
                    scales.write(a.colbert_scales[block])
    if scales is not None:
        scales.close()
    with NpyWriter(folder / "colbert_offsets.npy", np.int64, (sum(len(r) for _, r in sources) + 1,)) as out:
        out.write(_concat_offsets([new for _, new in plans]))


def open_segment(
    folder: Path,
    name: str,
    files: dict[str, Any],
    *,
    rows: int,
    dim: int,
    colbert_dim: int | None,
    colbert_dtype: ColbertDtype | None,
    vocab_size: int,
    lock: SegmentLock | None,
    mmap: bool = True,
) -> Segment:
    """Open and validate the segment folder ``folder`` (raises IndexFormatError naming what is wrong)."""
    dense = load_npy(folder, "dense.npy", files, np.float32, (rows, dim))
    offsets = load_npy(folder, "sparse_offsets.npy", files, np.int64, (rows + 1,))
    nnz = _check_offsets(folder / "sparse_offsets.npy", offsets, allow_empty_rows=True)
    ids = load_npy(folder, "sparse_ids.npy", files, np.int32, (nnz,))
    weights = load_npy(folder, "sparse_weights.npy", files, np.float32, (nnz,))
    if not np.all(np.isfinite(dense)):
        raise damaged(folder / "dense.npy", "holds NaN or infinite values")
    if nnz and (int(ids.min()) < 0 or int(ids.max()) >= vocab_size):
        raise damaged(folder / "sparse_ids.npy", f"holds token ids outside the vocabulary [0, {vocab_size})")
    if not np.all(np.isfinite(weights)) or (nnz and float(weights.min()) < 0):
        raise damaged(folder / "sparse_weights.npy", "holds negative, NaN or infinite weights")
    if nnz > 1:  # sorted and unique within each document (starts of documents may go down)
        step_ok = ids[1:] > ids[:-1]
        starts = np.zeros(nnz, dtype=bool)
        starts[offsets[1:-1][offsets[1:-1] < nnz]] = True
        if not np.all(step_ok | starts[1:]):
            raise damaged(folder / "sparse_ids.npy", "token ids are not sorted and unique within each document")
    arrays: dict[str, Any] = {"dense": dense, "sparse_ids": ids, "sparse_weights": weights, "sparse_offsets": offsets}
    if colbert_dtype is not None:
        assert colbert_dim is not None
        c_offsets = load_npy(folder, "colbert_offsets.npy", files, np.int64, (rows + 1,))
        total = _check_offsets(folder / "colbert_offsets.npy", c_offsets, allow_empty_rows=False)
        arrays["colbert"] = load_npy(
            folder, "colbert.npy", files, numpy_dtype(colbert_dtype), (total, colbert_dim), mmap=mmap
        )
        arrays["colbert_offsets"] = c_offsets
        if colbert_dtype == "int8":
            scales = load_npy(folder, "colbert_scales.npy", files, np.float32, (total,))
            if not np.all(np.isfinite(scales)) or (total and float(scales.min()) < 0):
                raise damaged(folder / "colbert_scales.npy", "holds negative, NaN or infinite scales")
            arrays["colbert_scales"] = scales
    return Segment(SegmentArrays(**arrays), name=name, lock=lock)


def _check_offsets(file: Path, offsets: np.ndarray, *, allow_empty_rows: bool) -> int:
    steps = np.diff(offsets)
    if len(offsets) == 0 or offsets[0] != 0 or np.any(steps < (0 if allow_empty_rows else 1)):
        need = "non-decreasing" if allow_empty_rows else "increasing (every document has a vector)"
        raise damaged(file, f"offsets must start at 0 and be {need}")
    return int(offsets[-1])
