"""One text's stored encodings (dense vector, sparse weights, ColBERT vectors) and their checked bytes.

What :class:`~m3_rag.encoding_store.EncodingStore` keeps per text, and the only code that turns
an entry into bytes and back. Nothing read back is trusted: :meth:`EntryFormat.decode` checks
every size, dtype, shape, token id and value, and a CRC-32 per part (against accidental damage;
an attacker can recompute it, which is why the values are checked too), before an array is
handed out, and raises :class:`DamagedEntry` otherwise. Arrays are little-endian on disk:
dense and sparse weights float32, token ids int32, ColBERT vectors in the store's
``colbert_dtype`` (int8 with a float32 scale per vector, see :mod:`m3_rag.colbert_codec`).

>>> fmt = EntryFormat(dim=2, colbert_dim=2, vocab_size=10, dtype="int8")
>>> row, entry = fmt.encode(8, np.array([0.6, 0.8]), {3: 0.5}, np.array([[1.0, 0.0], [0.0, 1.0]]))
>>> back = fmt.decode(row.values())
>>> back.sparse.to_dict(), back.colbert.dtype.name, back.colbert_float32().round(3).tolist()
({3: 0.5}, 'int8', [[1.0, 0.0], [0.0, 1.0]])
>>> fmt.decode(row.values()[:6] + (b"\\x00" * 7,) + row.values()[7:])
Traceback (most recent call last):
...
m3_rag.encoding_entries.DamagedEntry: the dense vector has 7 bytes, expected 8 (2 float32)
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from . import records
from .colbert_codec import ColbertDtype, check_colbert_dtype, dequantize, numpy_dtype, quantize
from .scoring import colbert_scores_at
from .sparse import SparseVector, split_packed

__all__ = [
    "ROW_OVERHEAD",
    "DamagedEntry",
    "EncodedRow",
    "EncodingStoreStats",
    "EntryFormat",
    "ModelFacts",
    "PackedEncodings",
    "StoredEncoding",
    "check_max_length",
    "check_texts",
    "output_columns",
]

#: Bytes counted per entry on top of its arrays (key, integers, index entries), for ``max_bytes``.
ROW_OVERHEAD = 96
_F32_ONE = int(np.float32(1.001).view(np.uint32))  # unit-vector components: |x| <= 1, plus rounding
_F16_ONE = int(np.float16(1.0).view(np.uint16))
_MAX_SCALE = 1.02 / 127  # an int8 scale is ||v|| / ||q|| <= 1 / 127 for a unit v (q holds a 127)
_NAMES = {"dense": "dense vector", "ids": "sparse ids", "weights": "sparse weights", "scales": "ColBERT scales",
          "colbert": "ColBERT vectors"}  # fmt: skip
_LE: dict[str, np.dtype] = {"float32": np.dtype("<f4"), "float16": np.dtype("<f2"), "int8": np.dtype("i1")}


class ModelFacts(Protocol):
    """What a store needs to know of the model (an :class:`~m3_rag.M3Embedder` has it all)."""

    name: str
    vocab_size: int

    @property
    def fingerprint(self) -> str: ...
    @property
    def dim(self) -> int: ...
    @property
    def colbert_dim(self) -> int | None: ...


@dataclass(frozen=True)
class EncodingStoreStats:
    """``hits``, ``misses`` (texts asked for), ``damaged``, ``stored`` and ``evicted`` count what this
    object did since it was opened; ``entries``, ``bytes`` (counted towards ``max_bytes``) and
    ``file_bytes`` (database and WAL files) describe the store now."""

    hits: int
    misses: int
    damaged: int
    stored: int
    evicted: int
    entries: int
    bytes: int
    file_bytes: int
    max_bytes: int | None

    @property
    def hit_rate(self) -> float:
        """``hits / (hits + misses)``, 0.0 before any lookup."""
        asked = self.hits + self.misses
        return self.hits / asked if asked else 0.0


def check_max_length(max_length: object) -> int:
    if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 2:
        raise ValueError(
            f"max_length must be an int >= 2 (the passage max_length of the encodings), got {max_length!r}"
        )
    return max_length


def check_texts(texts: Sequence[str]) -> list[str]:
    """A list of str (:func:`m3_rag.records.check_texts`; a bare str is refused: wrap it in a list)."""
    if isinstance(texts, str):
        raise TypeError(f"texts must be a list of str, got a str {texts!r:.60}; wrap it in a list")
    return records.check_texts(texts)


class DamagedEntry(ValueError):
    """A stored entry failed a check; the store treats it as a miss."""


@dataclass(frozen=True)
class StoredEncoding:
    """One text's encodings as stored: ``dense`` (d,) float32, ``sparse``, ColBERT (tokens, d') as stored.

    ``colbert`` is in the store's dtype (``scales`` (tokens,) float32 for int8, else None), or
    None when read with ``colbert=False``. Arrays are read-only.
    """

    dense: np.ndarray
    sparse: SparseVector
    colbert: np.ndarray | None
    scales: np.ndarray | None = None

    def colbert_float32(self) -> np.ndarray:
        """The ColBERT vectors as a float32 (tokens, d') array (dequantized for int8)."""
        if self.colbert is None:
            raise ValueError("this entry was read without its ColBERT vectors (colbert=False)")
        return dequantize(self.colbert, self.scales)


@dataclass(frozen=True)
class PackedEncodings:
    """The encodings of ``n`` texts packed for scoring, in the order asked for.

    Attributes:
        dense: (n, d) float32.
        sparse: ``n`` sparse vectors.
        colbert: (M, d') ColBERT vectors of all texts, in the store's dtype; text ``j`` owns
            rows ``offsets[j]:offsets[j + 1]``.
        scales: (M,) float32 per-row scales for int8, else None.
        offsets: (n + 1,) int64.

    ``(colbert, scales, starts, lengths)`` is what :func:`m3_rag.scoring.colbert_scores_at` takes.
    """

    dense: np.ndarray
    sparse: list[SparseVector]
    colbert: np.ndarray
    scales: np.ndarray | None
    offsets: np.ndarray

    def __len__(self) -> int:
        return len(self.sparse)

    @property
    def starts(self) -> np.ndarray:
        """(n,) first ColBERT row of each text."""
        return self.offsets[:-1]

    @property
    def lengths(self) -> np.ndarray:
        """(n,) ColBERT rows of each text."""
        return np.diff(self.offsets)

    def colbert_scores(self, query: np.ndarray, positions: np.ndarray | None = None) -> np.ndarray:
        """ColBERT scores of one query's (Lq, d') vectors against all texts (or those at ``positions``)."""
        starts, lengths = self.starts, self.lengths
        if positions is not None:
            starts, lengths = starts[positions], lengths[positions]
        return colbert_scores_at(query, self.colbert, starts, lengths, scales=self.scales)

    @classmethod
    def from_entries(
        cls, entries: Sequence[StoredEncoding], *, dim: int, colbert_dim: int, dtype: ColbertDtype
    ) -> PackedEncodings:
        """Pack entries (each with its ColBERT vectors) into one array per field: one copy."""
        if any(e.colbert is None for e in entries):
            raise ValueError("every entry needs its ColBERT vectors to be packed (read them with colbert=True)")
        lengths = np.fromiter((len(e.colbert) for e in entries), dtype=np.int64, count=len(entries))  # type: ignore[arg-type]
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        colbert = np.empty((int(offsets[-1]), colbert_dim), dtype=numpy_dtype(dtype))
        scales = np.empty(int(offsets[-1]), dtype=np.float32) if dtype == "int8" else None
        for e, a, b in zip(entries, offsets[:-1].tolist(), offsets[1:].tolist()):
            colbert[a:b] = e.colbert
            if scales is not None:
                scales[a:b] = e.scales
        dense = np.stack([e.dense for e in entries]) if entries else np.zeros((0, dim), np.float32)
        return cls(dense.astype(np.float32, copy=False), [e.sparse for e in entries], colbert, scales, offsets)


@dataclass(frozen=True)
class EncodedRow:
    """The columns of one stored entry, in the order the store writes and reads them."""

    key: bytes
    max_length: int
    tokens: int
    terms: int
    size: int
    crc_head: int
    crc_colbert: int
    dense: bytes
    ids: bytes
    weights: bytes
    scales: bytes
    colbert: bytes

    def values(self) -> tuple[int | bytes, ...]:
        """The columns after ``key``: what :meth:`EntryFormat.decode` takes."""
        return (self.max_length, self.tokens, self.terms, self.size, self.crc_head, self.crc_colbert,
                self.dense, self.ids, self.weights, self.scales, self.colbert)  # fmt: skip


def _crc(*parts: bytes) -> int:
    crc = 0
    for part in parts:
        crc = zlib.crc32(part, crc)
    return crc


def _frozen(array: np.ndarray) -> np.ndarray:
    array.setflags(write=False)
    return array


@dataclass(frozen=True)
class EntryFormat:
    """What every entry of one store looks like: dimensions, vocabulary and ColBERT dtype."""

    dim: int
    colbert_dim: int
    vocab_size: int
    dtype: ColbertDtype

    def __post_init__(self) -> None:
        check_colbert_dtype(self.dtype)

    # ------------------------------------------------------------------ writing
    def encode(
        self, max_length: int, dense: np.ndarray, sparse: Mapping[int, float], colbert: np.ndarray, *, key: bytes = b""
    ) -> tuple[EncodedRow, StoredEncoding]:
        """Check one text's float outputs, quantize its ColBERT vectors: the row to store and the entry it holds.

        Raises ValueError for anything :meth:`decode` would refuse (so what is stored can be read back).
        """
        vector = np.ascontiguousarray(dense, dtype=np.float32)
        if vector.shape != (self.dim,) or not _unit_bounded(vector):
            raise ValueError(
                f"a dense vector must be ({self.dim},) finite float32 with |x| <= 1 (BGE-M3's unit vectors), "
                f"got shape {vector.shape}"
            )
        sv = SparseVector.from_dict(sparse)
        if len(sv) and (sv.indices[-1] >= self.vocab_size or not np.all(sv.weights > 0)):
            raise ValueError(
                f"sparse weights need token ids in [0, {self.vocab_size}) and weights > 0, got ids "
                f"{int(sv.indices[0])}..{int(sv.indices[-1])} and a smallest weight {float(sv.weights.min())}"
            )
        matrix = np.asarray(colbert, dtype=np.float32)
        tokens = len(matrix)
        if matrix.ndim != 2 or matrix.shape[1] != self.colbert_dim or not 1 <= tokens < max_length:
            raise ValueError(
                f"ColBERT vectors must be (tokens, {self.colbert_dim}) with 1 <= tokens <= max_length - 1 = "
                f"{max_length - 1}, got shape {matrix.shape}"
            )
        if not _unit_bounded(matrix):
            raise ValueError("ColBERT vectors must be finite with |x| <= 1 (BGE-M3's unit vectors)")
        if len(sv) > tokens:
            raise ValueError(f"{len(sv)} sparse weights for a text of {tokens + 1} tokens: they do not belong together")
        values, scales = quantize(matrix, self.dtype)
        values = np.ascontiguousarray(values, dtype=_LE[self.dtype])
        parts = {
            "dense": vector.astype("<f4").tobytes(),
            "ids": sv.indices.astype("<i4").tobytes(),
            "weights": sv.weights.astype("<f4").tobytes(),
            "scales": b"" if scales is None else scales.astype("<f4").tobytes(),
            "colbert": values.tobytes(),
        }
        head = struct.pack("<qqq", max_length, tokens, len(sv))
        row = EncodedRow(
            key=key,
            max_length=max_length,
            tokens=tokens,
            terms=len(sv),
            size=ROW_OVERHEAD + sum(len(p) for p in parts.values()),
            crc_head=_crc(head, parts["dense"], parts["ids"], parts["weights"]),
            crc_colbert=_crc(head[8:16], parts["scales"], parts["colbert"]),
            **parts,
        )
        entry = StoredEncoding(_frozen(vector.copy()), sv, _frozen(values), None if scales is None else _frozen(scales))
        return row, entry

    # ------------------------------------------------------------------ reading
    def decode(
        self, values: Sequence[object], *, colbert: bool = True, expected_max_length: int | None = None
    ) -> StoredEncoding:
        """The entry of a stored row (the columns of :meth:`EncodedRow.values`), or :class:`DamagedEntry`.

        With ``colbert=False`` the last two columns are the byte lengths of ``scales`` and
        ``colbert`` (what SQLite's ``length()`` gives without reading them) and the ColBERT part
        is only size-checked. ``expected_max_length``: the one the entry must have been encoded with.
        """
        if len(values) != 11:
            raise DamagedEntry(f"a stored row has {len(values)} columns, expected 11")
        if expected_max_length is not None and values[0] != expected_max_length:
            raise DamagedEntry(f"the entry was encoded with max_length {values[0]!r}, not {expected_max_length}")
        max_length, tokens, terms, size, crc_head, crc_colbert, dense, ids, weights, scales, vectors = values
        ints = (max_length, tokens, terms, size, crc_head, crc_colbert)
        if not all(type(v) is int for v in ints):
            raise DamagedEntry(f"the integer columns hold {[type(v).__name__ for v in ints]}")
        assert isinstance(max_length, int) and isinstance(tokens, int) and isinstance(terms, int)
        if not (1 <= tokens < max_length and 0 <= terms <= tokens):
            raise DamagedEntry(
                f"impossible counts: {tokens} ColBERT vectors, {terms} sparse terms, max_length {max_length}"
            )
        blobs = {"dense": dense, "ids": ids, "weights": weights}
        if colbert:
            blobs.update(scales=scales, colbert=vectors)
        for name, blob in blobs.items():
            if not isinstance(blob, bytes):
                raise DamagedEntry(f"the {name} column holds {type(blob).__name__}, not bytes")
        found = {name: len(blob) for name, blob in blobs.items()}  # type: ignore[arg-type]
        if not colbert:  # the byte lengths of the two ColBERT columns, from length()
            if type(scales) is not int or type(vectors) is not int:
                raise DamagedEntry("the ColBERT columns' lengths are not integers")
            found.update(scales=scales, colbert=vectors)
        item = numpy_dtype(self.dtype).itemsize
        expected = {
            "dense": (self.dim * 4, f"{self.dim} float32"),
            "ids": (terms * 4, f"{terms} int32"),
            "weights": (terms * 4, f"{terms} float32"),
            "scales": (tokens * 4 if self.dtype == "int8" else 0, f"{tokens} float32"),
            "colbert": (tokens * self.colbert_dim * item, f"{tokens} x {self.colbert_dim} {self.dtype}"),
        }
        for name, (want, shape) in expected.items():
            if found[name] != want:
                raise DamagedEntry(f"the {_NAMES[name]} has {found[name]} bytes, expected {want} ({shape})")
        if size != ROW_OVERHEAD + sum(want for want, _ in expected.values()):
            raise DamagedEntry(f"the recorded size {size} does not match the arrays")
        assert isinstance(dense, bytes) and isinstance(ids, bytes) and isinstance(weights, bytes)
        head = struct.pack("<qqq", max_length, tokens, terms)
        if _crc(head, dense, ids, weights) != crc_head:
            raise DamagedEntry("the checksum of the dense vector and sparse weights does not match")
        vector = np.frombuffer(dense, dtype="<f4")
        if not _unit_bounded(vector):
            raise DamagedEntry("the dense vector has values that are not finite or outside [-1, 1]")
        token_ids = np.frombuffer(ids, dtype="<i4")
        term_weights = np.frombuffer(weights, dtype="<f4")
        if terms and (token_ids[0] < 0 or token_ids[-1] >= self.vocab_size or np.any(np.diff(token_ids) <= 0)):
            raise DamagedEntry(f"the sparse token ids are not increasing ids in [0, {self.vocab_size})")
        if not (np.all(term_weights > 0) and np.all(np.isfinite(term_weights))):
            raise DamagedEntry("the sparse weights are not all finite and > 0")
        sparse = SparseVector(token_ids.astype(np.int64), term_weights.astype(np.float32), _checked=True)
        if not colbert:
            return StoredEncoding(_frozen(vector.astype(np.float32)), sparse, None)
        assert isinstance(scales, bytes) and isinstance(vectors, bytes)
        if _crc(head[8:16], scales, vectors) != crc_colbert:
            raise DamagedEntry("the checksum of the ColBERT vectors does not match")
        matrix = np.frombuffer(vectors, dtype=_LE[self.dtype]).reshape(tokens, self.colbert_dim)
        row_scales = None
        if self.dtype == "int8":
            row_scales = np.frombuffer(scales, dtype="<f4")
            ok = bool(np.all((row_scales >= 0) & (row_scales <= _MAX_SCALE))) and int(matrix.min()) >= -127
        else:
            ok = _unit_bounded(matrix)
        if not ok:
            raise DamagedEntry("the ColBERT vectors have values that are not finite or outside [-1, 1]")
        return StoredEncoding(_frozen(vector.astype(np.float32)), sparse, matrix, row_scales)


def _unit_bounded(array: np.ndarray) -> bool:
    """All values finite with ``|x| <= 1`` (float32: 1.001), by the bits: NaN and inf fail too."""
    if array.size == 0:
        return True
    if array.dtype.itemsize == 2:
        return int((array.view(np.uint16) & 0x7FFF).max()) <= _F16_ONE
    bits = np.ascontiguousarray(array, dtype=np.float32).view(np.uint32)
    return int((bits & 0x7FFFFFFF).max()) <= _F32_ONE


def output_columns(output: Any, n: int) -> tuple[Any, Any, Any]:
    """(dense, sparse, colbert) per text from an M3Output or an EncodedBatch of ``n`` texts."""
    if len(output) != n:
        raise ValueError(f"got {n} texts and encodings of {len(output)}: expected one encoding per text")
    if hasattr(output, "colbert_offsets"):  # an EncodedBatch
        if output.dense is None or output.sparse_ids is None or output.colbert is None:
            raise ValueError("store a batch encoded with dense=True, sparse=True and colbert=True")
        sparse = split_packed(output.sparse_ids, output.sparse_weights, output.sparse_offsets)
        return output.dense, sparse, output.colbert_list()
    if output.dense is None or output.sparse is None or output.colbert is None:
        raise ValueError("store an M3Output encoded with dense=True, sparse=True and colbert=True")
    return output.dense, output.sparse, output.colbert
