"""Shared by the LlamaIndex tests: a small corpus, and counting model passes per text."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Sequence
from typing import Any

import pytest

from m3_rag import M3Embedder

#: The small corpus, its metadata and a query, shared by the LlamaIndex tests.
TEXTS = [
    "Berlin is the capital and largest city of Germany.",
    "Paris is the capital of France, on the river Seine.",
    "The Rhine flows from the Swiss Alps to the North Sea.",
    "Mount Everest is the highest mountain above sea level.",
    "BGE-M3 gives dense, sparse and multi-vector embeddings.",
    "Die Hauptstadt von Deutschland ist Berlin.",
]
META = [
    {"lang": "en", "topic": "city", "year": 2023},
    {"lang": "en", "topic": "city", "year": 2024},
    {"lang": "en", "topic": "river", "year": 2024},
    {"lang": "en", "topic": "mountain", "year": 2022},
    {"lang": "en", "topic": "model", "year": 2024},
    {"lang": "de", "topic": "city", "year": 2023},
]
QUERY = "What is the capital of Germany?"
HYBRID = "colbert+sparse+dense"
MODES = ("dense", "sparse", "colbert")


class Passes:
    """Every text the model runs on (``M3Embedder.iter_encode`` is the one door to the network)."""

    def __init__(self, embedder: M3Embedder, monkeypatch: pytest.MonkeyPatch) -> None:
        self.texts: Counter[str] = Counter()
        self.calls = 0
        original = embedder.iter_encode

        def counting(texts: str | Sequence[str], **kwargs: Any) -> Iterator[Any]:
            items = [texts] if isinstance(texts, str) else list(texts)
            self.texts.update(items)
            self.calls += 1
            return original(items, **kwargs)

        monkeypatch.setattr(embedder, "iter_encode", counting)

    def reset(self) -> None:
        self.texts.clear()
        self.calls = 0

    @property
    def total(self) -> int:
        return sum(self.texts.values())

    def per_text(self) -> float:
        """Model passes per distinct text (1.0: every text ran once)."""
        return self.total / max(1, len(self.texts))
