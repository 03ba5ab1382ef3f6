"""Qdrant filters from metadata filters, and the payload view they run on.

:func:`qdrant_filter` translates the core filter language (:mod:`m3_rag.filters`) into a
``qdrant_client.models.Filter`` and says whether Qdrant evaluates it exactly.

Qdrant's matching differs from the core semantics in three ways (qdrant-client 1.20 local mode;
the server's rules are the same): a stored list matches element by element (``MatchValue("a")``
matches ``["a"]``), ``IsEmpty`` matches ``[]`` as well as a missing key and ``None``, and
``MatchValue(1)`` does not match a stored ``1.0``. So conditions do not run on the stored
metadata but on a *filter view* of it, written next to it in every point (:func:`filter_view`):

- ``None``, bools and strings as they are;
- numbers normalised: an integral float becomes an int (``1.0 -> 1``), so that integer equality
  is one ``MatchValue`` / ``MatchAny`` for ints and floats alike (and never matches a bool:
  ``MatchValue`` is type-exact there); other floats stay floats;
- lists and dicts become ``{}``: a value that equals nothing, is not empty and is not null, which
  is what the core semantics say of them.

On that view every condition is exact except ranges and equalities whose operand is beyond
2**53 in magnitude (Qdrant compares numbers as float64): those are widened by a few ulps to a
superset, ``exact`` is False, and the store re-checks the returned metadata with
:func:`~m3_rag.filters.filter_mask` and fetches more until enough pass.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, NamedTuple

from ..filters import KEY_PATTERN, RANGE_OPS, And, Comparison, Filter, Membership, Scalar, parse_filter

__all__ = ["FILTER_FIELD", "QdrantFilter", "filter_view", "qdrant_filter"]

#: The payload key of the filter view.
FILTER_FIELD = "m3_filter"
_EXACT_FLOAT = 2.0**53  # beyond this, float64 does not hold every integer
_INT64 = 2**63


def _models() -> Any:
    from qdrant_client import models  # the store checked that qdrant-client is installed

    return models


def _view_value(value: Any) -> Any:
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):
        return value if -_INT64 <= value < _INT64 else float(value)
    if isinstance(value, float):
        return int(value) if value.is_integer() and -_INT64 <= value < _INT64 else value
    return {}  # lists and dicts equal nothing


def filter_view(metadata: Mapping[str, Any]) -> dict[str, Any]:
    """The metadata as Qdrant conditions see it (keys a filter may name only).

    >>> filter_view({"n": 1.0, "x": 2.5, "tags": ["a"], "ok": True, "bad key": 1})
    {'n': 1, 'x': 2.5, 'tags': {}, 'ok': True}
    """
    return {k: _view_value(v) for k, v in metadata.items() if isinstance(k, str) and KEY_PATTERN.fullmatch(k)}


class QdrantFilter(NamedTuple):
    """A filter for Qdrant.

    ``filter``: the ``models.Filter`` (None when every record passes); ``none``: True when no
    record can pass (skip the search); ``exact``: False when Qdrant returns a superset.
    """

    filter: Any
    exact: bool
    none: bool = False


class _Const:
    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


_TRUE, _FALSE = _Const("TRUE"), _Const("FALSE")


def _integral(value: int | float) -> int | None:
    if isinstance(value, int):
        return value
    return int(value) if value.is_integer() and abs(value) < _INT64 else None


def _widened(value: int | float) -> tuple[float, float]:
    x = float(value)
    lo, hi = x, x
    for _ in range(4):
        lo, hi = math.nextafter(lo, -math.inf), math.nextafter(hi, math.inf)
    return lo, hi


def _key(field: str, key: str) -> str:
    return f"{field}.{key}"


def _equal(key: str, values: tuple[Scalar, ...]) -> tuple[list[Any], list[Any]]:
    """Conditions matching a value equal to one of ``values``: exact ones, and widened ones (a superset)."""
    m = _models()
    exact: list[Any] = []
    loose: list[Any] = []
    if any(v is None for v in values):
        exact.append(m.IsEmptyCondition(is_empty=m.PayloadField(key=key)))
    for flag in dict.fromkeys(v for v in values if isinstance(v, bool)):
        exact.append(m.FieldCondition(key=key, match=m.MatchValue(value=flag)))
    strings = list(dict.fromkeys(v for v in values if isinstance(v, str)))
    if strings:
        exact.append(m.FieldCondition(key=key, match=m.MatchAny(any=strings)))
    ints: list[int] = []
    for v in values:
        if v is None or isinstance(v, (bool, str)):
            continue
        whole = _integral(v)
        if whole is not None and abs(whole) <= _EXACT_FLOAT:
            ints.append(whole)
        elif whole is not None:  # big: Qdrant compares float64, so widen to a superset
            lo, hi = _widened(whole)
            loose.append(m.FieldCondition(key=key, range=m.Range(gte=lo, lte=hi)))
        else:  # a non-integral float equals only that float (the view holds integral numbers as ints)
            exact.append(m.FieldCondition(key=key, range=m.Range(gte=v, lte=v)))
    if ints:
        exact.append(m.FieldCondition(key=key, match=m.MatchAny(any=list(dict.fromkeys(ints)))))
    return exact, loose


def _any_of(conditions: list[Any]) -> Any:
    if not conditions:
        return _FALSE
    return conditions[0] if len(conditions) == 1 else _models().Filter(should=conditions)


def _leaf(f: Comparison | Membership, field: str) -> tuple[Any, bool]:
    m = _models()
    key = _key(field, f.key)
    if isinstance(f, Comparison) and f.op in RANGE_OPS:
        value = f.value
        assert isinstance(value, (int, float)) and not isinstance(value, bool)
        if abs(value) < _EXACT_FLOAT:
            return m.FieldCondition(key=key, range=m.Range(**{f.op[1:]: value})), True
        lo, hi = _widened(value)
        bound = {"gte": lo} if f.op in ("$gt", "$gte") else {"lte": hi}
        return m.FieldCondition(key=key, range=m.Range(**bound)), False
    values = (f.value,) if isinstance(f, Comparison) else f.values
    exact, loose = _equal(key, values)
    if f.op not in ("$ne", "$nin"):
        return _any_of(exact + loose), not loose
    # none of the values: exclude what is matched exactly; a widened match cannot be excluded (superset)
    positive = _any_of(exact)
    if positive is _FALSE:
        return _TRUE, not loose
    return m.Filter(must_not=[positive]), not loose  # true for a missing key too, as the core says


def _translate(f: Filter, field: str) -> tuple[Any, bool]:
    m = _models()
    if isinstance(f, (Comparison, Membership)):
        return _leaf(f, field)
    parts = [_translate(t, field) for t in f.terms]
    exact = all(e for _, e in parts)
    if isinstance(f, And):
        if any(p is _FALSE for p, _ in parts):
            return _FALSE, True
        kept = [p for p, _ in parts if p is not _TRUE]
        return (m.Filter(must=kept) if kept else _TRUE), exact
    if any(p is _TRUE for p, _ in parts):  # exact when one of the always-true parts is exact
        return _TRUE, any(e for p, e in parts if p is _TRUE)
    kept = [p for p, _ in parts if p is not _FALSE]
    return (m.Filter(should=kept) if kept else _FALSE), exact


def qdrant_filter(filter: Filter | Mapping[str, Any] | None, *, field: str = FILTER_FIELD) -> QdrantFilter:
    """Translate a core filter into a Qdrant filter on the payload's filter view ``field``.

    >>> import pytest; _ = pytest.importorskip("qdrant_client")
    >>> f = qdrant_filter({"lang": {"$in": ["de", "en"]}, "year": {"$gte": 2020}})
    >>> f.exact, [c.key for c in f.filter.must]
    (True, ['m3_filter.lang', 'm3_filter.year'])
    >>> qdrant_filter({"n": []}).none, qdrant_filter(None).filter is None
    (True, True)
    >>> qdrant_filter({"n": {"$gt": 2**60}}).exact  # float64 comparisons: a superset, re-checked
    False
    """
    if not KEY_PATTERN.fullmatch(field):
        raise ValueError(f"field must be a payload key matching {KEY_PATTERN.pattern}, got {field!r}")
    parsed = parse_filter(filter)
    if parsed is None:
        return QdrantFilter(None, True)
    out, exact = _translate(parsed, field)
    if out is _TRUE:
        return QdrantFilter(None, exact)
    if out is _FALSE:
        return QdrantFilter(None, True, none=True)
    m = _models()
    return QdrantFilter(out if isinstance(out, m.Filter) and not out.should else m.Filter(must=[out]), exact)
