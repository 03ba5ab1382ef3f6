"""Results of encoding: :class:`M3Output` for callers, :class:`EncodedBatch` for streaming."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .sparse import SparseVector, split_packed

__all__ = ["EncodedBatch", "M3Output", "check_output"]


@dataclass(frozen=True)
class M3Output:
    """Dense, sparse and ColBERT outputs of ``n`` texts, in input order.

    Attributes:
        dense: float32 array (n, d) of unit vectors, or None when not asked for.
        sparse: one :class:`~m3_rag.sparse.SparseVector` per text (a read-only
            ``{token_id: weight}`` mapping: special tokens dropped, the max weight of repeated ids,
            only weights > 0), or None.
        colbert: one float32 array (n_tokens_i - 1, d) of unit vectors per text (``<s>``
            dropped, ``</s>`` kept), or None.
    """

    dense: np.ndarray | None = None
    sparse: list[SparseVector] | None = None
    colbert: list[np.ndarray] | None = None

    def __len__(self) -> int:
        for value in (self.dense, self.sparse, self.colbert):
            if value is not None:
                return len(value)
        return 0


def _split(values: np.ndarray, offsets: np.ndarray) -> list[np.ndarray]:
    return [values[start:end] for start, end in zip(offsets[:-1].tolist(), offsets[1:].tolist())]


@dataclass(frozen=True)
class EncodedBatch:
    """The packed outputs of one forward pass, as :meth:`M3Embedder.iter_encode` yields them.

    Texts ``indices`` (positions in the caller's input) in this batch; ragged outputs are
    packed into one array plus ``offsets`` (length ``b + 1``): the rows of text ``j`` are
    ``values[offsets[j]:offsets[j + 1]]``.
    """

    indices: np.ndarray
    dense: np.ndarray | None = None
    sparse_offsets: np.ndarray | None = None
    sparse_ids: np.ndarray | None = None
    sparse_weights: np.ndarray | None = None
    colbert_offsets: np.ndarray | None = None
    colbert: np.ndarray | None = None
    truncated: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))

    def __len__(self) -> int:
        return len(self.indices)

    def sparse_vectors(self) -> list[SparseVector]:
        """The sparse weights as one :class:`~m3_rag.sparse.SparseVector` per text."""
        if self.sparse_offsets is None or self.sparse_ids is None or self.sparse_weights is None:
            raise ValueError("this batch was encoded without sparse=True")
        return split_packed(self.sparse_ids, self.sparse_weights, self.sparse_offsets)

    def colbert_list(self) -> list[np.ndarray]:
        """The ColBERT vectors as one (n_tokens_i - 1, d) array per text (views, no copy)."""
        if self.colbert_offsets is None or self.colbert is None:
            raise ValueError("this batch was encoded without colbert=True")
        return _split(self.colbert, self.colbert_offsets)


def check_output(output: M3Output, n: int, model: Any, *, colbert: bool) -> None:
    """Check outputs computed elsewhere (``add_encoded``) against ``model``: ``n`` texts, finite
    (n, dim) dense vectors, one sparse vector per text with ids in the vocabulary and, with
    ``colbert`` (or whenever given), one finite (tokens >= 1, colbert_dim) matrix per text.
    ValueError / TypeError saying what is wrong."""
    if not isinstance(output, M3Output):
        raise TypeError(f"output must be an m3_rag.M3Output, got {type(output).__name__}")
    if output.dense is None or output.sparse is None or (colbert and output.colbert is None):
        raise ValueError("output needs dense, sparse and ColBERT outputs (encode with all three modes)")
    dense = np.asarray(output.dense)
    if dense.shape != (n, model.dim) or not np.all(np.isfinite(dense)):
        raise ValueError(f"output.dense must be ({n}, {model.dim}) finite values, got {dense.shape}")
    if len(output.sparse) != n or (colbert and len(output.colbert or []) != n):
        raise ValueError(f"output must hold one sparse vector and one ColBERT matrix per text ({n})")
    for i, matrix in enumerate(output.colbert or []):
        shape = np.shape(matrix)
        if len(shape) != 2 or shape[1] != model.colbert_dim or shape[0] == 0 or not np.all(np.isfinite(matrix)):
            raise ValueError(f"output.colbert[{i}] must be (tokens >= 1, {model.colbert_dim}) finite, got {shape}")
    for i, sparse in enumerate(output.sparse):
        ids = SparseVector.from_dict(sparse).indices
        if len(ids) and (ids.min() < 0 or ids.max() >= model.vocab_size):
            raise ValueError(f"output.sparse[{i}] has token ids outside the vocabulary [0, {model.vocab_size})")
