"""The catalog of an index folder: one SQLite database (WAL) of segments, documents and deletions.

A commit is one transaction: the new segment's files are written and fsynced first, then one
``BEGIN IMMEDIATE`` ... ``COMMIT`` records the segment, points each added id at its row and
removes deleted ids. SQLite makes the commit atomic and durable (``synchronous=FULL``), serialises
writers of all processes, and gives every reader a consistent snapshot (WAL), so readers never see
half a commit and never block writers. A generation number counts commits; readers catch up with
:meth:`Catalog.read` ``since`` the generation they hold (changed documents and deletions only).

Tables::

    meta(key, value)                       format, version, model, dimensions, generation...
    segments(name, rows, live, files, state, gen)     state: 'live' or 'dropped'
    docs(id, segment, row, text, metadata, gen)       the live documents
    deletions(id, gen)                     ids deleted at each generation (for catching up)

The database may have been written by an attacker: the schema must be exactly this one
(no triggers or views), ``trusted_schema`` is off, and every value read is checked before use.
"""

from __future__ import annotations

import json
import re
import sqlite3
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import IndexFormatError

__all__ = ["CATALOG", "FORMAT", "FORMAT_VERSION", "Catalog", "CatalogState", "DocRow", "SegmentEntry"]

FORMAT = "m3-rag-index"
FORMAT_VERSION = 2
CATALOG = "catalog.sqlite"
SEGMENT_NAME = re.compile(r"^s[0-9a-f]{24}$")
_FILE_NAMES = {
    "dense.npy",
    "sparse_ids.npy",
    "sparse_weights.npy",
    "sparse_offsets.npy",
    "colbert.npy",
    "colbert_scales.npy",
    "colbert_offsets.npy",
}
_SCHEMA = {
    ("table", "meta"): "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    ("table", "segments"): (
        "CREATE TABLE segments (name TEXT PRIMARY KEY, rows INTEGER NOT NULL, live INTEGER NOT NULL, "
        "files TEXT NOT NULL, state TEXT NOT NULL, gen INTEGER NOT NULL)"
    ),
    ("table", "docs"): (
        "CREATE TABLE docs (id TEXT PRIMARY KEY, segment TEXT NOT NULL, row INTEGER NOT NULL, "
        "text TEXT NOT NULL, metadata TEXT NOT NULL, gen INTEGER NOT NULL)"
    ),
    ("table", "deletions"): "CREATE TABLE deletions (id TEXT NOT NULL, gen INTEGER NOT NULL)",
    ("index", "docs_gen"): "CREATE INDEX docs_gen ON docs (gen)",
    ("index", "docs_segment"): "CREATE INDEX docs_segment ON docs (segment)",
    ("index", "deletions_gen"): "CREATE INDEX deletions_gen ON deletions (gen)",
}
_AUTO_INDEXES = {"sqlite_autoindex_meta_1", "sqlite_autoindex_segments_1", "sqlite_autoindex_docs_1"}
_BUSY_MS = 60_000


@dataclass(frozen=True)
class SegmentEntry:
    """A segment as the catalog records it."""

    name: str
    rows: int
    live: int
    files: dict[str, dict[str, Any]]


@dataclass(frozen=True)
class DocRow:
    """A live document: where its vectors are, its text and its metadata (JSON text, unparsed)."""

    id: str
    segment: str
    row: int
    text: str
    metadata: str


@dataclass(frozen=True)
class CatalogState:
    """What a reader gets: the generation, the live segments, and documents (all of them, or those
    changed since the generation asked for, with the ids deleted since)."""

    generation: int
    segments: list[SegmentEntry]
    docs: list[DocRow]
    deleted: list[str]
    full: bool


