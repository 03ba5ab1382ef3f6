"""Stored documents and the checks every store applies to what it is given.

Texts, queries, ids and metadata are checked before anything is encoded or stored, so a bad
item fails the call with a clear message instead of failing a later save or search: texts and
ids must be ``str`` without lone surrogates (they cannot be written as UTF-8), metadata must be
JSON (finite numbers, ``str`` keys) and at most :data:`MAX_METADATA_DEPTH` levels deep.

>>> check_metadatas([{"lang": "en", "tags": ["a", "b"]}, None], 2)
[{'lang': 'en', 'tags': ['a', 'b']}, {}]
>>> check_texts(["ok", "bad \\ud800"])
Traceback (most recent call last):
...
ValueError: texts[1] contains a lone surrogate (U+D800 at position 4), which is not valid Unicode text; ...
"""

from __future__ import annotations

import copy
import json
import math
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "MAX_ID_BYTES",
    "MAX_METADATA_DEPTH",
    "Record",
    "check_ids",
    "check_json_value",
    "check_metadatas",
    "check_queries",
    "check_texts",
    "copy_metadata",
    "metadata_json",
]

#: Nesting levels a metadata value may have (``{"a": {"b": 1}}`` has 2).
MAX_METADATA_DEPTH = 32
#: UTF-8 bytes an id may take (a store may allow fewer: Milvus takes 512).
MAX_ID_BYTES = 4096


@dataclass(frozen=True)
class Record:
    """A stored document: ``id``, ``text`` and ``metadata``."""

    id: str
    text: str
    metadata: dict[str, Any] = field(default_factory=dict)


def _surrogate(text: str, what: str) -> ValueError | None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        char = text[exc.start]
        return ValueError(
            f"{what} contains a lone surrogate (U+{ord(char):04X} at position {exc.start}), which is not valid "
            "Unicode text; it often comes from decoding bytes with errors='surrogateescape'. Decode the source "
            "with the right encoding, or clean it with text.encode('utf-8', 'replace').decode('utf-8')"
        )
    return None


def check_texts(texts: str | Sequence[str], *, what: str = "texts") -> list[str]:
    """``texts`` as a list of str (one str is one text); TypeError / ValueError naming the bad item."""
    if texts is None:
        raise TypeError(f"{what} must be a str or a list of str, got None")
    if isinstance(texts, str):
        items = [texts]
    elif isinstance(texts, (bytes, bytearray)) or not isinstance(texts, Sequence):
        raise TypeError(f"{what} must be a str or a sequence of str, got {type(texts).__name__}")
    else:
        items = list(texts)
    for i, text in enumerate(items):
        if not isinstance(text, str):
            raise TypeError(f"{what}[{i}] must be a str, got {type(text).__name__}: {text!r:.80}")
        problem = _surrogate(text, f"{what}[{i}]")
        if problem is not None:
            raise problem
    return items


def check_queries(queries: Sequence[str]) -> list[str]:
    """Queries of a batch search: a list of str (a bare str is refused: use ``search``)."""
    if isinstance(queries, str):
        raise TypeError(f"queries must be a list of str, got a str {queries!r:.60}; use search() for one query")
    return check_texts(queries, what="queries")


def check_ids(ids: Sequence[str] | None, n: int) -> list[str]:
    """One unique, non-empty str id per text (new random ids when ``ids`` is None)."""
    if ids is None:
        return [uuid.uuid4().hex for _ in range(n)]
    if isinstance(ids, str) or not isinstance(ids, Sequence) or len(ids) != n:
        raise ValueError(f"ids must be a list with one id per text ({n}), got {ids!r:.80}")
    out = list(ids)
    for i, doc_id in enumerate(out):
        if not isinstance(doc_id, str) or not doc_id:
            raise TypeError(f"ids[{i}] must be a non-empty str, got {doc_id!r:.80}")
        problem = _surrogate(doc_id, f"ids[{i}]")
        if problem is not None:
            raise problem
        if len(doc_id) * 4 > MAX_ID_BYTES and len(doc_id.encode("utf-8")) > MAX_ID_BYTES:
            raise ValueError(f"ids[{i}] takes more than {MAX_ID_BYTES} UTF-8 bytes; use a shorter id (e.g. a hash)")
    if len(set(out)) != n:
        seen: set[str] = set()
        dup = next(x for x in out if x in seen or seen.add(x))  # type: ignore[func-returns-value]
        raise ValueError(f"ids must be unique within one call; {dup!r} appears more than once")
    return out


def check_json_value(value: Any, where: str, depth: int) -> None:
    """Check a metadata value: JSON types only, finite numbers, no lone surrogates, bounded depth."""
    if depth > MAX_METADATA_DEPTH:
        raise ValueError(
            f"{where} is nested more than {MAX_METADATA_DEPTH} levels deep; flatten it (metadata is meant "
            "for filters and citations, not for documents)"
        )
    if value is None or isinstance(value, (bool, int)):
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"{where} is {value!r}; metadata numbers must be finite (JSON has no NaN or inf)")
        return
    if isinstance(value, str):
        problem = _surrogate(value, where)
        if problem is not None:
            raise problem
        return
    if isinstance(value, Mapping):
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError(f"{where} has a key {key!r} of type {type(key).__name__}; metadata keys must be str")
            problem = _surrogate(key, f"a key of {where}")
            if problem is not None:
                raise problem
            check_json_value(item, f"{where}[{key!r}]", depth + 1)
        return
    if isinstance(value, (list, tuple)):
        for j, item in enumerate(value):
            check_json_value(item, f"{where}[{j}]", depth + 1)
        return
    raise TypeError(
        f"{where} is a {type(value).__name__}; metadata must be JSON-serialisable "
        "(str, int, float, bool, None, lists and dicts of them), since it is saved as JSON"
    )


def check_metadatas(metadatas: Sequence[Mapping[str, Any] | None] | None, n: int) -> list[dict[str, Any]]:
    """One JSON-compatible metadata dict per text (deep copies; None becomes ``{}``)."""
    if metadatas is None:
        return [{} for _ in range(n)]
    if isinstance(metadatas, (str, Mapping)) or not isinstance(metadatas, Sequence) or len(metadatas) != n:
        got = len(metadatas) if isinstance(metadatas, Sequence) else type(metadatas).__name__
        raise ValueError(f"metadatas must be a list with one dict (or None) per text ({n}), got {got}")
    out = []
    for i, meta in enumerate(metadatas):
        if meta is None:
            meta = {}
        if not isinstance(meta, Mapping):
            raise TypeError(f"metadatas[{i}] must be a dict, got {type(meta).__name__}")
        check_json_value(meta, f"metadatas[{i}]", 1)
        out.append(json.loads(metadata_json(meta)))  # a deep copy with tuples as lists, as it will be stored
    return out


def metadata_json(metadata: Mapping[str, Any]) -> str:
    """Canonical JSON of checked metadata (what stores save)."""
    return json.dumps(metadata, ensure_ascii=False, allow_nan=False, separators=(",", ":"))


def copy_metadata(metadata: Mapping[str, Any]) -> dict[str, Any]:
    """A deep copy for callers (changing it changes nothing in the store)."""
    return copy.deepcopy(dict(metadata))
