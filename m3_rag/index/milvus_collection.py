"""Milvus connection and collection schema for :class:`~m3_rag.index.milvus.MilvusStore`.

A collection holds ``id`` (VARCHAR primary key), ``text``, ``metadata`` (JSON), ``dense``
(FLOAT_VECTOR, inner product) and ``sparse`` (SPARSE_FLOAT_VECTOR, SPARSE_INVERTED_INDEX, inner
product), and records the model's name, fingerprint and dimension as collection properties, which
are checked on every open (another model is a :class:`~m3_rag.errors.ModelMismatchError`).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..encoder import M3Embedder
from ..errors import IndexFormatError, ModelMismatchError

__all__ = ["FIELDS", "INSTALL", "SERVER", "connect", "open_collection", "pymilvus_module", "recorded_model"]

INSTALL = 'pip install "m3-rag[milvus]"'
FIELDS = {
    "id": "VARCHAR",
    "text": "VARCHAR",
    "metadata": "JSON",
    "dense": "FLOAT_VECTOR",
    "sparse": "SPARSE_FLOAT_VECTOR",
}
NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,254}$")
SERVER = re.compile(r"^(https?|tcp|unix):", re.IGNORECASE)


def pymilvus_module() -> Any:
    """``pymilvus``, or an ImportError naming the extra."""
    try:
        import pymilvus
    except ImportError as exc:
        raise ImportError(f"MilvusStore needs pymilvus (and milvus-lite for local files): {INSTALL}") from exc
    return pymilvus


def connect(uri: str, *, local: bool, token: str | None, timeout: float | None, client_kwargs: dict[str, Any]) -> Any:
    """The pymilvus client. A milvus-lite file open in another process is a ConnectionError
    naming that process; the client's ``close()`` releases the file (see :mod:`.lite_lock`)."""
    pm = pymilvus_module()
    if local:
        if not uri.endswith(".db"):
            raise ValueError(f"a local milvus-lite uri must end with '.db', got {uri!r}")
        Path(uri).parent.mkdir(parents=True, exist_ok=True)
    try:
        if local:
            from .lite_lock import connect_lite

            return connect_lite(pm, uri, token=token or "", timeout=timeout, **client_kwargs)
        return pm.MilvusClient(uri=uri, token=token or "", timeout=timeout, **client_kwargs)
    except ImportError as exc:
        if not local:
            raise
        raise ImportError(f"a local .db uri needs milvus-lite: {INSTALL}") from exc
    except pm.MilvusException as exc:
        if local and "milvus-lite" in str(exc):
            raise ImportError(f"a local .db uri needs milvus-lite: {INSTALL}") from exc
        raise ConnectionError(
            f"could not connect to Milvus at {uri!r} (timeout {timeout} s): {exc}. Check that the "
            "server runs and the uri/token are right, or use a local file such as './m3.db' (milvus-lite)"
        ) from exc


def open_collection(
    client: Any,
    name: str,
    embedder: M3Embedder,
    *,
    uri: str,
    local: bool,
    timeout: float | None,
    consistency_level: str,
    max_text_bytes: int,
    dense_index: Mapping[str, Any] | None,
    sparse_index: Mapping[str, Any] | None,
) -> str:
    """Create the collection when missing, check it (fields, model), load it; returns the dense index type."""
    pm, emb = pymilvus_module(), embedder
    if not client.has_collection(name, timeout=timeout):
        schema = client.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("id", pm.DataType.VARCHAR, is_primary=True, max_length=512)
        schema.add_field("text", pm.DataType.VARCHAR, max_length=max_text_bytes)
        schema.add_field("metadata", pm.DataType.JSON)
        schema.add_field("dense", pm.DataType.FLOAT_VECTOR, dim=emb.dim)
        schema.add_field("sparse", pm.DataType.SPARSE_FLOAT_VECTOR)
        hnsw: dict[str, Any] = {"index_type": "HNSW", "params": {"M": 16, "efConstruction": 200}}
        specs = {
            "dense": dense_index or ({"index_type": "FLAT"} if local else hnsw),
            "sparse": sparse_index or {"index_type": "SPARSE_INVERTED_INDEX"},
        }
        indexes = client.prepare_index_params()
        for field, spec in specs.items():
            indexes.add_index(
                field, index_type=spec["index_type"], metric_type="IP", params=dict(spec.get("params") or {})
            )
        properties = {"m3_rag.model": emb.name, "m3_rag.fingerprint": emb.fingerprint, "m3_rag.dim": str(emb.dim)}
        client.create_collection(
            name, schema=schema, timeout=timeout, consistency_level=consistency_level, properties=properties
        )
        # an empty collection's index is ready at once: skip pymilvus's 0.5 s polling per index
        client.create_index(name, indexes, timeout=timeout, sync=False)
    info = client.describe_collection(name, timeout=timeout)
    fields = {f["name"]: f for f in info["fields"]}
    found = {n: getattr(f["type"], "name", str(f["type"])) for n, f in fields.items()}
    if any(found.get(n) != t for n, t in FIELDS.items()) or not fields["id"].get("is_primary"):
        raise IndexFormatError(
            f"collection {name!r} at {uri} has fields {found}, not m3-rag's {FIELDS} (id the primary "
            "key); pass another collection name"
        )
    dim, props = int(fields["dense"]["params"]["dim"]), info.get("properties") or {}
    accepted = {emb.fingerprint, getattr(emb, "legacy_fingerprint", emb.fingerprint)}
    if dim != emb.dim or props.get("m3_rag.fingerprint", emb.fingerprint) not in accepted:
        raise ModelMismatchError(
            f"collection {name!r} at {uri}",
            f"{props.get('m3_rag.model', '?')} (dense dim {dim})",
            f"{emb.name} (dim {emb.dim})",
        )
    client.load_collection(name, timeout=timeout)
    index_names = client.list_indexes(name, field_name="dense")
    described = client.describe_index(name, index_names[0]) if index_names else {}
    return str(described.get("index_type", "FLAT")).upper()


def recorded_model(uri: str | os.PathLike[str], collection: str, token: str | None = None) -> str | None:
    """The model an m3-rag collection was made with (None when there is no such collection)."""
    path = os.fspath(uri)
    local = not SERVER.match(path)
    if local and not Path(path).exists():
        return None
    client = connect(path, local=local, token=token, timeout=30.0, client_kwargs={})
    try:
        if not client.has_collection(collection):
            return None
        model = (client.describe_collection(collection).get("properties") or {}).get("m3_rag.model")
        return str(model) if model else None
    finally:
        client.close()
