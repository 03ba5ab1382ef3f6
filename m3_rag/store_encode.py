"""Encode through an :class:`~m3_rag.encoding_store.EncodingStore`: read the hits, encode the misses once.

:func:`encode_with_store` is :meth:`M3Embedder.encode` with a store in front: stored texts are
read, the others are encoded in one model pass (all three outputs, batch by batch) and stored,
each batch in its own transaction, so an interrupted run keeps what it finished. Hits and misses
give the same values: what is returned for a miss is what the store keeps (ColBERT vectors in
its dtype), so a score does not depend on whether a text was stored before.
:func:`fetch_encodings` returns the same, packed for scoring (:class:`PackedEncodings`).
"""

from __future__ import annotations

import logging
import os
import sqlite3
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from .encoding_entries import PackedEncodings, StoredEncoding, check_texts
from .encoding_store import EncodingStore
from .output import M3Output

if TYPE_CHECKING:
    from .encoder import M3Embedder

__all__ = ["encode_with_store", "fetch_encodings", "open_encoding_store"]

logger = logging.getLogger(__name__)


def _entries(
    embedder: M3Embedder,
    texts: Sequence[str],
    store: EncodingStore,
    *,
    max_length: int | None,
    colbert: bool,
    batch_size: int | None,
    show_progress: bool | None,
) -> list[StoredEncoding]:
    items = check_texts(texts)
    store.check_embedder(embedder)
    length = max_length or embedder.passage_max_length
    found = store.get(items, max_length=length, colbert=colbert)
    missing = list(dict.fromkeys(text for text, entry in zip(items, found) if entry is None))
    fresh: dict[str, StoredEncoding] = {}
    batches = (
        embedder.iter_encode(missing, max_length=length, batch_size=batch_size, show_progress=show_progress)
        if missing
        else ()
    )
    for batch in batches:
        batch_texts = [missing[i] for i in batch.indices.tolist()]
        try:
            stored = store.put(batch_texts, batch, max_length=length)
        except sqlite3.Error as exc:  # the store is a cache: a full disk or a read-only file must not fail a rerank
            logger.warning("could not write to %s (%s); the encodings are used but not kept", store.path, exc)
            stored = [
                store.entry_format.encode(length, d, s, c)[1]
                for d, s, c in zip(batch.dense, batch.sparse_vectors(), batch.colbert_list())  # type: ignore[arg-type]
            ]
        fresh.update(zip(batch_texts, stored))
    return [entry if entry is not None else fresh[text] for text, entry in zip(items, found)]


def fetch_encodings(
    embedder: M3Embedder,
    texts: Sequence[str],
    store: EncodingStore,
    *,
    max_length: int | None = None,
    batch_size: int | None = None,
    show_progress: bool | None = None,
) -> PackedEncodings:
    """Dense, sparse and ColBERT encodings of ``texts`` from ``store``, misses encoded once and stored.

    Args:
        embedder: the model (the one the store was opened for).
        texts: the passages, in any number, repeats allowed.
        store: where encodings are read from and written to.
        max_length: the passage ``max_length`` (default: ``embedder.passage_max_length``).
        batch_size, show_progress: as in :meth:`M3Embedder.encode`, for the misses.

    Returns:
        :class:`PackedEncodings` in the order of ``texts``: ColBERT vectors in the store's dtype
        (``colbert``, ``scales``, ``offsets``, ready for :func:`m3_rag.scoring.colbert_scores_at`).

    >>> import tempfile
    >>> from m3_rag import EncodingStore, M3Embedder
    >>> m3 = M3Embedder.from_pretrained("tests/data/tiny-m3")
    >>> store = EncodingStore(f"{tempfile.mkdtemp()}/enc.sqlite", m3, colbert_dtype="int8")
    >>> packed = fetch_encodings(m3, ["Berlin is in Germany.", "Paris."], store)
    >>> packed.dense.shape, packed.colbert.dtype.name, packed.offsets.tolist()
    ((2, 32), 'int8', [0, 11, 14])
    >>> len(store), store.stats().misses
    (2, 2)
    """
    entries = _entries(
        embedder, texts, store, max_length=max_length, colbert=True, batch_size=batch_size, show_progress=show_progress
    )
    fmt = store.entry_format
    return PackedEncodings.from_entries(entries, dim=fmt.dim, colbert_dim=fmt.colbert_dim, dtype=fmt.dtype)


def encode_with_store(
    embedder: M3Embedder,
    texts: Sequence[str],
    store: EncodingStore,
    *,
    max_length: int | None = None,
    dense: bool = True,
    sparse: bool = True,
    colbert: bool = True,
    batch_size: int | None = None,
    show_progress: bool | None = None,
) -> M3Output:
    """:meth:`M3Embedder.encode` of passages through ``store``: hits read, misses encoded once and stored.

    ``dense``, ``sparse``, ``colbert`` choose what is returned (a miss is always stored with all
    three; ``colbert=False`` does not read the stored ColBERT vectors at all). ColBERT vectors
    come back as float32 (dequantized from the store's dtype); sparse weights as dicts.
    Other arguments as :func:`fetch_encodings`.

    >>> import tempfile
    >>> from m3_rag import EncodingStore, M3Embedder
    >>> m3 = M3Embedder.from_pretrained("tests/data/tiny-m3")
    >>> store = EncodingStore(f"{tempfile.mkdtemp()}/enc.sqlite", m3, colbert_dtype="float32")
    >>> out = encode_with_store(m3, ["Berlin is in Germany."], store, colbert=False)
    >>> out.dense.shape, out.colbert, store.stats().misses
    ((1, 32), None, 1)
    >>> again = encode_with_store(m3, ["Berlin is in Germany."], store)
    >>> store.stats().hits, bool(np.allclose(again.colbert[0], m3.encode(["Berlin is in Germany."]).colbert[0]))
    (1, True)
    """
    entries = _entries(
        embedder,
        texts,
        store,
        max_length=max_length,
        colbert=colbert,
        batch_size=batch_size,
        show_progress=show_progress,
    )
    dim = store.entry_format.dim
    return M3Output(
        dense=(np.stack([e.dense for e in entries]) if entries else np.zeros((0, dim), np.float32)) if dense else None,
        sparse=[e.sparse for e in entries] if sparse else None,
        colbert=[e.colbert_float32() for e in entries] if colbert else None,
    )


def open_encoding_store(
    store: EncodingStore | str | os.PathLike[str] | None, embedder: M3Embedder
) -> EncodingStore | None:
    """What an adapter's ``encoding_store=`` argument means: None, a store of ``embedder``'s model, or a path.

    A path opens :meth:`EncodingStore.open` (the dtype the file has; a new file: float16).
    """
    if store is None:
        return None
    if isinstance(store, EncodingStore):
        store.check_embedder(embedder)
        return store
    if isinstance(store, (str, os.PathLike)):
        return EncodingStore.open(store, embedder)
    raise TypeError(f"encoding_store must be an EncodingStore, a file path or None, got {type(store).__name__}")
