"""Stores: the embedded :class:`M3Index` (and, later, scale-out backends)."""

from __future__ import annotations

from ..retrieval import SearchHit
from .memory import M3Index, Record

__all__ = ["M3Index", "Record", "SearchHit"]
