"""Growable packed storage: dense rows, sparse rows and ColBERT matrices, appended in chunks.

Chunks keep appends cheap and let a loaded index keep its ColBERT array memory-mapped; reads
gather across chunks with array indexing (a loop over chunks, never over rows or tokens).
"""

from __future__ import annotations

import mmap
import os

import numpy as np
import scipy.sparse as sp

__all__ = ["MERGED_CHUNK_BYTES", "DenseRows", "PackedRows", "gather_packed", "inverted_index"]


#: In-memory chunks stop being merged once they hold this many bytes.
MERGED_CHUNK_BYTES = 256 << 20


def gather_packed(values: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Rows ``values[starts[i] : starts[i] + lengths[i]]`` for every ``i``, concatenated.

    >>> gather_packed(np.arange(10), np.array([7, 2]), np.array([2, 3])).tolist()
    [7, 8, 2, 3, 4]
    """
    total = int(lengths.sum())
    if total == 0:
        return values[:0]
    ends = np.cumsum(lengths)
    # position of each gathered row: its block's start plus its offset inside the block
    within = np.arange(total) - np.repeat(ends - lengths, lengths)
    return values[np.repeat(starts, lengths) + within]


def _grow(array: np.ndarray, size: int, fill: float | int = 0) -> np.ndarray:
    """``array`` with at least ``size`` rows (capacity doubles, new rows set to ``fill``)."""
    if size <= len(array):
        return array
    grown = np.full((max(size, 2 * len(array), 64), *array.shape[1:]), fill, dtype=array.dtype)
    grown[: len(array)] = array
    return grown


class DenseRows:
    """An (n, d) float32 matrix with amortised O(1) growth; rows are reserved, then filled.

    >>> rows = DenseRows(2); rows.put(rows.reserve(3), np.ones((3, 2), np.float32)); rows.matrix.shape
    (3, 2)
    """

    def __init__(self, dim: int, initial: np.ndarray | None = None) -> None:
        self.dim = dim
        self._data = np.zeros((0, dim), dtype=np.float32) if initial is None else initial
        self._size = len(self._data)

    def __len__(self) -> int:
        return self._size

    @property
    def matrix(self) -> np.ndarray:
        return self._data[: self._size]

    def reserve(self, count: int) -> np.ndarray:
        """Add ``count`` zero rows; returns their row numbers."""
        self._data = _grow(self._data, self._size + count)
        self._size += count
        return np.arange(self._size - count, self._size)

    def put(self, rows: np.ndarray, values: np.ndarray) -> None:
        self._data[rows] = values


class PackedRows:
    """Ragged rows (row ``i`` has ``length(i)`` entries) stored in appended chunks.

    Used for ColBERT matrices ((M, d) values) and sparse rows (ids and weights, 1-D). Rows are
    reserved first (length 0) and filled by :meth:`put` in any order.
    """

    def __init__(self) -> None:
        self.chunks: list[np.ndarray] = []
        self._size = 0
        self._chunk = np.zeros(0, dtype=np.int32)
        self._start = np.zeros(0, dtype=np.int64)
        self._len = np.zeros(0, dtype=np.int64)

    def __len__(self) -> int:
        return self._size

    def reserve(self, count: int) -> np.ndarray:
        """Add ``count`` empty rows; returns their row numbers."""
        end = self._size + count
        self._chunk, self._start, self._len = (_grow(a, end) for a in (self._chunk, self._start, self._len))
        self._len[self._size : end] = 0
        self._size = end
        return np.arange(end - count, end)

    def put(self, rows: np.ndarray, values: np.ndarray, offsets: np.ndarray) -> None:
        """Store rows packed as ``values`` with ``offsets`` (len(rows) + 1) at row numbers ``rows``."""
        offsets = np.asarray(offsets, dtype=np.int64)
        self._chunk[rows] = len(self.chunks)
        self._start[rows] = offsets[:-1]
        self._len[rows] = np.diff(offsets)
        self.chunks.append(values)
        self._merge_small_chunks()

    def _merge_small_chunks(self) -> None:
        """Merge the newest in-memory chunk into the one before while it is at least half its size.

        Like a binary counter, this keeps O(log n) chunks for n appended values (each value is
        copied O(log n) times), so a search touches few chunks however many small batches were
        added. Chunks stop growing at ``MERGED_CHUNK_BYTES`` (a merge briefly holds both copies);
        memory-mapped chunks (a loaded index) are never copied.
        """
        while len(self.chunks) >= 2:
            prev, last = self.chunks[-2], self.chunks[-1]
            if (
                isinstance(prev, np.memmap)
                or isinstance(last, np.memmap)
                or 2 * len(last) < len(prev)
                or prev.nbytes >= MERGED_CHUNK_BYTES
            ):
                return
            c = len(self.chunks) - 1
            moved = np.flatnonzero(self._chunk[: self._size] == c)
            self._chunk[moved] = c - 1
            self._start[moved] += len(prev)
            self.chunks[-2:] = [np.concatenate([prev, last])]

    def locate(self, rows: np.ndarray) -> list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
        """Where ``rows`` live, one entry per chunk holding any: ``(positions, values, starts, lengths)``.

        ``positions`` index into ``rows``; row ``rows[positions[i]]`` is
        ``values[starts[i] : starts[i] + lengths[i]]``. Empty rows are left out.

        >>> store = PackedRows(); store.append(np.arange(5.0), np.array([0, 2, 5]))
        >>> [(p.tolist(), s.tolist(), n.tolist()) for p, _, s, n in store.locate(np.array([1, 0]))]
        [([0, 1], [2, 0], [3, 2])]
        """
        rows = np.asarray(rows, dtype=np.int64)
        chunk_of, start, length = self._chunk[rows], self._start[rows], self._len[rows]
        filled = length > 0
        out = []
        for c in np.unique(chunk_of[filled]).tolist():
            sel = np.flatnonzero(filled & (chunk_of == c))
            out.append((sel, self.chunks[c], start[sel], length[sel]))
        return out

    def append(self, values: np.ndarray, offsets: np.ndarray) -> None:
        """Store rows packed as ``values`` with ``offsets`` after the existing rows."""
        self.put(self.reserve(len(offsets) - 1), values, offsets)

    def lengths(self, rows: np.ndarray | None = None) -> np.ndarray:
        lengths = self._len[: self._size]
        return lengths if rows is None else lengths[rows]

    def prefetch(self, rows: np.ndarray) -> None:
        """Ask the kernel to start reading the memory-mapped parts of ``rows`` (no-op elsewhere).

        One ``posix_fadvise(WILLNEED)`` per row queues all the reads at once, so a cold search
        waits for the disk's parallel reads instead of one page fault after another.
        """
        if not hasattr(os, "posix_fadvise"):
            return
        for _, values, starts, lengths in self.locate(rows):
            where = _file_position(values)
            if where is None:
                continue
            filename, position = where
            row_bytes = values.itemsize * int(np.prod(values.shape[1:], dtype=np.int64))
            fd = os.open(filename, os.O_RDONLY)
            try:
                for start, length in zip((position + starts * row_bytes).tolist(), (lengths * row_bytes).tolist()):
                    os.posix_fadvise(fd, start, length, os.POSIX_FADV_WILLNEED)
            finally:
                os.close(fd)

    def gather(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The values of ``rows`` packed in that order, and their offsets (len(rows) + 1)."""
        rows = np.asarray(rows, dtype=np.int64)
        if not self.chunks:
            raise ValueError("no rows stored")
        length = self._len[rows]
        offsets = np.concatenate([[0], np.cumsum(length)]).astype(np.int64)
        first = self.chunks[0]
        out = np.empty((int(offsets[-1]), *first.shape[1:]), dtype=first.dtype)
        for sel, values, start, lengths in self.locate(rows):
            out[gather_packed(np.arange(int(offsets[-1])), offsets[sel], lengths)] = gather_packed(
                values, start, lengths
            )
        return out, offsets


def _file_position(values: np.ndarray) -> tuple[str, int] | None:
    """The file behind a C-contiguous memory map and the byte position of its first element."""
    mapped = getattr(values, "_mmap", None)
    filename = getattr(values, "filename", None)
    if mapped is None or filename is None or not values.flags.c_contiguous:
        return None
    base = np.frombuffer(mapped, dtype=np.uint8).ctypes.data  # the mapping starts at an aligned offset
    offset = int(getattr(values, "offset", 0))
    return str(filename), offset - offset % mmap.ALLOCATIONGRANULARITY + (values.ctypes.data - base)


def inverted_index(ids: np.ndarray, weights: np.ndarray, offsets: np.ndarray, vocab_size: int) -> sp.csr_matrix:
    """Posting lists: a (vocab_size, n) CSR whose row ``t`` holds the weights of token ``t``."""
    n = len(offsets) - 1
    forward = sp.csr_matrix((weights, ids, offsets), shape=(n, vocab_size))
    return forward.T.tocsr()
