"""Token-aware chunking with overlap: no chunk is ever longer than the model takes."""

from __future__ import annotations

from dataclasses import dataclass

from .tokenizer import M3Tokenizer

__all__ = ["Chunk", "chunk_text"]


@dataclass(frozen=True)
class Chunk:
    """A piece of a text: ``text[start:end]``, ``n_tokens`` tokens without ``<s>``/``</s>``."""

    text: str
    start: int
    end: int
    n_tokens: int


def chunk_text(text: str, tokenizer: M3Tokenizer, *, max_tokens: int = 512, overlap: int = 64) -> list[Chunk]:
    """Split ``text`` into chunks of at most ``max_tokens`` tokens (``<s>`` and ``</s>`` included).

    Consecutive chunks share ``overlap`` tokens. Chunk boundaries fall on token boundaries of the
    whole text; each chunk is re-tokenised on its own and shrunk until it fits, so nothing is
    ever silently truncated by the encoder. Whitespace-only text gives no chunks.

    >>> from m3_rag.tokenizer import M3Tokenizer
    >>> tok = M3Tokenizer.from_folder("tests/data/tiny-m3")
    >>> chunks = chunk_text("word " * 40, tok, max_tokens=16, overlap=4)
    >>> max(len(tok.encode([c.text], max_length=10**6)[0]) for c in chunks) <= 16
    True
    """
    if max_tokens < 3:
        raise ValueError(f"max_tokens must be >= 3 (room for <s>, </s> and one token), got {max_tokens}")
    if not 0 <= overlap < max_tokens - 2:
        raise ValueError(f"overlap must be >= 0 and < max_tokens - 2 ({max_tokens - 2}), got {overlap}")
    spans = tokenizer.offsets(text)
    if not spans or not text.strip():
        return []
    budget = max_tokens - 2
    chunks: list[Chunk] = []
    first = 0
    while first < len(spans):
        last = min(first + budget, len(spans))  # exclusive
        while True:
            start, end = spans[first][0], spans[last - 1][1]
            piece = text[start:end]
            n_tokens = len(tokenizer.encode([piece], max_length=1 << 30)[0]) - 2
            if n_tokens <= budget or last - first == 1:
                break
            last -= max(1, n_tokens - budget)  # re-tokenising the slice gave more tokens: shrink
        chunks.append(Chunk(piece, start, end, n_tokens))
        if last >= len(spans):
            break
        first = max(first + 1, last - overlap)
    return chunks
