"""``EncodingStore``: each text's dense, sparse and ColBERT encodings, on disk, shared by processes.

Encode once, rerank anywhere: the forward pass that makes a document's dense vector for a vector
store also gives its sparse weights and ColBERT vectors; keep them here and a reranker scores the
document later without running the model on it again. Entries are keyed by a hash of (model
fingerprint, passage ``max_length``, text): an edited text is another key, so a score is never
stale, and a text not stored yet is a miss, which the caller encodes and stores
(:func:`m3_rag.encode_with_store` does both in one model pass).

Storage: one SQLite file in WAL mode, one row per text with its arrays as blobs (checked on every
read by :class:`~m3_rag.encoding_entries.EntryFormat`; a damaged entry is a logged miss, never a
crash), and one transaction per :meth:`EncodingStore.put`, so several processes can fill and
read one store at once (readers never wait for a writer; writers take turns) and a crash leaves
each put whole or absent. WAL needs all processes on one machine (not a network file system).
Measured against immutable segment files plus a SQLite catalog (``benchmarks/encoding_store_layout.py``:
1,000 entries of 200 x 384 float16): reading 100 entries takes ~15 ms here and ~7 ms from
segments, but here eviction is a ``DELETE`` whose pages the next writes reuse, instead of
rewriting live entries into new segments and unlinking files other processes may have mapped,
and there are no orphan files after a crash. A rerank reads a few MB; the model pass it saves
takes seconds.

One file holds one model (fingerprint, dimensions, vocabulary) and one ColBERT dtype: opening it
for another is an :class:`~m3_rag.errors.IndexFormatError` (use another path per model).
``max_bytes`` bounds the entries' bytes: a put that goes over evicts the least recently used
entries down to 90% of it. "Used" is refreshed at most every ``touch_after_s`` seconds per entry,
in one small write per :meth:`get` that skips rather than waits when another process is writing,
so reading stays cheap.

>>> import tempfile
>>> from m3_rag import M3Embedder
>>> m3 = M3Embedder.from_pretrained("tests/data/tiny-m3")
>>> store = EncodingStore(f"{tempfile.mkdtemp()}/enc.sqlite", m3, colbert_dtype="int8")
>>> texts = ["Berlin is in Germany.", "Paris is in France."]
>>> _ = store.put(texts, m3.encode(texts, max_length=512), max_length=512)
>>> [e is not None for e in store.get([texts[1], "unknown"], max_length=512)]
[True, False]
>>> s = store.stats(); (s.entries, s.hits, s.misses)
(2, 1, 1)
"""

from __future__ import annotations

import hashlib
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .colbert_codec import ColbertDtype, check_colbert_dtype
from .encoding_entries import (
    ROW_OVERHEAD,
    DamagedEntry,
    EncodedRow,
    EncodingStoreStats,
    EntryFormat,
    ModelFacts,
    StoredEncoding,
    check_max_length,
    check_texts,
    output_columns,
)
from .errors import IndexFormatError

if TYPE_CHECKING:
    from .output import EncodedBatch, M3Output

__all__ = ["EncodingStore", "EncodingStoreStats", "ModelFacts"]  # the last two re-exported

logger = logging.getLogger(__name__)

_FORMAT, _VERSION = "m3-rag-encoding-store", 1
_CHUNK = 500  # keys per SELECT ... IN (...)
_LOW_WATER = 0.9  # eviction frees down to this share of max_bytes
_SIZE = f"({ROW_OVERHEAD} + length(dense) + length(ids) + length(weights) + length(scales) + length(colbert))"
_HEAD = "key, used, max_length, tokens, terms, size, crc_head, crc_colbert, dense, ids, weights"
_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS totals (id INTEGER PRIMARY KEY CHECK (id = 0), entries INTEGER NOT NULL,
                                   bytes INTEGER NOT NULL);
INSERT OR IGNORE INTO totals VALUES (0, 0, 0);
CREATE TABLE IF NOT EXISTS entries (key BLOB NOT NULL UNIQUE, used INTEGER NOT NULL, max_length INTEGER,
    tokens INTEGER, terms INTEGER, size INTEGER, crc_head INTEGER, crc_colbert INTEGER,
    dense BLOB, ids BLOB, weights BLOB, scales BLOB, colbert BLOB);
