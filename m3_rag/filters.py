"""Metadata filters: one language for every store, its reference semantics, and vectorized masks.

The language (Chroma / Qdrant / MongoDB style; docs/FILTERS.md has examples)::

    {"year": {"$gte": 2020}, "lang": {"$in": ["de", "en"]}}
    {"$or": [{"lang": "de"}, {"year": {"$lt": 2000}}]}

``{key: value}`` means ``$eq``, ``{key: [a, b]}`` means ``$in``; several keys (or operators) in
one dict AND together; ``None`` or ``{}`` is no filter. Operators: ``$eq $ne $in $nin $gt $gte
$lt $lte $and $or``. :func:`parse_filter` turns the dict into frozen dataclasses that every store
translates; bad input is a :class:`FilterError` (a ``ValueError``).

Semantics (:func:`matches`; the same in :func:`filter_mask`, Milvus and Qdrant):

- Type-exact equality over four types, ``None``, ``bool``, number (``int`` / ``float``), ``str``:
  a bool never equals a number (``{"flag": True}`` does not match ``1``), ``"1"`` is not ``1``;
  numbers compare by exact value as Python does (``1 == 1.0``, ``2**53 + 1 != 2.0**53``).
  Stored lists / dicts equal nothing.
- A missing key and a ``None`` value are the same (MongoDB): ``$eq None`` matches both.
- ``$ne`` / ``$nin`` are the exact negations of ``$eq`` / ``$in``, so they match records that
  lack the key (unless ``None`` is among the values); ``$eq`` / ``$in`` / ranges never do.
- ``$gt $gte $lt $lte`` take a finite int / float (string ranges are refused) and match only
  records whose value is a number (not a bool; NaN matches no range and no ``$eq``).
- Operands: str (valid Unicode), bool, None, finite float, int in the signed 64-bit range; keys
  match :data:`KEY_PATTERN`; at most :data:`MAX_DEPTH` levels and :data:`MAX_TERMS` terms.
- A dead row (``None`` in :class:`MetadataColumns`) matches nothing, not even ``$ne``.

>>> f = parse_filter({"year": {"$gte": 2020}, "lang": {"$in": ["de", "en"]}})
>>> matches(f, {"year": 2021, "lang": "de"}), matches(f, {"year": 2021.5}), matches(f, {"year": True})
(True, False, False)
>>> cols = MetadataColumns([{"year": 2021, "lang": "en"}, {"year": 1999}, None, {"lang": "de", "year": 2020.0}])
>>> filter_mask(f, cols).tolist()
[True, False, False, True]
"""

from __future__ import annotations

import math
import operator
import re
import reprlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

# fmt: off
__all__ = [
    "COMPARISON_OPS", "KEY_PATTERN", "MAX_DEPTH", "MAX_TERMS", "MEMBERSHIP_OPS", "RANGE_OPS", "And", "Comparison",
    "Filter", "FilterError", "Membership", "MetadataColumns", "Or", "Scalar", "filter_mask", "matches",
    "parse_filter", "to_dict",
]
# fmt: on

#: Metadata keys a filter may name (the Milvus and Qdrant stores put them into expressions).
KEY_PATTERN = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
MAX_DEPTH = 32  #: most nesting levels of $and / $or (a leaf condition is one level)
MAX_TERMS = 10_000  #: most conditions plus $in / $nin values in one filter
COMPARISON_OPS = ("$eq", "$ne", "$gt", "$gte", "$lt", "$lte")
MEMBERSHIP_OPS = ("$in", "$nin")
RANGE_OPS = ("$gt", "$gte", "$lt", "$lte")
_RANGE_TESTS = {"$gt": operator.gt, "$gte": operator.ge, "$lt": operator.lt, "$lte": operator.le}
_INT64 = (-(2**63), 2**63 - 1)
_SEQUENCES = (list, tuple, set, frozenset)
_REPR = reprlib.Repr()  # bounded: values shown in messages may be huge or deeply nested
_REPR.maxstring, _REPR.maxother, _REPR.maxlevel = 60, 60, 3
Scalar = str | int | float | bool | None


class FilterError(ValueError):
    """A filter that is not valid: says what was expected, what was received and how to fix it."""


def _fail(key: str, op: str, problem: str, value: object) -> FilterError:
    return FilterError(f"filter on {key!r}: {op} {problem}, got {type(value).__name__} {_REPR.repr(value)}")


def _check_key(key: object) -> str:
    if not isinstance(key, str) or not KEY_PATTERN.fullmatch(key):
        raise FilterError(
            f"filter key {_REPR.repr(key)} is not allowed: keys must match {KEY_PATTERN.pattern} (letters, digits "
            "and _, not starting with a digit, at most 64 characters); rename the metadata key"
        )
    return key


