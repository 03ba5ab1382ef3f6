"""Encode a corpus on a Ray cluster with Ray Data (``pip install "m3-rag[ray]"``).

:class:`M3Encode` is a callable class for ``Dataset.map_batches``: each Ray worker (actor)
loads the model once and adds BGE-M3's three outputs to every batch as plain Arrow columns,
which survive Parquet, pandas and Ray's own shuffles unchanged:

==================  =======================================  ==========================================
column              Arrow type                               holds
==================  =======================================  ==========================================
``dense``           ``fixed_size_list<float32>[dim]``        the unit dense vector (dim 1024 for bge-m3)
``sparse_indices``  ``list<int64>``                          sorted unique token ids with a weight > 0
``sparse_weights``  ``list<float32>``                        their weights (same lengths as the ids)
``colbert``         ``list<fixed_size_list<float32>[dim]>``  one unit vector per token after ``<s>``
                                                             (``</s>`` kept); float16 on request
==================  =======================================  ==========================================

A column whose output was not asked for is absent; one already in the batch is replaced.
:func:`batch_to_output` turns a batch of these columns (a ``pyarrow.Table``, a pandas
DataFrame or a dict of numpy arrays, as ``iter_batches`` gives them) back into an
:class:`~m3_rag.M3Output` with :class:`~m3_rag.sparse.SparseVector` sparse weights;
:func:`output_columns` goes the other way. :func:`encode_dataset` runs the ``map_batches``
step and :func:`write_to_store` streams the encoded rows into a store (``MilvusStore``,
``M3Index``, any store with ``add_encoded``) batch by batch.

>>> import pytest; pa = pytest.importorskip("pyarrow")
>>> encode = M3Encode("tests/data/tiny-m3", device="cpu")
>>> table = encode(pa.table({"text": ["What is BGE-M3?", "A multilingual encoder."], "id": ["q", "p"]}))
>>> table.column_names
['text', 'id', 'dense', 'sparse_indices', 'sparse_weights', 'colbert']
>>> out = batch_to_output(table)
>>> out.dense.shape, type(out.sparse[0]).__name__, out.colbert[1].shape[1]
((2, 32), 'SparseVector', 32)
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, cast

import numpy as np

from .encoder import DEFAULT_MODEL, M3Embedder
from .output import EncodedBatch, M3Output
from .sparse import SparseVector

if TYPE_CHECKING:
    import pyarrow as pa

__all__ = ["COLUMNS", "M3Encode", "batch_to_output", "encode_dataset", "output_columns", "write_to_store"]

#: The columns :class:`M3Encode` adds, in order.
COLUMNS = ("dense", "sparse_indices", "sparse_weights", "colbert")
_EXTRA = 'pip install "m3-rag[ray]"'


def _pyarrow() -> Any:
    try:
        import pyarrow
    except ImportError as exc:
        raise ImportError(f"m3_rag.ray_data needs pyarrow and Ray Data: {_EXTRA}") from exc
    return pyarrow


def _ray_data() -> Any:
    try:
        import ray.data
    except ImportError as exc:
        raise ImportError(f"m3_rag.ray_data needs Ray Data: {_EXTRA}") from exc
    return ray.data


# ---------------------------------------------------------------------- columns
def _packed_column(pa: Any, parts: Sequence[np.ndarray], dim: int | None, dtype: Any) -> Any:
    """One list column from per-row arrays: (n_i,) values, or (n_i, dim) vectors."""
    counts = np.fromiter((len(p) for p in parts), dtype=np.int64, count=len(parts))
    offsets = np.concatenate([[0], np.cumsum(counts)])
    width = () if dim is None else (dim,)
    flat = np.concatenate(parts) if len(parts) else np.zeros((0, *width))
    values = pa.array(np.ascontiguousarray(flat, dtype=dtype).reshape(-1))
    if dim is not None:
        values = pa.FixedSizeListArray.from_arrays(values, dim)
    return pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)), values)


def _columns(
    dense: np.ndarray | None,
    sparse: Sequence[tuple[np.ndarray, np.ndarray]] | None,
    colbert: Sequence[np.ndarray] | None,
    *,
    colbert_dim: int,
    colbert_dtype: str,
) -> dict[str, Any]:
    pa = _pyarrow()
    out: dict[str, Any] = {}
    if dense is not None:
        flat = pa.array(np.ascontiguousarray(dense, dtype=np.float32).reshape(-1))
        out["dense"] = pa.FixedSizeListArray.from_arrays(flat, dense.shape[1])
    if sparse is not None:
        out["sparse_indices"] = _packed_column(pa, [i for i, _ in sparse], None, np.int64)
        out["sparse_weights"] = _packed_column(pa, [w for _, w in sparse], None, np.float32)
    if colbert is not None:
        out["colbert"] = _packed_column(pa, colbert, colbert_dim, np.dtype(colbert_dtype))
    return out


def _check_colbert_dtype(colbert_dtype: str) -> str:
    if colbert_dtype not in ("float32", "float16"):
        raise ValueError(f"colbert_dtype must be 'float32' or 'float16', got {colbert_dtype!r}")
    return colbert_dtype


def output_columns(output: M3Output, *, colbert_dtype: str = "float32") -> pa.Table:
    """The Arrow columns of :class:`M3Encode` for an :class:`~m3_rag.M3Output`, as a table."""
    pa = _pyarrow()
    colbert_dim = output.colbert[0].shape[1] if output.colbert else 0
    sparse = None
    if output.sparse is not None:
        vectors = [SparseVector.from_dict(s) for s in output.sparse]
        sparse = [(v.indices, v.weights) for v in vectors]
    columns = _columns(
        output.dense, sparse, output.colbert, colbert_dim=colbert_dim, colbert_dtype=_check_colbert_dtype(colbert_dtype)
    )
    return pa.table(columns)


def _to_arrow_table(batch: Any, names: Iterable[str]) -> Any:
    """The named columns of a pyarrow Table, pandas DataFrame or dict of numpy arrays, as Arrow."""
    pa = _pyarrow()
    names = list(names)
    if isinstance(batch, pa.Table):
        return batch.select(names)
    if isinstance(batch, Mapping):
        columns = {}
        for name in names:
            values = batch[name]
            if isinstance(values, np.ndarray) and values.ndim == 2:  # dense as a Ray tensor column
                columns[name] = pa.FixedSizeListArray.from_arrays(pa.array(values.reshape(-1)), values.shape[1])
            elif name == "colbert":  # an object array of (tokens, dim) arrays, or of arrays of rows
                parts = [np.stack(list(v)) if len(v) else np.zeros((0, 0), np.float32) for v in values]
                dim = max((p.shape[1] for p in parts if p.size), default=0)
                columns[name] = _packed_column(pa, [p.reshape(-1, dim) for p in parts], dim, np.float32)
            else:
                columns[name] = pa.array([np.asarray(v) for v in values])
        return pa.table(columns)
    if hasattr(batch, "columns") and hasattr(batch, "iloc"):  # a pandas DataFrame
        return pa.Table.from_pandas(batch[names], preserve_index=False)
    raise TypeError(
        f"expected a pyarrow.Table, a pandas DataFrame or a dict of numpy arrays, got {type(batch).__name__}"
    )


def _flat(column: Any) -> tuple[np.ndarray, Any]:
    """Offsets (n + 1,) and flattened values of a list column (any list type, sliced or chunked)."""
    array = column.combine_chunks() if hasattr(column, "combine_chunks") else column
    offsets = np.asarray(array.offsets, dtype=np.int64)
    return offsets - offsets[0], array.flatten()


def batch_to_output(batch: Any) -> M3Output:
    """An :class:`~m3_rag.M3Output` from a batch of :class:`M3Encode`'s columns.

    ``batch`` is a ``pyarrow.Table`` (the fastest: ``iter_batches(batch_format="pyarrow")``),
    a pandas DataFrame or a dict of numpy arrays; the outputs whose columns are absent are
    None. Sparse weights come back as :class:`~m3_rag.sparse.SparseVector`, ColBERT as float32.
    """
    pa = _pyarrow()
    present = list(batch.column_names if isinstance(batch, pa.Table) else batch.keys())
    if ("sparse_indices" in present) != ("sparse_weights" in present):
        raise ValueError("the batch has only one of sparse_indices and sparse_weights: both are needed")
    names = [c for c in COLUMNS if c in present]
    if not names:
        raise ValueError(f"the batch has none of the columns {', '.join(COLUMNS)} (it has {', '.join(present)})")
    table = _to_arrow_table(batch, names)
    dense = sparse = colbert = None
    if "dense" in names:
        column = table.column("dense").combine_chunks()
        width = column.type.list_size if pa.types.is_fixed_size_list(column.type) else None
        values = np.asarray(column.flatten(), dtype=np.float32)
        dense = values.reshape(len(column), width or (values.size // max(1, len(column))))
    if "sparse_indices" in names:
        id_offsets, ids = _flat(table.column("sparse_indices"))
        weight_offsets, weights = _flat(table.column("sparse_weights"))
        if not np.array_equal(id_offsets, weight_offsets):
            raise ValueError("sparse_indices and sparse_weights must have the same length in every row")
        id_values = np.asarray(ids, dtype=np.int64)
        weight_values = np.asarray(weights, dtype=np.float32)
        sparse = [
            SparseVector.from_arrays(id_values[a:b], weight_values[a:b])
            for a, b in zip(id_offsets[:-1].tolist(), id_offsets[1:].tolist())
        ]
    if "colbert" in names:
        offsets, rows = _flat(table.column("colbert"))
        if pa.types.is_fixed_size_list(rows.type):
            dim = rows.type.list_size
        else:  # list<list<float>> (e.g. from pandas lists): rows must all have one width
            row_offsets = np.diff(np.asarray(rows.offsets, dtype=np.int64))
            dim = int(row_offsets[0]) if len(row_offsets) else 0
            if np.any(row_offsets != dim):
                raise ValueError("every ColBERT vector of the batch must have the same dimension")
        flat = np.asarray(rows.flatten(), dtype=np.float32).reshape(-1, dim) if dim else np.zeros((0, 0), np.float32)
        colbert = [flat[a:b] for a, b in zip(offsets[:-1].tolist(), offsets[1:].tolist())]
    return M3Output(dense=dense, sparse=sparse, colbert=colbert)


# ---------------------------------------------------------------------- the Ray Data step
def _texts(batch: Any, column: str) -> list[str]:
    pa = _pyarrow()
    if isinstance(batch, pa.Table):
        values = batch.column(column).to_pylist()
    elif isinstance(batch, Mapping):
        values = list(np.asarray(batch[column]).tolist())
    else:
        values = batch[column].tolist()
    return cast("list[str]", values)


class M3Encode:
    """A callable class for ``Dataset.map_batches``: adds dense, sparse and ColBERT columns.

    Ray makes one instance per worker (actor), so the model loads once per worker, on the
    GPU that Ray gave the worker (``num_gpus=1``) or on the CPU::

        ds.map_batches(M3Encode, fn_constructor_kwargs={"model": "BAAI/bge-m3"},
                       compute=ray.data.ActorPoolStrategy(size=4), num_gpus=1, batch_size=256,
                       batch_format="pyarrow")

    Each call returns a ``pyarrow.Table``: the input columns plus those of the module's table
    (whatever ``batch_format`` the batch came in).

    Args:
        model: hub id or local folder of the checkpoint.
        text_column: the column of texts.
        dense, sparse, colbert: which outputs to add.
        max_length: tokens per text (default: the passage maximum).
        colbert_dtype: ``"float32"`` (exactly what ``encode`` gives) or ``"float16"`` (half the
            bytes to move and store).
        device, dtype, kwargs: passed to :meth:`M3Embedder.shared` (``device=None`` takes the
            worker's GPU when it has one).
    """

    def __init__(
        self,
        model: str | os.PathLike[str] = DEFAULT_MODEL,
        *,
        text_column: str = "text",
        dense: bool = True,
        sparse: bool = True,
        colbert: bool = True,
        max_length: int | None = None,
        colbert_dtype: str = "float32",
        device: str | None = None,
        dtype: str | None = None,
        **kwargs: Any,
    ) -> None:
        _pyarrow()
        self.embedder = M3Embedder.shared(model, device=device, dtype=dtype, **kwargs)
        self.text_column = text_column
        self.modes = {"dense": dense, "sparse": sparse, "colbert": colbert}
        self.max_length = max_length
        self.colbert_dtype = _check_colbert_dtype(colbert_dtype)

    def __repr__(self) -> str:
        return f"M3Encode({self.embedder!r}, text_column={self.text_column!r})"

    def encode_columns(self, texts: Sequence[str]) -> dict[str, Any]:
        """The Arrow arrays of the new columns for ``texts``, in their order."""
        n = len(texts)
        dense = np.zeros((n, self.embedder.dim), np.float32) if self.modes["dense"] else None
        empty_sparse = (np.zeros(0, np.int64), np.zeros(0, np.float32))
        sparse: list[tuple[np.ndarray, np.ndarray]] | None = [empty_sparse] * n if self.modes["sparse"] else None
        colbert_dim = self.embedder.colbert_dim or 0
        colbert: list[np.ndarray] | None = None
        if self.modes["colbert"]:
            colbert = [np.zeros((0, colbert_dim), np.float32)] * n
        batch: EncodedBatch
        for batch in self.embedder.iter_encode(texts, max_length=self.max_length, show_progress=False, **self.modes):
            rows = batch.indices.tolist()
            if dense is not None and batch.dense is not None:
                dense[batch.indices] = batch.dense
            if sparse is not None and batch.sparse_offsets is not None:
                assert batch.sparse_ids is not None and batch.sparse_weights is not None
                bounds = batch.sparse_offsets.tolist()
                for j, i in enumerate(rows):
                    sparse[i] = (
                        batch.sparse_ids[bounds[j] : bounds[j + 1]],
                        batch.sparse_weights[bounds[j] : bounds[j + 1]],
                    )
            if colbert is not None:
                for i, vectors in zip(rows, batch.colbert_list()):
                    colbert[i] = vectors
        return _columns(dense, sparse, colbert, colbert_dim=colbert_dim, colbert_dtype=self.colbert_dtype)

    def __call__(self, batch: Any) -> pa.Table:
        pa = _pyarrow()
        texts = _texts(batch, self.text_column)
        if isinstance(batch, pa.Table):
            table = batch
        elif isinstance(batch, Mapping):
            from ray.data.block import BlockAccessor  # Ray's own numpy -> Arrow (tensor columns too)

            table = BlockAccessor.batch_to_block(dict(batch))
            if not isinstance(table, pa.Table):
                table = pa.Table.from_pandas(table, preserve_index=False)
        else:
            table = pa.Table.from_pandas(batch, preserve_index=False)
        for name, column in self.encode_columns(texts).items():
            if name in table.column_names:
                table = table.set_column(table.column_names.index(name), name, column)
            else:
                table = table.append_column(name, column)
        return table


def encode_dataset(
    dataset: Any,
    model: str | os.PathLike[str] = DEFAULT_MODEL,
    *,
    concurrency: int = 1,
    num_gpus: float | None = None,
    batch_size: int = 256,
    **kwargs: Any,
) -> Any:
    """``dataset`` with :class:`M3Encode`'s columns: ``concurrency`` workers, one model each.

    Pass ``num_gpus=1`` on a GPU cluster (each worker then has a GPU of its own); ``kwargs``
    go to :class:`M3Encode` (``text_column``, ``colbert_dtype``, ``max_length``...). Lazy, as
    every Ray Data step: nothing runs until the dataset is consumed.
    """
    data = _ray_data()
    if concurrency < 1:
        raise ValueError(f"concurrency must be >= 1 (workers), got {concurrency}")
    return dataset.map_batches(
        M3Encode,
        fn_constructor_kwargs={"model": str(model), **kwargs},
        compute=data.ActorPoolStrategy(size=concurrency),
        num_gpus=num_gpus,
        batch_size=batch_size,
        batch_format="pyarrow",
    )


def write_to_store(
    dataset: Any,
    store: Any,
    *,
    text_column: str = "text",
    id_column: str | None = None,
    metadata_columns: Sequence[str] | None = None,
    batch_size: int = 256,
) -> int:
    """Stream an encoded dataset into ``store`` with ``store.add_encoded``, one batch at a time.

    ``dataset`` holds :class:`M3Encode`'s columns (see :func:`encode_dataset`); rows are added
    in batches of ``batch_size`` from this process as Ray produces them (no model runs here).
    ``id_column`` gives the ids (else the store makes them); ``metadata_columns`` become each
    row's metadata dict. Returns the number of rows written.
    """
    if not hasattr(store, "add_encoded"):
        raise TypeError(
            f"{type(store).__name__} has no add_encoded(texts, output, ids=..., metadatas=...): "
            "pass an m3-rag store (MilvusStore, M3Index)"
        )
    written = 0
    for batch in dataset.iter_batches(batch_size=batch_size, batch_format="pyarrow"):
        texts = batch.column(text_column).to_pylist()
        ids = [str(x) for x in batch.column(id_column).to_pylist()] if id_column else None
        metadatas = batch.select(list(metadata_columns)).to_pylist() if metadata_columns else None
        store.add_encoded(texts, batch_to_output(batch), ids=ids, metadatas=metadatas)
        written += batch.num_rows
    return written
