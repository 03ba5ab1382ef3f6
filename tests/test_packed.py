"""Packed ragged storage: appends in many small batches, chunk merging, gathers and lookups."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from m3_rag.index.packed import PackedRows

rng = np.random.default_rng(3)


def batch(sizes: list[int], dim: int = 4) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
    rows = [rng.standard_normal((n, dim)).astype(np.float32) for n in sizes]
    return rows, np.concatenate(rows), np.concatenate([[0], np.cumsum(sizes)])


def test_many_small_appends_keep_few_chunks_and_every_row() -> None:
    store, expected = PackedRows(), []
    for _ in range(300):  # 300 batches of 1-4 rows, as an index fed a few texts at a time
        rows, values, offsets = batch(rng.integers(1, 6, rng.integers(1, 5)).tolist())
        store.append(values, offsets)
        expected += rows
    assert len(store) == len(expected)
    assert len(store.chunks) <= 2 * int(np.log2(len(expected))) + 2  # a binary counter, not 300 chunks
    order = rng.permutation(len(expected))
    got, offsets = store.gather(order)
    for i, r in enumerate(order.tolist()):
        np.testing.assert_array_equal(got[offsets[i] : offsets[i + 1]], expected[r])
    for positions, values, starts, lengths in store.locate(order):
        for p, s, n in zip(positions.tolist(), starts.tolist(), lengths.tolist()):
            np.testing.assert_array_equal(values[s : s + n], expected[order[p]])


def test_overwritten_rows_read_their_new_values() -> None:
    store = PackedRows()
    _, values, offsets = batch([2, 3, 1])
    store.append(values, offsets)
    new_rows, new_values, new_offsets = batch([4, 2])
    store.put(np.array([2, 0]), new_values, new_offsets)  # upsert: rows 2 and 0 replaced
    got, got_offsets = store.gather(np.array([0, 1, 2]))
    np.testing.assert_array_equal(got[: got_offsets[1]], new_rows[1])
    np.testing.assert_array_equal(got[got_offsets[1] : got_offsets[2]], values[2:5])
    np.testing.assert_array_equal(got[got_offsets[2] :], new_rows[0])


def test_a_memory_mapped_chunk_is_never_copied(tmp_path: Path) -> None:
    _, values, offsets = batch([3, 3])
    np.save(tmp_path / "v.npy", values)
    store = PackedRows()
    store.append(np.load(tmp_path / "v.npy", mmap_mode="r"), offsets)
    rows, more, more_offsets = batch([5, 5, 5])  # bigger than the mapped chunk: would merge if in memory
    store.append(more, more_offsets)
    assert isinstance(store.chunks[0], np.memmap) and len(store.chunks) == 2
    got, got_offsets = store.gather(np.array([4, 1]))
    np.testing.assert_array_equal(got[: got_offsets[1]], rows[2])
    np.testing.assert_array_equal(got[got_offsets[1] :], values[3:6])


def test_prefetch_asks_for_exactly_the_bytes_of_the_rows(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rows, values, offsets = batch([3, 1, 4, 2], dim=8)
    np.save(tmp_path / "v.npy", values.astype(np.float16))
    store = PackedRows()
    store.append(np.load(tmp_path / "v.npy", mmap_mode="r"), offsets)
    store.append(*batch([2])[1:])  # an in-memory chunk: nothing to read for it
    asked: list[tuple[int, int]] = []
    monkeypatch.setattr(os, "posix_fadvise", lambda fd, start, length, advice: asked.append((start, length)))
    store.prefetch(np.array([2, 4, 0]))
    raw = (tmp_path / "v.npy").read_bytes()
    got = [np.frombuffer(raw[s : s + n], dtype=np.float16).reshape(-1, 8) for s, n in asked]
    assert len(got) == 2  # rows 0 and 2 of the mapped file; row 4 lives in memory
    np.testing.assert_array_equal(got[0], rows[2].astype(np.float16))  # in the order asked for
    np.testing.assert_array_equal(got[1], rows[0].astype(np.float16))
