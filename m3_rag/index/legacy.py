"""Index folders of m3-rag 0.1 (format 1: ``manifest.json`` + ``data-<token>/``), upgraded to format 2.

Format 1 kept the whole index in one data folder named by the manifest. The first open by a newer
m3-rag converts it into a catalog and one segment (built in a temporary folder inside the index,
then moved into place; the catalog's rename is the commit point), removes the old files and logs
one line. Processes opening it at the same time wait for one upgrade (a ``flock``).
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from ..encoder import M3Embedder
from ..errors import IndexFormatError, ModelMismatchError
from ..records import check_json_value
from .files import damaged, folder_lock, load_npy

__all__ = ["legacy_model", "upgrade"]

logger = logging.getLogger(__name__)

_MANIFEST = "manifest.json"
_DATA = re.compile(r"^data-[0-9a-f]{12}$")
_MAX_MANIFEST = 1 << 20


def _manifest(path: Path) -> dict[str, Any]:
    file = path / _MANIFEST
    if file.is_symlink() or file.stat().st_size > _MAX_MANIFEST:
        raise damaged(file, "it is a link or too large")
    try:
        manifest = json.loads(file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise damaged(file, f"it is not JSON ({exc})") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != "m3-rag-index":
        raise IndexFormatError(f"{path} is not an m3-rag index: {_MANIFEST} has no format 'm3-rag-index'")
    if manifest.get("version") != 1:
        raise IndexFormatError(
            f"{path} has index format version {manifest.get('version')!r:.20} in {_MANIFEST}; this m3-rag reads "
            "version 1 (and upgrades it) and version 2. Use the m3-rag that wrote it, or re-index"
        )
    return manifest


def legacy_model(path: Path) -> str | None:
    """The model named by a format-1 manifest."""
    model = _manifest(path).get("model")
    return model if isinstance(model, str) else None


def _read(path: Path, embedder: M3Embedder) -> tuple[dict[str, Any], dict[str, np.ndarray], list[dict[str, Any]]]:
    manifest = _manifest(path)
    accepted = {embedder.fingerprint, getattr(embedder, "legacy_fingerprint", embedder.fingerprint)}
    if manifest.get("model_fingerprint") not in accepted or manifest.get("dim") != embedder.dim:
        raise ModelMismatchError(
            str(path), f"{manifest.get('model')!s:.200} (dim {manifest.get('dim')!s:.10})", embedder.name
        )
    name, files, count, colbert = (
        manifest.get("data"),
        manifest.get("files"),
        manifest.get("count"),
        manifest.get("colbert"),
    )
    if not isinstance(name, str) or not _DATA.match(name) or not isinstance(files, dict):
        raise damaged(path / _MANIFEST, "its data folder or file list is not valid")
    if isinstance(count, bool) or not isinstance(count, int) or not 0 <= count < 1 << 40:
        raise damaged(path / _MANIFEST, f"its count {count!r:.20} is not valid")
    if colbert not in ("float16", "float32", None):
        raise damaged(path / _MANIFEST, f"its ColBERT storage {colbert!r:.20} is not valid")
    data = path / name
    if data.is_symlink() or not data.is_dir():
        raise damaged(data, "the data folder is missing or a link")
    n, dim = count, embedder.dim
    arrays = {"dense": load_npy(data, "dense.npy", files, np.float32, (n, dim))}
    arrays["sparse_offsets"] = load_npy(data, "sparse_offsets.npy", files, np.int64, (n + 1,))
    nnz = int(arrays["sparse_offsets"][-1])
    if not 0 <= nnz < 1 << 40:
        raise damaged(data / "sparse_offsets.npy", "its offsets are not valid")
    arrays["sparse_ids"] = load_npy(data, "sparse_ids.npy", files, np.int32, (nnz,))
    arrays["sparse_weights"] = load_npy(data, "sparse_weights.npy", files, np.float32, (nnz,))
    if colbert is not None:
        arrays["colbert_offsets"] = load_npy(data, "colbert_offsets.npy", files, np.int64, (n + 1,))
        total = int(arrays["colbert_offsets"][-1])
        if not 0 <= total < 1 << 40:
            raise damaged(data / "colbert_offsets.npy", "its offsets are not valid")
        dtype = np.float16 if colbert == "float16" else np.float32
        arrays["colbert"] = load_npy(data, "colbert.npy", files, dtype, (total, embedder.colbert_dim or 0), mmap=True)
    documents = []
    entry = files.get("documents.jsonl")
    doc_file = data / "documents.jsonl"
    if not isinstance(entry, dict) or doc_file.is_symlink() or doc_file.stat().st_size != entry.get("bytes"):
        raise damaged(doc_file, "it is missing, a link, or not the size the manifest says")
    with open(doc_file, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            try:
                doc = json.loads(line)
                if not (isinstance(doc, dict) and isinstance(doc.get("id"), str) and isinstance(doc.get("text"), str)):
                    raise TypeError("each line must be an object with a str id and text")
                metadata = doc.get("metadata", {})
                if not isinstance(metadata, dict):
                    raise TypeError("metadata must be an object")
                check_json_value(metadata, "metadata", 1)
            except (ValueError, TypeError, RecursionError) as exc:
                raise damaged(doc_file, f"line {number}: {exc}") from exc
            documents.append({"id": doc["id"], "text": doc["text"], "metadata": metadata})
    if len(documents) != n or len({d["id"] for d in documents}) != n:
        raise damaged(doc_file, f"it does not hold {n} documents with distinct ids")
    return manifest, arrays, documents


def upgrade(path: Path, embedder: M3Embedder) -> None:
    """Convert the format-1 index at ``path`` to format 2 in place (see the module docs)."""
    from .catalog import CATALOG
    from .folder import SEGMENTS, IndexFolder
    from .segment import Segment, SegmentArrays

    with folder_lock(path / ".upgrade.lock"):
        if (path / CATALOG).exists() or not (path / _MANIFEST).exists():
            return  # another process upgraded it meanwhile
        manifest, arrays, documents = _read(path, embedder)
        work = path / f".upgrade-{uuid.uuid4().hex[:12]}"
        try:
            folder = IndexFolder.open(work, embedder, create=True, colbert_dtype=manifest.get("colbert"), mmap=True)
            try:
                if documents:
                    segment = Segment(SegmentArrays(**arrays))
                    segment.ids = [d["id"] for d in documents]
                    segment.texts = [d["text"] for d in documents]
                    segment.metadatas = [d["metadata"] for d in documents]
                    folder.commit_rows([(segment, np.arange(len(documents)))], deletes=())
            finally:
                folder.close()
            os.rename(work / SEGMENTS, path / SEGMENTS)
            os.rename(work / CATALOG, path / CATALOG)  # the commit point of the upgrade
        finally:
            shutil.rmtree(work, ignore_errors=True)
        (path / _MANIFEST).unlink()
        shutil.rmtree(path / str(manifest["data"]), ignore_errors=True)
        for stale in path.iterdir():
            if stale.name.startswith((".tmp-", ".manifest-", "data-")):
                shutil.rmtree(stale, ignore_errors=True) if stale.is_dir() else stale.unlink(missing_ok=True)
        logger.warning("upgraded the index at %s from format 1 to format 2 (m3-rag 0.1 cannot read it any more)", path)