class _Translate:
    """Turn what a damaged or crafted database makes SQLite raise into IndexFormatError (a full disk,
    a lock timeout or an I/O error stay what they are: sqlite3.OperationalError)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: Any) -> None:
        if exc is None or isinstance(exc, (sqlite3.OperationalError, IndexFormatError)):
            return
        if isinstance(exc, (sqlite3.DatabaseError, UnicodeDecodeError, OverflowError)):
            raise _bad(self.path, f"{type(exc).__name__}: {exc}") from exc


def _strict_text(raw: bytes) -> str:
    return raw.decode("utf-8")


def _rollback(db: sqlite3.Connection) -> None:
    """Roll back if a transaction is still open (SQLite ends it by itself on some errors, e.g. a full disk)."""
    if db.in_transaction:
        db.execute("ROLLBACK")


def _bad(path: Path, problem: str) -> IndexFormatError:
    return IndexFormatError(f"{path} is damaged: {problem}. Restore the index from a backup or re-index")


class Catalog:
    """The SQLite catalog of one index folder (thread-safe: calls are serialised by a lock)."""

    def __init__(self, path: Path, *, create_meta: dict[str, str] | None = None) -> None:
        self.path = path
        self._lock = threading.RLock()
        existed = path.exists()
        if existed and (path.is_symlink() or not path.is_file()):
            raise _bad(path, "it is not a regular file")
        if not existed and create_meta is None:
            raise IndexFormatError(f"{path.parent} is not an m3-rag index: {CATALOG} is missing")
        try:
            self._db = sqlite3.connect(path, timeout=_BUSY_MS / 1000, isolation_level=None, check_same_thread=False)
        except sqlite3.Error as exc:
            raise _bad(path, f"SQLite cannot open it ({exc})") from exc
        self._db.text_factory = _strict_text  # invalid UTF-8 in a crafted database: an error, not mojibake
        self._guard = _Translate(path)
        try:
            self._db.execute("PRAGMA trusted_schema = OFF")
            self._db.execute(f"PRAGMA busy_timeout = {_BUSY_MS}")
            if create_meta is not None:
                self._create(create_meta)
            self._check_schema()
            self._db.execute("PRAGMA synchronous = FULL")
        except sqlite3.DatabaseError as exc:
            self._db.close()
            raise _bad(path, f"SQLite says: {exc}") from exc
        except BaseException:
            self._db.close()
            raise

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _create(self, meta: dict[str, str]) -> None:
        db = self._db
        if db.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
            db.execute("PRAGMA journal_mode = WAL")
        db.execute("BEGIN IMMEDIATE")
        try:
            present = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            if not present:
                for (_, _), sql in _SCHEMA.items():
                    db.execute(sql)
                rows = [*meta.items(), ("generation", "0"), ("deletions_floor", "0")]
                db.executemany("INSERT INTO meta (key, value) VALUES (?, ?)", rows)
            db.execute("COMMIT")
        except BaseException:
            _rollback(db)
            raise

    def _check_schema(self) -> None:
        found = {}
        for kind, name, sql in self._db.execute("SELECT type, name, sql FROM sqlite_master"):
            if name in _AUTO_INDEXES and kind == "index" and sql is None:
                continue
            found[(kind, name)] = sql
        if found != _SCHEMA:
            extra = sorted(f"{k} {n}" for k, n in set(found) - set(_SCHEMA))
            missing = sorted(f"{k} {n}" for k, n in set(_SCHEMA) - set(found))
            raise _bad(self.path, f"its schema is not m3-rag's (unexpected: {extra}; missing: {missing})")

    # ------------------------------------------------------------------ meta
    def meta(self) -> dict[str, str]:
        with self._lock, self._guard:
            rows = self._db.execute("SELECT key, value FROM meta").fetchall()
        out = {}
        for key, value in rows:
            if not isinstance(key, str) or not isinstance(value, str):
                raise _bad(self.path, "a meta entry is not text")
            out[key] = value
        return out

    def generation(self) -> int:
        """The number of the latest commit (a cheap read: searches of an open index check it)."""
        with self._lock, self._guard:
            row = self._db.execute("SELECT value FROM meta WHERE key = 'generation'").fetchone()
        return self._int(row[0] if row else None, "the generation")

    def _int(self, value: Any, what: str, *, low: int = 0, high: int = 1 << 62) -> int:
        if isinstance(value, str) and value.isdigit() and len(value) < 19:
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise _bad(self.path, f"{what} is {value!r:.40}, not an integer in [{low}, {high}]")
        return value

    # ------------------------------------------------------------------ reading
    def read(self, since: int | None = None) -> CatalogState:
        """A consistent snapshot: everything (``since=None``), or what changed after generation ``since``."""
        with self._lock, self._guard:
            db = self._db
            db.execute("BEGIN")
            try:
                meta = dict(db.execute("SELECT key, value FROM meta WHERE key IN ('generation', 'deletions_floor')"))
                generation = self._int(meta.get("generation"), "the generation")
                floor = self._int(meta.get("deletions_floor"), "the deletions floor")
                full = since is None or since < floor or since > generation
                segments = db.execute(
                    "SELECT name, rows, live, files FROM segments WHERE state = 'live' ORDER BY gen, name"
                ).fetchall()
                if full:
                    docs = db.execute("SELECT id, segment, row, text, metadata FROM docs").fetchall()
                    deleted: list[Any] = []
                else:
                    docs = db.execute(
                        "SELECT id, segment, row, text, metadata FROM docs WHERE gen > ?", (since,)
                    ).fetchall()
                    deleted = db.execute("SELECT id FROM deletions WHERE gen > ?", (since,)).fetchall()
            finally:
                if db.in_transaction:
                    db.execute("COMMIT")
        entries = [self._segment(*row) for row in segments]
        rows_of = {e.name: e.rows for e in entries}
        return CatalogState(
            generation=generation,
            segments=entries,
            docs=[self._doc(*row, rows_of=rows_of) for row in docs],
            deleted=[self._text(row[0], "a deleted id") for row in deleted],
            full=full,
        )

    def _text(self, value: Any, what: str) -> str:
        if not isinstance(value, str):
            raise _bad(self.path, f"{what} is a {type(value).__name__}, not text")
        return value

    def _segment(self, name: Any, rows: Any, live: Any, files: Any) -> SegmentEntry:
        if not isinstance(name, str) or not SEGMENT_NAME.match(name):
            raise _bad(self.path, f"segment name {name!r:.60} is not of the form s<24 hex digits>")
        try:
            parsed = json.loads(self._text(files, f"the file list of {name}"))
        except (ValueError, RecursionError) as exc:
            raise _bad(self.path, f"the file list of segment {name} is not JSON") from exc
        if not isinstance(parsed, dict) or not set(parsed) <= _FILE_NAMES:
            raise _bad(self.path, f"the file list of segment {name} names unexpected files")
        for file, entry in parsed.items():
            size = entry.get("bytes") if isinstance(entry, dict) else None
            sha = entry.get("sha256") if isinstance(entry, dict) else None
            if isinstance(size, bool) or not isinstance(size, int) or size < 0:
                raise _bad(self.path, f"segment {name}: {file} has no valid size")
            if sha is not None and not (isinstance(sha, str) and re.fullmatch(r"[0-9a-f]{64}", sha)):
                raise _bad(self.path, f"segment {name}: {file} has no valid checksum")
        return SegmentEntry(
            name, self._int(rows, f"the rows of {name}", low=1), self._int(live, "a live count"), parsed
        )

    def _doc(self, doc_id: Any, segment: Any, row: Any, text: Any, metadata: Any, *, rows_of: dict[str, int]) -> DocRow:
        doc_id = self._text(doc_id, "a document id")
        segment = self._text(segment, f"the segment of {doc_id!r:.60}")
        if segment not in rows_of:
            raise _bad(self.path, f"document {doc_id!r:.60} points at segment {segment!r:.40}, which is not live")
        row = self._int(row, f"the row of {doc_id!r:.60}", high=rows_of[segment] - 1)
        return DocRow(doc_id, segment, row, self._text(text, "a text"), self._text(metadata, "metadata"))

    # ------------------------------------------------------------------ writing
    def commit(
        self,
        *,
        segment: SegmentEntry | None,
        docs: Sequence[DocRow] = (),
        deletes: Iterable[str] = (),
        moves: Sequence[tuple[str, str, int, str, int]] = (),
        drop: Iterable[str] = (),
    ) -> int:
        """One transaction: add ``segment``, upsert ``docs`` (pointing at it), delete ids, apply
        ``moves`` ``(id, old segment, old row, new segment, new row)`` where the id still points at
        the old place (compaction), drop segments no document points at; returns the new generation."""
        with self._lock, self._guard:
            db = self._db
            db.execute("BEGIN IMMEDIATE")
            try:
                generation = (
                    self._int(
                        db.execute("SELECT value FROM meta WHERE key = 'generation'").fetchone()[0], "the generation"
                    )
                    + 1
                )
                touched: set[str] = set(drop)
                if segment is not None:
                    db.execute(
                        "INSERT INTO segments (name, rows, live, files, state, gen) VALUES (?, ?, 0, ?, 'live', ?)",
                        (segment.name, segment.rows, json.dumps(segment.files), generation),
                    )
                    touched.add(segment.name)
                delete_ids = list(dict.fromkeys([*deletes, *(d.id for d in docs)]))
                for start in range(0, len(delete_ids), 500):
                    chunk = delete_ids[start : start + 500]
                    marks = ",".join("?" * len(chunk))
                    touched.update(r[0] for r in db.execute(f"SELECT segment FROM docs WHERE id IN ({marks})", chunk))
                    db.execute(f"DELETE FROM docs WHERE id IN ({marks})", chunk)
                wanted = set(deletes) - {d.id for d in docs}
                db.executemany("INSERT INTO deletions (id, gen) VALUES (?, ?)", [(i, generation) for i in wanted])
                db.executemany(
                    "INSERT INTO docs (id, segment, row, text, metadata, gen) VALUES (?, ?, ?, ?, ?, ?)",
                    [(d.id, d.segment, d.row, d.text, d.metadata, generation) for d in docs],
                )
                for doc_id, old_seg, old_row, new_seg, new_row in moves:
                    db.execute(
                        "UPDATE docs SET segment = ?, row = ?, gen = ? WHERE id = ? AND segment = ? AND row = ?",
                        (new_seg, new_row, generation, doc_id, old_seg, old_row),
                    )
                    touched.update((old_seg, new_seg))
                for name in touched:
                    db.execute(
                        "UPDATE segments SET live = (SELECT COUNT(*) FROM docs WHERE segment = ?) WHERE name = ?",
                        (name, name),
                    )
                db.execute(
                    "UPDATE segments SET state = 'dropped', gen = ? WHERE state = 'live' AND live = 0", (generation,)
                )
                db.execute("UPDATE meta SET value = ? WHERE key = 'generation'", (str(generation),))
                db.execute("COMMIT")
            except BaseException:
                _rollback(db)
                raise
        return generation

    def stats(self) -> dict[str, Any]:
        """Counts for ``m3-rag info``: documents, distinct ``source`` metadata, live segments and their bytes."""
        with self._lock, self._guard:
            db = self._db
            try:
                documents = db.execute("SELECT COUNT(*) FROM docs").fetchone()[0]
                sources = db.execute(
                    "SELECT COUNT(DISTINCT json_extract(metadata, '$.source')) FROM docs WHERE json_valid(metadata)"
                ).fetchone()[0]
                segments = db.execute("SELECT name, rows, live, files FROM segments WHERE state = 'live'").fetchall()
            except sqlite3.DatabaseError as exc:
                raise _bad(self.path, f"SQLite says: {exc}") from exc
        entries = [self._segment(*row) for row in segments]
        files: dict[str, int] = {}
        for entry in entries:
            for name, info in entry.files.items():
                files[name] = files.get(name, 0) + int(info["bytes"])
        return {
            "documents": self._int(documents, "the document count"),
            "sources": self._int(sources, "the source count"),
            "segments": len(entries),
            "rows": sum(e.rows for e in entries),
            "files": files,
        }

    def dropped_segments(self) -> list[str]:
        """Segments that no document points at any more (their files may go once nobody uses them)."""
        with self._lock, self._guard:
            rows = self._db.execute("SELECT name FROM segments WHERE state = 'dropped'").fetchall()
        return [r[0] for r in rows if isinstance(r[0], str) and SEGMENT_NAME.match(r[0])]

    def all_segment_names(self) -> set[str]:
        with self._lock, self._guard:
            return {r[0] for r in self._db.execute("SELECT name FROM segments") if isinstance(r[0], str)}

    def forget_segment(self, name: str) -> None:
        """Remove a dropped segment's row once its files are gone."""
        with self._lock:
            self._db.execute("DELETE FROM segments WHERE name = ? AND state = 'dropped'", (name,))

    def prune_deletions(self, keep: int = 100_000) -> None:
        """Forget old deletions beyond the newest ``keep``; readers older than that reload fully."""
        with self._lock, self._guard:
            db = self._db
            count = db.execute("SELECT COUNT(*) FROM deletions").fetchone()[0]
            if count <= keep:
                return
            db.execute("BEGIN IMMEDIATE")
            try:
                cut = db.execute("SELECT gen FROM deletions ORDER BY gen DESC LIMIT 1 OFFSET ?", (keep,)).fetchone()[0]
                db.execute("DELETE FROM deletions WHERE gen <= ?", (cut,))
                db.execute("UPDATE meta SET value = ? WHERE key = 'deletions_floor'", (str(cut),))
                db.execute("COMMIT")
            except BaseException:
                _rollback(db)
                raise
