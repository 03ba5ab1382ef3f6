"""The input side of encoding: tokenised, padded batches, made ahead of the model in a thread.

:func:`host_batches` tokenises the texts window by window (longest texts first, see
:func:`~m3_rag.batching.text_windows`), plans length-sorted batches under the token budget and
pads them into ``(B, L)`` tensors, pinned on the way to a CUDA device so that the copy to the
device can be asynchronous. :class:`Prefetcher` runs any such iterator in a background thread
a few items ahead, so that the next batches are tokenised and padded while the model computes.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Generator, Iterator, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

import numpy as np
import torch

from .batching import StreamPlanner, pad_batch, text_windows
from .tokenizer import M3Tokenizer

__all__ = ["HostBatch", "Prefetcher", "host_batches"]

T = TypeVar("T")
_POLL_S = 0.05  # how often a blocked thread looks at its stop flag


@dataclass(frozen=True)
class HostBatch:
    """One padded batch on the host, ready to be copied to a device.

    - ``positions``: (b,) the texts' positions in the caller's input
    - ``input_ids``, ``attention_mask``: (b, L) int64 CPU tensors, right-padded (pinned for CUDA)
    - ``lengths``: (b,) token counts with ``<s>`` and ``</s>``
    - ``truncated``: (b,) whether each text was cut at ``max_length``
    """

    positions: np.ndarray
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    lengths: np.ndarray
    truncated: np.ndarray

    def __len__(self) -> int:
        return len(self.positions)

    @property
    def padded_tokens(self) -> int:
        """Tokens of the padded ``(b, L)`` block: what the token budget counts."""
        return int(self.input_ids.shape[0] * self.input_ids.shape[1])

    def rows(self, start: int, stop: int) -> HostBatch:
        """Rows ``start:stop``, cut to their own longest text (the split of an out-of-memory retry)."""
        width = int(self.lengths[start:stop].max())
        return HostBatch(
            positions=self.positions[start:stop],
            input_ids=self.input_ids[start:stop, :width].contiguous(),
            attention_mask=self.attention_mask[start:stop, :width].contiguous(),
            lengths=self.lengths[start:stop],
            truncated=self.truncated[start:stop],
        )


def host_batches(
    tokenizer: M3Tokenizer,
    texts: Sequence[str],
    *,
    max_length: int,
    max_tokens: Callable[[], int],
    max_items: int | None = None,
    window_chars: int,
    pin_memory: bool = False,
) -> Generator[HostBatch]:
    """Tokenise ``texts`` window by window and yield padded batches, longest texts first.

    ``max_tokens`` is called for every window, so a budget lowered after an out-of-memory
    error applies to the batches planned after it. Memory is bounded by one window plus the
    texts carried to the next one, whatever the number of texts.

    >>> tok = M3Tokenizer.from_folder("tests/data/tiny-m3")
    >>> batches = list(host_batches(tok, ["a b c", "a", "a b"], max_length=16, max_tokens=lambda: 8, window_chars=64))
    >>> [b.positions.tolist() for b in batches], [tuple(b.input_ids.shape) for b in batches]
    ([[0], [2, 1]], [(1, 5), (2, 4)])
    """
    chars = np.fromiter((len(t) for t in texts), dtype=np.int64, count=len(texts))
    windows = text_windows(chars, window_chars)
    planner = StreamPlanner(max_items)
    pending: dict[int, tuple[list[int], bool]] = {}
    for k, window in enumerate(windows):
        ids, overflow = tokenizer.encode_with_overflow([texts[i] for i in window.tolist()], max_length)
        lengths = np.fromiter((len(x) for x in ids), dtype=np.int64, count=len(ids))
        pending.update(zip(window.tolist(), zip(ids, overflow)))
        for positions in planner.add(window, lengths, max_tokens=max_tokens(), last=k == len(windows) - 1):
            rows = [pending.pop(i) for i in positions.tolist()]
            input_np, mask_np = pad_batch([np.asarray(r[0], dtype=np.int64) for r in rows], tokenizer.pad_id)
            input_ids, mask = torch.from_numpy(input_np), torch.from_numpy(mask_np)
            if pin_memory:
                input_ids, mask = input_ids.pin_memory(), mask.pin_memory()
            yield HostBatch(
                positions=positions,
                input_ids=input_ids,
                attention_mask=mask,
                lengths=mask_np.sum(axis=1),
                truncated=np.fromiter((r[1] for r in rows), dtype=bool, count=len(rows)),
            )


class _Raised:
    """An exception of the producer thread, carried to the consumer."""

    def __init__(self, error: BaseException) -> None:
        self.error = error


_DONE = object()


class Prefetcher(Generic[T]):
    """Iterate ``source`` in a background thread, up to ``depth`` items ahead.

    The items come out in order; an exception of ``source`` is raised by ``next`` in the
    consumer; :meth:`close` (also on ``with`` exit, or when the consumer stops early) stops the
    thread and closes ``source`` in it. ``next`` may be called from several threads.

    >>> with Prefetcher(iter(range(5)), depth=2) as items:
    ...     list(items)
    [0, 1, 2, 3, 4]
    >>> def broken():
    ...     yield 1
    ...     raise KeyError("input")
    >>> with Prefetcher(broken(), depth=2) as items:
    ...     next(items), next(items)
    Traceback (most recent call last):
    KeyError: 'input'
    """

    def __init__(self, source: Iterator[T], depth: int = 2, *, name: str = "m3-rag-input") -> None:
        if depth < 1:
            raise ValueError(f"depth must be >= 1, got {depth}")
        self._queue: queue.Queue[object] = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._finished = False
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._produce, args=(source,), name=name, daemon=True)
        self._thread.start()

    def _put(self, item: object) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=_POLL_S)
                return True
            except queue.Full:
                continue
        return False

    def _produce(self, source: Iterator[T]) -> None:
        try:
            for item in source:
                if not self._put(item):
                    break
            else:
                self._put(_DONE)
        except BaseException as exc:  # carried to the consumer, never lost in the thread
            self._put(_Raised(exc))
        finally:
            close = getattr(source, "close", None)
            if close is not None:
                close()

    def __iter__(self) -> Prefetcher[T]:
        return self

    def __next__(self) -> T:
        with self._lock:
            while not self._finished:
                if self._stop.is_set():
                    self._finished = True
                    break
                try:
                    item = self._queue.get(timeout=_POLL_S)
                except queue.Empty:
                    if not self._thread.is_alive() and self._queue.empty():
                        self._finished = True
                    continue
                if item is _DONE:
                    self._finished = True
                elif isinstance(item, _Raised):
                    self._finished = True
                    raise item.error
                else:
                    return item  # type: ignore[return-value]
            raise StopIteration

    def close(self) -> None:
        """Stop the thread (it finishes the item it is making) and wait for it."""
        self._stop.set()
        while self._thread.is_alive():
            try:  # unblock a producer waiting for room
                while True:
                    self._queue.get_nowait()
            except queue.Empty:
                pass
            self._thread.join(timeout=_POLL_S)
        self._finished = True

    def __enter__(self) -> Prefetcher[T]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
