"""QdrantStore on qdrant-client's local mode: same hits and scores as M3Index, filters, CRUD, reopen, errors."""

from __future__ import annotations

import importlib.util
import itertools
import json
import re
import shutil
import sys

import numpy as np
import pytest

pytest.importorskip("qdrant_client")

from conftest import DATA, ROOT
from hypothesis import HealthCheck, given, settings
from qdrant_client import QdrantClient
from qdrant_client import models as qm
from test_filters import CURATED, JSON_FILTERS, MILVUS_VALUES
from test_index import CORPUS, QUERIES
from test_milvus import assert_batch_equals_single_searches, assert_exhaustive_with_full_candidates, assert_same_hits

from m3_rag import M3Embedder, M3Index, M3Output, QdrantStore
from m3_rag.errors import IndexFormatError, ModelMismatchError
from m3_rag.filters import MetadataColumns, filter_mask, matches
from m3_rag.index.qdrant import point_id, recorded_model
from m3_rag.index.qdrant_filter import FILTER_FIELD, filter_view, qdrant_filter
from m3_rag.retrieval import HybridStore

IDS = [f"d{i}" for i in range(len(CORPUS))]
METAS = [{"n": i, "even": i % 2 == 0, "lang": "zh" if i == 3 else "x"} for i in range(len(CORPUS))]
_names = (f"c{i}" for i in itertools.count())


@pytest.fixture
def make(embedder: M3Embedder):
    """A new, empty collection in memory (its own client)."""
    made: list[QdrantStore] = []

    def factory(**kwargs) -> QdrantStore:
        if not {"location", "path", "url", "client"} & set(kwargs):
            kwargs["location"] = ":memory:"
        model, name = kwargs.pop("embedder", embedder), kwargs.pop("collection", next(_names))
        store = QdrantStore(model, collection=name, **kwargs)
        made.append(store)
        return store

    yield factory
    for store in made:
        store.close()


VARIANTS = {  # name: (colbert_dtype, scoring)
    "float32-client": ("float32", "client"),
    "float32-engine": ("float32", "engine"),
    "float16-client": ("float16", "client"),
    "float16-engine": ("float16", "engine"),
    "none": (None, "client"),
}


@pytest.fixture(scope="module")
def stores(embedder: M3Embedder) -> dict[str, QdrantStore]:
    out = {
        name: QdrantStore(embedder, location=":memory:", colbert_dtype=dtype, scoring=scoring)  # type: ignore[arg-type]
        for name, (dtype, scoring) in VARIANTS.items()
    }
    for store in out.values():
        store.add(CORPUS, ids=IDS, metadatas=METAS)
    yield out
    for store in out.values():
        store.close()


@pytest.fixture(scope="module")
def references(embedder: M3Embedder) -> dict[str, M3Index]:
    out = {}
    for name in ("float16", "float32", None):
        out[str(name)] = M3Index(embedder, colbert_dtype=name)  # type: ignore[arg-type]
        out[str(name)].add(CORPUS, ids=IDS, metadatas=METAS)
    return out


def test_is_a_complete_hybrid_store(stores) -> None:
    store = stores["float32-client"]
    assert isinstance(store, HybridStore) and bool(QdrantStore(store.embedder, location=":memory:"))
    assert store.colbert_dtype == "float32" and store.scoring == "client" and store.local
    assert stores["float16-engine"].scoring == "engine" and stores["none"].colbert_dtype is None
    assert len(store) == len(CORPUS) and sorted(store.ids) == sorted(IDS) and "d3" in store and "zz" not in store
    assert [r.id for r in store.get(["d2", "nope", "d1"])] == ["d2", "d1"] and store.get("d3")[0].metadata == METAS[3]
    point = store.client.retrieve(store.collection, [point_id("d3")], with_payload=True, with_vectors=True)[0]
    assert point.payload == {"id": "d3", "text": CORPUS[3], "metadata": METAS[3], FILTER_FIELD: METAS[3]}
    assert set(point.vector) == {"dense", "sparse", "colbert"} and len(point.vector["dense"]) == store.embedder.dim
    assert np.asarray(point.vector["colbert"]).shape[1] == store.embedder.colbert_dim


