"""Length-sorted batches capped by a token budget, and padding: pure numpy, no model."""

from __future__ import annotations

import numpy as np

__all__ = ["pad_batch", "plan_batches"]


def plan_batches(lengths: np.ndarray, *, max_tokens: int, max_items: int | None = None) -> list[np.ndarray]:
    """Split text positions into batches of similar length, longest first.

    A batch holds as many texts as fit ``count * longest <= max_tokens`` (padded tokens), at
    most ``max_items``; a text longer than the budget gets a batch of its own.

    Args:
        lengths: (n,) token counts.
        max_tokens: padded-token budget of one batch.
        max_items: optional cap on the texts of one batch.

    Returns:
        Arrays of positions into ``lengths``; together they hold each position once.

    >>> [b.tolist() for b in plan_batches(np.array([3, 10, 4, 9]), max_tokens=20)]
    [[1, 3], [2, 0]]
    >>> [b.tolist() for b in plan_batches(np.array([5, 5, 5]), max_tokens=100, max_items=2)]
    [[0, 1], [2]]
    """
    if max_tokens < 1:
        raise ValueError(f"max_tokens must be >= 1, got {max_tokens}")
    if max_items is not None and max_items < 1:
        raise ValueError(f"max_items (batch_size) must be >= 1, got {max_items}")
    order = np.argsort(-np.asarray(lengths), kind="stable")
    sorted_lengths = np.asarray(lengths)[order]
    batches: list[np.ndarray] = []
    start, n = 0, len(order)
    while start < n:
        size = max(1, max_tokens // max(1, int(sorted_lengths[start])))
        if max_items is not None:
            size = min(size, max_items)
        batches.append(order[start : start + size])
        start += size
    return batches


def pad_batch(ids: list[np.ndarray], pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """Right-pad token id arrays into (B, L) ``input_ids`` and ``attention_mask`` (int64).

    >>> input_ids, mask = pad_batch([np.array([0, 5, 2]), np.array([0, 2])], pad_id=1)
    >>> input_ids.tolist(), mask.tolist()
    ([[0, 5, 2], [0, 2, 1]], [[1, 1, 1], [1, 1, 0]])
    """
    lengths = np.fromiter((len(x) for x in ids), dtype=np.int64, count=len(ids))
    width = int(lengths.max()) if len(ids) else 0
    mask = np.arange(width)[None, :] < lengths[:, None]
    input_ids = np.full((len(ids), width), pad_id, dtype=np.int64)
    if len(ids):
        input_ids[mask] = np.concatenate(ids)
    return input_ids, mask.astype(np.int64)
