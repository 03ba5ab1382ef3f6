"""A local side store of ColBERT vectors, addressed by content: what :class:`MilvusStore` reranks with.

Milvus (and milvus-lite 3.2, which refuses struct / embedding-list fields) does not hold the
ColBERT multi-vectors, so the Milvus store keeps them here, on the local disk of the machine
that searches. Entries are keyed by a hash of ``(passage max_length, text)``: a candidate's
vectors are looked up by the text that Milvus returns, so a stale or missing entry (a crash
between the two writes, another process adding documents, a different ``max_length``) is a
miss, and the caller re-encodes that candidate. Correctness never depends on this store.

Layout of the folder::

    manifest.json              format, model fingerprint, ColBERT dimension and dtype
    seg-<time>-<token>/        keys.npy (n,) |S16, offsets.npy (n + 1,) int64, vectors.npy (M, d)

Segments are append-only, written under a temporary name and renamed when complete (a reader
never sees half a segment); ``vectors.npy`` is memory-mapped. Deleting documents from Milvus
leaves their vectors here (they are never returned for other texts); remove the folder to
reclaim the space, and the next searches re-encode what they need.

Example:
    >>> import tempfile, numpy as np
    >>> cache = ColbertCache(tempfile.mkdtemp(), fingerprint="f", dim=2, dtype="float32")
    >>> keys = text_keys(["a", "b"], max_length=8)
    >>> cache.put(keys, np.ones((3, 2), np.float32), np.array([0, 1, 3]))
    >>> found, vectors, offsets = cache.get(text_keys(["b", "zz"], max_length=8))
    >>> found.tolist(), vectors.shape, offsets.tolist()
    ([True, False], (2, 2), [0, 2])
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

from ..errors import IndexFormatError
from .packed import PackedRows, gather_packed

__all__ = ["ColbertCache", "ColbertDtype", "text_keys"]

ColbertDtype = Literal["float16", "float32"]
_FORMAT = "m3-rag-colbert-cache"
_VERSION = 1
_KEY = np.dtype("S16")
logger = logging.getLogger(__name__)


def text_keys(texts: Sequence[str], *, max_length: int) -> np.ndarray:
    """(n,) ``|S16`` keys: BLAKE2b-128 of the passage ``max_length`` and the text."""
    prefix = f"{max_length}\0".encode()
    digests = [hashlib.blake2b(prefix + t.encode("utf-8"), digest_size=16).digest() for t in texts]
    return np.array(digests, dtype=_KEY) if digests else np.zeros(0, dtype=_KEY)


class ColbertCache:
    """Append-only, content-addressed ColBERT vectors in a local folder (see the module docs).

    Thread-safe; several processes may write to one folder (each writes its own segments;
    :meth:`refresh` picks up the others').
    """

    def __init__(self, folder: str | os.PathLike[str], *, fingerprint: str, dim: int, dtype: ColbertDtype) -> None:
        if dtype not in ("float16", "float32"):
            raise ValueError(f"dtype must be 'float16' or 'float32', got {dtype!r}")
        self.folder = Path(folder)
        self.dtype = np.dtype(dtype)
        self.dim = dim
        self._lock = threading.RLock()
        self._loaded: set[str] = set()
        self._rows = PackedRows()
        self._keys = np.zeros(0, dtype=_KEY)  # sorted
        self._row_of_key = np.zeros(0, dtype=np.int64)
        self._pending: list[tuple[np.ndarray, np.ndarray]] = []  # (keys, rows) not yet merged
        self._open_manifest(
            {
                "format": _FORMAT,
                "version": _VERSION,
                "model_fingerprint": fingerprint,
                "colbert_dim": dim,
                "dtype": dtype,
            }
        )
        self.refresh()

    def __len__(self) -> int:
        with self._lock:
            self._merge()
            return len(self._keys)

    def __repr__(self) -> str:
        return f"ColbertCache({str(self.folder)!r}, {len(self)} texts, dim={self.dim}, dtype={self.dtype.name})"

    def _open_manifest(self, expected: dict[str, Any]) -> None:
        path = self.folder / "manifest.json"
        if not path.is_file():
            if self.folder.is_dir() and any(p.name != "manifest.json" for p in self.folder.iterdir()):
                raise FileExistsError(f"{self.folder} is a non-empty folder that is not a ColBERT side store")
            self.folder.mkdir(parents=True, exist_ok=True)
            tmp = self.folder / f".manifest-{uuid.uuid4().hex[:8]}.json"
            tmp.write_text(json.dumps(expected, indent=2) + "\n", encoding="utf-8")
            os.replace(tmp, path)
        try:
            found = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise IndexFormatError(f"{path} is unreadable: {exc}; delete the folder to rebuild it") from exc
        if found != expected:
            raise IndexFormatError(
                f"the ColBERT side store {self.folder} was written with {found}, but this store needs {expected} "
                "(another model or dtype); pass another colbert_dir, or delete the folder (it is rebuilt by "
                "re-encoding on demand)"
            )

    # ------------------------------------------------------------------ reading
    def refresh(self) -> None:
        """Pick up segments written since the last look (by this or another process)."""
        with self._lock:
            for seg in sorted(self.folder.glob("seg-*")):
                if seg.name in self._loaded or not seg.is_dir():
                    continue
                self._loaded.add(seg.name)
                arrays = self._read_segment(seg)
                if arrays is not None:
                    self._register(*arrays)

    def _read_segment(self, seg: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
        try:
            keys = np.load(seg / "keys.npy", allow_pickle=False)
            offsets = np.load(seg / "offsets.npy", allow_pickle=False)
            vectors = np.load(seg / "vectors.npy", mmap_mode="r", allow_pickle=False)
            problem = None
            if (
                keys.dtype != _KEY
                or offsets.shape != (len(keys) + 1,)
                or vectors.dtype != self.dtype
                or vectors.shape[1:] != (self.dim,)
                or offsets[-1] != len(vectors)
            ):
                problem = "its arrays do not match the manifest"
        except (OSError, ValueError) as exc:
            problem = str(exc)
        if problem is not None:  # a cache: skip it (its texts get re-encoded when needed), never fail a search
            logger.warning("skipping damaged ColBERT segment %s (%s); delete it", seg, problem)
            return None
        return keys, vectors, offsets

    def _register(self, keys: np.ndarray, vectors: np.ndarray, offsets: np.ndarray) -> None:
        rows = self._rows.reserve(len(keys))
        self._rows.put(rows, vectors, offsets)
        self._pending.append((keys, rows))

    def _merge(self) -> None:
        if self._pending:
            keys = np.concatenate([self._keys, *(k for k, _ in self._pending)])
            rows = np.concatenate([self._row_of_key, *(r for _, r in self._pending)])
            self._pending.clear()
            keys, first = np.unique(keys, return_index=True)  # sorted; a repeated text keeps its first copy
            self._keys, self._row_of_key = keys, rows[first]

    def _lookup(self, keys: np.ndarray) -> np.ndarray:
        """Row of each key, -1 where absent."""
        self._merge()
        if len(self._keys) == 0:
            return np.full(len(keys), -1, dtype=np.int64)
        pos = np.minimum(np.searchsorted(self._keys, keys), len(self._keys) - 1)
        return np.where(self._keys[pos] == keys, self._row_of_key[pos], -1)

    def contains(self, keys: np.ndarray) -> np.ndarray:
        """(n,) bool: which keys have vectors here."""
        with self._lock:
            return self._lookup(keys) >= 0

    def get(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(found, vectors, offsets)``: vectors of the found keys packed in order (as float32)."""
        with self._lock:
            rows = self._lookup(keys)
            if np.any(rows < 0):  # another process may have written them since
                self.refresh()
                rows = self._lookup(keys)
            found = rows >= 0
            if not found.any():
                return found, np.zeros((0, self.dim), np.float32), np.zeros(1, np.int64)
            vectors, offsets = self._rows.gather(rows[found])
        return found, vectors.astype(np.float32), offsets

    # ------------------------------------------------------------------ writing
    def put(self, keys: np.ndarray, vectors: np.ndarray, offsets: np.ndarray) -> None:
        """Store packed vectors (``offsets`` has ``len(keys) + 1`` entries); known keys are skipped."""
        offsets = np.asarray(offsets, dtype=np.int64)
        if offsets.shape != (len(keys) + 1,) or vectors.ndim != 2 or vectors.shape[1] != self.dim:
            raise ValueError(
                f"expected offsets of {len(keys) + 1} and (M, {self.dim}) vectors, got "
                f"{offsets.shape} and {vectors.shape}"
            )
        with self._lock:
            _, first = np.unique(keys, return_index=True)
            new = np.zeros(len(keys), dtype=bool)
            new[first] = True
            new &= self._lookup(keys) < 0
            if not new.any():
                return
            sel = np.flatnonzero(new)
            lengths = np.diff(offsets)[sel]
            packed = np.ascontiguousarray(gather_packed(vectors, offsets[sel], lengths), dtype=self.dtype)
            new_offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
            name = f"seg-{time.time_ns():020d}-{uuid.uuid4().hex[:8]}"
            tmp = self.folder / f".tmp-{name}"
            tmp.mkdir()
            for file, array in (("keys", keys[sel]), ("offsets", new_offsets), ("vectors", packed)):
                np.save(tmp / f"{file}.npy", array, allow_pickle=False)
            os.replace(tmp, self.folder / name)
            self._register(keys[sel], np.load(self.folder / name / "vectors.npy", mmap_mode="r"), new_offsets)
            self._loaded.add(name)
