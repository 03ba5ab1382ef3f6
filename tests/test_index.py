"""M3Index: exactness against compute_score, CRUD, filters, persistence and damaged folders."""

from __future__ import annotations

import shutil
import sqlite3

import numpy as np
import pytest

from m3_rag import IndexFormatError, M3Embedder, M3Index
from m3_rag.index.catalog import CATALOG

CORPUS = [
    "Berlin is the capital of Germany.",
    "Paris is the capital of France and a city of museums.",
    "Die Hauptstadt von Deutschland ist Berlin.",
    "北京是中国的首都，也是一座历史悠久的城市。",
    "Hybrid retrieval first finds candidates with dense and sparse search, then reranks them.",
    "The quick brown fox jumps over the lazy dog.",
    "Machine learning models learn patterns from data; transformers use attention.",
    "A vector database stores embeddings and answers nearest neighbour queries quickly.",
    "Emoji in chats: 😀 🚀 🎉",
    "repeat repeat repeat the same words again and again.",
]
QUERIES = ["capital of Germany", "hybrid search", "中国的首都", "vector database"]


@pytest.fixture
def index(embedder: M3Embedder) -> M3Index:
    idx = M3Index(embedder, colbert_dtype="float32")
    idx.add(
        CORPUS,
        ids=[f"d{i}" for i in range(len(CORPUS))],
        metadatas=[{"n": i, "even": i % 2 == 0, "lang": "zh" if i == 3 else "x"} for i in range(len(CORPUS))],
    )
    return idx


def exhaustive(embedder: M3Embedder, query: str, weights=(1, 1, 1)) -> list[tuple[str, float]]:
    scores = embedder.compute_score([(query, t) for t in CORPUS], weights=weights)["colbert+sparse+dense"]
    order = sorted(range(len(CORPUS)), key=lambda i: -scores[i])
    return [(f"d{i}", scores[i]) for i in order]


@pytest.mark.slow
@pytest.mark.parametrize("weights", [(1, 1, 1), (0.4, 0.2, 0.4)])
@pytest.mark.parametrize("first_stage", [("dense", "sparse"), "dense"])
def test_full_candidates_equal_exhaustive_scoring(index, embedder, weights, first_stage) -> None:
    for query in QUERIES:
        hits = index.search(query, k=len(CORPUS), candidates=len(CORPUS), weights=weights, first_stage=first_stage)
        expected = exhaustive(embedder, query, weights)
        assert [h.id for h in hits] == [doc_id for doc_id, _ in expected]
        np.testing.assert_allclose([h.score for h in hits], [s for _, s in expected], rtol=1e-5, atol=1e-7)
        per_mode = embedder.compute_score([(query, h.text) for h in hits])
        for mode in ("dense", "sparse", "colbert"):
            np.testing.assert_allclose([h.scores[mode] for h in hits], per_mode[mode], rtol=1e-5, atol=1e-7)


def test_float16_colbert_and_reencoding(index, embedder) -> None:
    half = M3Index(embedder)  # float16 by default
    none = M3Index(embedder, colbert_dtype=None)  # ColBERT re-encoded at query time
    for other in (half, none):
        other.add(CORPUS, ids=[f"d{i}" for i in range(len(CORPUS))])
    for query in QUERIES:
        exact = index.search(query, k=5, candidates=len(CORPUS))
        reencoded = none.search(query, k=5, candidates=len(CORPUS))
        assert [h.id for h in reencoded] == [h.id for h in exact]
        np.testing.assert_allclose([h.score for h in reencoded], [h.score for h in exact], rtol=1e-5)
        approx = half.search(query, k=len(CORPUS), candidates=len(CORPUS))
        by_id = {h.id: h.scores["colbert"] for h in index.search(query, k=len(CORPUS), candidates=len(CORPUS))}
        np.testing.assert_allclose([h.scores["colbert"] for h in approx], [by_id[h.id] for h in approx], atol=2e-3)


def test_sparse_first_stage_only_takes_lexical_matches(index) -> None:
    hits = index.search("capital", k=10, first_stage="sparse")
    assert hits
    assert all(h.scores["sparse"] > 0 for h in hits)
    assert len(hits) < len(CORPUS)


