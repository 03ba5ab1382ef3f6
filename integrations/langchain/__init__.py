"""LangChain adapters for BGE-M3: embeddings, hybrid vector store, hybrid retriever and hybrid reranker.

Needs ``langchain-core`` (``pip install "m3-rag[langchain]"``); the sparse adapters for vector
stores live in :mod:`m3_rag.integrations.langchain_qdrant` and
:mod:`m3_rag.integrations.langchain_milvus`. Every adapter takes ``model_name`` (hub id or
local folder) or ``embedder`` (an :class:`~m3_rag.M3Embedder` you loaded); adapters of the
same model share one loaded model per process.

>>> from m3_rag.integrations.langchain import M3Embeddings, M3HybridRetriever, M3Reranker
>>> retriever = M3HybridRetriever.from_texts(
...     ["Berlin is the capital of Germany.", "Paris is in France.", "Rome is in Italy."],
...     model_name="tests/data/tiny-m3", device="cpu", k=2)
>>> docs = retriever.invoke("capital of Germany")
>>> reranked = M3Reranker(model_name="tests/data/tiny-m3", device="cpu", top_n=1).compress_documents(
...     docs, "capital of Germany")
>>> embeddings = M3Embeddings(model_name="tests/data/tiny-m3", device="cpu")
>>> len(docs), len(reranked), embeddings.model is retriever.index.embedder  # one model per process
(2, 1, True)
"""

from __future__ import annotations

try:
    import langchain_core  # noqa: F401  (first: a missing package must fail here, with the hint)
except ImportError as exc:  # pragma: no cover - exercised by a test that hides langchain_core
    raise ImportError(
        f"m3_rag.integrations.langchain needs langchain-core, which is not installed ({exc}); "
        'install it with: pip install "m3-rag[langchain]"'
    ) from exc

from m3_rag.encode_cache import EncodingCache

from ._common import SCORE_KEYS
from .embeddings import M3Embeddings
from .reranker import M3Reranker
from .retriever import M3HybridRetriever
from .vectorstore import M3VectorStore

__all__ = ["SCORE_KEYS", "EncodingCache", "M3Embeddings", "M3HybridRetriever", "M3Reranker", "M3VectorStore"]