def _check_value(key: str, op: str, value: object) -> None:
    if op in RANGE_OPS and (isinstance(value, bool) or not isinstance(value, (int, float))):
        problem = "compares numbers (ranges on strings, bools and None are not supported: store dates as numbers)"
        raise _fail(key, op, problem, value)
    if value is not None and not isinstance(value, (str, int, float, bool)):
        hint = " (use $in for any of several values)" if op in ("$eq", "$ne") and isinstance(value, _SEQUENCES) else ""
        raise _fail(key, op, "takes a str, int, float, bool or None" + hint, value)
    if isinstance(value, float) and not math.isfinite(value):
        raise _fail(key, op, "takes finite numbers", value)
    if isinstance(value, int) and not isinstance(value, bool) and not _INT64[0] <= value <= _INT64[1]:
        raise _fail(key, op, "takes integers within the signed 64-bit range", value)
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise _fail(key, op, "takes valid Unicode (a string with a lone surrogate)", value) from exc


def _check_leaf(key: str, op: str, ops: tuple[str, ...], values: tuple[object, ...]) -> None:
    _check_key(key)
    if op not in ops:
        nested = " (nested metadata is not supported)" if isinstance(op, str) and not op.startswith("$") else ""
        raise FilterError(
            f"filter on {key!r}: unknown operator {_REPR.repr(op)}{nested}; expected one of "
            + ", ".join(COMPARISON_OPS + MEMBERSHIP_OPS)
        )
    if len(values) > MAX_TERMS:
        raise FilterError(f"filter on {key!r}: {op} has {len(values)} values, at most {MAX_TERMS}")
    for v in values:
        _check_value(key, op, v)


@dataclass(frozen=True)
class Comparison:
    """``{key: {op: value}}``, ``op`` one of :data:`COMPARISON_OPS`."""

    key: str
    op: str
    value: Scalar
    kinds: tuple[int, ...] = field(init=False, repr=False)  # so that (k, $eq, True) != (k, $eq, 1)
    depth = size = 1

    def __post_init__(self) -> None:
        _check_leaf(self.key, self.op, COMPARISON_OPS, (self.value,))
        object.__setattr__(self, "kinds", (_kind(self.value),))


@dataclass(frozen=True)
class Membership:
    """``{key: {op: [values]}}``, ``op`` one of :data:`MEMBERSHIP_OPS`."""

    key: str
    op: str
    values: tuple[Scalar, ...]
    kinds: tuple[int, ...] = field(init=False, repr=False)  # type codes of the values: part of equality
    depth = 1

    def __post_init__(self) -> None:
        if not isinstance(self.values, tuple):
            raise FilterError(f"Membership values must be a tuple, got {type(self.values).__name__}")
        _check_leaf(self.key, self.op, MEMBERSHIP_OPS, self.values)
        object.__setattr__(self, "kinds", tuple(_kind(v) for v in self.values))

    @property
    def size(self) -> int:
        return max(1, len(self.values))


@dataclass(frozen=True)
class _Group:
    terms: tuple[Filter, ...]
    depth: int = field(init=False, repr=False, compare=False)
    size: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        name = "$and" if isinstance(self, And) else "$or"
        if not isinstance(self.terms, tuple) or not self.terms:
            raise FilterError(f"{name} needs a non-empty tuple of filters, got {_REPR.repr(self.terms)}")
        if not all(isinstance(t, _NODES) for t in self.terms):
            raise FilterError(f"{name} terms must be parsed filters, got {_REPR.repr(self.terms)}")
        object.__setattr__(self, "depth", 1 + max(t.depth for t in self.terms))
        object.__setattr__(self, "size", 1 + sum(t.size for t in self.terms))
        if self.depth > MAX_DEPTH:
            raise FilterError(f"filter nested {self.depth} levels deep, at most {MAX_DEPTH}; flatten it")
        if self.size > MAX_TERMS:
            raise FilterError(f"filter has {self.size} terms, at most {MAX_TERMS}; use fewer conditions")


@dataclass(frozen=True)
class And(_Group):
    """All terms match."""


@dataclass(frozen=True)
class Or(_Group):
    """At least one term matches."""


Filter = Comparison | Membership | And | Or
_NODES = (Comparison, Membership, And, Or)


