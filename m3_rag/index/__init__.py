"""Stores: the embedded :class:`M3Index` and the scale-out :class:`MilvusStore` (pymilvus imported lazily)."""

from __future__ import annotations

from ..retrieval import SearchHit
from .memory import M3Index, Record
from .milvus import MilvusStore

__all__ = ["M3Index", "MilvusStore", "Record", "SearchHit"]
