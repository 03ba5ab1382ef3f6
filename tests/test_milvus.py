"""MilvusStore on milvus-lite: same hits and scores as M3Index, CRUD, filters, reopen, errors."""

from __future__ import annotations

import importlib.util
import itertools
import re
import sys

import numpy as np
import pytest

pytest.importorskip("pymilvus")
pytest.importorskip("milvus_lite")

from conftest import DATA
from milvus_lite.server_manager import server_manager_instance
from test_index import CORPUS, QUERIES, exhaustive

from m3_rag import EncodingStore, IndexFormatError, M3Embedder, M3Index, MilvusStore
from m3_rag.index.milvus_expr import milvus_expression
from m3_rag.retrieval import HybridStore

IDS = [f"d{i}" for i in range(len(CORPUS))]
METAS = [{"n": i, "even": i % 2 == 0, "lang": "zh" if i == 3 else "x"} for i in range(len(CORPUS))]
_names = (f"c{i}" for i in itertools.count())


@pytest.fixture(scope="module")
def db(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(tmp_path_factory.mktemp("milvus") / "m3.db")


@pytest.fixture
def make(embedder: M3Embedder, db: str):
    """A new, empty collection (its own name) in the module's milvus-lite database."""
    made: list[MilvusStore] = []

    def factory(**kwargs) -> MilvusStore:
        store = MilvusStore(kwargs.pop("embedder", embedder), kwargs.pop("uri", db), next(_names), **kwargs)
        made.append(store)
        return store

    yield factory
    for store in made:
        store.close()


def encodings(db: str, embedder: M3Embedder, name: str) -> EncodingStore | None:
    """An encoding store holding ColBERT vectors as ``name`` (None: re-encode the candidates)."""
    return None if name == "none" else EncodingStore(f"{db}.{name}.sqlite", embedder, colbert_dtype=name)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def stores(embedder: M3Embedder, db: str) -> dict[str, MilvusStore]:
    """The corpus with ColBERT vectors in an encoding store (float16, float32) and re-encoded."""
    out = {
        name: MilvusStore(embedder, db, f"corpus_{name}", encoding_store=encodings(db, embedder, name))
        for name in ("float16", "float32", "none")
    }
    for store in out.values():
        store.add(CORPUS, ids=IDS, metadatas=METAS)
    yield out
    for store in out.values():
        store.close()


@pytest.fixture(scope="module")
def references(embedder: M3Embedder) -> dict[str, M3Index]:
    out = {}
    for name in ("float16", "float32", "none"):
        out[name] = M3Index(embedder, colbert_dtype=None if name == "none" else name)  # type: ignore[arg-type]
        out[name].add(CORPUS, ids=IDS, metadatas=METAS)
    return out


def assert_same_hits(got, expected, rtol=1e-5) -> None:
    assert [h.id for h in got] == [h.id for h in expected]
    assert [h.text for h in got] == [h.text for h in expected]
    assert [h.metadata for h in got] == [h.metadata for h in expected]
    np.testing.assert_allclose([h.score for h in got], [h.score for h in expected], rtol=rtol, atol=1e-6)
    for mode in ("dense", "sparse", "colbert"):
        np.testing.assert_allclose(
            [h.scores[mode] for h in got], [h.scores[mode] for h in expected], rtol=rtol, atol=1e-6
        )


def assert_exhaustive_with_full_candidates(store, embedder) -> None:
    """With every document a candidate, the ranking and scores are exhaustive ``compute_score``'s."""
    for query in QUERIES:
        hits = store.search(query, k=len(CORPUS), candidates=len(CORPUS), first_stage="dense")
        expected = exhaustive(embedder, query)
        assert [h.id for h in hits] == [doc_id for doc_id, _ in expected]
        np.testing.assert_allclose([h.score for h in hits], [s for _, s in expected], rtol=1e-5, atol=1e-7)


def assert_batch_equals_single_searches(store) -> None:
    for query, hits in zip(QUERIES, store.search_batch(QUERIES, k=4, filter={"even": True})):
        assert_same_hits(hits, store.search(query, k=4, filter={"even": True}), rtol=1e-6)
    assert store.search_batch([]) == []


def test_is_a_hybrid_store(stores) -> None:
    assert all(isinstance(s, HybridStore) for s in stores.values())
    assert stores["float16"].encoding_store is not None and stores["none"].encoding_store is None
    assert stores["float16"].encoding_store.colbert_dtype == "float16"
    assert stores["float16"].dense_index_type == "FLAT"  # exact first stage on milvus-lite by default
    assert len(stores["float16"]) == len(CORPUS)


@pytest.mark.slow
@pytest.mark.parametrize("colbert", ["float16", "float32", "none"])
@pytest.mark.parametrize(
    ("candidates", "first_stage", "weights"),
    [
        (len(CORPUS), ("dense", "sparse"), (1, 1, 1)),
        (100, ("dense", "sparse"), (1, 1, 1)),  # the defaults
        (50, "dense", (0.4, 0.2, 0.4)),
        (3, ("dense", "sparse"), (1, 1, 1)),  # fewer candidates than documents: same first stage
        (4, "sparse", (0.4, 0.2, 0.4)),
    ],
)
def test_same_hits_and_scores_as_m3index(stores, references, colbert, candidates, first_stage, weights) -> None:
    store, index = stores[colbert], references[colbert]
    kwargs = {"candidates": candidates, "first_stage": first_stage, "weights": weights}
    expected = index.search_batch(QUERIES, k=len(CORPUS), **kwargs)
    for got, want in zip(store.search_batch(QUERIES, k=len(CORPUS), **kwargs), expected, strict=True):
        assert_same_hits(got, want)
    assert sum(len(hits) for hits in expected) >= len(QUERIES)  # not vacuous
    for got, want in zip(store.search_batch(QUERIES, k=2, **kwargs), expected):
        assert_same_hits(got, want[:2])


@pytest.mark.slow
def test_full_candidates_equal_exhaustive_scoring(stores, embedder) -> None:
    assert_exhaustive_with_full_candidates(stores["float32"], embedder)


def test_search_batch_equals_single_searches(stores) -> None:
    assert_batch_equals_single_searches(stores["float16"])


@pytest.mark.slow
def test_filters_match_m3index(stores, references) -> None:
    store, index = stores["float16"], references["float16"]
    cases = [
        {"even": True},
        {"n": [1, 3, 99]},
        {"n": 1, "even": False},
        {"n": 1, "even": True},
        {"missing": 1},
        {"n": True},  # True is not 1 (Milvus alone would say it is)
        {"even": 1},
        {"n": 1.0},
        {"lang": ["zh", "nope"]},
        {"n": []},
        {"n": {"$gte": 3, "$lt": 6}},
        {"n": {"$ne": 1}},
        {"even": {"$ne": True}},
        {"lang": {"$nin": ["x"]}},
        {"$or": [{"n": 0}, {"lang": "zh"}]},
        {"$and": [{"even": True}, {"n": {"$gt": 2}}]},
    ]
    for flt in cases:
        expected = index.search("capital", k=10, filter=flt)
        assert_same_hits(store.search("capital", k=10, filter=flt), expected)
    assert {h.id for h in store.search("capital", k=10, filter={"n": [1, 3, 99]})} == {"d1", "d3"}
    with pytest.raises(ValueError, match="filter key"):
        store.search("capital", filter={'x"] or metadata["n': 1})
    with pytest.raises(ValueError, match="finite"):
        store.search("capital", filter={"n": float("nan")})


def test_filter_expression_is_escaped() -> None:
    assert milvus_expression(None) == ("", True) and milvus_expression({}) == ("", True)
    assert milvus_expression({"lang": 'x" or id != "'}).expression == 'metadata["lang"] == "x\\" or id != \\""'
    assert milvus_expression({"a": ["q\\", "l\nm"], "b": None}) == (
        '(metadata["a"] == "q\\\\" or metadata["a"] == "l\\nm") and (metadata["b"] is null)',
        True,
    )
    assert milvus_expression({"n": [False, -2, 1e-05]}) == (  # Milvus says false == 0: the store checks again
        'metadata["n"] == false or metadata["n"] == -2 or metadata["n"] == 1e-05',
        False,
    )
    assert milvus_expression({"n": []}).expression is None


def test_type_exact_filters_fill_k(make) -> None:
    """Mixed True / 1 metadata: Milvus's loose `true == 1` must not crowd the candidates out (issue 15)."""
    store = make()
    flags = [1] * 12 + [True] * 3
    store.add([f"document {i} about flags" for i in range(15)], ids=[f"f{i}" for i in range(15)],
              metadatas=[{"flag": f} for f in flags])  # fmt: skip
    hits = store.search("document about flags", k=3, candidates=3, filter={"flag": True})
    assert sorted(h.id for h in hits) == ["f12", "f13", "f14"]


def test_injection_does_not_widen_filters_gets_or_deletes(make) -> None:
    store = make()
    evil = 'x" or id != "'
    store.add(["one", "two", "three"], ids=["a", "x' or id != '", 'q"'], metadatas=[{"lang": evil}, {"lang": "y"}, {}])
    assert [h.id for h in store.search("one", filter={"lang": evil})] == ["a"]
    assert store.search("one", filter={"lang": 'y" or id != "'}) == []
    assert store.search("one", filter={"lang": "y' or id != '"}) == []
    assert [r.id for r in store.get(["x' or id != '", 'q"', "nope"])] == ["x' or id != '", 'q"']
    assert store.delete(["zz' or id != '"]) == 0  # pymilvus's delete(ids=) would build `id in ['zz' or id != '']`
    assert len(store) == 3
    assert store.delete("x' or id != '") == 1 and len(store) == 2


@pytest.mark.slow
def test_upsert_delete_get(make) -> None:
    store = make()
    store.add(CORPUS, ids=IDS)
    store.add(["Tokyo is the capital of Japan.", ""], ids=["d0", "empty"], metadatas=[{"n": 100}, None])
    assert len(store) == len(CORPUS) + 1  # upsert: no duplicate id
    (record,) = store.get("d0")
    assert record.text == "Tokyo is the capital of Japan." and record.metadata == {"n": 100}
    hits = store.search("Tokyo is the capital of Japan.", k=len(CORPUS) + 1, candidates=50)
    assert [h.id for h in hits].count("d0") == 1 and hits[0].id == "d0"
    assert "Berlin is the capital of Germany." not in [h.text for h in hits]
    assert "empty" in [h.id for h in hits]  # no sparse weights: stored with a placeholder, scored 0
    assert next(h for h in hits if h.id == "empty").scores["sparse"] == 0.0
    assert [r.id for r in store.get(["d2", "nope", "d1"])] == ["d2", "d1"]
    assert store.delete(["d0", "nope"]) == 1 and store.delete("d0") == 0
    assert "d0" not in store and "d1" in store and len(store) == len(CORPUS)
    assert all(h.id != "d0" for h in store.search("capital of Germany", k=20))
    store.delete([r.id for r in store.get([*IDS, "empty"])])
    assert len(store) == 0 and store.search("anything") == []


def test_batches_progress_and_reopen(make, embedder, tmp_path, capsys, monkeypatch) -> None:
    uri = str(tmp_path / "own.db")
    store = make(uri=uri, insert_batch_size=3)
    store.add(CORPUS, ids=IDS, metadatas=METAS, show_progress=True)
    assert "Indexing into Milvus" in capsys.readouterr().err
    store.delete("d5")
    before = store.search_batch(QUERIES, k=5)
    name = store.collection
    store.close()
    server_manager_instance.release_server(uri)  # the next open reads the files from disk

    reopened = MilvusStore(embedder, uri, name)
    try:
        assert len(reopened) == len(CORPUS) - 1 and reopened.get("d3")[0].metadata == METAS[3]

        seen: list[int] = []
        original = embedder.iter_encode

        def counting(texts, *args, **kwargs):
            seen.append(len(texts))
            return original(texts, *args, **kwargs)

        monkeypatch.setattr(embedder, "iter_encode", counting)
        for a, b in zip(before, reopened.search_batch(QUERIES, k=5)):
            assert_same_hits(b, a, rtol=1e-6)
        assert seen == [len(QUERIES)]  # the queries, and no candidate: their vectors were kept
    finally:
        reopened.close()


def test_encoding_store_misses_are_encoded_and_kept(stores, references, tmp_path, monkeypatch) -> None:
    """An encoding store that lacks the texts (another machine's, or a new file) encodes them once and
    keeps them: the next search reads them."""
    store = stores["float32"]
    fresh = EncodingStore(tmp_path / "enc.sqlite", store.embedder, colbert_dtype="float32")
    other = MilvusStore(store.embedder, store.uri, store.collection, encoding_store=fresh)
    try:
        for query in QUERIES:
            assert_same_hits(other.search(query, k=5), references["float32"].search(query, k=5))
        assert fresh.stats().misses > 0 and len(fresh) > 0
        expected = [references["float32"].search(query, k=5) for query in QUERIES]
        seen: list[int] = []
        original = store.embedder.iter_encode

        def counting(texts, *args, **kwargs):
            seen.append(len(texts))
            return original(texts, *args, **kwargs)

        monkeypatch.setattr(store.embedder, "iter_encode", counting)
        for query, hits in zip(QUERIES, expected):
            assert_same_hits(other.search(query, k=5), hits)
        assert seen == [1] * len(QUERIES)  # only the queries: every candidate came from the store
    finally:
        other.close()


def test_a_damaged_encoding_is_re_encoded(make, embedder, tmp_path, caplog) -> None:
    """A damaged entry (an attacker, a bad disk) is a miss with a warning, never a crash."""
    import sqlite3

    path = tmp_path / "enc.sqlite"
    store = make(encoding_store=EncodingStore(path, embedder))
    store.add(CORPUS[:4], ids=IDS[:4])
    expected = store.search("capital", k=3)
    with sqlite3.connect(path) as db:
        tables = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        blob_columns = [
            (t, c[1]) for t in tables for c in db.execute(f"PRAGMA table_info({t})") if c[2].upper() == "BLOB"
        ]
        table, column = blob_columns[-1]
        db.execute(f"UPDATE {table} SET {column} = substr({column}, 1, length({column}) - 8)")
    again = MilvusStore(embedder, store.uri, store.collection, encoding_store=EncodingStore(path, embedder))
    try:
        assert_same_hits(again.search("capital", k=3), expected, rtol=1e-3)
        assert "damaged" in caplog.text
    finally:
        again.close()
    with pytest.raises(IndexFormatError):  # a store of another model
        EncodingStore(path, M3Embedder.from_pretrained(DATA / "tiny-m3-bin", device="cpu"))


def test_hnsw_index_parameters(make, references) -> None:
    store = make(dense_index={"index_type": "HNSW", "params": {"M": 8, "efConstruction": 64}})
    store.add(CORPUS, ids=IDS, metadatas=METAS)
    assert store.dense_index_type == "HNSW"
    for query in QUERIES:
        assert_same_hits(store.search(query, k=5), references["float16"].search(query, k=5))


def test_unreachable_server_is_a_clear_error(embedder) -> None:
    with pytest.raises(ConnectionError, match=r"could not connect to Milvus at 'http://127\.0\.0\.1:1'"):
        MilvusStore(embedder, "http://127.0.0.1:1", encoding_store=None, timeout=2)


def test_collection_of_another_model_is_refused(make, db) -> None:
    store = make()
    store.add(["hello"], ids=["h"])
    other = M3Embedder.from_pretrained(DATA / "tiny-m3-bin", device="cpu")
    with pytest.raises(IndexFormatError, match=r"dense dim 32.*dim 48"):
        MilvusStore(other, db, store.collection)


def test_bad_arguments(make, embedder, tmp_path) -> None:
    with pytest.raises(ValueError, match=r"must end with '\.db'"):
        MilvusStore(embedder, str(tmp_path / "m3.sqlite"))
    with pytest.raises(ValueError, match="collection must match"):
        MilvusStore(embedder, str(tmp_path / "m3.db"), "bad name")
    with pytest.raises(TypeError, match="encoding_store"):
        MilvusStore(embedder, str(tmp_path / "m3.db"), encoding_store=42)  # type: ignore[arg-type]
    store = make()
    with pytest.raises(ValueError, match="too long for Milvus"):
        store.add(["x" * 70000])
    with pytest.raises(ValueError, match="unique"):
        store.add(["a", "b"], ids=["x", "x"])
    with pytest.raises(ValueError, match="k must be an int >= 1"):
        store.search("a", k=0)
    assert len(store) == 0


def test_works_without_pymilvus_until_used(embedder, tmp_path, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "pymilvus", None)  # as if not installed
    spec = importlib.util.find_spec("m3_rag.index.milvus")
    module = importlib.util.module_from_spec(spec)  # a fresh copy: it must import without pymilvus
    spec.loader.exec_module(module)
    with pytest.raises(ImportError, match=re.escape('pip install "m3-rag[milvus]"')):
        module.MilvusStore(embedder, str(tmp_path / "m3.db"))
    assert not (tmp_path / "m3.db").exists()
