"""The collection of :class:`~m3_rag.index.QdrantStore`: its vectors, and the model it records.

A collection holds three named vectors per point -- ``dense`` (dot product), ``sparse`` (token
ids) and, unless ``colbert_dtype=None``, ``colbert`` (a multivector, MAX_SIM, no HNSW graph: it
is never searched, only scored for given candidates) -- and, in its metadata, ``m3_rag``: the
format version, the model's name, fingerprint and dimensions, and the ColBERT dtype. Opening it
checks all of these.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from ..colbert_codec import ColbertDtype
from ..encoder import M3Embedder
from ..errors import IndexFormatError, ModelMismatchError

__all__ = ["FORMAT", "create_collection", "open_collection"]

FORMAT = 1  #: of the ``m3_rag`` collection metadata


def _vectors(models: Any, embedder: M3Embedder, dtype: ColbertDtype | None, on_disk: bool) -> dict[str, Any]:
    m = models
    vectors = {"dense": m.VectorParams(size=embedder.dim, distance=m.Distance.DOT)}
    if dtype is not None:
        int8 = m.ScalarQuantization(scalar=m.ScalarQuantizationConfig(type=m.ScalarType.INT8, always_ram=True))
        vectors["colbert"] = m.VectorParams(
            size=embedder.colbert_dim,
            distance=m.Distance.DOT,
            multivector_config=m.MultiVectorConfig(comparator=m.MultiVectorComparator.MAX_SIM),
            datatype=m.Datatype.FLOAT32 if dtype == "float32" else m.Datatype.FLOAT16,
            on_disk=on_disk,
            hnsw_config=m.HnswConfigDiff(m=0),
            quantization_config=int8 if dtype == "int8" else None,
        )
    return vectors


def create_collection(
    client: Any, models: Any, name: str, embedder: M3Embedder, dtype: ColbertDtype | None, *, on_disk: bool
) -> None:
    """Create the collection (another process creating it at the same moment is fine)."""
    record = {
        "format": FORMAT,
        "model": embedder.name,
        "fingerprint": embedder.fingerprint,
        "dim": embedder.dim,
        "colbert_dim": embedder.colbert_dim,
        "vocab_size": embedder.vocab_size,
        "colbert_dtype": dtype or "none",
    }
    try:
        client.create_collection(
            name,
            vectors_config=_vectors(models, embedder, dtype, on_disk),
            sparse_vectors_config={"sparse": models.SparseVectorParams()},
            metadata={"m3_rag": record},
        )
    except Exception:
        if not client.collection_exists(name):  # not a lost race: a real failure
            raise


def open_collection(
    client: Any, name: str, where: str, embedder: M3Embedder, colbert_dtype: ColbertDtype | Literal["auto"] | None
) -> ColbertDtype | None:
    """Check that the collection is m3-rag's, of this model; returns its ColBERT dtype."""
    info = client.get_collection(name)
    record = (info.config.metadata or {}).get("m3_rag")
    where = f"collection {name!r} at {where}"
    vectors = info.config.params.vectors
    dense = vectors.get("dense") if isinstance(vectors, Mapping) else None
    if not isinstance(record, Mapping) or dense is None or "sparse" not in (info.config.params.sparse_vectors or {}):
        raise IndexFormatError(
            f"{where} is not an m3-rag collection (no m3_rag metadata, or no dense/sparse vectors; collection "
            "metadata needs Qdrant >= 1.16); pass another collection name"
        )
    if record.get("format") != FORMAT:
        raise IndexFormatError(f"{where} has m3-rag format {record.get('format')!r}; this version reads {FORMAT}")
    accepted = {embedder.fingerprint, getattr(embedder, "legacy_fingerprint", embedder.fingerprint)}
    colbert = vectors.get("colbert")
    if (
        record.get("fingerprint") not in accepted
        or dense.size != embedder.dim
        or (colbert is not None and colbert.size != embedder.colbert_dim)
    ):
        raise ModelMismatchError(
            where, f"{record.get('model', '?')} (dense dim {dense.size})", f"{embedder.name} (dim {embedder.dim})"
        )
    stored = record.get("colbert_dtype")
    if stored not in ("float32", "float16", "int8", "none") or (stored != "none") != (colbert is not None):
        raise IndexFormatError(f"{where} records ColBERT storage {stored!r} that its vectors do not match")
    found: ColbertDtype | None = None if stored == "none" else stored
    if colbert_dtype != "auto" and colbert_dtype != found:
        raise ValueError(
            f"{where} stores ColBERT vectors as {stored!r}, not {colbert_dtype or 'none'!r}: pass "
            "colbert_dtype='auto' (or the collection's), or use another collection"
        )
    return found