@pytest.mark.slow
def test_search_batch_equals_single_searches(index) -> None:
    batch = index.search_batch(QUERIES, k=3)
    for query, hits in zip(QUERIES, batch):
        single = index.search(query, k=3)
        assert [h.id for h in hits] == [h.id for h in single]
        np.testing.assert_allclose([h.score for h in hits], [h.score for h in single], rtol=1e-6)


def test_upsert_replaces(index) -> None:
    assert len(index) == len(CORPUS)
    index.add(["Tokyo is the capital of Japan."], ids=["d0"], metadatas=[{"n": 100}])
    assert len(index) == len(CORPUS)
    (record,) = index.get(["d0"])
    assert record.text == "Tokyo is the capital of Japan." and record.metadata == {"n": 100}
    hits = index.search("Tokyo is the capital of Japan.", k=len(CORPUS))
    assert [h.id for h in hits].count("d0") == 1
    assert hits[0].id == "d0"
    assert "Berlin is the capital of Germany." not in [h.text for h in hits]


def test_delete(index) -> None:
    assert index.delete(["d0", "nope"]) == 1
    assert index.delete("d0") == 0
    assert "d0" not in index and len(index) == len(CORPUS) - 1
    assert index.get(["d0", "d1"])[0].id == "d1"
    assert all(h.id != "d0" for h in index.search("capital of Germany", k=20))
    index.delete(index.ids)
    assert len(index) == 0 and index.search("anything") == []


def test_generated_ids_and_records(embedder) -> None:
    idx = M3Index(embedder)
    ids = idx.add(["one", "two"])
    assert len(set(ids)) == 2 and all(len(i) == 32 for i in ids)
    assert [r.text for r in idx] == ["one", "two"]
    got = idx.get(ids[0])
    got[0].metadata["x"] = 1  # a copy: the store is unchanged
    assert idx.get(ids[0])[0].metadata == {}


def test_filters(index) -> None:
    evens = index.search("capital", k=10, filter={"even": True})
    assert evens and all(h.metadata["even"] is True for h in evens)
    some = index.search("capital", k=10, filter={"n": [1, 3, 99]})
    assert {h.id for h in some} == {"d1", "d3"}
    assert {h.id for h in index.search("capital", k=10, filter={"n": 1, "even": False})} == {"d1"}
    assert index.search("capital", filter={"n": 1, "even": True}) == []
    assert index.search("capital", filter={"missing": 1}) == []
    assert {h.id for h in index.search("capital", k=10, filter={"n": True})} == set()  # True is not 1
    with pytest.raises(ValueError, match="filter key"):
        index.search("capital", filter={'x" or 1': 1})
    assert {h.id for h in index.search("capital", k=10, filter={"n": {"$gt": 7}})} == {"d8", "d9"}
    assert {h.id for h in index.search("capital", k=10, filter={"$or": [{"n": 0}, {"lang": "zh"}]})} == {"d0", "d3"}
    with pytest.raises(ValueError, match="unknown operator"):
        index.search("capital", filter={"n": {"$like": 1}})


def test_bad_arguments(index, embedder) -> None:
    with pytest.raises(ValueError, match="ids must be a list with one id per text"):
        index.add(["a", "b"], ids=["x"])
    with pytest.raises(ValueError, match="unique"):
        index.add(["a", "b"], ids=["x", "x"])
    with pytest.raises(TypeError, match="JSON-serialisable"):
        index.add(["a"], metadatas=[{"when": object()}])
    with pytest.raises(ValueError, match="k must be an int >= 1"):
        index.search("a", k=0)
    with pytest.raises(ValueError, match="first_stage"):
        index.search("a", first_stage="bm25")
    with pytest.raises(TypeError, match="query must be a str"):
        index.search(["a"])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="colbert_dtype must be one of"):
        M3Index(embedder, colbert_dtype="int4")  # type: ignore[arg-type]


def test_failed_add_changes_nothing(index, monkeypatch) -> None:
    before = [(h.id, h.score) for h in index.search("capital", k=5)]

    def broken(*args, **kwargs):
        yield from original(*args, **kwargs)
        raise RuntimeError("out of memory halfway")

    original = index.embedder.iter_encode
    monkeypatch.setattr(index.embedder, "iter_encode", broken)
    with pytest.raises(RuntimeError, match="halfway"):
        index.add(["new text"], ids=["d1"])
    monkeypatch.undo()
    assert index.get("d1")[0].text == CORPUS[1]
    assert [(h.id, h.score) for h in index.search("capital", k=5)] == before


