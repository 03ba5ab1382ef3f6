"""What the LlamaIndex adapters share: picking the model, and LlamaIndex's ``retrieval_score`` convention."""

from __future__ import annotations

from llama_index.core.schema import BaseNode

from .._embedder import resolve_embedder

__all__ = ["RETRIEVAL_SCORE_KEY", "resolve_embedder", "with_retrieval_score"]

#: Where LlamaIndex's rerankers keep the score before reranking when ``keep_retrieval_score=True``.
RETRIEVAL_SCORE_KEY = "retrieval_score"


def _merged(keys: list[str], more: list[str]) -> list[str]:
    return list(dict.fromkeys([*keys, *more]))


def with_retrieval_score(node: BaseNode, score: float | None) -> BaseNode:
    """A copy of ``node`` whose metadata also holds ``retrieval_score`` (LlamaIndex's convention).

    The key is excluded from what the LLM and the embedding model see. This changes the copy's
    ``hash`` (metadata is part of it), which is why it only happens when asked for. The input
    node is not changed.
    """
    copy = node.model_copy()
    copy.metadata = {**node.metadata, RETRIEVAL_SCORE_KEY: score}
    copy.excluded_llm_metadata_keys = _merged(node.excluded_llm_metadata_keys, [RETRIEVAL_SCORE_KEY])
    copy.excluded_embed_metadata_keys = _merged(node.excluded_embed_metadata_keys, [RETRIEVAL_SCORE_KEY])
    return copy
