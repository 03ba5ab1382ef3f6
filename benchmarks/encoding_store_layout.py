"""Which on-disk layout for the encoding store: SQLite rows with blobs, or segment files + a SQLite catalog?

Both layouts hold the same entries (one text's float16 ColBERT matrix plus its dense vector and
sparse weights, as bytes) and are written the same way (batches of 32 texts, one durable commit
per batch). Measured: write throughput, the time to read the entries of 20 and of 100 random
texts (hot page cache, what a rerank does), bytes on disk per entry, and the time to evict 10% of
the entries and give their space back to new writes.

    python benchmarks/encoding_store_layout.py            # ~1 minute; results/encoding_store_layout.json

The prototypes here are minimal on purpose (no validation, no LRU), so that only the layout differs.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sqlite3
import statistics
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
from _common import loadavg, write_result


def _entry(rng: np.random.Generator, tokens: int, dim: int) -> bytes:
    colbert = rng.standard_normal((tokens, dim), dtype=np.float32).astype(np.float16).tobytes()
    return colbert + rng.standard_normal(dim, dtype=np.float32).tobytes() + os.urandom(8 * 60)


class SqliteBlobs:
    """One row per text: ``key -> blob`` in a WAL database."""

    def __init__(self, folder: Path, page_size: int, mmap_size: int = 0) -> None:
        self.db = sqlite3.connect(folder / "store.sqlite", isolation_level=None)
        self.db.execute(f"PRAGMA page_size={page_size}")
        self.db.execute(f"PRAGMA mmap_size={mmap_size}")  # 0: read() calls; else pages are read through a map
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.execute("CREATE TABLE e (key BLOB PRIMARY KEY, used INTEGER, data BLOB) WITHOUT ROWID")
        self.folder = folder

    def put(self, keys: list[bytes], blobs: list[bytes]) -> None:
        self.db.execute("BEGIN IMMEDIATE")
        self.db.executemany("INSERT OR IGNORE INTO e VALUES (?, 0, ?)", zip(keys, blobs))
        self.db.execute("COMMIT")

    def get(self, keys: list[bytes]) -> list[bytes]:
        marks = ",".join("?" * len(keys))
        return [row[0] for row in self.db.execute(f"SELECT data FROM e WHERE key IN ({marks})", keys)]

    def evict(self, keys: list[bytes]) -> None:
        self.db.execute("BEGIN IMMEDIATE")
        self.db.executemany("DELETE FROM e WHERE key = ?", ((k,) for k in keys))
        self.db.execute("COMMIT")
        self.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    def disk_bytes(self) -> int:
        self.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # count the database, not a WAL waiting to be merged
        return sum(p.stat().st_size for p in self.folder.iterdir())


class Segments:
    """Immutable segment files (one per write batch, fsync + rename) and a SQLite catalog of offsets."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.db = sqlite3.connect(folder / "catalog.sqlite", isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.execute("CREATE TABLE e (key BLOB PRIMARY KEY, seg TEXT, start INTEGER, size INTEGER) WITHOUT ROWID")
        self.maps: dict[str, np.ndarray] = {}

    def _write_segment(self, blobs: list[bytes]) -> tuple[str, list[int]]:
        name = f"seg-{uuid.uuid4().hex}.bin"
        tmp = self.folder / f".tmp-{name}"
        with open(tmp, "wb") as f:
            starts = []
            for blob in blobs:
                starts.append(f.tell())
                f.write(blob)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.folder / name)
        return name, starts

    def put(self, keys: list[bytes], blobs: list[bytes]) -> None:
        name, starts = self._write_segment(blobs)
        self.db.execute("BEGIN IMMEDIATE")
        self.db.executemany(
            "INSERT OR IGNORE INTO e VALUES (?, ?, ?, ?)",
            ((k, name, s, len(b)) for k, s, b in zip(keys, starts, blobs)),
        )
        self.db.execute("COMMIT")

    def _map(self, name: str) -> np.ndarray:
        if name not in self.maps:
            self.maps[name] = np.memmap(self.folder / name, dtype=np.uint8, mode="r")
        return self.maps[name]

    def get(self, keys: list[bytes]) -> list[bytes]:
        marks = ",".join("?" * len(keys))
        rows = self.db.execute(f"SELECT seg, start, size FROM e WHERE key IN ({marks})", keys).fetchall()
        return [self._map(seg)[start : start + size].tobytes() for seg, start, size in rows]

    def evict(self, keys: list[bytes]) -> None:
        """Drop the entries, then rewrite every segment that lost some (space comes back only so)."""
        self.db.execute("BEGIN IMMEDIATE")
        marks = ",".join("?" * len(keys))
        touched = [r[0] for r in self.db.execute(f"SELECT DISTINCT seg FROM e WHERE key IN ({marks})", keys)]
        self.db.executemany("DELETE FROM e WHERE key = ?", ((k,) for k in keys))
        self.db.execute("COMMIT")
        for seg in touched:
            live = self.db.execute("SELECT key, start, size FROM e WHERE seg = ?", (seg,)).fetchall()
            blobs = [self._map(seg)[s : s + n].tobytes() for _, s, n in live]
            self.maps.pop(seg, None)
            if blobs:
                name, starts = self._write_segment(blobs)
                self.db.execute("BEGIN IMMEDIATE")
                self.db.executemany(
                    "UPDATE e SET seg = ?, start = ? WHERE key = ?",
                    ((name, s, k) for (k, _, _), s in zip(live, starts)),
                )
                self.db.execute("COMMIT")
            (self.folder / seg).unlink()  # a reader holding the old map keeps reading it (POSIX)

    def disk_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.folder.iterdir())