@pytest.mark.parametrize("variant", ["float32-client", "float32-engine", "none"])
@pytest.mark.parametrize(
    ("candidates", "first_stage", "weights"),
    [
        (len(CORPUS), ("dense", "sparse"), (1, 1, 1)),
        (100, ("dense", "sparse"), (1, 1, 1)),  # the defaults
        (50, "dense", (0.4, 0.2, 0.4)),
        (3, ("dense", "sparse"), (1, 1, 1)),  # fewer candidates than documents: the same first stage
        (4, "sparse", (0.4, 0.2, 0.4)),
    ],
)
def test_same_hits_and_scores_as_m3index(stores, references, variant, candidates, first_stage, weights) -> None:
    store, index = stores[variant], references["None" if variant == "none" else "float32"]
    kwargs = {"candidates": candidates, "first_stage": first_stage, "weights": weights}
    expected = index.search_batch(QUERIES, k=len(CORPUS), **kwargs)
    for got, want in zip(store.search_batch(QUERIES, k=len(CORPUS), **kwargs), expected, strict=True):
        assert_same_hits(got, want, rtol=1e-5)
    assert sum(len(hits) for hits in expected) >= len(QUERIES)  # not vacuous
    for got, want in zip(store.search_batch(QUERIES, k=2, **kwargs), expected):
        assert_same_hits(got, want[:2], rtol=1e-5)


@pytest.mark.parametrize("scoring", ["client", "engine"])
def test_float16_is_m3index_float16_within_its_bound(stores, references, scoring) -> None:
    """float16 rounds the stored vectors and (as a Qdrant server does) the ColBERT query."""
    store, index = stores[f"float16-{scoring}"], references["float16"]
    for got, want in zip(store.search_batch(QUERIES, k=5), index.search_batch(QUERIES, k=5)):
        assert [h.id for h in got] == [h.id for h in want]
        np.testing.assert_allclose([h.scores["colbert"] for h in got], [h.scores["colbert"] for h in want], atol=2e-3)
        np.testing.assert_allclose([h.scores["dense"] for h in got], [h.scores["dense"] for h in want], rtol=1e-5)


def test_engine_and_client_scoring_agree(stores) -> None:
    for dtype in ("float32", "float16"):
        engine = stores[f"{dtype}-engine"].search_batch(QUERIES, k=len(CORPUS), candidates=4)
        client = stores[f"{dtype}-client"].search_batch(QUERIES, k=len(CORPUS), candidates=4)
        for a, b in zip(engine, client):
            assert_same_hits(a, b, rtol=1e-5)


def test_auto_scoring_picks_by_collection_size(make, monkeypatch) -> None:
    from m3_rag.index import qdrant_search

    store = make(colbert_dtype="float32")
    assert store.scoring == "auto"
    store.add(CORPUS, ids=IDS)
    used: list[str] = []
    for name in ("_score_client", "_score_engine"):
        original = getattr(qdrant_search, name)
        monkeypatch.setattr(qdrant_search, name, lambda *a, _o=original, _n=name: used.append(_n) or _o(*a))
    first = store.search("capital", k=3, candidates=4)  # 12 points: cheaper to score in the engine
    monkeypatch.setattr(qdrant_search, "engine_is_cheaper", lambda *args: False)
    assert_same_hits(store.search("capital", k=3, candidates=4), first, rtol=1e-5)  # fetched, scored here
    assert used == ["_score_engine", "_score_client"]


def test_full_candidates_equal_exhaustive_scoring(stores, embedder) -> None:
    assert_exhaustive_with_full_candidates(stores["float32-engine"], embedder)


def test_search_batch_equals_single_searches(stores) -> None:
    assert_batch_equals_single_searches(stores["float16-client"])