class _Parser:
    def __init__(self) -> None:
        self.terms = 0

    def count(self, n: int) -> None:
        self.terms += n
        if self.terms > MAX_TERMS:
            raise FilterError(f"filter has more than {MAX_TERMS} terms (conditions and $in values); use fewer")

    def parse(self, obj: object, depth: int) -> Filter | None:
        if depth > MAX_DEPTH:
            raise FilterError(f"filter nested more than {MAX_DEPTH} levels deep; flatten it")
        if not isinstance(obj, Mapping):
            raise FilterError(
                f"a filter is a dict such as {{'lang': 'en'}}, got {type(obj).__name__} {_REPR.repr(obj)}"
            )
        parts: list[Filter] = []
        for key, value in obj.items():
            if key in ("$and", "$or"):
                parts.append(self.group(key, value, depth))
            elif isinstance(key, str) and key.startswith("$"):
                raise FilterError(
                    f"unknown operator {_REPR.repr(key)} at the top of a filter dict; expected $and, $or or a metadata "
                    "key (field operators go inside a key: {'year': {'$gte': 2020}})"
                )
            elif isinstance(value, Mapping):
                if not value:
                    raise FilterError(f"filter on {key!r}: empty operator dict; give e.g. {{'$eq': 1}}")
                parts.extend(self.leaf(_check_key(key), op, v) for op, v in value.items())
            else:
                parts.append(self.leaf(_check_key(key), "$in" if isinstance(value, _SEQUENCES) else "$eq", value))
        if len(parts) > 1:
            self.count(1)
            return And(tuple(parts))
        return parts[0] if parts else None

    def group(self, op: str, value: object, depth: int) -> Filter:
        if not isinstance(value, (list, tuple)) or not value:
            raise FilterError(
                f"{op} takes a non-empty list of filter dicts, got {type(value).__name__} {_REPR.repr(value)}"
            )
        if len(value) > MAX_TERMS:
            raise FilterError(f"{op} has {len(value)} entries, at most {MAX_TERMS}; use fewer conditions")
        self.count(1)  # the parser counts what the parsed form's .size counts
        terms = [self.parse(item, depth + 1) for item in value]
        if any(t is None for t in terms):
            raise FilterError(f"every entry of {op} must be a non-empty filter dict, got {_REPR.repr(value)}")
        return And(tuple(terms)) if op == "$and" else Or(tuple(terms))  # type: ignore[arg-type]

    def leaf(self, key: str, op: Any, value: Any) -> Filter:
        if op in MEMBERSHIP_OPS:
            if not isinstance(value, _SEQUENCES):
                raise _fail(key, op, "takes a list of values", value)
            self.count(max(1, len(value)))
            return Membership(key, op, tuple(value))
        self.count(1)
        return Comparison(key, op, value)  # checks the operator and the value


def parse_filter(obj: Filter | Mapping[str, Any] | None) -> Filter | None:
    """Check a filter dict and return its parsed form (None for no filter: ``None`` or ``{}``).

    >>> parse_filter({"lang": "en", "year": [2023, 2024]})
    And(terms=(Comparison(key='lang', op='$eq', value='en'), Membership(key='year', op='$in', values=(2023, 2024))))
    >>> parse_filter({"year": {"$gt": "2020"}})
    Traceback (most recent call last):
    ...
    m3_rag.filters.FilterError: filter on 'year': $gt compares numbers (ranges on strings, ...), got str '2020'
    """
    if obj is None or isinstance(obj, _NODES):
        return obj
    return _Parser().parse(obj, 1)


def to_dict(filter: Filter | None) -> dict[str, Any]:
    """The canonical dict form (``parse_filter(to_dict(f)) == f``); ``{}`` for no filter.

    >>> to_dict(parse_filter({"a": 1, "b": {"$nin": ["x"]}}))
    {'$and': [{'a': {'$eq': 1}}, {'b': {'$nin': ['x']}}]}
    """
    if filter is None:
        return {}
    if isinstance(filter, Comparison):
        return {filter.key: {filter.op: filter.value}}
    if isinstance(filter, Membership):
        return {filter.key: {filter.op: list(filter.values)}}
    return {"$and" if isinstance(filter, And) else "$or": [to_dict(t) for t in filter.terms]}


# Type codes of a stored value (DEAD: the row itself is gone).
DEAD, NULL, BOOL, NUMBER, STRING, OTHER = range(6)


def _kind(value: object) -> int:
    if value is None:
        return NULL
    if isinstance(value, bool):
        return BOOL
    if isinstance(value, (int, float)):
        return NUMBER
    return STRING if isinstance(value, str) else OTHER


def _equal(stored: object, wanted: Scalar) -> bool:
    kind = _kind(stored)
    return kind == _kind(wanted) and (kind == NULL or stored == wanted)


def _test(f: Filter, meta: Mapping[str, Any]) -> bool:
    if isinstance(f, And):
        return all(_test(t, meta) for t in f.terms)
    if isinstance(f, Or):
        return any(_test(t, meta) for t in f.terms)
    value = meta.get(f.key)  # a missing key reads as None
    if f.op in RANGE_OPS:
        return _kind(value) == NUMBER and bool(_RANGE_TESTS[f.op](value, f.value))  # type: ignore[union-attr, arg-type]
    hit = any(_equal(value, v) for v in (f.values if isinstance(f, Membership) else (f.value,)))
    return hit != (f.op in ("$ne", "$nin"))


def matches(filter: Filter | Mapping[str, Any] | None, metadata: Mapping[str, Any] | None) -> bool:
    """Whether one record's metadata passes ``filter``: the reference semantics (module docstring).

    >>> matches({"flag": True}, {"flag": 1}), matches({"n": 1}, {"n": 1.0}), matches({"x": {"$ne": 1}}, {})
    (False, True, True)
    """
    parsed = parse_filter(filter)
    if metadata is None:
        return False
    if not isinstance(metadata, Mapping):
        raise TypeError(f"metadata must be a dict or None, got {type(metadata).__name__}")
    return True if parsed is None else _test(parsed, metadata)


from .filter_columns import MetadataColumns, filter_mask  # noqa: E402  (vectorized masks live in their own module)
