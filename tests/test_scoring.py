"""The batched scoring functions against plain per-pair loops (the reference's way)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from m3_rag.scoring import (
    colbert_pair_scores,
    colbert_scores,
    colbert_scores_at,
    dense_scores,
    hybrid_scores,
    lexical_scores,
    normalize_weights,
    sparse_to_csr,
)

rng = np.random.default_rng(0)


def unit(*shape: int) -> np.ndarray:
    x = rng.standard_normal(shape).astype(np.float32)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def loop_colbert(q: np.ndarray, p: np.ndarray) -> float:  # FlagEmbedding's colbert_score
    return float((q @ p.T).max(axis=1).sum() / len(q))


def loop_lexical(a: dict[int, float], b: dict[int, float]) -> float:
    return sum(w * b[t] for t, w in a.items() if t in b)


def test_dense() -> None:
    q, p = unit(8), unit(5, 8)
    np.testing.assert_allclose(dense_scores(q, p), [float(q @ x) for x in p], rtol=1e-6)
    assert dense_scores(unit(3, 8), p).shape == (3, 5)


def test_lexical_matches_the_loop() -> None:
    docs = [{int(t): float(w) for t, w in zip(rng.choice(50, 10, replace=False), rng.random(10))} for _ in range(20)]
    docs.append({})
    query = {3: 0.5, 7: 1.25, 49: 0.1, 1000: 9.0}  # 1000 is outside the vocabulary: matches nothing
    scores = lexical_scores(query, sparse_to_csr(docs, vocab_size=50))
    np.testing.assert_allclose(scores, [loop_lexical(query, d) for d in docs], rtol=1e-6)
    assert scores[-1] == 0.0
    assert lexical_scores({}, sparse_to_csr(docs, 50)).tolist() == [0.0] * len(docs)


def test_sparse_to_csr_checks_ids() -> None:
    with pytest.raises(ValueError, match=r"lie in \[0, 4\)"):
        sparse_to_csr([{4: 1.0}], vocab_size=4)


def test_colbert_matches_the_loop() -> None:
    q = unit(6, 16)
    passages = [unit(n, 16) for n in (1, 7, 30, 2)]
    offsets = np.cumsum([0] + [len(p) for p in passages])
    packed = np.concatenate(passages)
    expected = [loop_colbert(q, p) for p in passages]
    np.testing.assert_allclose(colbert_scores(q, packed, offsets), expected, rtol=1e-5)
    np.testing.assert_allclose(colbert_scores(q, packed.astype(np.float16), offsets), expected, atol=2e-3)
    with pytest.raises(ValueError, match="at least one"):
        colbert_scores(q, packed, np.array([0, 0, 3]))


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@pytest.mark.parametrize("block_rows", [1, 5, 64, 1024])
def test_colbert_scores_at_gathers_scattered_rows_across_blocks(dtype: type, block_rows: int) -> None:
    """Passages anywhere in a store, in any order, overlapping blocks and runs of consecutive rows."""
    q = unit(11, 16)  # 11 query vectors: padded to 16 inside, the padding must not leak
    store = unit(200, 16).astype(dtype)
    starts = np.array([150, 0, 7, 8, 190, 40, 41])
    lengths = np.array([3, 7, 1, 20, 10, 1, 30])  # (0, 7) runs into (7, 1) and (8, 20): one consecutive run
    expected = [loop_colbert(q, store[s : s + n].astype(np.float32)) for s, n in zip(starts, lengths)]
    got = colbert_scores_at(q, store, starts, lengths, block_rows=block_rows)
    assert got.dtype == np.float32 and got.shape == (7,)
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-7)  # float16 rows are cast exactly


def test_colbert_scores_at_reads_a_read_only_memory_map(tmp_path: Path) -> None:
    store = unit(50, 8).astype(np.float16)
    np.save(tmp_path / "c.npy", store)
    mapped = np.load(tmp_path / "c.npy", mmap_mode="r")
    q = unit(3, 8)
    expected = [loop_colbert(q, store[s : s + 5].astype(np.float32)) for s in (45, 10)]
    np.testing.assert_allclose(colbert_scores_at(q, mapped, [45, 10], [5, 5]), expected, rtol=1e-6)


def test_colbert_scores_at_rejects_bad_rows() -> None:
    q, store = unit(2, 8), unit(10, 8)
    with pytest.raises(ValueError, match="at least one"):
        colbert_scores_at(q, store, [0, 3], [2, 0])
    with pytest.raises(ValueError, match="outside the 10 stored vectors"):
        colbert_scores_at(q, store, [8], [3])
    with pytest.raises(ValueError, match=r"must be \(N, 8\)"):
        colbert_scores_at(q, unit(10, 4), [0], [1])
    with pytest.raises(ValueError, match="1-D of one length"):
        colbert_scores_at(q, store, [0, 1], [1])
    assert colbert_scores_at(q, store, [], []).shape == (0,)


def test_colbert_pairs_match_the_loop_across_chunks() -> None:
    queries = [unit(int(n), 8) for n in rng.integers(1, 9, 40)]
    passages = [unit(int(n), 8) for n in rng.integers(1, 50, 40)]
    expected = [loop_colbert(q, p) for q, p in zip(queries, passages)]
    np.testing.assert_allclose(colbert_pair_scores(queries, passages), expected, rtol=1e-5)
    # a tiny budget forces one pair per chunk: same numbers
    np.testing.assert_allclose(colbert_pair_scores(queries, passages, max_elements=1), expected, rtol=1e-5)


def test_colbert_negative_maxima_are_kept() -> None:
    # padding must not clamp a negative best match at 0
    q = np.array([[1.0, 0.0]], dtype=np.float32)
    short, long = np.array([[-1.0, 0.0]], dtype=np.float32), unit(5, 2)
    scores = colbert_pair_scores([q, q], [short, long])
    assert scores[0] == pytest.approx(-1.0)


def test_hybrid_and_weights() -> None:
    d, s, c = np.array([0.5, 0.1]), np.array([0.2, 0.0]), np.array([0.8, 0.3])
    np.testing.assert_allclose(hybrid_scores(d, s, c), (d + s + c) / 3)
    np.testing.assert_allclose(hybrid_scores(d, s, c, (2, 0, 0)), d)
    assert normalize_weights((1, 2, 3)) == (1.0, 2.0, 3.0)
    for bad in [(1, 2), (0, 0, 0), (-1, 1, 1), ("a", 1, 1)]:
        with pytest.raises((ValueError, TypeError)):
            normalize_weights(bad)
