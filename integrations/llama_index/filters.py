"""LlamaIndex ``MetadataFilters`` mapped onto the core filter language (:mod:`m3_rag.filters`).

``FilterOperator`` EQ, NE, IN, NIN, GT, GTE, LT, LTE and nested ``MetadataFilters`` joined with
AND / OR map one to one; every other operator or condition (NOT, TEXT_MATCH, CONTAINS, ANY, ALL,
IS_EMPTY, ...) is a :class:`~m3_rag.filters.FilterError` naming it, never ignored. The semantics are
the core's (type-exact equality, a missing key equals ``None``, ``NE`` / ``NIN`` match records that
lack the key): see docs/FILTERS.md.

>>> from llama_index.core.vector_stores import FilterCondition, FilterOperator, MetadataFilter, MetadataFilters
>>> to_core_filter(MetadataFilters(filters=[
...     MetadataFilter(key="year", value=2020, operator=FilterOperator.GTE),
...     MetadataFilters(condition=FilterCondition.OR, filters=[
...         MetadataFilter(key="lang", value=["de", "en"], operator=FilterOperator.IN),
...         MetadataFilter(key="draft", value="no", operator=FilterOperator.NE)])]))
{'$and': [{'year': {'$gte': 2020}}, {'$or': [{'lang': {'$in': ['de', 'en']}}, {'draft': {'$ne': 'no'}}]}]}
"""

from __future__ import annotations

from typing import Any

from llama_index.core.vector_stores.types import (
    ExactMatchFilter,
    FilterCondition,
    FilterOperator,
    MetadataFilter,
    MetadataFilters,
)

from m3_rag.filters import FilterError, parse_filter

__all__ = ["OPERATORS", "to_core_filter"]

#: LlamaIndex operators and the core operator each one becomes.
OPERATORS: dict[FilterOperator, str] = {
    FilterOperator.EQ: "$eq",
    FilterOperator.NE: "$ne",
    FilterOperator.IN: "$in",
    FilterOperator.NIN: "$nin",
    FilterOperator.GT: "$gt",
    FilterOperator.GTE: "$gte",
    FilterOperator.LT: "$lt",
    FilterOperator.LTE: "$lte",
}
_CONDITIONS = {FilterCondition.AND: "$and", FilterCondition.OR: "$or"}
_SUPPORTED = "EQ, NE, IN, NIN, GT, GTE, LT, LTE, with nested MetadataFilters joined by AND or OR"


def _one(f: MetadataFilter | ExactMatchFilter) -> dict[str, Any]:
    operator = f.operator if isinstance(f, MetadataFilter) else FilterOperator.EQ
    op = OPERATORS.get(operator)
    if op is None:
        raise FilterError(
            f"filter on {f.key!r}: FilterOperator.{operator.name} ({operator.value!r}) is not supported by m3-rag; "
            f"supported: {_SUPPORTED}"
        )
    if op in ("$in", "$nin") and not isinstance(f.value, (list, tuple)):
        raise FilterError(
            f"filter on {f.key!r}: FilterOperator.{operator.name} takes a list of values, got {f.value!r}; "
            f"write value=[{f.value!r}]"
        )
    value = list(f.value) if isinstance(f.value, (list, tuple)) else f.value
    return {f.key: {op: value}}


def _group(filters: MetadataFilters, depth: int) -> dict[str, Any] | None:
    condition = filters.condition if filters.condition is not None else FilterCondition.AND
    name = _CONDITIONS.get(condition)
    if name is None:
        raise FilterError(
            f"MetadataFilters condition FilterCondition.{condition.name} is not supported by m3-rag; "
            f"supported: {_SUPPORTED} (write NOT of EQ / IN as NE / NIN)"
        )
    if depth > 32:
        raise FilterError("MetadataFilters nested more than 32 levels deep; flatten them")
    terms = []
    for f in filters.filters:
        if isinstance(f, MetadataFilters):
            term = _group(f, depth + 1)
            if term is not None:
                terms.append(term)
        elif isinstance(f, (MetadataFilter, ExactMatchFilter)):
            terms.append(_one(f))
        else:
            raise FilterError(
                f"MetadataFilters.filters holds MetadataFilter or MetadataFilters, got {type(f).__name__}"
            )
    if not terms:
        if name == "$or":  # LlamaIndex's own stores: an OR of nothing matches nothing
            raise FilterError("an OR MetadataFilters group with no filters matches nothing; remove it or add filters")
        return None  # an AND of nothing matches everything
    return terms[0] if len(terms) == 1 else {name: terms}


def to_core_filter(filters: MetadataFilters | None) -> dict[str, Any]:
    """``MetadataFilters`` -> a core filter dict (``{}``: no filter), checked by the core parser.

    >>> from llama_index.core.vector_stores import FilterOperator, MetadataFilter, MetadataFilters
    >>> to_core_filter(MetadataFilters(filters=[MetadataFilter(key="lang", value="de")]))
    {'lang': {'$eq': 'de'}}
    >>> to_core_filter(MetadataFilters(filters=[MetadataFilter(key="t", value="x", operator=FilterOperator.CONTAINS)]))
    Traceback (most recent call last):
    ...
    m3_rag.filters.FilterError: filter on 't': FilterOperator.CONTAINS ('contains') is not supported by m3-rag; ...
    """
    if filters is None:
        return {}
    if not isinstance(filters, MetadataFilters):
        raise TypeError(f"filters must be llama_index MetadataFilters or None, got {type(filters).__name__}")
    out = _group(filters, 1) or {}
    parse_filter(out)  # keys, value types, limits: the core's errors
    return out