CREATE INDEX IF NOT EXISTS entries_used ON entries (used);
"""


def _chunked(db: sqlite3.Connection, sql: str, values: list[Any]) -> Iterator[tuple[Any, ...]]:
    """Rows of ``sql`` (with ``{in}`` where the ``(?, ?, ...)`` list goes) over ``values``, 500 at a time."""
    for a in range(0, len(values), _CHUNK):
        chunk = values[a : a + _CHUNK]
        yield from db.execute(sql.replace("{in}", f"({','.join('?' * len(chunk))})"), chunk).fetchall()


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


class EncodingStore:
    """Dense, sparse and ColBERT encodings of texts, persistent and shared (see the module docs).

    Args:
        path: the SQLite file (created with its folder when missing).
        embedder: the model whose encodings are kept (its fingerprint, dimensions, vocabulary).
        colbert_dtype: ``"float16"`` (default), ``"float32"`` or ``"int8"`` (a scale per vector):
            how ColBERT vectors are kept; an existing store must have been made with the same
            (:meth:`open` takes whatever it has).
        max_bytes: bound on the entries' bytes enforced by this object's puts (None: unbounded).
        touch_after_s: how stale an entry's "last used" may get before a hit refreshes it.

    Thread-safe; safe for several processes on one machine. Close it (or use ``with``) when done.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        embedder: ModelFacts,
        *,
        colbert_dtype: ColbertDtype = "float16",
        max_bytes: int | None = None,
        touch_after_s: float = 60.0,
    ) -> None:
        self._setup(path, embedder, check_colbert_dtype(colbert_dtype), max_bytes, touch_after_s)

    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str],
        embedder: ModelFacts,
        *,
        max_bytes: int | None = None,
        touch_after_s: float = 60.0,
    ) -> EncodingStore:
        """The store at ``path`` with whatever ColBERT dtype it was made with (a new one: float16)."""
        store = cls.__new__(cls)
        store._setup(path, embedder, None, max_bytes, touch_after_s)
        return store

    def _setup(
        self, path: Any, embedder: ModelFacts, dtype: ColbertDtype | None, max_bytes: Any, touch_after_s: float
    ) -> None:
        if max_bytes is not None and (isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 1):
            raise ValueError(f"max_bytes must be an int >= 1 or None, got {max_bytes!r}")
        self.path = Path(path)
        if self.path.is_dir():
            raise ValueError(
                f"{self.path} is a folder; an encoding store is one file, e.g. {self.path / 'encodings.sqlite'}"
            )
        if not embedder.colbert_dim:
            raise ValueError(f"{embedder.name} has no ColBERT head: an encoding store keeps ColBERT vectors")
        self.max_bytes: int | None = max_bytes
        self.touch_after_ms = max(0, int(touch_after_s * 1000))
        self.model_name = embedder.name
        self._lock = threading.RLock()
        self._db: sqlite3.Connection | None = None
        self._pid = -1
        self._pending_touch: dict[bytes, int] = {}
        self._damaged: set[bytes] = set()
        self._counts = dict.fromkeys(("hits", "misses", "damaged", "stored", "evicted"), 0)
        wanted = {
            "format": _FORMAT,
            "version": str(_VERSION),
            "fingerprint": embedder.fingerprint,
            "dim": str(embedder.dim),
            "colbert_dim": str(embedder.colbert_dim),
            "vocab_size": str(embedder.vocab_size),
        }
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            with self._write() as db:
                for statement in filter(str.strip, _SCHEMA.split(";")):
                    db.execute(statement)
                for name, value in {**wanted, "colbert_dtype": dtype or "float16", "model": embedder.name}.items():
                    db.execute("INSERT OR IGNORE INTO meta VALUES (?, ?)", (name, value))
                found = dict(db.execute("SELECT name, value FROM meta").fetchall())
        except sqlite3.DatabaseError as exc:
            raise IndexFormatError(f"{self.path} is not a readable encoding store ({exc}); pass another path") from exc
        differs = {k: (found.get(k), v) for k, v in wanted.items() if found.get(k) != v}
        if differs:
            raise IndexFormatError(
                f"the encoding store {self.path} holds encodings of {found.get('model')!r} ({found}), not of "
                f"{embedder.name!r}: differs in {differs} (stored, this model). One store file holds one model: "
                "pass another path for this model, or delete the file"
            )
        stored_dtype = found.get("colbert_dtype")
        if dtype is not None and stored_dtype != dtype:
            raise IndexFormatError(
                f"the encoding store {self.path} keeps ColBERT vectors as {stored_dtype}, not {dtype}: pass "
                f"colbert_dtype={stored_dtype!r} or open it with EncodingStore.open(path, embedder)"
            )
        self.fingerprint: str = embedder.fingerprint
        kept = check_colbert_dtype(stored_dtype)
        assert kept is not None
        self.entry_format = EntryFormat(embedder.dim, int(embedder.colbert_dim), embedder.vocab_size, kept)
        self.colbert_dtype: ColbertDtype = self.entry_format.dtype

    # ------------------------------------------------------------------ connection
    def _conn(self) -> sqlite3.Connection:
        if self._db is None or self._pid != os.getpid():  # a forked child opens its own connection
            db = sqlite3.connect(str(self.path), timeout=30.0, isolation_level=None, check_same_thread=False)
            db.execute("PRAGMA page_size=4096")  # only takes effect on a new file
            mode = db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                logger.warning(
                    "%s: SQLite refused WAL mode (%s); several processes will wait for each other", self.path, mode
                )
            db.execute("PRAGMA mmap_size=1073741824")  # read pages through a map: ~2x faster reads of big blobs
            db.execute("PRAGMA journal_size_limit=67108864")
            self._db, self._pid = db, os.getpid()
        return self._db

    @contextmanager
    def _write(self, *, wait: bool = True, durable: bool = True) -> Iterator[sqlite3.Connection]:
        """One write transaction (``wait=False``: sqlite3.OperationalError at once if another holds the lock)."""
        with self._lock:
            db = self._conn()
            db.execute(f"PRAGMA synchronous={'FULL' if durable else 'NORMAL'}")
            if not wait:
                db.execute("PRAGMA busy_timeout=0")
            try:
                db.execute("BEGIN IMMEDIATE")
                try:
                    yield db
                    db.execute("COMMIT")
                except BaseException:
                    db.execute("ROLLBACK")
                    raise
            finally:
                if not wait:
                    db.execute("PRAGMA busy_timeout=30000")

    def close(self) -> None:
        """Write pending "last used" times (if no one else is writing) and close the file."""
        with self._lock:
            if self._db is not None and self._pid == os.getpid():
                self._flush()
                self._db.close()
            self._db = None

    def __enter__(self) -> EncodingStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"EncodingStore({str(self.path)!r}, model={self.model_name!r}, colbert_dtype={self.colbert_dtype!r})"

    # ------------------------------------------------------------------ keys
    def keys(self, texts: Sequence[str], *, max_length: int) -> list[bytes]:
        """The 16-byte key of each text: BLAKE2b of (model fingerprint, ``max_length``, text)."""
        prefix = f"{self.fingerprint}\0{check_max_length(max_length)}\0".encode()
        return [hashlib.blake2b(prefix + t.encode("utf-8", "surrogatepass"), digest_size=16).digest() for t in texts]

    def check_embedder(self, embedder: ModelFacts) -> None:
        """ValueError unless ``embedder`` is the model this store holds encodings of."""
        if embedder.fingerprint != self.fingerprint:
            raise ValueError(
                f"this encoding store ({self.path}) holds encodings of {self.model_name!r} (fingerprint "
                f"{self.fingerprint[:12]}...), not of {embedder.name!r} ({embedder.fingerprint[:12]}...): "
                "use the same model, or a store opened for this one"
            )

    # ------------------------------------------------------------------ reading
    def get(self, texts: Sequence[str], *, max_length: int, colbert: bool = True) -> list[StoredEncoding | None]:
        """Each text's stored encodings, or None (a miss; a damaged entry is a miss too, with a warning).

        ``max_length``: the passage ``max_length`` the texts were encoded with. ``colbert=False``
        reads the dense vectors and sparse weights only (the ColBERT blobs are not read).
        """
        items = check_texts(texts)
        keys = self.keys(items, max_length=max_length)
        found: dict[bytes, StoredEncoding] = {}
        damaged: list[bytes] = []
        stale: list[bytes] = []
        now = _now_ms()
        for key, used, values in self._select(list(dict.fromkeys(keys)), colbert):
            try:
                found[key] = self.entry_format.decode(values, colbert=colbert, expected_max_length=max_length)
            except DamagedEntry as exc:
                logger.warning("%s: entry %s is damaged (%s); it counts as a miss", self.path, key.hex(), exc)
                damaged.append(key)
                continue
            if not isinstance(used, int) or now - used >= self.touch_after_ms:
                stale.append(key)
        out = [found.get(key) for key in keys]
        with self._lock:
            self._counts["hits"] += sum(e is not None for e in out)
            self._counts["misses"] += sum(e is None for e in out)
            self._counts["damaged"] += len(damaged)
            self._damaged.update(damaged)  # deleted with the next write, so that a put can replace them
            self._pending_touch.update(dict.fromkeys(stale, now))
            if self._pending_touch or self._damaged:
                self._flush()
        return out

    def contains(self, texts: Sequence[str], *, max_length: int) -> list[bool]:
        """Whether each text has an entry (not checked, not counted as a hit or miss)."""
        keys = self.keys(check_texts(texts), max_length=max_length)
        with self._lock:
            have = {r[0] for r in _chunked(self._conn(), "SELECT key FROM entries WHERE key IN {in}", keys)}
        return [key in have for key in keys]

    def _select(self, keys: list[bytes], colbert: bool) -> list[tuple[bytes, Any, tuple[Any, ...]]]:
        tail = "scales, colbert" if colbert else "length(scales), length(colbert)"
        try:
            with self._lock:
                rows = list(_chunked(self._conn(), f"SELECT {_HEAD}, {tail} FROM entries WHERE key IN {{in}}", keys))
        except sqlite3.DatabaseError as exc:  # a damaged file: everything is a miss, nothing crashes
            logger.warning("%s could not be read (%s); every lookup counts as a miss", self.path, exc)
            return []
        return [(r[0], r[1], r[2:]) for r in rows if isinstance(r[0], bytes)]

    # ------------------------------------------------------------------ writing
    def put(self, texts: Sequence[str], output: M3Output | EncodedBatch, *, max_length: int) -> list[StoredEncoding]:
        """Store the encodings of ``texts`` (one transaction); texts already stored are left as they are.

        ``output``: an :class:`~m3_rag.M3Output` with dense, sparse and ColBERT outputs, or an
        :class:`~m3_rag.EncodedBatch` whose rows are ``texts`` in order; ``max_length``: the
        passage ``max_length`` they were encoded with. Returns the entries as stored (ColBERT
        vectors in the store's dtype), one per text.
        """
        items = check_texts(texts)
        max_length = check_max_length(max_length)
        dense, sparse, colbert = output_columns(output, len(items))
        keys = self.keys(items, max_length=max_length)
        rows: dict[bytes, EncodedRow] = {}
        entries: list[StoredEncoding] = []
        for i, key in enumerate(keys):
            try:
                row, entry = self.entry_format.encode(max_length, dense[i], sparse[i], colbert[i], key=key)
            except ValueError as exc:
                raise ValueError(f"cannot store the encodings of texts[{i}]: {exc}") from exc
            rows.setdefault(key, row)
            entries.append(entry)
        with self._write() as db:
            self._insert(db, rows)
        return entries

    def _insert(self, db: sqlite3.Connection, rows: dict[bytes, EncodedRow]) -> None:
        """Inside a write transaction: replace damaged entries, add new ones, evict, keep the totals."""
        self._apply_pending(db)
        have = {r[0] for r in _chunked(db, "SELECT key FROM entries WHERE key IN {in}", list(rows))}
        new = [row for key, row in rows.items() if key not in have]
        now = _now_ms()
        db.executemany(
            "INSERT INTO entries VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            ((r.key, now, *r.values()) for r in new),
        )
        db.execute("UPDATE totals SET entries = entries + ?, bytes = bytes + ? WHERE id = 0",
                   (len(new), sum(r.size for r in new)))  # fmt: skip
        self._counts["stored"] += len(new)
        if self.max_bytes is not None:
            self._evict(db, self.max_bytes)

    def _delete(self, db: sqlite3.Connection, column: str, values: list[Any]) -> tuple[int, int]:
        """Delete entries by ``key`` or ``rowid``: (bytes freed, entries deleted)."""
        got = list(_chunked(db, f"SELECT {_SIZE} FROM entries WHERE {column} IN {{in}}", values))
        list(_chunked(db, f"DELETE FROM entries WHERE {column} IN {{in}}", values))
        return sum(int(size) for (size,) in got), len(got)

    def _evict(self, db: sqlite3.Connection, max_bytes: int) -> None:
        total = int(db.execute("SELECT bytes FROM totals WHERE id = 0").fetchone()[0])
        if total <= max_bytes:
            return
        target = int(max_bytes * _LOW_WATER)
        while total > target:  # least recently used first; ties: the oldest entry
            picked = db.execute(f"SELECT rowid, {_SIZE} FROM entries ORDER BY used, rowid LIMIT 256").fetchall()
            if not picked:
                break
            sizes = np.cumsum([int(size) for _, size in picked])
            take = min(len(picked), int(np.searchsorted(sizes, total - target)) + 1)
            freed, count = self._delete(db, "rowid", [rowid for rowid, _ in picked[:take]])
            db.execute("UPDATE totals SET entries = entries - ?, bytes = bytes - ? WHERE id = 0", (count, freed))
            self._counts["evicted"] += count
            total -= freed

    def _apply_pending(self, db: sqlite3.Connection) -> None:
        """Inside a write transaction: the "last used" times of hits, and deleting damaged entries."""
        touched, self._pending_touch = self._pending_touch, {}
        db.executemany("UPDATE entries SET used = ? WHERE key = ?", ((t, k) for k, t in touched.items()))
        damaged, self._damaged = list(self._damaged), set()
        freed, count = self._delete(db, "key", damaged)
        db.execute("UPDATE totals SET entries = entries - ?, bytes = bytes - ? WHERE id = 0", (count, freed))

    def _flush(self) -> None:
        """Write what :meth:`get` noted now, unless another process holds the write lock (then: later)."""
        touched, damaged = dict(self._pending_touch), set(self._damaged)
        try:
            with self._write(wait=False, durable=False) as db:
                self._apply_pending(db)
        except sqlite3.Error:  # busy, or a read-only file: keep them for the next write (a bounded number)
            self._pending_touch = {**touched, **self._pending_touch} if len(touched) < 65536 else {}
            self._damaged |= damaged

    def clear(self) -> None:
        """Delete every entry (the file keeps its pages for new entries)."""
        with self._write() as db:
            db.execute("DELETE FROM entries")
            db.execute("UPDATE totals SET entries = 0, bytes = 0 WHERE id = 0")

    # ------------------------------------------------------------------ facts
    def __len__(self) -> int:
        with self._lock:
            return int(self._conn().execute("SELECT entries FROM totals WHERE id = 0").fetchone()[0])

    def stats(self) -> EncodingStoreStats:
        """Hit / miss counts of this object, and the size of the store."""
        with self._lock:
            entries, size = self._conn().execute("SELECT entries, bytes FROM totals WHERE id = 0").fetchone()
            counts = dict(self._counts)
        files = [self.path, Path(f"{self.path}-wal")]
        file_bytes = sum(p.stat().st_size for p in files if p.is_file())
        return EncodingStoreStats(**counts, entries=int(entries), bytes=int(size), file_bytes=file_bytes,
                                  max_bytes=self.max_bytes)  # fmt: skip
