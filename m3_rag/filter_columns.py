"""Vectorized filter evaluation for the embedded index: one column per metadata key, built once.

:class:`MetadataColumns` holds an immutable sequence of metadata dicts (``None``: a dead row)
and builds, lazily and once per key, a column of type codes, exact numbers and string codes, so
that :func:`filter_mask` evaluates a filter with numpy operations only. It equals
:func:`m3_rag.filters.matches` row by row (see that module for the semantics).

>>> from m3_rag.filters import parse_filter
>>> cols = MetadataColumns([{"year": 2021, "lang": "en"}, {"year": 1999}, None, {"lang": "de", "year": 2020.0}])
>>> filter_mask(parse_filter({"year": {"$gte": 2020}}), cols).tolist()
[True, False, False, True]
"""

from __future__ import annotations

import math
import operator
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .filters import (
    _RANGE_TESTS,
    BOOL,
    DEAD,
    NULL,
    NUMBER,
    RANGE_OPS,
    STRING,
    And,
    Filter,
    Membership,
    Or,
    Scalar,
    _kind,
    parse_filter,
)

__all__ = ["MetadataColumns", "filter_mask"]


def _split(value: int | float) -> tuple[float, float]:
    """``value`` as ``hi + lo`` (floats, exact for ints within 2**106; ``hi`` is the nearest float)."""
    if isinstance(value, float):
        return value, 0.0
    try:
        hi = float(value)
    except OverflowError:
        return (math.inf if value > 0 else -math.inf), 0.0
    return hi, float(value - int(hi))


@dataclass(frozen=True)
class _Column:
    kind: np.ndarray  # (n,) int8 type codes
    hi: np.ndarray  # (n,) float64: numbers (nearest float), bools (0 / 1); 0 elsewhere
    lo: np.ndarray | None  # (n,) float64 exact remainder of big ints, None when all zero
    codes: np.ndarray  # (n,) int32 index into vocab for strings, -1 elsewhere
    vocab: dict[str, int]  # string -> code (codes follow sorted order)


class MetadataColumns:
    """Columns over an immutable sequence of metadata dicts (``None``: a dead row), one per key.

    Columns are built lazily (one pass over the rows per key, under a lock) and cached; build a new
    ``MetadataColumns`` when the rows change (it copies the sequence, and building is lazy).

    >>> cols = MetadataColumns([{"n": 1}, {"n": True}, None, {}])
    >>> len(cols), cols.alive.tolist()
    (4, [True, True, False, True])
    """

    def __init__(self, metadatas: Sequence[Mapping[str, Any] | None]) -> None:
        self._rows = tuple(metadatas)
        for m in self._rows:
            if m is not None and not isinstance(m, Mapping):
                raise TypeError(f"metadata rows must be dicts or None, got {type(m).__name__}")
        self.alive = np.fromiter((m is not None for m in self._rows), dtype=bool, count=len(self._rows))
        self.alive.flags.writeable = False
        self._columns: dict[str, _Column] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._rows)

    def column(self, key: str) -> _Column:
        col = self._columns.get(key)
        if col is None:
            with self._lock:
                col = self._columns.get(key)
                if col is None:
                    col = self._columns[key] = self._build(key)
        return col

    def _build(self, key: str) -> _Column:
        n = len(self._rows)
        values = [None if m is None else m.get(key) for m in self._rows]
        kind = np.fromiter((_kind(v) for v in values), np.int8, count=n)
        kind[~self.alive] = DEAD
        hi, lo, codes = np.zeros(n), np.zeros(n), np.full(n, -1, dtype=np.int32)
        strings = {v for v in values if isinstance(v, str)}
        vocab = {s: i for i, s in enumerate(sorted(strings))}
        for row in np.flatnonzero((kind == NUMBER) | (kind == BOOL) | (kind == STRING)).tolist():
            v = values[row]
            if isinstance(v, str):
                codes[row] = vocab[v]
            else:
                hi[row], lo[row] = _split(v)
        for a in (kind, hi, lo, codes):
            a.flags.writeable = False
        return _Column(kind, hi, lo if lo.any() else None, codes, vocab)


def _leaf_eq(col: _Column, values: Sequence[Scalar]) -> np.ndarray:
    """Rows whose value equals any of ``values`` (type-exact): (n,) bool."""
    out = np.zeros(len(col.kind), dtype=bool)
    if any(v is None for v in values):
        out |= col.kind == NULL
    bools = [float(v) for v in values if _kind(v) == BOOL]  # type: ignore[arg-type]
    if bools:
        out |= (col.kind == BOOL) & np.isin(col.hi, bools)
    nums = [_split(v) for v in values if _kind(v) == NUMBER]  # type: ignore[arg-type]
    if nums:
        his, los = np.array(nums).T
        if col.lo is None and not los.any():
            out |= (col.kind == NUMBER) & np.isin(col.hi, his)
        else:  # (hi, lo) pairs as complex numbers: exact equality of big ints
            lo = np.zeros(len(col.kind)) if col.lo is None else col.lo
            out |= (col.kind == NUMBER) & np.isin(col.hi + 1j * lo, his + 1j * los)
    found = [col.vocab[v] for v in values if isinstance(v, str) and v in col.vocab]
    if found:
        out |= np.isin(col.codes, found)
    return out


def _leaf_range(col: _Column, op: str, value: int | float) -> np.ndarray:
    """Rows with a number in the range: ``hi`` decides, ``lo`` breaks ties (exact, see _split)."""
    vh, vl = _split(value)
    lo = np.zeros(len(col.kind)) if col.lo is None else col.lo
    strict = operator.gt if op in ("$gt", "$gte") else operator.lt
    return (col.kind == NUMBER) & (strict(col.hi, vh) | ((col.hi == vh) & _RANGE_TESTS[op](lo, vl)))


def _mask(f: Filter, columns: MetadataColumns) -> np.ndarray:
    if isinstance(f, (And, Or)):
        masks = [_mask(t, columns) for t in f.terms]
        return np.logical_and.reduce(masks) if isinstance(f, And) else np.logical_or.reduce(masks)
    col = columns.column(f.key)
    if f.op in RANGE_OPS:
        return _leaf_range(col, f.op, f.value)  # type: ignore[union-attr, arg-type]
    hit = _leaf_eq(col, f.values if isinstance(f, Membership) else (f.value,))
    return columns.alive & ~hit if f.op in ("$ne", "$nin") else hit


def filter_mask(filter: Filter | Mapping[str, Any] | None, columns: MetadataColumns) -> np.ndarray:
    """(n,) bool: which rows of ``columns`` pass ``filter``; equals ``[matches(filter, m) for m in rows]``.

    Numpy operations per condition (no loop over rows once the named keys' columns are built).

    >>> cols = MetadataColumns([{"flag": True}, {"flag": 1}, {"flag": 1.0}, {}, None])
    >>> filter_mask({"flag": True}, cols).tolist(), filter_mask({"flag": {"$ne": 1}}, cols).tolist()
    ([True, False, False, False, False], [True, False, False, True, False])
    """
    parsed = parse_filter(filter)
    if parsed is None:
        return columns.alive.copy()
    return _mask(parsed, columns)
