"""What the LlamaIndex adapters share: picking the model, and scores in node metadata."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from llama_index.core.schema import BaseNode

from .._embedder import resolve_embedder

__all__ = ["SCORE_KEYS", "STAGE_SCORE_KEYS", "resolve_embedder", "with_scores"]

#: Metadata keys that hold the per-mode scores on returned nodes.
SCORE_KEYS: dict[str, str] = {"dense": "dense_score", "sparse": "sparse_score", "colbert": "colbert_score"}
#: With a cross-encoder final stage, also the hybrid score it replaced and its own score.
STAGE_SCORE_KEYS: dict[str, str] = {**SCORE_KEYS, "hybrid": "hybrid_score", "cross_encoder": "cross_encoder_score"}


def _merged(keys: Sequence[str], more: Sequence[str]) -> list[str]:
    return list(dict.fromkeys([*keys, *more]))


def with_scores(node: BaseNode, scores: Mapping[str, float], extra: Mapping[str, Any] | None = None) -> BaseNode:
    """A copy of ``node`` whose metadata also holds the per-mode scores (and ``extra``).

    The added keys are excluded from what the LLM and the embedding model see, so scores do not
    leak into prompts or into a later re-embedding. The input node is not changed.
    """
    added = {STAGE_SCORE_KEYS[mode]: float(value) for mode, value in scores.items()}
    added.update(extra or {})
    copy = node.model_copy()
    copy.metadata = {**node.metadata, **added}
    copy.excluded_llm_metadata_keys = _merged(node.excluded_llm_metadata_keys, list(added))
    copy.excluded_embed_metadata_keys = _merged(node.excluded_embed_metadata_keys, list(added))
    return copy
