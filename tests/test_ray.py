"""Ray Data: the M3Encode step on a local Ray gives encode's outputs, and lands in the stores.

The Ray tests start one local Ray for the module (``ray.init(num_cpus=2)``) and shut it down;
the column helpers are also tested without Ray.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from m3_rag import M3Embedder, M3Index, M3Output
from m3_rag.ray_data import COLUMNS, M3Encode, batch_to_output, encode_dataset, output_columns, write_to_store

pa = pytest.importorskip("pyarrow")

TINY = Path(__file__).parent / "data" / "tiny-m3"
TEXTS = [
    "Berlin is the capital of Germany.",
    "北京是中国的首都。",
    "Paris est la capitale de la France.",
    "",
    "The Spree flows through Berlin, past the Museum Island and the cathedral.",
    "BGE-M3 gives dense, sparse and multi-vector outputs in one forward pass.",
] * 4
TEXTS = [f"{t} ({i})" for i, t in enumerate(TEXTS)]
# Ray encodes the rows in batches of its own (8 here) where encode() pads all texts together:
# a text's float32 results may then differ in the last bits (other matrix shapes, other BLAS
# summation orders). 1e-6 on unit vectors and weights of order 0.1-1 is a few ulps.
ATOL = 1e-6


def assert_close(a: M3Output, b: M3Output, atol: float = ATOL) -> None:
    assert a.dense is not None and b.dense is not None
    np.testing.assert_allclose(a.dense, b.dense, rtol=0, atol=atol)
    assert a.sparse is not None and b.sparse is not None and a.colbert is not None and b.colbert is not None
    for x, y in zip(a.sparse, b.sparse, strict=True):
        assert sorted(x.keys()) == sorted(y.keys())
        np.testing.assert_allclose([x[k] for k in sorted(x)], [y[k] for k in sorted(x)], rtol=0, atol=atol)
    for x, y in zip(a.colbert, b.colbert, strict=True):
        assert x.shape == y.shape and x.dtype == np.float32
        np.testing.assert_allclose(x, y, rtol=0, atol=atol)


@pytest.fixture(scope="module")
def reference() -> M3Output:
    return M3Embedder.shared(TINY, device="cpu").encode(TEXTS)


# ---------------------------------------------------------------------- without Ray
def test_columns_round_trip_exactly(reference: M3Output) -> None:
    table = output_columns(reference)
    assert table.column_names == list(COLUMNS)
    assert str(table.schema.field("dense").type) == "fixed_size_list<item: float>[32]"
    assert str(table.schema.field("sparse_indices").type) == "list<item: int64>"
    assert str(table.schema.field("sparse_weights").type) == "list<item: float>"
    assert str(table.schema.field("colbert").type) == "list<item: fixed_size_list<item: float>[32]>"
    back = batch_to_output(table)
    assert_close(back, reference, atol=0)
    assert back.sparse is not None and type(back.sparse[0]).__name__ == "SparseVector"
    assert_close(batch_to_output(table.slice(5, 7)), M3Output(
        reference.dense[5:12], reference.sparse[5:12], reference.colbert[5:12]), atol=0)  # fmt: skip
    assert_close(batch_to_output(table.to_pandas()), reference, atol=0)  # lists in pandas
    as_numpy = {name: table.column(name).to_numpy(zero_copy_only=False) for name in table.column_names}
    assert_close(batch_to_output(as_numpy), reference, atol=0)  # object arrays, as Ray's numpy format


def test_float16_colbert_halves_the_bytes(reference: M3Output) -> None:
    table = output_columns(reference, colbert_dtype="float16")
    assert str(table.schema.field("colbert").type) == "list<item: fixed_size_list<item: halffloat>[32]>"
    back = batch_to_output(table)
    assert back.colbert is not None and reference.colbert is not None
    for x, y in zip(back.colbert, reference.colbert):
        np.testing.assert_allclose(x, y, rtol=0, atol=1e-3)  # float16 keeps ~3 decimal digits
    with pytest.raises(ValueError, match="colbert_dtype"):
        output_columns(reference, colbert_dtype="int4")


def test_m3encode_adds_the_columns_to_any_batch_format(reference: M3Output) -> None:
    encode = M3Encode(str(TINY), device="cpu", sparse=False)
    table = encode(pa.table({"text": TEXTS, "id": list(range(len(TEXTS)))}))
    assert table.column_names == ["text", "id", "dense", "colbert"]
    out = batch_to_output(table)
    assert out.sparse is None
    assert out.dense is not None and reference.dense is not None
    np.testing.assert_allclose(out.dense, reference.dense, rtol=0, atol=ATOL)
    frame = encode(table.select(["text", "id"]).to_pandas())
    assert frame.column_names == ["text", "id", "dense", "colbert"]
    again = encode(table)  # columns already there are replaced, not doubled
    assert again.column_names == ["text", "id", "dense", "colbert"]


def test_bad_batches_are_clear_errors() -> None:
    with pytest.raises(ValueError, match="none of the columns"):
        batch_to_output(pa.table({"text": ["a"]}))
    with pytest.raises(ValueError, match="only one of sparse_indices and sparse_weights"):
        batch_to_output(pa.table({"sparse_indices": pa.array([[1]], pa.list_(pa.int64()))}))
    bad = pa.table({"sparse_indices": pa.array([[1, 2]]), "sparse_weights": pa.array([[0.5]], pa.list_(pa.float32()))})
    with pytest.raises(ValueError, match="same length"):
        batch_to_output(bad)
    with pytest.raises(TypeError, match="add_encoded"):
        write_to_store(None, object())


def test_missing_ray_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)
    monkeypatch.setitem(sys.modules, "ray.data", None)
    with pytest.raises(ImportError, match=r"m3-rag\[ray\]"):
        encode_dataset(object(), TINY)


# ---------------------------------------------------------------------- on a local Ray
@pytest.fixture(scope="module")
def ray_local() -> Any:
    ray = pytest.importorskip("ray")
    pytest.importorskip("ray.data")
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        configure_logging=False,
        runtime_env={"env_vars": {"HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}},
    )
    ray.data.DataContext.get_current().enable_progress_bars = False
    yield ray
    ray.shutdown()


def dataset(ray: Any) -> Any:
    return ray.data.from_items([{"text": t, "id": f"doc-{i:02d}", "n": i} for i, t in enumerate(TEXTS)])


def rows_in_order(table: Any) -> Any:
    return table.take(pa.compute.sort_indices(table, sort_keys=[("n", "ascending")]))


@pytest.mark.slow
def test_encode_dataset_gives_the_outputs_of_encode(ray_local: Any, reference: M3Output) -> None:
    encoded = encode_dataset(dataset(ray_local), TINY, concurrency=2, batch_size=8, device="cpu")
    table = rows_in_order(pa.concat_tables(list(encoded.iter_batches(batch_size=None, batch_format="pyarrow"))))
    assert table.num_rows == len(TEXTS) and table.column("text").to_pylist() == TEXTS
    assert_close(batch_to_output(table), reference)


@pytest.mark.slow
def test_map_batches_with_numpy_batches_and_parquet(ray_local: Any, reference: M3Output, tmp_path: Path) -> None:
    ray = ray_local
    encoded = dataset(ray).map_batches(
        M3Encode,
        fn_constructor_kwargs={"model": str(TINY), "device": "cpu"},
        compute=ray.data.ActorPoolStrategy(size=1),
        batch_size=8,
        batch_format="numpy",
    )
    encoded.write_parquet(str(tmp_path / "encoded"))  # plain Arrow types: Parquet keeps them
    back = ray.data.read_parquet(str(tmp_path / "encoded"))
    batches = list(back.iter_batches(batch_size=None, batch_format="numpy"))
    order = np.argsort(np.concatenate([b["n"] for b in batches]))
    outputs = [batch_to_output(b) for b in batches]
    merged = M3Output(
        dense=np.concatenate([o.dense for o in outputs if o.dense is not None])[order],
        sparse=[s for o in outputs for s in (o.sparse or [])],
        colbert=[c for o in outputs for c in (o.colbert or [])],
    )
    assert merged.sparse is not None and merged.colbert is not None
    merged = M3Output(merged.dense, [merged.sparse[i] for i in order], [merged.colbert[i] for i in order])
    assert_close(merged, reference)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["milvus", "qdrant", "index"])
def test_write_to_store_lands_every_row(ray_local: Any, reference: M3Output, tmp_path: Path, kind: str) -> None:
    embedder = M3Embedder.shared(TINY, device="cpu")
    if kind == "milvus":
        pytest.importorskip("milvus_lite")
        from m3_rag import MilvusStore

        store: Any = MilvusStore(embedder, str(tmp_path / "m3.db"), "ray_recipe")
    elif kind == "qdrant":
        pytest.importorskip("qdrant_client")
        from m3_rag import QdrantStore

        store = QdrantStore(embedder, location=":memory:", collection="ray_recipe")
    else:
        store = M3Index(embedder)
    encoded = encode_dataset(dataset(ray_local), TINY, concurrency=2, batch_size=8, device="cpu")
    written = write_to_store(encoded, store, id_column="id", metadata_columns=["n"], batch_size=5)
    assert written == len(TEXTS) and len(store) == len(TEXTS)
    records = store.get([f"doc-{i:02d}" for i in range(len(TEXTS))])
    assert [r.text for r in records] == TEXTS
    assert [r.metadata["n"] for r in records] == list(range(len(TEXTS)))
    # the stored vectors are each row's own: a text's dense score against itself is 1 (its
    # near-duplicates "... (10)", "... (16)" score ~0.9993 with the tiny random model)
    hits = {hit.id: hit for hit in store.search(TEXTS[4], k=len(TEXTS))}
    assert hits["doc-04"].scores["dense"] == pytest.approx(1.0, abs=1e-5)
