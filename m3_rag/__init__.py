"""m3-rag: BGE-M3's dense, sparse and ColBERT outputs in one pass, and hybrid retrieval with them.

>>> from m3_rag import M3Embedder
>>> m3 = M3Embedder.from_pretrained("tests/data/tiny-m3")
>>> m3.encode(["hello"]).dense.shape
(1, 32)
"""

from __future__ import annotations

from .encoder import DEFAULT_MODEL, M3Embedder
from .encoding_entries import PackedEncodings, StoredEncoding
from .encoding_store import EncodingStore, EncodingStoreStats
from .errors import CheckpointError, CheckpointUnavailableError, IndexFormatError, MissingHeadError, ModelMismatchError
from .index import M3Index, MilvusStore, QdrantStore, Record
from .output import EncodedBatch, M3Output
from .ranking import SearchHit
from .rerank import RankedText, rerank_texts
from .retrieval import HybridStore
from .sparse import SparseVector
from .store_encode import encode_with_store, fetch_encodings

__all__ = [
    "DEFAULT_MODEL",
    "CheckpointError",
    "CheckpointUnavailableError",
    "EncodedBatch",
    "EncodingStore",
    "EncodingStoreStats",
    "HybridStore",
    "IndexFormatError",
    "M3Embedder",
    "M3Index",
    "M3Output",
    "MilvusStore",
    "MissingHeadError",
    "ModelMismatchError",
    "PackedEncodings",
    "QdrantStore",
    "RankedText",
    "Record",
    "SearchHit",
    "SparseVector",
    "StoredEncoding",
    "encode_with_store",
    "fetch_encodings",
    "rerank_texts",
]

__version__ = "0.1.0"
