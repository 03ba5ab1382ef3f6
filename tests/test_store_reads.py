"""What every store reads without a search: ``ids_where`` (the same ids as the reference
``matches``, type-exact) and ``dense_vectors`` (the stored vectors, no model pass).

Milvus and Qdrant evaluate the filter in the engine (a superset where the engine compares
``true == 1``, re-checked exactly); M3Index evaluates it on its metadata columns.
"""

from __future__ import annotations

import numpy as np
import pytest
from test_filters import CURATED, MILVUS_VALUES

from m3_rag import M3Embedder, M3Index, M3Output
from m3_rag.filters import matches
from m3_rag.retrieval import HybridStore

METAS: list[dict] = [{}]  # one record without the keys
for _i, _value in enumerate(MILVUS_VALUES):
    METAS.append({"a": _value, "b": MILVUS_VALUES[(7 * _i + 3) % len(MILVUS_VALUES)]})
    METAS.append({"b": _value, "c": MILVUS_VALUES[(5 * _i + 1) % len(MILVUS_VALUES)]})
IDS = [f"r{i}" for i in range(len(METAS))]
TEXTS = [f"record {i} about the capital" for i in range(len(METAS))]
FILTERS = [None, {}, *CURATED, {"a": [1, "1"]}, {"$or": [{"a": True}, {"c": {"$gte": 2}}]}]


@pytest.fixture(scope="module")
def encoded(embedder: M3Embedder) -> M3Output:
    return embedder.encode_documents(TEXTS, dense=True, sparse=True, colbert=True)


def _fill(store: HybridStore, encoded: M3Output) -> HybridStore:
    store.add_encoded(TEXTS, encoded, ids=IDS, metadatas=METAS)
    store.delete(["r1", "r2"])  # deleted records never come back
    return store


@pytest.fixture(scope="module")
def stores(embedder: M3Embedder, encoded: M3Output, tmp_path_factory: pytest.TempPathFactory):
    made: dict[str, HybridStore] = {"M3Index": _fill(M3Index(embedder), encoded)}
    folder = tmp_path_factory.mktemp("ids_where")
    made["M3Index folder"] = _fill(M3Index.open(folder / "index", embedder), encoded)
    try:
        from m3_rag import MilvusStore

        made["MilvusStore"] = _fill(MilvusStore(embedder, str(folder / "m.db"), "ids_where"), encoded)
    except ImportError:
        pass
    try:
        from m3_rag import QdrantStore

        made["QdrantStore"] = _fill(QdrantStore(embedder, location=":memory:", collection="ids_where"), encoded)
    except ImportError:
        pass
    yield made
    for store in made.values():
        store.close()


def _expected(flt: object) -> list[str]:
    return sorted(i for i, m in zip(IDS, METAS) if i not in ("r1", "r2") and matches(flt, m))  # type: ignore[arg-type]


@pytest.mark.parametrize("name", ["M3Index", "M3Index folder", "MilvusStore", "QdrantStore"])
def test_ids_where_equals_the_reference_semantics(stores: dict[str, HybridStore], name: str) -> None:
    if name not in stores:
        pytest.skip(f"{name} needs its extra")
    store = stores[name]
    assert sorted(store.ids) == _expected(None)
    nonempty = 0
    for flt in FILTERS:
        want = _expected(flt)
        assert sorted(store.ids_where(flt)) == want, flt
        nonempty += bool(want) and len(want) < len(IDS) - 2
    assert nonempty > len(FILTERS) // 2  # the filters select something, and not everything


def test_ids_where_sees_added_and_replaced_rows(embedder: M3Embedder) -> None:
    index = M3Index(embedder)
    assert index.ids_where({"a": 1}) == []
    index.add(TEXTS[:3], ids=IDS[:3], metadatas=[{"a": 1}, {"a": True}, {"a": 1.0}])
    assert index.ids_where({"a": 1}) == ["r0", "r2"]  # 1 == 1.0; a bool is not a number
    index.add(["replaced"], ids=["r0"], metadatas=[{"a": 2}])
    assert sorted(index.ids_where({"a": {"$gte": 1}})) == ["r0", "r2"]
    assert index.ids_where({"a": 2}) == ["r0"]
    with pytest.raises(ValueError, match="filter"):
        index.ids_where({"a": {"$regex": "x"}})


def test_stores_are_context_managers(embedder: M3Embedder, tmp_path) -> None:  # type: ignore[no-untyped-def]
    with M3Index.open(tmp_path / "index", embedder) as index:
        index.add(["Berlin is the capital of Germany."], ids=["de"])
    assert index.path is not None
    with M3Index.open(tmp_path / "index", embedder) as again:
        assert again.ids == ["de"]
    assert len(M3Index.load(tmp_path / "index", embedder)) == 1


@pytest.mark.parametrize("name", ["M3Index", "M3Index folder", "MilvusStore", "QdrantStore"])
def test_dense_vectors_are_the_stored_ones(
    stores: dict[str, HybridStore], encoded: M3Output, name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    if name not in stores:
        pytest.skip(f"{name} needs its extra")
    store = stores[name]
    assert encoded.dense is not None
    monkeypatch.setattr(store.embedder, "encode", None)  # no model pass may happen
    got = store.dense_vectors(["r5", "r1", "nope", "r0", "r5"])  # r1 was deleted
    assert list(got) == ["r5", "r0"]
    for doc_id, vector in got.items():
        assert vector.dtype == np.float32 and vector.shape == (store.embedder.dim,)
        np.testing.assert_allclose(vector, encoded.dense[IDS.index(doc_id)], atol=1e-7)
    assert store.dense_vectors([]) == {}


def test_the_default_dense_vectors_encode_the_stored_texts(stores: dict[str, HybridStore], encoded: M3Output) -> None:
    store = stores["M3Index"]
    assert encoded.dense is not None
    got = HybridStore.dense_vectors(store, ["r3", "nope", "r4"])  # what a store without vectors gets
    assert list(got) == ["r3", "r4"]
    np.testing.assert_allclose(np.stack(list(got.values())), encoded.dense[[3, 4]], atol=1e-6)


@pytest.mark.parametrize("name", ["M3Index", "M3Index folder", "MilvusStore", "QdrantStore"])
def test_add_encoded_checks_outputs_the_same_way_in_every_store(
    stores: dict[str, HybridStore], encoded: M3Output, name: str
) -> None:
    if name not in stores:
        pytest.skip(f"{name} needs its extra")
    store = stores[name]
    assert encoded.dense is not None and encoded.sparse is not None and encoded.colbert is not None
    one = {"dense": encoded.dense[:1], "sparse": encoded.sparse[:1], "colbert": encoded.colbert[:1]}
    nan_dense = encoded.dense[:1].copy()
    nan_dense[0, 0] = np.nan
    bad = [
        ("dense", encoded.dense[:2], "output.dense must be"),
        ("dense", nan_dense, "finite"),
        ("sparse", [{10**6: 1.0}], "vocabulary"),
        ("colbert", [np.zeros((2, 3), np.float32)], r"output.colbert\[0\] must be"),
        ("colbert", [np.full_like(encoded.colbert[0], np.nan)], "finite"),
    ]
    before = len(store)
    for field, value, message in bad:
        with pytest.raises(ValueError, match=message):
            store.add_encoded(["refused"], M3Output(**{**one, field: value}), ids=["refused-0"])
    assert len(store) == before and "refused-0" not in store.ids