FILTER_CASES = [
    {"even": True},
    {"n": [1, 3, 99]},
    {"n": 1, "even": False},
    {"n": 1, "even": True},
    {"missing": 1},
    {"missing": None},
    {"n": True},  # a bool is not a number
    {"even": 1},
    {"n": 1.0},
    {"lang": ["zh", "nope"]},
    {"n": []},
    {"n": {"$nin": []}},
    {"n": {"$gte": 3, "$lt": 6}},
    {"n": {"$gt": 2.5}},
    {"n": {"$ne": 1}},
    {"even": {"$ne": True}},
    {"lang": {"$nin": ["x"]}},
    {"missing": {"$ne": "a"}},
    {"$or": [{"n": 0}, {"lang": "zh"}]},
    {"$and": [{"even": True}, {"n": {"$gt": 2}}]},
]


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["float32-client", "float32-engine"])
def test_filters_match_m3index(stores, references, variant) -> None:
    store, index = stores[variant], references["float32"]
    for flt in FILTER_CASES:
        assert_same_hits(store.search("capital", k=10, filter=flt), index.search("capital", k=10, filter=flt))
    assert {h.id for h in store.search("capital", k=10, filter={"n": [1, 3, 99]})} == {"d1", "d3"}
    with pytest.raises(ValueError, match="filter key"):
        store.search("capital", filter={"x.y": 1})
    with pytest.raises(ValueError, match="finite"):
        store.search("capital", filter={"n": float("nan")})


# ------------------------------------------------------------------ the translation on mixed-type values


@pytest.fixture(scope="module")
def mixed():
    """Points whose payload holds every kind of value (as QdrantStore writes it), in local mode."""
    client = QdrantClient(":memory:")
    client.create_collection("t", vectors_config={"v": qm.VectorParams(size=2, distance=qm.Distance.DOT)})
    metas: list[dict] = [{}]
    for i, value in enumerate(MILVUS_VALUES):
        metas.append({"a": value, "b": MILVUS_VALUES[(7 * i + 3) % len(MILVUS_VALUES)]})
        metas.append({"b": value, "c": MILVUS_VALUES[(5 * i + 1) % len(MILVUS_VALUES)]})
    metas += [{"a": 1.0}, {"a": 2**53 + 2}, {"b": -0.0}, {"c": [None]}, {"c": {}}]
    points = [
        qm.PointStruct(id=i, vector={"v": [1.0, 0.5]}, payload={"metadata": m, FILTER_FIELD: filter_view(m)})
        for i, m in enumerate(metas)
    ]
    client.upsert("t", points)
    yield client, metas, MetadataColumns(metas)
    client.close()


def _check_against_qdrant(mixed, filter: dict) -> bool:
    client, metas, cols = mixed
    want = set(np.flatnonzero(filter_mask(filter, cols)).tolist())
    translated = qdrant_filter(filter)
    if translated.none:
        assert want == set(), filter
        return True
    got = {int(p.id) for p in client.scroll("t", scroll_filter=translated.filter, limit=10_000)[0]}
    if translated.exact:
        assert got == want, (filter, sorted(got ^ want))
    else:
        assert got >= want, (filter, sorted(want - got))
        assert {i for i in got if matches(filter, metas[i])} == want  # the store's post-check
    return translated.exact


MIXED_CASES = [
    {"a": [1, "1", True, None, 2.5]},
    {"a": {"$nin": [1, "1", True, None, 2.5]}},
    {"c": None},  # [None] and {} are values, not missing
    {"c": {"$ne": None}},
    {"a": 2**53 + 1},
    {"a": {"$ne": 2**53 + 1}},
    {"a": {"$nin": [2**53 + 1, "a"]}},
    {"b": {"$gt": 2**53}},
    {"b": -0.0},
    {"b": {"$lt": 0}},
]


def _big_operand(filter: object) -> bool:
    if isinstance(filter, dict):
        return any(_big_operand(v) for v in filter.values())
    if isinstance(filter, list):
        return any(_big_operand(v) for v in filter)
    return type(filter) in (int, float) and abs(filter) >= 2**53


def test_translation_matches_filter_mask_on_mixed_values(mixed) -> None:
    cases = [*CURATED, *MIXED_CASES]
    exact = [_check_against_qdrant(mixed, f) for f in cases]
    assert all(e for e, f in zip(exact, cases) if not _big_operand(f))  # exact but for numbers beyond float64's
    assert sum(exact) >= len(cases) - 25
    for v in MILVUS_VALUES:  # type-exact for every bool, string, None and number up to 2**53
        if not isinstance(v, (list, dict)) and not (isinstance(v, (int, float)) and abs(v) > 2**53):
            assert qdrant_filter({"a": v}).exact and qdrant_filter({"a": {"$ne": v}}).exact, v
    assert not qdrant_filter({"a": {"$ne": 2**53 + 1}}).exact


