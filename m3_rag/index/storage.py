"""Saving and loading an index folder: no pickle, atomic, checked.

Layout of ``path/``::

    manifest.json          format, version, model, dimensions, count, and per data file its
                           size and sha256 (ColBERT: size only, it can be tens of GB)
    data-<token>/          documents.jsonl, dense.npy, sparse_*.npy, colbert*.npy

A save writes a new ``data-<token>`` folder (as ``.tmp-<token>`` first, renamed when complete
and synced), then atomically replaces ``manifest.json`` to point at it, then removes the old
data folder. A crash at any point leaves the manifest naming a complete data folder.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import IndexFormatError

__all__ = ["FORMAT", "FORMAT_VERSION", "read_index", "read_manifest", "write_index"]

FORMAT = "m3-rag-index"
FORMAT_VERSION = 1
_UNHASHED = {"colbert.npy"}


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_index(
    path: Path,
    manifest: dict[str, Any],
    documents: Iterable[dict[str, Any]],
    arrays: dict[str, np.ndarray],
) -> None:
    """Write ``documents`` (JSON lines) and ``arrays`` (.npy) under ``path`` atomically."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise FileExistsError(f"{path} exists and is not a folder")
    if path.is_dir() and any(path.iterdir()) and not (path / "manifest.json").is_file():
        raise FileExistsError(f"{path} is a non-empty folder that is not an m3-rag index; refusing to write into it")
    path.mkdir(parents=True, exist_ok=True)
    token = uuid.uuid4().hex[:12]
    tmp = path / f".tmp-{token}"
    tmp.mkdir()
    try:
        with open(tmp / "documents.jsonl", "w", encoding="utf-8") as f:
            for doc in documents:
                f.write(json.dumps(doc, ensure_ascii=False) + "\n")
        for name, array in arrays.items():
            np.save(tmp / f"{name}.npy", np.ascontiguousarray(array), allow_pickle=False)
        files = {}
        for file in sorted(tmp.iterdir()):
            _fsync(file)
            entry: dict[str, Any] = {"bytes": file.stat().st_size}
            if file.name not in _UNHASHED:
                entry["sha256"] = _sha256(file)
            files[file.name] = entry
        data = path / f"data-{token}"
        tmp.rename(data)
        _fsync(path)
        full = {"format": FORMAT, "version": FORMAT_VERSION, **manifest, "data": data.name, "files": files}
        manifest_tmp = path / f".manifest-{token}.json"
        manifest_tmp.write_text(json.dumps(full, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        _fsync(manifest_tmp)
        os.replace(manifest_tmp, path / "manifest.json")  # the commit point
        _fsync(path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for stale in path.iterdir():  # old data folders and leftovers of interrupted saves
        if stale.name != data.name and (stale.name.startswith(("data-", ".tmp-", ".manifest-"))):
            if stale.is_dir():
                shutil.rmtree(stale, ignore_errors=True)
            else:
                stale.unlink(missing_ok=True)


def read_manifest(path: Path) -> dict[str, Any]:
    """Read and check ``path/manifest.json`` (format and version)."""
    path = Path(path)
    if not path.is_dir():
        raise IndexFormatError(f"{path} is not an m3-rag index: no such folder")
    file = path / "manifest.json"
    if not file.is_file():
        raise IndexFormatError(f"{path} is not an m3-rag index: manifest.json is missing")
    try:
        manifest = json.loads(file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise IndexFormatError(f"{file} is damaged: {exc}") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise IndexFormatError(f"{path} is not an m3-rag index: manifest.json has no format {FORMAT!r}")
    if manifest.get("version") != FORMAT_VERSION:
        raise IndexFormatError(
            f"{path} has index format version {manifest.get('version')!r}; this m3-rag reads version "
            f"{FORMAT_VERSION}. Re-create the index with this version (or use the m3-rag that wrote it)"
        )
    for key in ("data", "files", "count"):
        if key not in manifest:
            raise IndexFormatError(f"{file} is damaged: no {key!r}")
    return manifest


def read_index(
    path: Path, *, mmap_colbert: bool = True
) -> tuple[dict[str, Any], list[dict[str, Any]], dict[str, np.ndarray]]:
    """Read an index folder; every file is checked against the manifest before use."""
    manifest = read_manifest(path)
    data = Path(path) / str(manifest["data"])
    files = manifest["files"]
    if not isinstance(files, dict) or "documents.jsonl" not in files:
        raise IndexFormatError(f"{path}/manifest.json is damaged: no file list")
    for name, entry in files.items():
        file = data / name
        if not file.is_file():
            raise IndexFormatError(f"{path} is incomplete: {data.name}/{name} is missing")
        if file.stat().st_size != entry.get("bytes"):
            raise IndexFormatError(
                f"{path} is damaged: {name} has {file.stat().st_size} bytes, the manifest says {entry.get('bytes')}"
            )
        if "sha256" in entry and _sha256(file) != entry["sha256"]:
            raise IndexFormatError(f"{path} is damaged: {name} does not match its checksum")
    documents = []
    try:
        with open(data / "documents.jsonl", encoding="utf-8") as f:
            for line in f:
                documents.append(json.loads(line))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise IndexFormatError(f"{path} is damaged: documents.jsonl: {exc}") from exc
    arrays = {}
    for name in files:
        if name.endswith(".npy"):
            try:
                if mmap_colbert and name == "colbert.npy":
                    arrays[name[:-4]] = np.load(data / name, mmap_mode="r", allow_pickle=False)
                else:
                    arrays[name[:-4]] = np.load(data / name, allow_pickle=False)
            except (ValueError, OSError, EOFError) as exc:
                raise IndexFormatError(f"{path} is damaged: {name}: {exc}") from exc
    return manifest, documents, arrays