@pytest.mark.parametrize("colbert", ["float16", "float32", "int8", None])
def test_save_load_round_trip(index, embedder, tmp_path, colbert) -> None:
    idx = M3Index(embedder, colbert_dtype=colbert)
    idx.add(CORPUS, ids=[f"d{i}" for i in range(len(CORPUS))], metadatas=[{"n": i} for i in range(len(CORPUS))])
    idx.delete(["d2", "d5"])
    idx.add(["Tokyo is the capital of Japan."], ids=["d0"])
    before = idx.search_batch(QUERIES, k=5)
    idx.save(tmp_path / "idx")
    loaded = M3Index.load(tmp_path / "idx", embedder)
    assert loaded.colbert_dtype == colbert and len(loaded) == len(idx) == len(CORPUS) - 2
    assert sorted(loaded.ids) == sorted(idx.ids)
    assert loaded.get("d0")[0].text == "Tokyo is the capital of Japan."
    for a, b in zip(before, loaded.search_batch(QUERIES, k=5)):
        assert [h.id for h in a] == [h.id for h in b]
        assert [h.scores for h in a] == [h.scores for h in b]
    loaded.add(["one more"], ids=["extra"])  # a loaded (memory-mapped) index takes writes
    loaded.save(tmp_path / "idx")  # and commits them to its own folder
    again = M3Index.load(tmp_path / "idx", embedder)
    assert len(again) == len(CORPUS) - 1 and again.get("extra")[0].text == "one more"
    for a, b in zip(before, again.search_batch(QUERIES, k=5)):  # committed rows score as before
        kept = [(h.id, h.scores) for h in b if h.id != "extra"]
        assert kept == [(h.id, h.scores) for h in a][: len(kept)]


def test_load_without_embedder_uses_the_manifest_model(index, tmp_path) -> None:
    index.save(tmp_path / "idx")
    loaded = M3Index.load(tmp_path / "idx")
    assert loaded.embedder.fingerprint == index.embedder.fingerprint
    assert [h.id for h in loaded.search("capital", k=3)] == [h.id for h in index.search("capital", k=3)]


def test_load_errors(index, tmp_path) -> None:
    path = index.save(tmp_path / "idx")
    segment = next(p for p in (path / "segments").iterdir() if not p.name.startswith("."))
    embedder = index.embedder

    with pytest.raises(IndexFormatError, match="no such folder"):
        M3Index.load(tmp_path / "nothing", embedder)
    (tmp_path / "empty").mkdir()
    with pytest.raises(IndexFormatError, match=r"catalog\.sqlite is missing"):
        M3Index.load(tmp_path / "empty", embedder)

    other = M3Embedder.from_pretrained(embedder.name.replace("tiny-m3", "tiny-m3-bin"))
    with pytest.raises(IndexFormatError, match="was built with model"):
        M3Index.load(path, other)

    def broken(edit, match: str) -> None:
        broken_path = tmp_path / f"b{len(list(tmp_path.iterdir()))}"
        shutil.copytree(path, broken_path)
        edit(broken_path, broken_path / "segments" / segment.name)
        with pytest.raises(IndexFormatError, match=match):
            M3Index.load(broken_path, embedder)

    def sql(statement: str):
        def edit(p, d) -> None:
            with sqlite3.connect(p / CATALOG) as db:
                db.execute(statement)

        return edit

    broken(sql("UPDATE meta SET value = '3' WHERE key = 'version'"), "format version '3'")
    def garbage(p, d) -> None:
        for extra in ("-wal", "-shm"):  # the live index's write-ahead log holds the catalog's pages too
            (p / f"{CATALOG}{extra}").unlink(missing_ok=True)
        (p / CATALOG).write_bytes(b"not a database" * 100)

    broken(garbage, "damaged")
    broken(lambda p, d: (d / "dense.npy").unlink(), "dense.npy is missing")
    broken(lambda p, d: (d / "colbert.npy").write_bytes((d / "colbert.npy").read_bytes()[:-10]), "bytes")
    broken(sql("UPDATE docs SET row = 99 WHERE id = 'd1'"), "row of 'd1'")
    broken(sql("CREATE TRIGGER t AFTER INSERT ON docs BEGIN SELECT 1; END"), "schema")
    broken(
        lambda p, d: (d / "sparse_weights.npy").write_bytes((d / "sparse_weights.npy").read_bytes()[:-4] + b"\0\0\0\0"),
        "checksum",
    )