@pytest.mark.slow
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(filter=JSON_FILTERS)
def test_translation_matches_filter_mask_on_random_filters(mixed, filter: dict) -> None:
    _check_against_qdrant(mixed, filter)


def test_superset_filters_fetch_more_until_k_pass(make) -> None:
    """Operands beyond 2**53 are compared as float64 by Qdrant: the post-check must not starve the hits."""
    store = make()
    values = [2**53] * 12 + [2**53 + 1] * 3
    store.add([f"document {i} about numbers" for i in range(15)], ids=[f"f{i}" for i in range(15)],
              metadatas=[{"v": v} for v in values])  # fmt: skip
    assert not qdrant_filter({"v": 2**53 + 1}).exact
    hits = store.search("document about numbers", k=3, candidates=3, filter={"v": 2**53 + 1})
    assert sorted(h.id for h in hits) == ["f12", "f13", "f14"]
    assert len(store.search("document about numbers", k=20, filter={"v": {"$ne": 2**53 + 1}})) == 12


def test_lists_and_mixed_numbers_are_type_exact(make) -> None:
    store = make()
    metas = [{"tag": "a"}, {"tag": ["a"]}, {"tag": 1}, {"tag": 1.0}, {"tag": True}, {"tag": []}, {}]
    store.add([f"text {i}" for i in range(len(metas))], ids=[f"t{i}" for i in range(len(metas))], metadatas=metas)
    found = {str(f): sorted(h.id for h in store.search("text", k=10, filter=f)) for f in
             ({"tag": "a"}, {"tag": 1}, {"tag": True}, {"tag": None}, {"tag": {"$ne": None}})}  # fmt: skip
    assert found == {
        "{'tag': 'a'}": ["t0"],
        "{'tag': 1}": ["t2", "t3"],
        "{'tag': True}": ["t4"],
        "{'tag': None}": ["t6"],
        "{'tag': {'$ne': None}}": ["t0", "t1", "t2", "t3", "t4", "t5"],
    }


# ------------------------------------------------------------------ writing, reopening, errors


def test_upsert_delete_get(make) -> None:
    store = make(insert_batch_size=4)
    store.add(CORPUS, ids=IDS)
    store.add(["Tokyo is the capital of Japan.", ""], ids=["d0", "empty"], metadatas=[{"n": 100}, None])
    assert len(store) == len(CORPUS) + 1  # upsert: no duplicate id
    (record,) = store.get("d0")
    assert record.text == "Tokyo is the capital of Japan." and record.metadata == {"n": 100}
    hits = store.search("Tokyo is the capital of Japan.", k=len(CORPUS) + 1, candidates=50)
    assert [h.id for h in hits].count("d0") == 1 and hits[0].id == "d0"
    assert "empty" in [h.id for h in hits] and next(h for h in hits if h.id == "empty").scores["sparse"] == 0.0
    assert store.delete(["d0", "nope"]) == 1 and store.delete("d0") == 0
    assert "d0" not in store and "d1" in store and len(store) == len(CORPUS)
    assert all(h.id != "d0" for h in store.search("capital of Germany", k=20))
    odd = ["x' or 1", "ü/ß?#", "a" * 4000]
    store.add(["one", "two", "three"], ids=odd)
    assert [r.id for r in store.get(odd)] == odd and store.delete(odd) == 3
    store.delete(store.ids)
    assert len(store) == 0 and store.search("anything") == [] and store.ids == []


def test_add_encoded_equals_add(make, embedder, stores) -> None:
    store = make(colbert_dtype="float32")
    out = embedder.encode_documents(CORPUS, dense=True, sparse=True, colbert=True)
    assert store.add_encoded(CORPUS, out, ids=IDS, metadatas=METAS) == IDS
    for a, b in zip(store.search_batch(QUERIES, k=5), stores["float32-client"].search_batch(QUERIES, k=5)):
        assert_same_hits(a, b, rtol=1e-6)
    with pytest.raises(ValueError, match="dense, sparse and ColBERT"):
        store.add_encoded(CORPUS, M3Output(dense=out.dense, sparse=out.sparse))
    with pytest.raises(ValueError, match=r"output.colbert\[0\] must be"):
        store.add_encoded(["x"], M3Output(dense=out.dense[:1], sparse=out.sparse[:1], colbert=[np.zeros((2, 3))]))
    with pytest.raises(ValueError, match="vocabulary"):
        store.add_encoded(["x"], M3Output(dense=out.dense[:1], sparse=[{10**6: 1.0}], colbert=out.colbert[:1]))
    assert len(store) == len(CORPUS)