def measure(store: Any, blobs: list[bytes], keys: list[bytes], rng: np.random.Generator, reads: int) -> dict[str, Any]:
    t0 = time.perf_counter()
    for a in range(0, len(blobs), 32):
        store.put(keys[a : a + 32], blobs[a : a + 32])
    write_s = time.perf_counter() - t0
    per_entry = store.disk_bytes() / len(blobs)
    out: dict[str, Any] = {
        "write_entries_per_s": round(len(blobs) / write_s, 1),
        "disk_bytes_per_entry": round(per_entry),
        "payload_bytes_per_entry": round(sum(map(len, blobs)) / len(blobs)),
    }
    for n in (20, 100):
        times = []
        for _ in range(reads):
            pick = [keys[i] for i in rng.choice(len(keys), n, replace=False)]
            t = time.perf_counter()
            got = store.get(pick)
            times.append(time.perf_counter() - t)
            assert len(got) == n
        out[f"read_{n}_ms_median"] = round(statistics.median(times) * 1e3, 3)
    victims = [keys[i] for i in rng.choice(len(keys), len(keys) // 10, replace=False)]
    t = time.perf_counter()
    store.evict(victims)
    out["evict_10pct_s"] = round(time.perf_counter() - t, 3)
    out["disk_bytes_after_evict_per_entry"] = round(store.disk_bytes() / len(blobs))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--entries", type=int, default=1000)
    parser.add_argument("--tokens", type=int, default=200)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--reads", type=int, default=30)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    blobs = [_entry(rng, args.tokens, args.dim) for _ in range(args.entries)]
    keys = [uuid.uuid4().bytes for _ in blobs]
    load_before = loadavg()
    results: dict[str, Any] = {}
    layouts = {
        "sqlite_page_4096": (4096, 0),
        "sqlite_page_4096_mmap": (4096, 1 << 30),
        "sqlite_page_16384": (16384, 0),
        "sqlite_page_16384_mmap": (16384, 1 << 30),
        "sqlite_page_65536": (65536, 0),
        "segments_plus_catalog": None,
    }
    for name, sqlite_args in layouts.items():
        folder = Path(tempfile.mkdtemp(prefix="m3-layout-"))
        try:
            store: Any = Segments(folder) if sqlite_args is None else SqliteBlobs(folder, *sqlite_args)
            results[name] = measure(store, blobs, keys, np.random.default_rng(1), args.reads)
            store.db.close()
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        print(name, results[name], flush=True)
    setup = {"entries": args.entries, "tokens": args.tokens, "dim": args.dim, "dtype": "float16", "write_batch": 32}
    path = write_result(
        "encoding_store_layout",
        {"setup": setup, "layouts": results, "load_before": load_before, "load_after": loadavg()},
    )
    print(path)


if __name__ == "__main__":
    main()
