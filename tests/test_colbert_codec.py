"""The ColBERT codec: float32 / float16 / int8 with a per-vector scale, and scoring int8 rows directly."""

from __future__ import annotations

import numpy as np
import pytest

from m3_rag.colbert_codec import COLBERT_DTYPES, bytes_per_token, check_colbert_dtype, dequantize, quantize
from m3_rag.scoring import colbert_scores, colbert_scores_at


def unit(rng: np.random.Generator, rows: int, dim: int) -> np.ndarray:
    x = rng.standard_normal((rows, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.mark.parametrize("dim", [32, 384, 1024])
def test_int8_error_bounds_and_lengths(dim: int) -> None:
    v = unit(np.random.default_rng(dim), 500, dim)
    values, scales = quantize(v, "int8")
    assert values.dtype == np.int8 and scales is not None and scales.dtype == np.float32 and scales.shape == (500,)
    assert int(np.abs(values).max(axis=1).min()) == 127 and int(values.min()) >= -127  # the grid is used, -128 never
    back = dequantize(values, scales)
    step = np.abs(v).max(axis=1) / 127
    # half a grid step from rounding, plus the small change of scale that keeps the length (measured <= 0.68)
    assert np.all(np.abs(back - v).max(axis=1) <= 0.75 * step)
    np.testing.assert_allclose(np.linalg.norm(back, axis=1), 1.0, atol=1e-6)  # the length is kept: no upward bias
    assert np.all(scales <= 1 / 127 + 1e-9)  # unit vectors: scale <= 1/127, what the store's check allows


def near(rng: np.random.Generator, rows: int, centre: np.ndarray, spread: float) -> np.ndarray:
    x = centre + spread * rng.standard_normal((rows, len(centre))).astype(np.float32) / np.sqrt(len(centre))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def test_the_length_keeping_scale_beats_max_abs() -> None:
    # token vectors of one model share a direction: ColBERT scores ~0.7, as on the mid-size checkpoint
    rng = np.random.default_rng(0)
    centre = unit(rng, 1, 384)[0]
    passages, queries = near(rng, 4000, centre, 0.7), near(rng, 32, centre, 0.7)
    offsets = np.arange(0, 4001, 20)
    exact = colbert_scores(queries, passages, offsets)
    assert 0.6 < exact.mean() < 0.8
    values, scales = quantize(passages, "int8")
    ours = colbert_scores_at(queries, values, offsets[:-1], np.diff(offsets), scales=scales)
    naive = colbert_scores(queries, values * (np.abs(passages).max(axis=1) / 127)[:, None], offsets)
    assert np.abs(ours - exact).mean() < 0.7 * np.abs(naive - exact).mean()  # measured 6.3e-5 vs 1.0e-4
    assert np.abs(ours - exact).max() < 0.8 * np.abs(naive - exact).max()  # 2.7e-4 vs 4.0e-4


def test_float_dtypes_and_edge_cases() -> None:
    v = unit(np.random.default_rng(1), 7, 16)
    for dtype in ("float32", "float16"):
        values, scales = quantize(v, dtype)  # type: ignore[arg-type]
        assert values.dtype.name == dtype and scales is None and values.flags.c_contiguous
        assert np.abs(dequantize(values, None) - v).max() <= (0 if dtype == "float32" else 5e-4)
    zero, scales = quantize(np.zeros((2, 4), np.float32), "int8")
    assert zero.tolist() == [[0] * 4] * 2 and scales.tolist() == [0.0, 0.0]  # type: ignore[union-attr]
    empty, scales = quantize(np.zeros((0, 4), np.float32), "int8")
    assert empty.shape == (0, 4) and scales.shape == (0,)  # type: ignore[union-attr]
    with pytest.raises(ValueError, match="finite"):
        quantize(np.array([[np.nan, 0.0]]), "int8")
    with pytest.raises(ValueError, match="2-D"):
        quantize(np.zeros(4), "int8")
    with pytest.raises(ValueError, match="colbert_dtype must be one of"):
        quantize(v, "bfloat16")  # type: ignore[arg-type]
    assert check_colbert_dtype(None, allow_none=True) is None and COLBERT_DTYPES == ("float32", "float16", "int8")
    with pytest.raises(ValueError, match="got None"):
        check_colbert_dtype(None)
    assert [bytes_per_token(d, 384) for d in COLBERT_DTYPES] == [1536, 768, 388]  # type: ignore[arg-type]


@pytest.mark.parametrize("dtype", ["float32", "float16", "int8"])
def test_scoring_the_stored_rows_equals_scoring_their_float32_values(dtype: str) -> None:
    rng = np.random.default_rng(2)
    passages, query = unit(rng, 3000, 64), unit(rng, 9, 64)
    values, scales = quantize(passages, dtype)  # type: ignore[arg-type]
    starts, lengths = np.array([2900, 0, 1000, 5]), np.array([100, 1500, 1, 40])  # any order, overlapping blocks
    direct = colbert_scores_at(query, values, starts, lengths, scales=scales, block_rows=256)
    floats = dequantize(values, scales)
    for j, (s, n) in enumerate(zip(starts, lengths)):
        expected = (query @ floats[s : s + n].T).max(axis=1).mean()
        assert direct[j] == pytest.approx(expected, abs=1e-6)
    if dtype == "int8":
        with pytest.raises(ValueError, match="need their per-row scales"):
            colbert_scores_at(query, values, starts, lengths)
