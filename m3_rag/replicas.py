"""Running batches on devices: one :class:`Replica` per device, out-of-memory splits, dealing.

A :class:`Replica` is one copy of the model on one device. :meth:`Replica.run` encodes a
:class:`~m3_rag.input_batches.HostBatch`; when the device runs out of memory
(``torch.cuda.OutOfMemoryError``) it halves the batch and retries each half, down to one text, and
lowers its token budget (:attr:`Replica.budget`) for every later batch, so one long document
does not fail the run. :func:`deal` spreads batches over several replicas, one thread per
replica (threads, not processes: the GIL is released inside the forward pass), and yields the
results in the order of the batches.
"""

from __future__ import annotations

import itertools
import logging
import queue
import threading
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch

from .input_batches import HostBatch, Prefetcher
from .model import M3Model
from .output import EncodedBatch

__all__ = ["Modes", "Replica", "concat_batches", "deal"]

logger = logging.getLogger(__name__)

#: Which outputs to compute: ``(dense, sparse, colbert)``.
Modes = tuple[bool, bool, bool]
_POLL_S = 0.05


class Replica:
    """The model on one device, with the token budget that device has shown it can take.

    Args:
        model: the network, already on its device.
        unused_ids: token ids that never carry a sparse weight (``<s>``, ``</s>``, ...).
        vocab_size: the size of the vocabulary (sparse ids are below it).
    """

    def __init__(self, model: M3Model, unused_ids: np.ndarray, vocab_size: int) -> None:
        self.model = model
        self.device: torch.device = next(model.parameters()).device
        self.vocab_size = vocab_size
        self._unused_ids = torch.from_numpy(unused_ids).to(self.device)
        #: Padded tokens per forward pass this device is known to hold, once it has run out of
        #: memory (None until then); later batches above it are split before they run.
        self.budget: int | None = None
        self._budget_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"Replica(device={str(self.device)!r}, budget={self.budget})"

    # ------------------------------------------------------------------ running
    def run(self, batch: HostBatch, modes: Modes) -> EncodedBatch:
        """Encode one batch; split it (and lower :attr:`budget`) when it does not fit."""
        budget = self.budget
        if budget is not None and len(batch) > 1 and batch.padded_tokens > budget:
            bounds = _contiguous_chunks(batch.lengths, budget)
            parts = [batch.rows(a, b) for a, b in itertools.pairwise(bounds)]
        else:
            parts = [batch]
        done: list[EncodedBatch] = []
        for part in parts:
            done.extend(self._run_or_split(part, modes))
        return done[0] if len(done) == 1 else concat_batches(done)

    def _run_or_split(self, batch: HostBatch, modes: Modes) -> list[EncodedBatch]:
        try:
            return [self.forward(batch, modes)]
        except torch.cuda.OutOfMemoryError as exc:
            if len(batch) == 1:
                self._free()
                detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                raise torch.cuda.OutOfMemoryError(
                    f"out of memory on {self.device} encoding one text of {int(batch.lengths[0]):,} tokens "
                    f"(input position {int(batch.positions[0])}) even alone; free memory on that device, or pass "
                    f"a smaller max_length (e.g. {max(2, int(batch.lengths[0]) // 2)}), dtype='float16' or "
                    f"attn_implementation='sdpa' to M3Embedder.from_pretrained ({detail})"
                ) from exc
        # out of the except clause: the failed pass's tensors are released before the retry
        self._free()
        half = (len(batch) + 1) // 2
        lowered = self._lower_budget(half * int(batch.lengths[:half].max()))  # the first half's padded size
        logger.warning(
            "out of memory on %s with a batch of %d texts x %d tokens (%d padded): split in two and retried; "
            "the token budget on this device is now %d (pass max_batch_tokens=%d to start there)",
            self.device,
            len(batch),
            int(batch.input_ids.shape[1]),
            batch.padded_tokens,
            lowered,
            lowered,
        )
        return self._run_or_split(batch.rows(0, half), modes) + self._run_or_split(batch.rows(half, len(batch)), modes)

    def _lower_budget(self, tokens: int) -> int:
        with self._budget_lock:
            self.budget = max(1, tokens if self.budget is None else min(self.budget, tokens))
            return self.budget

    def _free(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def forward(self, batch: HostBatch, modes: Modes) -> EncodedBatch:
        """One forward pass on this device, outputs copied back to the host as numpy."""
        dense, sparse, colbert = modes
        input_ids = batch.input_ids.to(self.device, non_blocking=True)
        mask = batch.attention_mask.to(self.device, non_blocking=True)
        fields: dict[str, Any] = {"indices": batch.positions, "truncated": batch.truncated}
        with torch.inference_mode():
            out = self.model(input_ids, mask, dense=dense, sparse=sparse, colbert=colbert)
            if out.dense is not None:
                fields["dense"] = out.dense.float().cpu().numpy()
            if out.sparse is not None:
                fields.update(self._gather_sparse(out.sparse, input_ids[mask.bool()], batch.lengths))
            if out.colbert is not None:
                fields["colbert"] = out.colbert.float().cpu().numpy()
                fields["colbert_offsets"] = np.concatenate([[0], np.cumsum(batch.lengths - 1)])
        return EncodedBatch(**fields)

    def _gather_sparse(self, weights: torch.Tensor, token_ids: torch.Tensor, lengths: np.ndarray) -> dict[str, Any]:
        """Per text, the max weight of each token id, dropping special tokens and weights <= 0.

        ``weights`` and ``token_ids`` are (N,) over the batch's real tokens, row-major.
        """
        rows = torch.repeat_interleave(
            torch.arange(len(lengths), device=weights.device), torch.from_numpy(lengths).to(weights.device)
        )
        keep = (weights > 0) & ~torch.isin(token_ids, self._unused_ids)
        keys = rows[keep] * self.vocab_size + token_ids[keep]
        unique, inverse = torch.unique(keys, sorted=True, return_inverse=True)
        best = torch.zeros(len(unique), dtype=torch.float32, device=weights.device)
        best = best.scatter_reduce(0, inverse, weights[keep].float(), reduce="amax", include_self=False)
        counts = torch.bincount(unique // self.vocab_size, minlength=len(lengths))
        return {
            "sparse_ids": (unique % self.vocab_size).cpu().numpy(),
            "sparse_weights": best.cpu().numpy(),
            "sparse_offsets": np.concatenate([[0], np.cumsum(counts.cpu().numpy())]),
        }


def _contiguous_chunks(lengths: np.ndarray, budget: int) -> list[int]:
    """Bounds of consecutive rows whose padded size ``rows x longest`` stays within ``budget``.

    >>> _contiguous_chunks(np.array([8, 6, 6, 2, 2]), budget=12)
    [0, 1, 3, 5]
    """
    bounds, widest = [0], 0
    for i, length in enumerate(np.asarray(lengths).tolist()):
        wider = max(widest, length)
        if i > bounds[-1] and (i - bounds[-1] + 1) * wider > budget:
            bounds.append(i)
            wider = length
        widest = wider
    return [*bounds, len(lengths)]


def _concat_packed(values: list[np.ndarray], offsets: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    shifts = np.cumsum([0] + [int(o[-1]) for o in offsets[:-1]])
    joined = np.concatenate([offsets[0][:1]] + [o[1:] + s for o, s in zip(offsets, shifts.tolist())])
    return np.concatenate(values), joined


def concat_batches(batches: Sequence[EncodedBatch]) -> EncodedBatch:
    """One :class:`EncodedBatch` holding the texts of ``batches`` in their order.

    >>> a = EncodedBatch(indices=np.array([4]), sparse_ids=np.array([7]), sparse_weights=np.array([0.5]),
    ...                  sparse_offsets=np.array([0, 1]), truncated=np.array([False]))
    >>> b = EncodedBatch(indices=np.array([1, 2]), sparse_ids=np.array([3, 9]), sparse_weights=np.array([1.0, 2.0]),
    ...                  sparse_offsets=np.array([0, 0, 2]), truncated=np.array([False, True]))
    >>> ab = concat_batches([a, b])
    >>> ab.indices.tolist(), ab.sparse_offsets.tolist(), [s.to_dict() for s in ab.sparse_vectors()]
    ([4, 1, 2], [0, 1, 1, 3], [{7: 0.5}, {}, {3: 1.0, 9: 2.0}])
    """
    first = batches[0]
    fields: dict[str, Any] = {
        "indices": np.concatenate([b.indices for b in batches]),
        "truncated": np.concatenate([b.truncated for b in batches]),
    }
    if first.dense is not None:
        fields["dense"] = np.concatenate([b.dense for b in batches if b.dense is not None])
    if first.sparse_ids is not None:
        ids, offsets = _concat_packed(
            [b.sparse_ids for b in batches if b.sparse_ids is not None],
            [b.sparse_offsets for b in batches if b.sparse_offsets is not None],
        )
        fields["sparse_ids"], fields["sparse_offsets"] = ids, offsets
        fields["sparse_weights"] = np.concatenate([b.sparse_weights for b in batches if b.sparse_weights is not None])
    if first.colbert is not None:
        fields["colbert"], fields["colbert_offsets"] = _concat_packed(
            [b.colbert for b in batches if b.colbert is not None],
            [b.colbert_offsets for b in batches if b.colbert_offsets is not None],
        )
    return EncodedBatch(**fields)


def deal(replicas: Sequence[Replica], batches: Iterator[HostBatch], modes: Modes) -> Iterator[EncodedBatch]:
    """Encode ``batches`` on all ``replicas`` at once and yield the results in batch order.

    One background thread makes the host batches (tokenising and padding ahead), one thread
    per replica takes the next batch whenever it is free. At most two batches per replica are
    in flight. The first error of any thread stops all of them (each finishes the batch in its
    hands) and is raised here; closing this generator early stops them too.
    """
    source: Prefetcher[HostBatch] = Prefetcher(batches, depth=2 * len(replicas))
    stop = threading.Event()
    slots = threading.Semaphore(2 * len(replicas))
    take_lock = threading.Lock()
    results: queue.Queue[tuple[str, int, Any]] = queue.Queue()
    counter = itertools.count()

    def work(replica: Replica) -> None:
        try:
            if replica.device.type == "cuda":  # this thread's kernels and allocations go to its GPU
                torch.cuda.set_device(replica.device)
            while not stop.is_set():
                if not slots.acquire(timeout=_POLL_S):
                    continue
                with take_lock:  # taking a batch and its number together keeps the order
                    batch = next(source, None)
                    seq = next(counter)
                if batch is None or stop.is_set():
                    break
                results.put(("ok", seq, replica.run(batch, modes)))
        except BaseException as exc:  # carried to the caller, never lost in the thread
            stop.set()
            results.put(("error", -1, exc))
        finally:
            results.put(("done", -1, None))

    threads = [
        threading.Thread(target=work, args=(r,), name=f"m3-rag-{r.device}-{i}", daemon=True)
        for i, r in enumerate(replicas)
    ]
    for thread in threads:
        thread.start()
    pending: dict[int, EncodedBatch] = {}
    next_seq, running = 0, len(threads)
    try:
        while running or pending:
            while next_seq in pending:
                slots.release()
                yield pending.pop(next_seq)
                next_seq += 1
            if not running:
                if pending:  # cannot happen: every number below the largest was handed out
                    raise RuntimeError(f"encoding lost batch {next_seq} of {next_seq + len(pending)}")
                break
            try:
                kind, seq, value = results.get(timeout=_POLL_S)
            except queue.Empty:
                continue
            if kind == "error":
                raise value
            if kind == "done":
                running -= 1
            else:
                pending[seq] = value
    finally:
        stop.set()
        source.close()
        for thread in threads:
            thread.join()
