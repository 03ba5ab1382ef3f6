"""Metadata filters: a dict of equalities, where a list value means "any of"."""

from __future__ import annotations

import re
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np

__all__ = ["KEY_PATTERN", "Filter", "MetadataFilter", "MetadataIndex", "check_filter", "filter_mask", "parse_filter"]

#: A filter is ``{key: value}`` or ``{key: [value, ...]}`` (any of); keys AND together.
MetadataFilter = Mapping[str, Any]
#: Metadata keys a filter may name (also what the Milvus store puts into expressions).
KEY_PATTERN = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")


def check_filter(filter: MetadataFilter | None) -> dict[str, list[Any]] | None:
    """Normalise a filter to ``{key: [allowed values]}``; None or {} means no filter.

    >>> check_filter({"lang": "en", "year": [2023, 2024]})
    {'lang': ['en'], 'year': [2023, 2024]}
    """
    if filter is None:
        return None
    if not isinstance(filter, Mapping):
        raise TypeError(f"filter must be a dict of metadata equalities, got {type(filter).__name__}")
    out: dict[str, list[Any]] = {}
    for key, value in filter.items():
        if not isinstance(key, str) or not KEY_PATTERN.match(key):
            raise ValueError(
                f"filter key {key!r} is not allowed: keys must match {KEY_PATTERN.pattern} "
                "(letters, digits and _, not starting with a digit)"
            )
        values = list(value) if isinstance(value, (list, tuple, set, frozenset)) else [value]
        for v in values:
            if not isinstance(v, (str, int, float, bool)) and v is not None:
                raise TypeError(f"filter value for {key!r} must be a str, number, bool or None, got {type(v).__name__}")
        out[key] = values
    return out or None


def _key(value: Any) -> Hashable:
    # 1 == 1.0 == True in Python; keep bools apart from numbers so {"flag": True} does not match 1
    return (type(value) is bool, value) if isinstance(value, Hashable) else (None, repr(value))


class MetadataIndex:
    """Rows by (key, value), built once per key and reused until the store changes."""

    def __init__(self) -> None:
        self._by_key: dict[str, dict[Hashable, list[int]]] = {}

    def clear(self) -> None:
        self._by_key.clear()

    def rows(self, metadatas: Sequence[Mapping[str, Any]], key: str) -> dict[Hashable, list[int]]:
        if key not in self._by_key:
            table: dict[Hashable, list[int]] = {}
            for row, meta in enumerate(metadatas):
                if key in meta:
                    table.setdefault(_key(meta[key]), []).append(row)
            self._by_key[key] = table
        return self._by_key[key]


def filter_mask(
    filter: dict[str, list[Any]] | None, metadatas: Sequence[Mapping[str, Any]], index: MetadataIndex
) -> np.ndarray | None:
    """Boolean mask over rows that pass ``filter`` (None when there is no filter)."""
    if not filter:
        return None
    mask = np.ones(len(metadatas), dtype=bool)
    for key, values in filter.items():
        table = index.rows(metadatas, key)
        allowed = np.zeros(len(metadatas), dtype=bool)
        for v in values:
            allowed[table.get(_key(v), [])] = True
        mask &= allowed
    return mask


#: The parsed form of a filter (interim: the filter language of issue 16 replaces this module).
Filter = dict[str, list[Any]]


def parse_filter(filter: MetadataFilter | Filter | None) -> Filter | None:
    """Interim alias of :func:`check_filter`."""
    return check_filter(filter)
