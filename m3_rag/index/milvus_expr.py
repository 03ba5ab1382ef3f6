"""Milvus boolean expressions from metadata filters and ids, built safely.

Keys must match :data:`~m3_rag.index.filters.KEY_PATTERN`; values become escaped literals
(milvus-lite 3.2 ignores ``filter_params`` templates, so escaping is the one way that works on
both milvus-lite and a server). pymilvus's own ``get(ids=...)`` / ``delete(ids=...)`` paste
string ids between quotes unescaped, so the store builds its id expressions here too.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from ..filters import MetadataFilter, check_filter

__all__ = ["ids_expression", "milvus_filter", "milvus_literal"]


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


def milvus_filter(filter: MetadataFilter | None) -> str | None:
    """A metadata filter as a Milvus boolean expression on the ``metadata`` JSON field.

    ``""``: no filter; ``None``: nothing can match (an empty any-of list, or only NaN/inf).
    A ``None`` value becomes ``is null``. Milvus compares JSON values loosely (``true == 1``),
    so the store re-checks the returned metadata with :func:`~m3_rag.index.filters.filter_mask`.

    >>> milvus_filter({"lang": "en", "year": [2023, 2024]})
    '(metadata["lang"] == "en") and (metadata["year"] == 2023 or metadata["year"] == 2024)'
    """
    conditions = check_filter(filter)
    parts = []
    for key, values in (conditions or {}).items():
        field = f'metadata["{key}"]'
        terms = [
            f"{field} is null" if v is None else f"{field} == {milvus_literal(v)}"
            for v in values
            if not (isinstance(v, float) and not math.isfinite(v))
        ]
        if not terms:
            return None
        parts.append("(" + " or ".join(terms) + ")")
    return " and ".join(parts)


def ids_expression(ids: Sequence[str]) -> str:
    """``id in [...]`` with escaped ids.

    >>> ids_expression(["a", "x' or id != '"])
    'id in ["a", "x\\' or id != \\'"]'
    """
    return "id in [" + ", ".join(milvus_literal(i) for i in ids) + "]"