def test_batches_progress_and_reopen(make, embedder, tmp_path, capsys) -> None:
    path = tmp_path / "qdrant"
    store = make(path=path, collection="docs", insert_batch_size=3, colbert_dtype="float32")
    store.add(CORPUS, ids=IDS, metadatas=METAS, show_progress=True)
    assert "Indexing into Qdrant" in capsys.readouterr().err
    store.delete("d5")
    before = store.search_batch(QUERIES, k=5)
    store.close()
    assert recorded_model(path, "docs") == embedder.name and recorded_model(path, "other") is None
    assert recorded_model(tmp_path / "nothing", "docs") is None and not (tmp_path / "nothing").exists()
    reopened = make(path=path, collection="docs")  # colbert_dtype="auto": the collection's own
    assert reopened.colbert_dtype == "float32" and len(reopened) == len(CORPUS) - 1
    assert reopened.get("d3")[0].metadata == METAS[3]
    for a, b in zip(before, reopened.search_batch(QUERIES, k=5)):
        assert_same_hits(b, a, rtol=1e-6)
    reopened.close()
    with pytest.raises(ValueError, match=r"stores ColBERT vectors as 'float32', not 'int8'"):
        make(path=path, collection="docs", colbert_dtype="int8")


def test_collection_of_another_model_is_refused(make, tmp_path) -> None:
    store = make(path=tmp_path / "q")
    store.add(["hello"], ids=["h"])
    name = store.collection
    store.close()
    other = M3Embedder.from_pretrained(DATA / "tiny-m3-bin", device="cpu")
    with pytest.raises(ModelMismatchError, match=r"dense dim 32.*dim 48"):
        make(path=tmp_path / "q", collection=name, embedder=other)


def test_foreign_collection_is_refused(make, embedder) -> None:
    client = QdrantClient(":memory:")
    client.create_collection("plain", vectors_config=qm.VectorParams(size=4, distance=qm.Distance.COSINE))
    with pytest.raises(IndexFormatError, match="not an m3-rag collection"):
        QdrantStore(embedder, client=client, collection="plain")
    store = make(client=client, collection="ours")  # a given client is shared, and left open
    store.close()
    assert client.collection_exists("ours")
    client.close()


def test_unreachable_server_is_a_clear_error(embedder) -> None:
    with pytest.raises(ConnectionError, match=r"could not reach Qdrant at 'http://127\.0\.0\.1:1'"):
        QdrantStore(embedder, url="http://127.0.0.1:1", timeout=2)


def test_bad_arguments(make, embedder, tmp_path) -> None:
    with pytest.raises(ValueError, match="exactly one of"):
        QdrantStore(embedder)
    with pytest.raises(ValueError, match="exactly one of"):
        QdrantStore(embedder, location=":memory:", path=tmp_path / "q")
    with pytest.raises(ValueError, match="collection must match"):
        QdrantStore(embedder, location=":memory:", collection="bad name")
    with pytest.raises(ValueError, match="colbert_dtype must be"):
        QdrantStore(embedder, location=":memory:", colbert_dtype="bf16")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="scoring must be"):
        QdrantStore(embedder, location=":memory:", scoring="gpu")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="insert_batch_size must be an int >= 1"):
        QdrantStore(embedder, location=":memory:", insert_batch_size=0)
    with pytest.raises(TypeError, match="M3Embedder"):
        QdrantStore("BAAI/bge-m3", location=":memory:")  # type: ignore[arg-type]
    store = make()
    with pytest.raises(ValueError, match="unique"):
        store.add(["a", "b"], ids=["x", "x"])
    with pytest.raises(ValueError, match="k must be an int >= 1"):
        store.search("a", k=0)
    assert len(store) == 0


