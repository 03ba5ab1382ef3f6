"""Shared by the LlamaIndex tests: counting model passes per text."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Sequence
from typing import Any

import pytest

from m3_rag import M3Embedder


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
