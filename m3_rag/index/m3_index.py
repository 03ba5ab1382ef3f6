"""``M3Index``: the embedded hybrid index, in memory or in a folder shared by many processes.

In memory, documents live in segments (:mod:`m3_rag.index.segment`); in a folder, segments are
immutable files and a SQLite catalog (:mod:`m3_rag.index.catalog`) says which rows are alive
and holds texts and metadata. Three ways to use a folder:

- ``M3Index.load(path)`` reads a snapshot; ``add`` / ``delete`` change it in memory and
  ``save()`` commits those changes onto the latest state of the folder (other processes'
  commits since the load are kept: no lost update; the same id written by both: the later
  commit wins), then reads that state.
- ``M3Index.open(path)`` is persistent: every ``add`` / ``delete`` commits at once, and a
  search first catches up with other processes' commits (what the CLI and services use).
  ``with index.transaction(): ...`` groups several writes into one commit.
- ``index.save(other_path)`` writes every document of this index into another folder.

See ``docs/RELIABILITY.md`` for what is guaranteed with many processes, crashes and full disks.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..colbert_codec import ColbertDtype, check_colbert_dtype
from ..encoder import M3Embedder
from ..errors import IndexFormatError
from ..filters import Filter, parse_filter
from ..output import M3Output, check_output
from ..records import Record, check_ids, check_metadatas, check_texts, copy_metadata
from ..retrieval import Candidates, HybridStore, QueryBatch, SearchRequest
from .folder import IndexFolder
from .rows import Rows
from .segment import Segment, encoded_arrays
from .view import View, search_view, view_ids

__all__ = ["M3Index"]

logger = logging.getLogger(__name__)

#: Bytes of (queries x documents) first-stage score matrices a search block may take.
SCORE_BUDGET = 256 << 20


class M3Index(HybridStore):
    """An in-process hybrid index over BGE-M3's three outputs (see the module docs for folders).

    Search = first-stage candidates (exact dense top-``candidates`` by matrix product, and/or
    sparse top-``candidates`` from inverted indexes) -> exact hybrid rerank of their union
    with the reference formulas. ColBERT vectors are stored as ``colbert_dtype`` (float16 by
    default; float32; int8 with a per-vector scale; None keeps none and re-encodes the
    candidates at query time).

    Thread safety: every method may be called from several threads. Searches read an immutable
    snapshot and take no lock: they see the index before or after a concurrent write, never a mix.

    Example:
        >>> from m3_rag import M3Embedder, M3Index
        >>> index = M3Index(M3Embedder.from_pretrained("tests/data/tiny-m3"))
        >>> index.add(["Berlin is the capital of Germany.", "Paris is in France."], ids=["de", "fr"])
        ['de', 'fr']
        >>> hit = index.search("capital of Germany", k=1)[0]
        >>> sorted(hit.scores)
        ['colbert', 'dense', 'sparse']
    """

    def __init__(self, embedder: M3Embedder, *, colbert_dtype: ColbertDtype | None = "float16") -> None:
        if not isinstance(embedder, M3Embedder):
            raise TypeError(f"embedder must be an m3_rag.M3Embedder, got {type(embedder).__name__}")
        self.colbert_dtype: ColbertDtype | None = check_colbert_dtype(colbert_dtype, allow_none=True)
        if not (embedder.has_sparse and embedder.has_colbert):
            embedder.model.check_modes(sparse=True, colbert=True, source=embedder.name)
        self.embedder = embedder
        self._lock = threading.RLock()
        self._view = View()
        self._rows = Rows()
        self._folder: IndexFolder | None = None
        self._persistent = False
        self._transaction = 0

    # ------------------------------------------------------------------ basics
    def __len__(self) -> int:
        return len(self._rows.row_of)

    def __contains__(self, doc_id: object) -> bool:
        return doc_id in self._rows.row_of

    def __repr__(self) -> str:
        where = f", path={str(self._folder.path)!r}" if self._folder else ""
        return (
            f"M3Index({len(self)} documents, model={self.embedder.name!r}, colbert_dtype={self.colbert_dtype!r}{where})"
        )

    @property
    def path(self) -> Path | None:
        """The folder this index reads from and commits to (None: in memory only)."""
        return None if self._folder is None else self._folder.path

    @property
    def ids(self) -> list[str]:
        """Ids of the stored documents."""
        self._catch_up()
        with self._lock:
            return list(self._rows.row_of)

    def dense_vectors(self, ids: Sequence[str]) -> dict[str, np.ndarray]:
        """The stored dense vectors ``{id: (dim,) float32}`` of these ids (unknown ids are skipped)."""
        self._catch_up()
        with self._lock:
            row_of = self._rows.row_of
            found = [(i, row_of[i]) for i in dict.fromkeys(ids) if isinstance(i, str) and i in row_of]
            return {i: np.array(seg.arrays.dense[r], dtype=np.float32) for i, (seg, r) in found}

    def ids_where(self, filter: Filter | Mapping[str, Any] | None = None) -> list[str]:
        """Ids of the stored documents whose metadata passes ``filter`` (None: every id).

        >>> index = M3Index(M3Embedder.from_pretrained("tests/data/tiny-m3"))
        >>> index.add(["a", "b", "c"], ids=["x", "y", "z"], metadatas=[{"year": 2019}, {"year": 2021}, {}])
        ['x', 'y', 'z']
        >>> index.ids_where({"year": {"$gte": 2020}})
        ['y']
        """
        flt = parse_filter(filter)
        if flt is None:
            return self.ids
        self._catch_up()
        return view_ids(self._view, flt)

    def get(self, ids: str | Sequence[str]) -> list[Record]:
        """The stored documents with these ids, in the order asked; unknown ids are skipped."""
        wanted = [ids] if isinstance(ids, str) else list(ids)
        self._catch_up()
        with self._lock:
            row_of = self._rows.row_of
            found = [row_of[i] for i in wanted if isinstance(i, str) and i in row_of]
            return [
                Record(str(seg.ids[r]), str(seg.texts[r]), copy_metadata(seg.metadatas[r] or {})) for seg, r in found
            ]

    def __iter__(self) -> Iterator[Record]:
        return iter(self.get(self.ids))

    def close(self) -> None:
        """Release the folder (its catalog connection and segment locks); the index stays usable in memory."""
        with self._lock:
            if self._folder is not None:
                self._folder.close()

    # ------------------------------------------------------------------ writing
    def add(
        self,
        texts: str | Sequence[str],
        *,
        ids: Sequence[str] | None = None,
        metadatas: Sequence[Mapping[str, Any] | None] | None = None,
        batch_size: int | None = None,
        show_progress: bool | None = None,
    ) -> list[str]:
        """Encode and store texts; returns their ids (generated when not given).

        An id that is already stored is replaced (upsert). The documents become visible all at
        once when encoding has finished; if encoding fails, nothing changes. In an index opened
        with :meth:`open` the documents are committed before this returns.
        """
        items = check_texts(texts)
        doc_ids = check_ids(ids, len(items))
        metas = check_metadatas(metadatas, len(items))
        if not items:
            return []
        out = self.embedder.encode_documents(
            items, dense=True, sparse=True, colbert=self.colbert_dtype is not None,
            batch_size=batch_size, show_progress=show_progress,
        )  # fmt: skip
        return self._insert(items, out, doc_ids, metas)

    def add_encoded(
        self,
        texts: Sequence[str],
        output: M3Output,
        *,
        ids: Sequence[str] | None = None,
        metadatas: Sequence[Mapping[str, Any] | None] | None = None,
    ) -> list[str]:
        """Store texts whose outputs were computed already (e.g. on a cluster); no model pass.

        ``output`` must hold dense, sparse and (unless ``colbert_dtype`` is None) ColBERT outputs
        of ``texts``, in order, from this index's model.
        """
        items = check_texts(texts)
        doc_ids = check_ids(ids, len(items))
        metas = check_metadatas(metadatas, len(items))
        check_output(output, len(items), self.embedder, colbert=self.colbert_dtype is not None)
        return self._insert(items, output, doc_ids, metas) if items else []

    def _insert(self, texts: list[str], out: M3Output, ids: list[str], metas: list[dict[str, Any]]) -> list[str]:
        arrays = encoded_arrays(out, self.colbert_dtype, self.embedder.dim, self.embedder.colbert_dim or 0)
        segment = Segment(arrays)
        segment.ids, segment.texts, segment.metadatas = list(ids), list(texts), list(metas)
        with self._lock:
            self._rows.insert(segment)
            self._view = self._rows.view()
            self._autocommit()
        return ids

    def delete(self, ids: str | Sequence[str]) -> int:
        """Remove documents by id; returns how many were stored (unknown ids are ignored)."""
        wanted = [ids] if isinstance(ids, str) else list(ids)
        self._catch_up()
        with self._lock:
            removed = self._rows.delete(wanted)
            if removed:
                self._view = self._rows.view()
                self._autocommit()
            return removed

    @contextlib.contextmanager
    def transaction(self) -> Iterator[M3Index]:
        """Group writes into one commit (an index opened with :meth:`open`)::

            with index.transaction():
                index.delete(old_ids)
                index.add(new_texts, ids=new_ids)

        Either all of it is committed when the block ends, or (if it raises) none of it, and the
        index goes back to its last committed state. Outside :meth:`open` this only groups.
        """
        with self._lock:
            self._transaction += 1
        try:
            yield self
        except BaseException:
            with self._lock:
                self._transaction -= 1
                if self._persistent and self._transaction == 0 and self._rows.pending:
                    self._rows.discard_pending()
                    self._reload()
            raise
        with self._lock:
            self._transaction -= 1
            self._autocommit()

    def _autocommit(self) -> None:
        if self._persistent and self._transaction == 0 and self._rows.pending:
            self._commit_pending()

    # ------------------------------------------------------------------ searching
    def _query_block(self) -> int:
        rows = max(1, self._view.rows())
        return max(1, min(256, SCORE_BUDGET // (8 * rows)))

    def _candidates(self, queries: QueryBatch, request: SearchRequest) -> list[Candidates]:
        self._catch_up()
        return search_view(self._view, queries, request, self.embedder.vocab_size)

    # ------------------------------------------------------------------ folders
    @classmethod
    def load(cls, path: str | os.PathLike[str], embedder: M3Embedder | None = None, *, mmap: bool = True) -> M3Index:
        """Read a snapshot of the index folder ``path`` (changes stay in memory until :meth:`save`).

        Without ``embedder`` the model named in the folder is loaded. ColBERT vectors stay
        memory-mapped (``mmap=True``), so a large index opens at once. Raises
        :class:`~m3_rag.errors.IndexFormatError` for a missing, damaged or other-version folder,
        or when ``embedder`` is not the model that built the index. An index saved by m3-rag 0.1
        (format 1) is upgraded in place, with one log line.
        """
        return cls._from_folder(Path(path), embedder, create=False, colbert_dtype=None, mmap=mmap, persistent=False)

    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str],
        embedder: M3Embedder | None = None,
        *,
        create: bool = True,
        colbert_dtype: ColbertDtype | None = "float16",
        mmap: bool = True,
    ) -> M3Index:
        """Open (or, with ``create``, make) the index folder ``path`` in persistent mode: each
        ``add`` / ``delete`` commits, and reads first catch up with other processes' commits.

        ``embedder`` is needed to create a folder; ``colbert_dtype`` applies to a new folder only
        (an existing one keeps its own).
        """
        return cls._from_folder(
            Path(path), embedder, create=create, colbert_dtype=colbert_dtype, mmap=mmap, persistent=True
        )

    @classmethod
    def _from_folder(
        cls,
        path: Path,
        embedder: M3Embedder | None,
        *,
        create: bool,
        colbert_dtype: ColbertDtype | None,
        mmap: bool,
        persistent: bool,
    ) -> M3Index:
        if embedder is None:
            model = IndexFolder.model_name(path) if path.is_dir() else None
            if model is None:
                if create:
                    raise ValueError(f"{path} is not an index yet: pass the embedder to create it")
                IndexFolder.require(path)
            embedder = M3Embedder.from_pretrained(str(model))
        folder = IndexFolder.open(path, embedder, create=create, colbert_dtype=colbert_dtype, mmap=mmap)
        index = cls(embedder, colbert_dtype=folder.colbert_dtype)
        index._folder, index._persistent = folder, persistent
        index._reload()
        return index

    def save(self, path: str | os.PathLike[str] | None = None) -> Path:
        """Commit to a folder: this index's own (``path`` None or the same), or another one.

        To its own folder, the changes made since it was loaded (or last saved) are applied onto
        the folder's latest state -- commits of other processes since then are kept -- and the
        index then reads that state. To another folder (created when missing or empty), every
        document of this index is written (an index already there keeps its other documents),
        and that folder becomes this index's own.
        """
        with self._lock:
            target = None if path is None else Path(path)
            if target is None:
                if self._folder is None:
                    raise ValueError("this index has no folder yet: pass save(path)")
            elif self._folder is None or not self._folder.same(target):
                self._save_as(target)
                return target
            self._commit_pending()
            assert self._folder is not None
            return self._folder.path

    def _save_as(self, target: Path) -> None:
        folder = IndexFolder.open(target, self.embedder, create=True, colbert_dtype=self.colbert_dtype, mmap=True)
        if folder.colbert_dtype != self.colbert_dtype:
            folder.close()
            raise IndexFormatError(
                f"{target} stores ColBERT vectors as {folder.colbert_dtype!r}, this index as {self.colbert_dtype!r}; "
                "save into another folder"
            )
        try:
            sources = self._rows.live_sources()
            if sources:
                folder.commit_rows(sources, deletes=())
        except BaseException:
            folder.close()
            raise
        if self._folder is not None:
            self._folder.close()
        self._folder = folder
        self._rows.pending.clear()
        self._reload()

    def _commit_pending(self) -> None:
        """Write the pending upserts as one segment and commit them with the pending deletions."""
        assert self._folder is not None
        if not self._rows.pending:
            self._catch_up(force=True)
            return
        sources, deletes = self._rows.pending_changes()
        self._folder.commit_rows(sources, deletes=deletes)
        self._rows.pending.clear()
        self._catch_up(force=True)
        self._folder.maybe_compact(self._view)
        self._catch_up(force=True)

    def refresh(self) -> None:
        """Catch up with the commits of other processes (an index opened with :meth:`open` does
        this before every read); uncommitted changes of this index are kept."""
        self._catch_up(force=True)

    def compact(self) -> None:
        """Merge every segment of the folder into one, dropping deleted rows (commits pending changes first)."""
        with self._lock:
            if self._folder is None:
                raise ValueError("compact() works on an index with a folder (load, open or save it first)")
            self._commit_pending()
            self._folder.compact(self._view, everything=True)
            self._catch_up(force=True)

    def _catch_up(self, *, force: bool = False) -> None:
        folder = self._folder
        if folder is None or not (force or self._persistent):
            return
        with self._lock:
            if not force and folder.is_current():
                return
            self._apply(folder.changes())

    def _reload(self) -> None:
        """Rebuild the view from the folder's full state (keeping uncommitted changes)."""
        assert self._folder is not None
        self._apply(self._folder.changes(full=True))

    def _apply(self, change: Any) -> None:
        """Apply a :class:`~m3_rag.index.folder.Changes` from the catalog (lock held)."""
        in_use = self._rows.apply(change)
        self._view = self._rows.view()
        assert self._folder is not None
        self._folder.release_unused(in_use)
