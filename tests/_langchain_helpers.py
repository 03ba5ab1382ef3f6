"""Shared by the LangChain tests: a corpus, the shared tiny model, and an encode-call counter."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from m3_rag import M3Embedder

TINY = Path(__file__).parent / "data" / "tiny-m3"
CORPUS = [
    "Berlin is the capital of Germany.",
    "Paris is the capital of France and a city of museums.",
    "Die Hauptstadt von Deutschland ist Berlin.",
    "北京是中国的首都，也是一座历史悠久的城市。",
    "Hybrid retrieval first finds candidates with dense and sparse search, then reranks them.",
    "The quick brown fox jumps over the lazy dog.",
    "Machine learning models learn patterns from data; transformers use attention.",
    "A vector database stores embeddings and answers nearest neighbour queries quickly.",
    "Emoji in chats: 😀 🚀 🎉",
    "repeat repeat repeat the same words again and again.",
]
IDS = [f"d{i}" for i in range(len(CORPUS))]
METADATAS = [{"n": i, "lang": "de" if i in (0, 2) else "x"} for i in range(len(CORPUS))]
QUERIES = ["capital of Germany", "hybrid search", "中国的首都", "vector database"]


def shared_tiny() -> M3Embedder:
    """The process-wide tiny model, what adapters built with ``model_name=str(TINY)`` use."""
    return M3Embedder.shared(str(TINY), device="cpu")


class EncodeCounter:
    """Records every ``encode`` call of one embedder: ``calls`` (text lists), ``threads`` (where they ran)."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []
        self.threads: list[int] = []

    @property
    def texts(self) -> Counter[str]:
        return Counter(t for call in self.calls for t in call)


@contextmanager
def count_encodes(embedder: M3Embedder) -> Iterator[EncodeCounter]:
    counter = EncodeCounter()
    original = embedder.encode

    def encode(texts: Any, **kwargs: Any) -> Any:
        counter.calls.append([texts] if isinstance(texts, str) else list(texts))
        counter.threads.append(threading.get_ident())
        return original(texts, **kwargs)

    embedder.encode = encode  # type: ignore[method-assign]
    try:
        yield counter
    finally:
        del embedder.encode
