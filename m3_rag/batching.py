"""Length-sorted batches capped by a token budget, and padding: pure numpy, no model.

A large input is tokenised window by window (:func:`text_windows` orders the texts by their
character count, a cheap stand-in for their token count, and cuts that order into windows) so
that the next window can be tokenised while the model runs on this one; :class:`StreamPlanner`
turns the windows' token counts into the same length-sorted batches as :func:`plan_batches`.
"""

from __future__ import annotations

import numpy as np

__all__ = ["StreamPlanner", "pad_batch", "plan_batches", "text_windows"]


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


def text_windows(char_lengths: np.ndarray, max_chars: int) -> list[np.ndarray]:
    """Positions sorted by character count (longest first), cut into windows of ~``max_chars``.

    A text starts a new window when the characters before it cross a multiple of
    ``max_chars``; a text longer than ``max_chars`` is a window of its own.

    >>> [w.tolist() for w in text_windows(np.array([2, 9, 4, 3]), max_chars=8)]
    [[1], [2, 3], [0]]
    """
    if max_chars < 1:
        raise ValueError(f"max_chars must be >= 1, got {max_chars}")
    chars = np.asarray(char_lengths, dtype=np.int64)
    order = np.argsort(-chars, kind="stable")
    before = np.cumsum(chars[order]) - chars[order]  # characters ahead of each text
    cuts = np.flatnonzero(np.diff(before // max_chars)) + 1
    return [w for w in np.split(order, cuts) if len(w)]


class StreamPlanner:
    """Length-sorted batches over texts that arrive window by window.

    :meth:`add` takes a window's positions and token counts and returns the batches that are
    full; the shortest texts are kept for the next window (the last window empties the pool).
    With a single window the batches are exactly those of :func:`plan_batches`.

    >>> planner = StreamPlanner()
    >>> [b.tolist() for b in planner.add(np.array([1, 3]), np.array([10, 9]), max_tokens=20)]
    [[1, 3]]
    >>> [b.tolist() for b in planner.add(np.array([2, 0]), np.array([4, 3]), max_tokens=20, last=True)]
    [[2, 0]]
    """

    def __init__(self, max_items: int | None = None) -> None:
        if max_items is not None and max_items < 1:
            raise ValueError(f"max_items (batch_size) must be >= 1, got {max_items}")
        self.max_items = max_items
        self._positions = np.zeros(0, dtype=np.int64)
        self._lengths = np.zeros(0, dtype=np.int64)

    def __len__(self) -> int:
        """Texts waiting for a batch."""
        return len(self._positions)

    def add(
        self, positions: np.ndarray, lengths: np.ndarray, *, max_tokens: int, last: bool = False
    ) -> list[np.ndarray]:
        """Add a window; return its full batches (all remaining ones when ``last``)."""
        if max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {max_tokens}")
        pool = np.concatenate([self._positions, np.asarray(positions, dtype=np.int64)])
        sizes = np.concatenate([self._lengths, np.asarray(lengths, dtype=np.int64)])
        order = np.lexsort((pool, -sizes))  # longest first, then input order (as plan_batches)
        pool, sizes = pool[order], sizes[order]
        batches: list[np.ndarray] = []
        start, n = 0, len(pool)
        while start < n:
            size = max(1, max_tokens // max(1, int(sizes[start])))
            if self.max_items is not None:
                size = min(size, self.max_items)
            if start + size > n and not last:
                break  # not full: wait for the next window's texts
            batches.append(pool[start : start + size])
            start += size
        self._positions, self._lengths = pool[start:], sizes[start:]
        return batches
