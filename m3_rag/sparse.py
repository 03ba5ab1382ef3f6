"""``SparseVector``: BGE-M3's lexical weights of one text, the one sparse type of the whole API.

A ``SparseVector`` holds sorted unique token ids (``indices``, int64) and their weights
(``weights``, float32). It is also a read-only ``Mapping[int, float]``, so code written for the
``{token_id: weight}`` dicts of FlagEmbedding keeps working (``sv[token_id]``, ``sv.items()``,
``dict(sv)``, ``sv == {5: 0.25}``). Conversions to what other libraries want live here, once:
:meth:`to_dict` (Milvus, LlamaIndex), :meth:`to_lists` (Qdrant's ``indices`` / ``values``),
:func:`stack_csr` (a scipy CSR matrix of many vectors) and :func:`split_packed` (packed arrays
as a forward pass returns them).

>>> sv = SparseVector.from_dict({7: 0.5, 3: 0.25})
>>> sv.indices.tolist(), sv.weights.tolist()
([3, 7], [0.25, 0.5])
>>> sv[7], len(sv), sv == {3: 0.25, 7: 0.5}
(0.5, 2, True)
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import scipy.sparse as sp

__all__ = ["SparseVector", "split_packed", "stack_csr"]


class SparseVector(Mapping[int, float]):
    """Token ids and weights of one text: sorted unique int64 ``indices``, float32 ``weights``.

    Build one with :meth:`from_dict` or :meth:`from_arrays` (which sort, merge repeated ids by
    their max weight and check the arrays). Instances are immutable: the arrays are read-only.
    """

    __slots__ = ("_lookup", "indices", "weights")

    indices: np.ndarray
    weights: np.ndarray
    _lookup: dict[int, float] | None

    def __init__(self, indices: np.ndarray, weights: np.ndarray, *, _checked: bool = False) -> None:
        if not _checked:
            indices, weights = _normalise(indices, weights)
        indices.setflags(write=False)
        weights.setflags(write=False)
        object.__setattr__(self, "indices", indices)
        object.__setattr__(self, "weights", weights)
        object.__setattr__(self, "_lookup", None)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("SparseVector is immutable")

    # ------------------------------------------------------------------ building
    @classmethod
    def from_dict(cls, weights: Mapping[int, float]) -> SparseVector:
        """From ``{token_id: weight}`` (any int-like keys and float-like values)."""
        if isinstance(weights, SparseVector):
            return weights
        if not isinstance(weights, Mapping):
            raise TypeError(f"expected a mapping of token id -> weight, got {type(weights).__name__}")
        try:
            indices = np.fromiter((int(k) for k in weights), dtype=np.int64, count=len(weights))
            values = np.fromiter((float(v) for v in weights.values()), dtype=np.float32, count=len(weights))
        except (TypeError, ValueError) as exc:
            raise TypeError(f"sparse weights must map int token ids to numbers: {exc}") from exc
        return cls(indices, values)

    @classmethod
    def from_arrays(cls, indices: Sequence[int] | np.ndarray, weights: Sequence[float] | np.ndarray) -> SparseVector:
        """From parallel sequences of token ids and weights (as Qdrant keeps them)."""
        return cls(np.asarray(indices), np.asarray(weights))

    @classmethod
    def empty(cls) -> SparseVector:
        """No weights (a text of special tokens only)."""
        return cls(np.zeros(0, np.int64), np.zeros(0, np.float32), _checked=True)

    # ------------------------------------------------------------------ Mapping
    def __len__(self) -> int:
        return len(self.indices)

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices.tolist())

    def __getitem__(self, token_id: int) -> float:
        lookup = self._lookup
        if lookup is None:
            lookup = dict(zip(self.indices.tolist(), self.weights.tolist()))
            object.__setattr__(self, "_lookup", lookup)
        return lookup[token_id]

    def __contains__(self, token_id: object) -> bool:
        try:
            self[token_id]  # type: ignore[index]
        except (KeyError, TypeError):
            return False
        return True

    def __repr__(self) -> str:
        shown = ", ".join(f"{i}: {v:.4g}" for i, v in zip(self.indices[:6].tolist(), self.weights[:6].tolist()))
        more = f", ... ({len(self)} in all)" if len(self) > 6 else ""
        return f"SparseVector({{{shown}{more}}})"

    def __reduce__(self) -> tuple[Any, ...]:
        return (SparseVector, (np.array(self.indices), np.array(self.weights)))

    # ------------------------------------------------------------------ conversions
    def to_dict(self) -> dict[int, float]:
        """``{token_id: weight}`` with Python ints and floats."""
        return dict(zip(self.indices.tolist(), self.weights.tolist()))

    def to_lists(self) -> tuple[list[int], list[float]]:
        """``(indices, values)`` as Python lists (what Qdrant's ``SparseVector`` takes)."""
        return self.indices.tolist(), self.weights.tolist()

    def dot(self, other: SparseVector) -> float:
        """Lexical matching score: the sum over shared token ids of ``w_self * w_other``.

        >>> round(SparseVector.from_dict({1: 0.5, 2: 1.0}).dot(SparseVector.from_dict({2: 0.25, 3: 1.0})), 6)
        0.25
        """
        _, a, b = np.intersect1d(self.indices, other.indices, assume_unique=True, return_indices=True)
        return float(np.dot(self.weights[a].astype(np.float64), other.weights[b].astype(np.float64)))


def _normalise(indices: Any, values: Any) -> tuple[np.ndarray, np.ndarray]:
    """Sorted unique int64 ids and their float32 weights (repeats keep the max, as BGE-M3 does)."""
    ids = np.asarray(indices)
    weights = np.asarray(values)
    if ids.ndim != 1 or weights.shape != ids.shape:
        raise ValueError(f"indices and values must be 1-D of one length, got shapes {ids.shape} and {weights.shape}")
    if (len(ids) and not np.issubdtype(ids.dtype, np.integer)) and (
        not np.all(np.isfinite(ids)) or np.any(ids != np.round(ids))
    ):
        raise TypeError(f"token ids must be integers, got {ids.dtype} values")
    ids = ids.astype(np.int64, copy=False)
    weights = weights.astype(np.float32, copy=False)
    if len(ids) and ids.min() < 0:
        raise ValueError(f"token ids must be >= 0, got {int(ids.min())}")
    if not np.all(np.isfinite(weights)):
        raise ValueError("sparse weights must be finite numbers")
    order = np.argsort(ids, kind="stable")
    ids, weights = ids[order], weights[order]
    if len(ids) > 1 and np.any(ids[1:] == ids[:-1]):
        unique, start = np.unique(ids, return_index=True)
        weights = np.maximum.reduceat(weights, start)
        ids = unique
    return np.ascontiguousarray(ids), np.ascontiguousarray(weights)


def split_packed(ids: np.ndarray, weights: np.ndarray, offsets: np.ndarray) -> list[SparseVector]:
    """Packed rows (text ``j`` owns ``ids[offsets[j]:offsets[j + 1]]``) -> one vector per text.

    The rows must already be sorted and unique per text (as :meth:`M3Embedder.iter_encode`
    packs them); the vectors are views of copies of the arrays, not of the caller's buffers.

    >>> [sv.to_dict() for sv in split_packed(np.array([1, 4, 2]), np.array([0.5, 1.0, 2.0]), np.array([0, 2, 3]))]
    [{1: 0.5, 4: 1.0}, {2: 2.0}]
    """
    ids = np.array(ids, dtype=np.int64)
    weights = np.array(weights, dtype=np.float32)
    bounds = np.asarray(offsets, dtype=np.int64).tolist()
    return [SparseVector(ids[a:b], weights[a:b], _checked=True) for a, b in itertools.pairwise(bounds)]


def stack_csr(vectors: Sequence[Mapping[int, float]], vocab_size: int) -> sp.csr_matrix:
    """Stack sparse vectors (or ``{token_id: weight}`` dicts) into a float32 CSR (n, vocab_size).

    Token ids outside ``[0, vocab_size)`` are an error (never silently dropped).

    >>> stack_csr([{3: 0.5}, {}, SparseVector.from_dict({1: 1.0, 3: 2.0})], vocab_size=4).toarray().tolist()
    [[0.0, 0.0, 0.0, 0.5], [0.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 2.0]]
    """
    rows = [v if isinstance(v, SparseVector) else SparseVector.from_dict(v) for v in vectors]
    counts = np.fromiter((len(v) for v in rows), dtype=np.int64, count=len(rows))
    indptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    if rows:
        indices = np.concatenate([v.indices for v in rows]) if indptr[-1] else np.zeros(0, np.int64)
        data = np.concatenate([v.weights for v in rows]) if indptr[-1] else np.zeros(0, np.float32)
    else:
        indices, data = np.zeros(0, np.int64), np.zeros(0, np.float32)
    if len(indices) and (indices.min() < 0 or indices.max() >= vocab_size):
        raise ValueError(
            f"sparse token ids must lie in [0, {vocab_size}) (the model's vocabulary), "
            f"got {int(indices.min())}..{int(indices.max())}"
        )
    return sp.csr_matrix((data.astype(np.float32), indices, indptr), shape=(len(rows), vocab_size))
