"""Property-based tests (hypothesis): encoding never breaks, scores keep their bounds, and an
index driven by random operations always matches a plain dict model of what it should hold."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from m3_rag import M3Embedder, M3Index
from m3_rag.scoring import colbert_scores, dense_scores, hybrid_scores, lexical_scores, sparse_to_csr

TINY = Path(__file__).parent / "data" / "tiny-m3"
EMBEDDER = M3Embedder.shared(TINY, device="cpu")
texts = st.text(st.characters(codec="utf-8"), max_size=300) | st.sampled_from(["", " ", "\n\t ", "😀" * 50])


@pytest.mark.slow
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(texts, max_size=6), st.integers(2, 64))
def test_encoding_any_unicode_is_well_formed(items: list[str], max_length: int) -> None:
    out = EMBEDDER.encode(items, max_length=max_length)
    assert out.dense is not None and out.sparse is not None and out.colbert is not None
    assert out.dense.shape == (len(items), EMBEDDER.dim) and np.isfinite(out.dense).all()
    if items:
        np.testing.assert_allclose(np.linalg.norm(out.dense, axis=1), 1.0, atol=1e-5)
    lengths = [len(ids) for ids in EMBEDDER.tokenizer.encode(items, max_length=max_length)]
    for weights, vectors, n_tokens in zip(out.sparse, out.colbert, lengths):
        assert 2 <= n_tokens <= max_length
        assert vectors.shape == (n_tokens - 1, EMBEDDER.colbert_dim)
        assert np.isfinite(vectors).all()
        assert all(isinstance(t, int) and 0 <= t < EMBEDDER.vocab_size and w > 0 for t, w in weights.items())


unit_rows = st.integers(1, 12).flatmap(
    lambda n: st.lists(st.lists(st.floats(-1, 1, width=32), min_size=8, max_size=8), min_size=n, max_size=n)
)


def _unit(rows: list[list[float]]) -> np.ndarray:
    x = np.asarray(rows, dtype=np.float32) + np.float32(1e-3)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.mark.slow
@settings(max_examples=60, deadline=None)
@given(unit_rows, unit_rows, unit_rows)
def test_dense_and_colbert_scores_are_bounded(
    q: list[list[float]], p1: list[list[float]], p2: list[list[float]]
) -> None:
    query, a, b = _unit(q), _unit(p1), _unit(p2)
    scores = colbert_scores(query, np.concatenate([a, b]), np.array([0, len(a), len(a) + len(b)]))
    assert np.all(np.abs(scores) <= 1 + 1e-5)
    assert np.all(np.abs(dense_scores(query[0], a)) <= 1 + 1e-5)
    # a passage that contains the query's vectors scores 1
    self_score = colbert_scores(query, np.concatenate([query, a]), np.array([0, len(query) + len(a)]))
    np.testing.assert_allclose(self_score, 1.0, atol=1e-5)


weights_dict = st.dictionaries(st.integers(0, 99), st.floats(0.0001220703125, 5, width=32), max_size=20)


@settings(max_examples=60, deadline=None)
@given(weights_dict, st.lists(weights_dict, min_size=1, max_size=5))
def test_lexical_is_non_negative_and_symmetric(query: dict[int, float], docs: list[dict[int, float]]) -> None:
    scores = lexical_scores(query, sparse_to_csr(docs, 100))
    assert np.all(scores >= 0)
    back = [float(lexical_scores(d, sparse_to_csr([query], 100))[0]) for d in docs]
    np.testing.assert_allclose(scores, back, rtol=1e-5, atol=1e-6)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.floats(-1, 1), min_size=3, max_size=3),
    st.tuples(st.floats(0, 10), st.floats(0, 10), st.floats(0, 10)).filter(lambda w: sum(w) > 1e-3),
    st.floats(0.01, 100),
)
def test_hybrid_weights_are_normalised(s: list[float], w: tuple[float, float, float], scale: float) -> None:
    base = hybrid_scores(s[0], s[1], s[2], w)
    scaled = hybrid_scores(s[0], s[1], s[2], tuple(x * scale for x in w))
    np.testing.assert_allclose(base, scaled, rtol=1e-9, atol=1e-12)
    assert min(s) - 1e-9 <= float(base) <= max(s) + 1e-9  # a weighted mean


POOL = [f"id{i}" for i in range(6)]
WORDS = st.text(alphabet="abcdefgh 北京😀", min_size=0, max_size=30)


class IndexMachine(RuleBasedStateMachine):
    """Random add / upsert / delete / save / load sequences against a dict model."""

    def __init__(self) -> None:
        super().__init__()
        self.index = M3Index(EMBEDDER)
        self.model: dict[str, tuple[str, dict]] = {}
        self.folder = tempfile.TemporaryDirectory()

    @rule(ids=st.lists(st.sampled_from(POOL), unique=True, max_size=3), data=st.data())
    def add(self, ids: list[str], data: st.DataObject) -> None:
        items = [data.draw(WORDS) for _ in ids]
        metas = [{"n": data.draw(st.integers(0, 3))} for _ in ids]
        self.index.add(items, ids=ids, metadatas=metas)
        self.model.update({i: (t, m) for i, t, m in zip(ids, items, metas)})

    @rule(ids=st.lists(st.sampled_from([*POOL, "never"]), max_size=3))
    def delete(self, ids: list[str]) -> None:
        expected = len({i for i in ids if i in self.model})
        assert self.index.delete(ids) == expected
        for i in ids:
            self.model.pop(i, None)

    @rule()
    def save_and_load(self) -> None:
        self.index.save(Path(self.folder.name) / "idx")
        self.index = M3Index.load(Path(self.folder.name) / "idx", EMBEDDER)

    @rule(n=st.integers(0, 3))
    def search_filtered(self, n: int) -> None:
        hits = self.index.search("abc", k=10, filter={"n": n})
        assert {h.id for h in hits} == {i for i, (_, m) in self.model.items() if m["n"] == n}

    @invariant()
    def matches_the_model(self) -> None:
        assert len(self.index) == len(self.model)
        assert set(self.index.ids) == set(self.model)
        for record in self.index.get(list(self.model)):
            assert (record.text, record.metadata) == self.model[record.id]

    def teardown(self) -> None:
        self.folder.cleanup()


IndexMachine.TestCase.settings = settings(max_examples=12, stateful_step_count=8, deadline=None)
TestIndexMachine = pytest.mark.slow(IndexMachine.TestCase)
