"""Stores: the embedded :class:`M3Index` and the scale-out :class:`MilvusStore` and :class:`QdrantStore`
(pymilvus and qdrant-client imported lazily)."""

from __future__ import annotations

from ..ranking import SearchHit
from ..records import Record
from .m3_index import M3Index
from .milvus import MilvusStore
from .qdrant import QdrantStore

__all__ = ["M3Index", "MilvusStore", "QdrantStore", "Record", "SearchHit"]
