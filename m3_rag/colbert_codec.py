"""Compact storage of ColBERT vectors: float32, float16 (the default) or int8 with a per-vector scale.

BGE-M3's ColBERT vectors are unit vectors of 1024 dimensions, one per token: 4 KiB per token in
float32, 2 KiB in float16, and 1 KiB + 4 bytes in int8, where each vector ``v`` is stored as
``q = round(127 * v / max(|v|))`` with its own float32 scale ``s = ||v|| / ||q||``, so that the
stored ``s * q`` keeps the length of ``v``. Scoring reads the stored values block by block and
never makes a float32 copy of all candidates (:func:`m3_rag.scoring.colbert_scores_at` takes
the ``scales``).

Why that scale and not ``max(|v|) / 127``: rounding adds a little noise to every component,
which makes ``max(|v|) / 127 * q`` slightly longer than ``v``, and a ColBERT score is a max of
inner products, so that bias pushes scores up. Keeping the length removes it: on the mid-size
benchmark checkpoint (384-d; 60 queries x 200 passages) the largest ColBERT score error against
float32 fell from 5.2e-4 to 3.8e-4 and the mean from 9.0e-5 to 6.8e-5 (float16: 1.7e-5 and 3.7e-6);
clipping the largest components instead (a finer grid for the rest) made it worse (9.1e-4 at 90%).

>>> v = np.array([[0.6, -0.8], [1.0, 0.0]], dtype=np.float32)
>>> values, scales = quantize(v, "int8")
>>> values.tolist(), [round(float(s) * 127, 4) for s in scales]
([[95, -127], [127, 0]], [0.8008, 1.0])
>>> bool(np.abs(dequantize(values, scales) - v).max() < 0.004)
True
>>> np.linalg.norm(dequantize(values, scales), axis=1).round(6).tolist()
[1.0, 1.0]
"""

from __future__ import annotations

from typing import Literal, get_args

import numpy as np

__all__ = ["COLBERT_DTYPES", "ColbertDtype", "bytes_per_token", "check_colbert_dtype", "dequantize", "quantize"]

#: How ColBERT vectors can be stored.
ColbertDtype = Literal["float32", "float16", "int8"]
COLBERT_DTYPES: tuple[str, ...] = get_args(ColbertDtype)
_NUMPY: dict[str, np.dtype] = {
    "float32": np.dtype(np.float32),
    "float16": np.dtype(np.float16),
    "int8": np.dtype(np.int8),
}


def check_colbert_dtype(dtype: object, *, allow_none: bool = False) -> ColbertDtype | None:
    """``dtype`` if it is one of :data:`COLBERT_DTYPES` (or None when allowed), else a ValueError.

    >>> check_colbert_dtype("int8")
    'int8'
    """
    if dtype is None and allow_none:
        return None
    if dtype not in COLBERT_DTYPES:
        allowed = ", ".join(repr(d) for d in (*COLBERT_DTYPES, *((None,) if allow_none else ())))
        raise ValueError(f"colbert_dtype must be one of {allowed}, got {dtype!r}")
    return dtype  # type: ignore[return-value]


def numpy_dtype(dtype: ColbertDtype) -> np.dtype:
    """The numpy dtype of the stored values."""
    return _NUMPY[check_colbert_dtype(dtype) or "float16"]


def bytes_per_token(dtype: ColbertDtype, dim: int) -> int:
    """Bytes one ColBERT vector takes on disk or in memory (int8: values plus a float32 scale).

    >>> [bytes_per_token(d, 1024) for d in ("float32", "float16", "int8")]
    [4096, 2048, 1028]
    """
    return dim * numpy_dtype(dtype).itemsize + (4 if dtype == "int8" else 0)


def quantize(vectors: np.ndarray, dtype: ColbertDtype) -> tuple[np.ndarray, np.ndarray | None]:
    """``(values, scales)`` to store float vectors (M, d) as ``dtype``.

    ``scales`` is None for float32 and float16, and a (M,) float32 array for int8 such that
    ``values * scales[:, None]`` approximates ``vectors`` with the same length (error per entry
    at most ~0.7 of a grid step ``max(|v|) / 127``: half a step from rounding, plus the change
    of scale; a zero vector gives zeros).
    """
    check_colbert_dtype(dtype)
    vectors = np.asarray(vectors)
    if vectors.ndim != 2:
        raise ValueError(f"ColBERT vectors must be a 2-D (tokens, dim) array, got shape {vectors.shape}")
    if dtype != "int8":
        return np.ascontiguousarray(vectors, dtype=_NUMPY[dtype]), None
    source = vectors.astype(np.float32, copy=False)
    if not np.all(np.isfinite(source)):
        raise ValueError("ColBERT vectors must be finite to be quantized")
    peak = np.abs(source).max(axis=1) if source.size else np.zeros(len(source), np.float32)
    step = np.where(peak > 0, peak / np.float32(127), np.float32(1))
    values = np.clip(np.rint(source / step[:, None]), -127, 127).astype(np.int8)
    grid = np.linalg.norm(values.astype(np.float32), axis=1)
    length = np.linalg.norm(source, axis=1)
    scales = np.where(grid > 0, length / np.where(grid > 0, grid, 1), 0).astype(np.float32)
    return np.ascontiguousarray(values), scales


def dequantize(values: np.ndarray, scales: np.ndarray | None) -> np.ndarray:
    """float32 vectors from stored ``values`` (and int8 ``scales``)."""
    out = np.asarray(values, dtype=np.float32)
    if scales is not None:
        out = out * np.asarray(scales, dtype=np.float32)[:, None]
    return out