def test_save_refuses_a_foreign_folder(index, tmp_path) -> None:
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not an m3-rag index"):
        index.save(tmp_path / "mine")
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


def test_bad_text_ids_and_metadata_are_refused_at_add(index) -> None:
    """Lone surrogates and over-deep metadata fail the add with a clear error, never a later save or search."""
    cases = [
        ({"texts": ["ok \ud800"]}, ValueError, r"texts\[0\] contains a lone surrogate \(U\+D800 at position 3\)"),
        ({"texts": ["ok"], "ids": ["id-\udfff"]}, ValueError, r"ids\[0\] contains a lone surrogate"),
        ({"texts": ["ok"], "metadatas": [{"k": "v\ud800"}]}, ValueError, r"metadatas\[0\]\['k'\] contains a lone"),
        ({"texts": ["ok"], "metadatas": [{"k\ud800": 1}]}, ValueError, r"a key of metadatas\[0\] contains a lone"),
        ({"texts": ["ok"], "metadatas": [{"k": float("nan")}]}, ValueError, "must be finite"),
        ({"texts": ["ok"], "metadatas": [{1: "v"}]}, TypeError, "keys must be str"),
    ]
    deep: dict = {}
    node = deep
    for _ in range(500):
        node["a"] = {}
        node = node["a"]
    cases.append(({"texts": ["ok"], "metadatas": [deep]}, ValueError, "nested more than 32 levels"))
    before = len(index)
    for kwargs, error, message in cases:
        texts = kwargs.pop("texts")
        with pytest.raises(error, match=message):
            index.add(texts, **kwargs)
    assert len(index) == before
    with pytest.raises(ValueError, match=r"queries\[1\] contains a lone surrogate"):
        index.search_batch(["fine", "bad \ud800"])
    with pytest.raises(ValueError, match="lone surrogate"):
        index.embedder.encode(["\ud800"])


def test_search_batch_works_in_blocks(index, monkeypatch) -> None:
    """Score matrices are bounded: queries x documents x 8 bytes <= SCORE_BUDGET per block."""
    import m3_rag.index.m3_index as module

    queries = [f"query {i} about capitals" for i in range(7)] + QUERIES
    whole = index.search_batch(queries, k=3)
    monkeypatch.setattr(module, "SCORE_BUDGET", 8 * len(CORPUS) * 2)  # two queries per block
    assert index._query_block() == 2
    seen = []
    original = index._candidates
    monkeypatch.setattr(index, "_candidates", lambda q, r: seen.append(len(q)) or original(q, r))
    blocked = index.search_batch(queries, k=3)
    assert seen == [2] * 5 + [1]
    for a, b in zip(blocked, whole):  # queries encoded in other batches: equal to float32 rounding
        assert [h.id for h in a] == [h.id for h in b]
        np.testing.assert_allclose([h.score for h in a], [h.score for h in b], rtol=1e-6)


def test_loaded_colbert_is_mapped_and_prefetchable(index, tmp_path, monkeypatch) -> None:
    """A loaded index maps ColBERT files, and its prefetch finds the mapping (numpy 2 puts a memoryview
    between the array and the mmap: the prefetch used to miss it and do nothing)."""
    import mmap

    from m3_rag.index import files

    folder = index.save(tmp_path / "idx")
    loaded = M3Index.load(folder, index.embedder)
    (segment,) = loaded._view.segments
    mapping = files._mapping_of(segment.arrays.colbert)
    assert isinstance(mapping, mmap.mmap)
    advised: list[tuple[int, int, int]] = []
    monkeypatch.setattr(files, "_advise", lambda mapped, option, start, length: advised.append((option, start, length)))
    segment.prefetch(np.array([0, 3]))
    assert [a[0] for a in advised] == [mmap.MADV_WILLNEED] * 2 and all(a[2] > 0 for a in advised)
