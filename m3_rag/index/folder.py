"""An index folder: the catalog, the segment files, commits, catching up, compaction and clean-up.

Layout::

    path/catalog.sqlite (+ -wal, -shm)   the catalog (:mod:`m3_rag.index.catalog`)
    path/segments/s<24 hex>/             immutable segment files (:mod:`m3_rag.index.segment`)
    path/segments/.new-*, .tmp-*         a segment being written (removed if its writer died)
    path/.compact.lock                   held by the process compacting

A commit writes the new segment under ``.tmp-<name>`` holding its ``.lock`` exclusively (the lock is
made in ``.new-<name>`` first, which clean-up leaves alone, so it never sees an unlocked one), fsyncs
it, renames it to ``<name>``, commits the catalog transaction, and only then releases the lock.
A process killed at any point leaves the last commit intact; what it wrote is an unreferenced
folder whose lock nobody holds, which the next commit or open removes. Files of segments that
no document points at any more are removed once no process holds their lock (readers hold it
shared for as long as they have the segment open): :mod:`m3_rag.index.cleanup`.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..colbert_codec import ColbertDtype, check_colbert_dtype
from ..encoder import M3Embedder
from ..errors import IndexFormatError, ModelMismatchError
from ..records import check_json_value, metadata_json
from .catalog import CATALOG, FORMAT, FORMAT_VERSION, Catalog, CatalogState, DocRow, SegmentEntry
from .cleanup import collect_garbage
from .files import SegmentLock, damaged, folder_lock, fsync_dir
from .segment import Segment, open_segment, write_segment

__all__ = ["Changes", "IndexFolder"]

SEGMENTS = "segments"
LEGACY_MANIFEST = "manifest.json"
#: Automatic merges: segments of similar size (within a factor of MERGE_FACTOR) are merged once
#: MERGE_FACTOR of them exist; segments above MAX_AUTO_MERGE_BYTES are only merged by compact().
MERGE_FACTOR = 8
MERGE_FLOOR_ROWS = 1024
MAX_AUTO_MERGE_BYTES = 2 << 30
_OPEN_TRIES = 50


@dataclass
class Changes:
    """What the catalog says changed: see :meth:`IndexFolder.changes`."""

    full: bool
    segments: list[Segment]
    live: set[Segment]
    deleted: list[str]
    docs: list[tuple[str, Segment, int]] = field(default_factory=list)


_SAME_MISSING = 3  # reads of the catalog in a row that name a segment whose folder is gone: damage


class _Vanished(Exception):
    """A segment of the snapshot was removed before it could be opened: read the catalog again."""


class IndexFolder:
    """The folder of an :class:`~m3_rag.M3Index` (thread-safety: the index's lock is held)."""

    def __init__(self, path: Path, catalog: Catalog, embedder: M3Embedder, meta: dict[str, str], mmap: bool) -> None:
        self.path = path
        self.catalog = catalog
        self.embedder = embedder
        self.colbert_dtype: ColbertDtype | None = None if meta["colbert_dtype"] == "none" else meta["colbert_dtype"]  # type: ignore[assignment]
        self.mmap = mmap
        self.generation = -1
        self._open: dict[str, Segment] = {}

    # ------------------------------------------------------------------ opening
    @staticmethod
    def is_index(path: Path) -> bool:
        return (path / CATALOG).is_file() or (path / LEGACY_MANIFEST).is_file()

    @staticmethod
    def require(path: Path) -> None:
        """Raise the IndexFormatError that says why ``path`` is not an index."""
        if not path.is_dir():
            raise IndexFormatError(f"{path} is not an m3-rag index: no such folder")
        if not IndexFolder.is_index(path):
            raise IndexFormatError(f"{path} is not an m3-rag index: {CATALOG} is missing")

    @staticmethod
    def model_name(path: Path) -> str | None:
        """The model recorded in the index folder ``path``, or None when there is none."""
        if (path / CATALOG).is_file():
            catalog = Catalog(path / CATALOG)
            try:
                return catalog.meta().get("model")
            finally:
                catalog.close()
        if (path / LEGACY_MANIFEST).is_file():
            from .legacy import legacy_model

            return legacy_model(path)
        return None

    @classmethod
    def open(
        cls, path: Path, embedder: M3Embedder, *, create: bool, colbert_dtype: ColbertDtype | None, mmap: bool
    ) -> IndexFolder:
        """Open the index folder ``path`` (making it when ``create`` and it is missing or empty)."""
        if path.exists() and not path.is_dir():
            raise FileExistsError(f"{path} exists and is not a folder")
        if not (path / CATALOG).exists() and (path / LEGACY_MANIFEST).is_file():
            from .legacy import upgrade

            upgrade(path, embedder)
        meta = None
        if not (path / CATALOG).exists():
            if not create:
                cls.require(path)
            if path.is_dir() and any(p.name not in (SEGMENTS,) for p in path.iterdir()):
                raise FileExistsError(
                    f"{path} is a non-empty folder that is not an m3-rag index; refusing to write into it"
                )
            path.mkdir(parents=True, exist_ok=True)
            meta = {
                "format": FORMAT,
                "version": str(FORMAT_VERSION),
                "model": embedder.name,
                "model_fingerprint": embedder.fingerprint,
                "dim": str(embedder.dim),
                "colbert_dim": str(embedder.colbert_dim or 0),
                "colbert_dtype": check_colbert_dtype(colbert_dtype, allow_none=True) or "none",
                "vocab_size": str(embedder.vocab_size),
            }
        catalog = Catalog(path / CATALOG, create_meta=meta)
        try:
            found = _check_meta(path, catalog.meta(), embedder)
            segments = path / SEGMENTS
            if segments.is_symlink() or (segments.exists() and not segments.is_dir()):
                raise IndexFormatError(f"{segments} is damaged: it must be a folder inside the index, not a link")
            segments.mkdir(exist_ok=True)
            folder = cls(path, catalog, embedder, found, mmap)
            folder.collect_garbage()
        except BaseException:
            catalog.close()
            raise
        return folder

    def same(self, path: Path) -> bool:
        try:
            return path.resolve() == self.path.resolve()
        except OSError:
            return False

    def close(self) -> None:
        for segment in self._open.values():
            segment.close()
        self._open.clear()
        self.catalog.close()

    # ------------------------------------------------------------------ reading
    def is_current(self) -> bool:
        return self.catalog.generation() == self.generation

    def changes(self, *, full: bool = False) -> Changes:
        """What changed since the last call (everything with ``full``), segments opened and filled."""
        missing, streak = "", 0
        for attempt in range(_OPEN_TRIES):
            state = self.catalog.read(None if full or attempt else (self.generation if self.generation >= 0 else None))
            try:
                return self._changes(state)
            except _Vanished as exc:  # dropped and removed by another process since the catalog was read?
                name = str(exc.args[0])
                streak = streak + 1 if name == missing and exc.args[1:] == ("gone",) else 0
                missing = name
                if streak >= _SAME_MISSING:  # no: fresh reads still name it; m3-rag removes dropped segments only
                    break
                time.sleep(0.01 * (attempt + 1))
        raise IndexFormatError(
            f"{self.path} is damaged: its catalog names segment {missing!r}, but that folder is missing (or kept "
            f"vanishing, {_OPEN_TRIES} tries); if no other process removes it, its files were removed outside "
            "m3-rag: restore the folder from a backup or index again"
        )

    def _changes(self, state: CatalogState) -> Changes:
        by_name: dict[str, Segment] = {}
        new: list[Segment] = []
        for entry in state.segments:
            segment = self._open.get(entry.name)
            if segment is None:
                segment = self._open_segment(entry)
                new.append(segment)
            by_name[entry.name] = segment
        docs = []
        for doc in state.docs:
            segment = by_name[doc.segment]
            if segment.ids[doc.row] not in (None, doc.id):
                raise IndexFormatError(
                    f"{self.path / CATALOG} is damaged: documents {segment.ids[doc.row]!r:.60} and {doc.id!r:.60} "
                    f"both point at row {doc.row} of segment {doc.segment}"
                )
            if segment.ids[doc.row] is None:
                segment.ids[doc.row] = doc.id
                segment.texts[doc.row] = doc.text
                segment.metadatas[doc.row] = self._metadata(doc)
            docs.append((doc.id, segment, doc.row))
        for segment in new:
            self._open[str(segment.name)] = segment
        self.generation = state.generation
        ordered = list(by_name.values())  # the catalog's order (by commit): the same rows order in every process
        return Changes(state.full, ordered if state.full else new, set(ordered), state.deleted, docs)

    def _metadata(self, doc: DocRow) -> dict[str, Any]:
        try:
            value = json.loads(doc.metadata)
            if not isinstance(value, dict):
                raise TypeError("not a JSON object")
            check_json_value(value, "metadata", 1)
        except (ValueError, TypeError, RecursionError) as exc:
            raise IndexFormatError(
                f"{self.path / CATALOG} is damaged: the metadata of {doc.id!r:.60} is not valid ({exc})"
            ) from exc
        return value

    def _open_segment(self, entry: SegmentEntry) -> Segment:
        folder = self.path / SEGMENTS / entry.name
        if folder.is_symlink():
            raise IndexFormatError(f"{folder} is damaged: a segment must be a folder inside the index, not a link")
        if not folder.is_dir():
            raise _Vanished(entry.name, "gone")
        if (folder / ".lock").is_symlink():
            raise damaged(folder, "its .lock is a link")
        lock = SegmentLock.shared(folder)
        if lock is None:
            raise _Vanished(entry.name)
        try:
            return open_segment(
                folder, entry.name, entry.files, rows=entry.rows, dim=self.embedder.dim,
                colbert_dim=self.embedder.colbert_dim, colbert_dtype=self.colbert_dtype,
                vocab_size=self.embedder.vocab_size, lock=lock, mmap=self.mmap,
            )  # fmt: skip
        except FileNotFoundError as exc:
            lock.release()
            raise _Vanished(entry.name) from exc
        except BaseException:
            lock.release()
            raise

    def release_unused(self, live: set[Segment]) -> None:
        """Close the segments the index no longer uses (their files may then be removed)."""
        for name, segment in list(self._open.items()):
            if segment not in live:
                segment.close()
                del self._open[name]

    # ------------------------------------------------------------------ writing
    def commit_rows(self, sources: Sequence[tuple[Segment, np.ndarray]], *, deletes: Iterable[str]) -> None:
        """Commit the given rows (their ids, texts and metadata from the source segments) as one new
        segment, together with ``deletes``: one catalog transaction."""
        sources = [(s, r) for s, r in sources if len(r)]
        if not sources:
            self.catalog.commit(segment=None, deletes=deletes)
        else:

            def docs(name: str) -> list[DocRow]:
                out, row = [], 0
                for segment, rows in sources:
                    for r in rows.tolist():
                        text, meta, doc_id = segment.texts[r], segment.metadatas[r], segment.ids[r]
                        assert doc_id is not None and text is not None
                        out.append(DocRow(doc_id, name, row, text, metadata_json(meta or {})))
                        row += 1
                return out

            self._write(
                sources, lambda entry: self.catalog.commit(segment=entry, docs=docs(entry.name), deletes=deletes)
            )
        self.collect_garbage()

    def _write(self, sources: Sequence[tuple[Segment, np.ndarray]], commit: Any) -> None:
        segments = self.path / SEGMENTS
        name = "s" + uuid.uuid4().hex[:24]
        new, tmp, final = segments / f".new-{name}", segments / f".tmp-{name}", segments / name
        new.mkdir()  # clean-up leaves .new-* alone (but for hour-old ones): its lock does not exist yet
        lock = SegmentLock.create_exclusive(new)
        try:
            os.rename(new, tmp)  # from now on the folder is locked whenever clean-up can see it
            files = write_segment(tmp, sources, dim=self.embedder.dim, colbert_dim=self.embedder.colbert_dim)
            fsync_dir(tmp)
            os.rename(tmp, final)
            fsync_dir(segments)
            commit(SegmentEntry(name, sum(len(r) for _, r in sources), 0, files))
        except BaseException:
            self._discard(name, final, tmp, new)
            raise
        finally:
            lock.release()

    def _discard(self, name: str, final: Path, *unnamed: Path) -> None:
        """Remove the files of a commit that failed -- unless the catalog names the segment: then the
        commit went through and only its return was interrupted (Ctrl-C right after SQLite's COMMIT),
        and the files are the index's. When the catalog cannot tell, ``final`` stays for
        :meth:`collect_garbage`, which checks the catalog again under the segment's lock."""
        try:
            keep = name in self.catalog.all_segment_names()
        except Exception:  # the commit's own error is what the caller raises
            keep = True
        for leftover in unnamed if keep else (final, *unnamed):
            if leftover.exists():
                shutil.rmtree(leftover, ignore_errors=True)

    # ------------------------------------------------------------------ compaction
    def maybe_compact(self, view: Any) -> None:
        """Merge segments of similar size once :data:`MERGE_FACTOR` of them exist (see the module docs)."""
        tiers: dict[int, list[tuple[int, Segment]]] = {}
        for segment, alive in zip(view.segments, view.alive):
            if segment.name is None or segment.nbytes() > MAX_AUTO_MERGE_BYTES:
                continue
            live = int(alive.sum())
            if live * 2 < segment.n:  # mostly deleted: rewrite it with its tier
                live = max(1, live)
            tier = int(math.log(max(live, MERGE_FLOOR_ROWS) / MERGE_FLOOR_ROWS, MERGE_FACTOR))
            tiers.setdefault(tier, []).append((live, segment))
        for tier in sorted(tiers):
            members = sorted(tiers[tier], key=lambda x: x[0])
            if len(members) >= MERGE_FACTOR:
                self.compact(view, only={s for _, s in members[:MERGE_FACTOR]}, wait=False)
                return

    def compact(
        self, view: Any, *, everything: bool = False, only: set[Segment] | None = None, wait: bool = True
    ) -> None:
        """Rewrite the live rows of some committed segments (all with ``everything``) as one."""
        with self._compaction_lock(wait) as locked:
            if not locked:
                return
            chosen = [
                (s, np.flatnonzero(a))
                for s, a in zip(view.segments, view.alive)
                if s.name is not None and (everything or (only is not None and s in only))
            ]
            if not chosen or (len(chosen) == 1 and len(chosen[0][1]) == chosen[0][0].n):
                return
            sources = [(s, rows) for s, rows in chosen if len(rows)]
            drop = [str(s.name) for s, _ in chosen]
            if not sources:
                self.catalog.commit(segment=None, drop=drop)
            else:
                moves, row = [], 0

                def commit(entry: SegmentEntry) -> None:
                    nonlocal row
                    for segment, rows in sources:
                        for r in rows.tolist():
                            moves.append((str(segment.ids[r]), str(segment.name), r, entry.name, row))
                            row += 1
                    self.catalog.commit(segment=entry, moves=moves)

                self._write(sources, commit)
            self.collect_garbage()

    def _compaction_lock(self, wait: bool) -> Any:
        return folder_lock(self.path / ".compact.lock", wait=wait)

    # ------------------------------------------------------------------ clean-up
    def collect_garbage(self) -> None:
        """Remove files of dropped segments nobody uses, and what killed writers left behind."""
        collect_garbage(self.path / SEGMENTS, self.catalog, in_use=set(self._open))


def _check_meta(path: Path, meta: dict[str, str], embedder: M3Embedder) -> dict[str, str]:
    if meta.get("format") != FORMAT:
        raise IndexFormatError(f"{path} is not an m3-rag index: its catalog has no format {FORMAT!r}")
    if meta.get("version") != str(FORMAT_VERSION):
        raise IndexFormatError(
            f"{path} has index format version {meta.get('version')!r:.20}; this m3-rag reads version "
            f"{FORMAT_VERSION}. Use the m3-rag that wrote it, or re-index"
        )
    accepted = {embedder.fingerprint, getattr(embedder, "legacy_fingerprint", embedder.fingerprint)}
    same_dims = meta.get("dim") == str(embedder.dim) and meta.get("vocab_size") == str(embedder.vocab_size)
    if meta.get("model_fingerprint") not in accepted or not same_dims:
        raise ModelMismatchError(str(path), f"{meta.get('model')!s:.200} (dim {meta.get('dim')!s:.10})", embedder.name)
    dtype = meta.get("colbert_dtype")
    if dtype not in ("float32", "float16", "int8", "none"):
        raise IndexFormatError(f"{path / CATALOG} is damaged: colbert_dtype is {dtype!r:.20}")
    if dtype != "none" and meta.get("colbert_dim") != str(embedder.colbert_dim):
        raise IndexFormatError(
            f"{path} has ColBERT vectors of {meta.get('colbert_dim')!r:.10} dims, the model {embedder.colbert_dim}"
        )
    return meta