def test_works_without_qdrant_client_until_used(embedder, tmp_path, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "qdrant_client", None)  # as if not installed
    spec = importlib.util.find_spec("m3_rag.index.qdrant")
    module = importlib.util.module_from_spec(spec)  # a fresh copy: it must import without qdrant-client
    spec.loader.exec_module(module)
    with pytest.raises(ImportError, match=re.escape('pip install "m3-rag[qdrant]"')):
        module.QdrantStore(embedder, path=tmp_path / "q")
    assert not (tmp_path / "q").exists()


@pytest.mark.slow
def test_cli_index_search_info(tmp_path, capsys) -> None:
    from test_cli import CORPUS as CLI_CORPUS
    from test_cli import m3_rag

    from m3_rag.cli import main

    corpus = tmp_path / "corpus"
    shutil.copytree(CLI_CORPUS, corpus)
    where = str(tmp_path / "qdrant")
    first = m3_rag("index", str(corpus), "--index", "docs", "--qdrant", where, "--chunk-tokens", "48", "-q")
    assert first.returncode == 0, first.stderr
    hits = json.loads(m3_rag("search", "Berlin", "--index", "docs", "--qdrant", where, "-k", "2", "--json").stdout)
    assert len(hits) == 2 and all(set(h["scores"]) == {"dense", "sparse", "colbert"} for h in hits)
    info = json.loads(m3_rag("info", "--index", "docs", "--qdrant", where, "--json").stdout)
    assert info["chunks"] > len(list(CLI_CORPUS.iterdir())) and info["colbert_storage"] == "float16"
    assert main(["search", "Berlin", "--index", "nope", "--qdrant", where]) == 1
    assert "has no collection 'nope'" in capsys.readouterr().err
    assert main(["search", "Berlin", "--index", "docs", "--qdrant", where, "--milvus", "x.db"]) == 1
    assert "not both" in capsys.readouterr().err


# ------------------------------------------------------------------ ColBERT storage fidelity (issue 18's measure)

WORDS = (ROOT / "scripts" / "tiny_corpus.txt").read_text(encoding="utf-8").split()


def _texts(n: int, words: tuple[int, int], seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    lengths = rng.integers(*words, n)
    starts = rng.integers(0, len(WORDS) - words[1], n)
    return [" ".join(WORDS[s : s + w]) for s, w in zip(starts.tolist(), lengths.tolist())]


# measured on 200 queries over 200 passages (float16 vs float32: largest ColBERT error, share of identical top-10):
# tiny-m3 1.1e-4 / 0.975, tiny-m3-bin 1.4e-4 / 0.970
FIDELITY = {"tiny-m3": (3e-4, 0.9), "tiny-m3-bin": (3e-4, 0.9)}


@pytest.mark.slow
@pytest.mark.parametrize("checkpoint_name", ["tiny-m3", "tiny-m3-bin"])
def test_colbert_storage_fidelity(checkpoint_name) -> None:
    model = M3Embedder.from_pretrained(DATA / checkpoint_name, device="cpu")
    docs, queries = _texts(200, (8, 40), 1), _texts(200, (2, 8), 2)
    ids = [f"p{i}" for i in range(len(docs))]
    encoded = model.encode_documents(docs, dense=True, sparse=True, colbert=True)
    results = {}
    for dtype in ("float32", "float16", "int8"):
        with QdrantStore(model, location=":memory:", colbert_dtype=dtype) as store:
            store.add_encoded(docs, encoded, ids=ids)
            results[dtype] = store.search_batch(queries if dtype != "int8" else queries[:20], k=10, candidates=30)
    reference = [{h.id: h.scores["colbert"] for h in hits} for hits in results["float32"]]
    errors = [abs(h.scores["colbert"] - ref[h.id]) for hits, ref in zip(results["float16"], reference)
              for h in hits if h.id in ref]  # fmt: skip
    same = np.mean([[h.id for h in a] == [h.id for h in b] for a, b in zip(results["float16"], results["float32"])])
    print(f"{checkpoint_name} float16: largest ColBERT error {max(errors):.2e}, identical top-10 {same:.3f}")
    max_error, identical_share = FIDELITY[checkpoint_name]
    assert len(errors) > 1000 and 0 < max(errors) <= max_error and same >= identical_share
    # local mode applies no quantization: int8 scores what float16 stores (a server scores its int8 copy)
    for a, b in zip(results["int8"], results["float16"]):
        assert_same_hits(a, b, rtol=1e-6)
