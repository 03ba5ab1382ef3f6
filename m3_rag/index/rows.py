"""Which row holds which document: the writer-side bookkeeping of :class:`~m3_rag.M3Index`.

:class:`Rows` keeps, per segment, the array of live rows (replaced, never changed in place, so
a published :class:`~m3_rag.index.view.View` stays valid), where each id lives, and the changes
not committed to the index's folder yet. The index holds its lock around every call.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from .segment import Segment, merge_arrays
from .view import View

__all__ = ["Rows"]

#: In-memory segments up to this many rows are merged like a binary counter.
MERGE_ROWS = 1 << 14

Place = tuple[Segment, int]


def _without(alive: np.ndarray, row: int) -> np.ndarray:
    out = alive.copy()
    out[row] = False
    return out


class Rows:
    """Live rows per segment, the row of each id, and the pending (uncommitted) changes."""

    def __init__(self) -> None:
        self.alive: dict[Segment, np.ndarray] = {}
        self.row_of: dict[str, Place] = {}
        self.pending: dict[str, Place | None] = {}  # id -> its new row, or None: deleted

    def view(self) -> View:
        return View(tuple(self.alive), tuple(self.alive.values()))

    # ------------------------------------------------------------------ writes
    def insert(self, segment: Segment) -> None:
        """Take every row of a new in-memory segment (its ``ids`` filled); older rows of those ids die."""
        kills = self._places([i for i in segment.ids if i is not None])
        self.alive[segment] = np.ones(segment.n, dtype=bool)
        for row, doc_id in enumerate(segment.ids):
            assert doc_id is not None
            self.row_of[doc_id] = self.pending[doc_id] = (segment, row)
        self._kill(kills)
        self._merge_memory_segments()

    def delete(self, ids: Sequence[str]) -> int:
        present = list(dict.fromkeys(i for i in ids if isinstance(i, str) and i in self.row_of))
        kills = self._places(present)
        for doc_id in present:
            del self.row_of[doc_id]
            self.pending[doc_id] = None
        self._kill(kills)
        return len(present)

    def pending_changes(self) -> tuple[list[tuple[Segment, np.ndarray]], list[str]]:
        """``(sources, deletes)``: the rows to write as one new segment and the ids to delete."""
        rows: dict[Segment, list[int]] = {}
        for place in self.pending.values():
            if place is not None:
                rows.setdefault(place[0], []).append(place[1])
        sources = [(s, np.sort(np.asarray(r, dtype=np.int64))) for s, r in rows.items()]
        return sources, [i for i, place in self.pending.items() if place is None]

    def discard_pending(self) -> None:
        """Forget uncommitted rows (the folder's committed state is then read again)."""
        for doc_id, (segment, _) in list(self.row_of.items()):
            if segment.name is None:
                del self.row_of[doc_id]
        self.alive = {s: a for s, a in self.alive.items() if s.name is not None}
        self.pending.clear()

    def live_sources(self) -> list[tuple[Segment, np.ndarray]]:
        return [(s, np.flatnonzero(a)) for s, a in self.alive.items() if a.any()]

    def _places(self, ids: Sequence[str]) -> dict[Segment, list[int]]:
        kills: dict[Segment, list[int]] = {}
        for doc_id in ids:
            place = self.row_of.get(doc_id)
            if place is not None:
                kills.setdefault(place[0], []).append(place[1])
        return kills

    def _kill(self, kills: Mapping[Segment, Sequence[int]]) -> None:
        """Row deaths, copy-on-write; in-memory segments left with no live row are dropped."""
        for segment, rows in kills.items():
            if segment in self.alive:
                alive = self.alive[segment].copy()
                alive[list(rows)] = False
                self.alive[segment] = alive
        for segment in [s for s, a in self.alive.items() if not a.any() and s.name is None]:
            del self.alive[segment]

    def _merge_memory_segments(self) -> None:
        """Merge the newest in-memory segments like a binary counter (O(log n) of them for a search)."""
        while True:
            memory = [s for s in self.alive if s.name is None]
            if len(memory) < 2:
                return
            prev, last = memory[-2], memory[-1]
            if 2 * last.n < prev.n or prev.n > MERGE_ROWS:
                return
            sources = [(s, np.flatnonzero(self.alive[s])) for s in (prev, last)]
            merged = Segment(merge_arrays(sources))
            at = 0
            for segment, rows in sources:
                for row in rows.tolist():
                    doc_id = segment.ids[row]
                    assert doc_id is not None
                    merged.ids[at], merged.texts[at], merged.metadatas[at] = (
                        doc_id,
                        segment.texts[row],
                        segment.metadatas[row],
                    )
                    self.row_of[doc_id] = (merged, at)
                    if doc_id in self.pending:
                        self.pending[doc_id] = (merged, at)
                    at += 1
            self.alive = {s: a for s, a in self.alive.items() if s not in (prev, last)}
            self.alive[merged] = np.ones(merged.n, dtype=bool)

    # ------------------------------------------------------------------ what the folder says
    def apply(self, change: Any) -> set[Segment]:
        """Apply a :class:`~m3_rag.index.folder.Changes` (ids with pending changes keep them); returns
        the committed segments still in use."""
        keep = {s: a for s, a in self.alive.items() if s.name is None}
        if change.full:
            committed = {s: np.zeros(s.n, dtype=bool) for s in change.segments}
            for doc_id, (segment, _) in list(self.row_of.items()):
                if segment.name is not None and doc_id not in self.pending:
                    del self.row_of[doc_id]
        else:
            committed = {s: a for s, a in self.alive.items() if s.name is not None and s in change.live}
            for segment in change.segments:
                committed.setdefault(segment, np.zeros(segment.n, dtype=bool))
        for doc_id in change.deleted:  # deletions first: a document deleted, then added again, is alive
            place = self.row_of.get(doc_id)
            if doc_id in self.pending or place is None:
                continue
            del self.row_of[doc_id]
            if place[0] in committed:
                committed[place[0]] = _without(committed[place[0]], place[1])
        for doc_id, segment, row in change.docs:
            if doc_id in self.pending:
                continue
            old = self.row_of.get(doc_id)
            if old is not None and old != (segment, row):
                if old[0] in committed:
                    committed[old[0]] = _without(committed[old[0]], old[1])
                elif old[0] in keep:
                    keep[old[0]] = _without(keep[old[0]], old[1])
            self.row_of[doc_id] = (segment, row)
            if not committed[segment][row]:
                alive = committed[segment].copy()
                alive[row] = True
                committed[segment] = alive
        committed = {s: a for s, a in committed.items() if s in change.live}
        self.alive = {**committed, **keep}
        self._kill({})
        return set(committed)
