"""Milvus boolean expressions from metadata filters and ids, built safely.

:func:`milvus_expression` translates the core filter language (:mod:`m3_rag.filters`) and says
whether Milvus evaluates it exactly.
Keys must match :data:`~m3_rag.filters.KEY_PATTERN`; values become escaped literals
(milvus-lite 3.2 ignores ``filter_params`` templates, so escaping is the one way that works on
both milvus-lite and a server). pymilvus's own ``get(ids=...)`` / ``delete(ids=...)`` paste
string ids between quotes unescaped, so the store builds its id expressions here too.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

from ..filters import KEY_PATTERN, RANGE_OPS, And, Comparison, Filter, Membership, Scalar, parse_filter

__all__ = ["MilvusExpression", "ids_expression", "milvus_expression", "milvus_literal"]


def milvus_literal(value: str | float | bool) -> str:
    """A value as a Milvus expression literal; strings are quoted and escaped.

    >>> print(milvus_literal('x" or id != "'), milvus_literal(True), milvus_literal(2.5))
    "x\\" or id != \\"" true 2.5
    """
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(int(value))
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"{value!r} has no Milvus literal")
        return repr(value)
    if isinstance(value, str):
        escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\r", "\\r")
        return f'"{escaped}"'
    raise TypeError(f"expected a str, number or bool, got {type(value).__name__}")


def ids_expression(ids: Sequence[str]) -> str:
    """``id in [...]`` with escaped ids.

    >>> ids_expression(["a", "x' or id != '"])
    'id in ["a", "x\\' or id != \\'"]'
    """
    return "id in [" + ", ".join(milvus_literal(i) for i in ids) + "]"


class MilvusExpression(NamedTuple):
    """A filter as a Milvus expression on the ``metadata`` JSON field.

    ``expression``: ``""`` when every record passes, ``None`` when none can (skip the search).
    ``exact``: True when Milvus returns exactly the records :func:`~m3_rag.filters.matches`
    accepts; False when it returns a superset (bools and the numbers 0 / 1 look alike to
    Milvus: ``true == 1``): then check the returned metadata with ``matches`` / ``filter_mask``
    and fetch more candidates until enough pass.
    """

    expression: str | None
    exact: bool


_TRUE, _FALSE = "", None  # expression constants while translating
_RANGES: dict[str, tuple[str, Callable[[Any, Any], bool]]] = {
    "$gt": (">", operator.gt),
    "$gte": (">=", operator.ge),
    "$lt": ("<", operator.lt),
    "$lte": ("<=", operator.le),
}


def _like_bool(value: Scalar) -> bool:
    """Milvus compares JSON values as Python does: true == 1 == 1.0, false == 0 (milvus-lite 3.2)."""
    return isinstance(value, bool) or (isinstance(value, (int, float)) and value in (0, 1))


def _leaf(f: Comparison | Membership, field: str) -> tuple[str | None, bool]:
    ref = f'{field}["{f.key}"]'
    if isinstance(f, Comparison) and f.op in RANGE_OPS:
        symbol, test = _RANGES[f.op]
        # Milvus lets a bool into a range wherever 0 or 1 would pass; never strings, lists or nulls
        loose = test(0, f.value) or test(1, f.value)
        return f"{ref} {symbol} {milvus_literal(f.value)}", not loose  # type: ignore[arg-type]
    values = (f.value,) if isinstance(f, Comparison) else f.values
    negate = f.op in ("$ne", "$nin")
    null = any(v is None for v in values)
    loose = any(_like_bool(v) for v in values)
    if not negate:  # equal to any of the values: each == is loose only for bools and 0 / 1
        terms = [f"{ref} is null"] if null else []
        # dict.fromkeys merges what Python's == merges (true / 1 / 1.0): Milvus cannot tell them apart either
        terms += [f"{ref} == {milvus_literal(v)}" for v in dict.fromkeys(values) if v is not None]
        return (" or ".join(terms) or _FALSE), not loose
    # none of the values; != cannot tell true from 1, so those exclusions are dropped (superset)
    kept = [f"{ref} != {milvus_literal(v)}" for v in dict.fromkeys(values) if v is not None and not _like_bool(v)]
    if null:
        return " and ".join([f"{ref} is not null", *kept]), not loose
    if not kept:
        return _TRUE, not loose
    return f"{ref} is null or " + (f"({' and '.join(kept)})" if len(kept) > 1 else kept[0]), not loose


def _translate(f: Filter, field: str) -> tuple[str | None, bool]:
    if isinstance(f, (Comparison, Membership)):
        return _leaf(f, field)
    parts = [_translate(t, field) for t in f.terms]
    exact = all(e for _, e in parts)
    if isinstance(f, And):
        if any(p is _FALSE for p, e in parts if e):
            return _FALSE, True
        texts = [p for p, _ in parts if p]  # an inexact _FALSE never happens; _TRUE drops out
        return (" and ".join(f"({p})" for p in texts) if texts else _TRUE), exact
    if any(p == _TRUE for p, _ in parts):  # exact when one of the always-true parts is exact
        return _TRUE, any(e for p, e in parts if p == _TRUE)
    texts = [p for p, _ in parts if p is not None]
    return (" or ".join(f"({p})" for p in texts) if texts else _FALSE), exact


def milvus_expression(filter: Filter | Mapping[str, Any] | None, *, field: str = "metadata") -> MilvusExpression:
    """Translate a core filter into a Milvus expression on the JSON field ``field``.

    Type-exact where Milvus can be (strings, None / missing, numbers other than 0 and 1, ranges
    that no bool satisfies); a superset with ``exact=False`` elsewhere (see :class:`MilvusExpression`).

    >>> expression, exact = milvus_expression({"year": {"$gte": 2020}, "lang": {"$in": ["de", "en"]}})
    >>> print(expression, exact)
    (metadata["year"] >= 2020) and (metadata["lang"] == "de" or metadata["lang"] == "en") True
    >>> milvus_expression({"flag": True})
    MilvusExpression(expression='metadata["flag"] == true', exact=False)
    >>> milvus_expression({"lang": {"$ne": "de"}}).expression
    'metadata["lang"] is null or metadata["lang"] != "de"'
    """
    if not KEY_PATTERN.fullmatch(field):
        raise ValueError(f"field must be a Milvus field name matching {KEY_PATTERN.pattern}, got {field!r}")
    parsed = parse_filter(filter)
    if parsed is None:
        return MilvusExpression(_TRUE, True)
    text, exact = _translate(parsed, field)
    return MilvusExpression(text, exact)
