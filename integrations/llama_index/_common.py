"""What the LlamaIndex adapters share: picking the model, and scores in node metadata."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from llama_index.core.schema import BaseNode

from m3_rag import DEFAULT_MODEL, M3Embedder

__all__ = ["SCORE_KEYS", "STAGE_SCORE_KEYS", "resolve_embedder", "with_scores"]

#: Metadata keys that hold the per-mode scores on returned nodes.
SCORE_KEYS: dict[str, str] = {"dense": "dense_score", "sparse": "sparse_score", "colbert": "colbert_score"}
#: With a cross-encoder final stage, also the hybrid score it replaced and its own score.
STAGE_SCORE_KEYS: dict[str, str] = {**SCORE_KEYS, "hybrid": "hybrid_score", "cross_encoder": "cross_encoder_score"}


def resolve_embedder(
    model_name: str | os.PathLike[str] | None,
    embedder: M3Embedder | None,
    *,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
) -> M3Embedder:
    """The model an adapter uses: ``embedder`` as given, or the process-wide shared model.

    ``model_name`` (default ``"BAAI/bge-m3"``) goes through :meth:`M3Embedder.shared`, so
    adapters built from the same name, device and dtype share one loaded model.
    """
    if embedder is not None:
        if model_name is not None:
            raise ValueError(
                f"pass either model_name or embedder, not both (got model_name={str(model_name)!r} and "
                f"embedder={embedder!r}); the embedder already names its model"
            )
        if device is not None or dtype is not None:
            raise ValueError(
                "device and dtype apply when loading by model_name; an embedder is already loaded "
                f"on {embedder.device} as {embedder.dtype}"
            )
        if not isinstance(embedder, M3Embedder):
            raise TypeError(
                f"embedder must be an m3_rag.M3Embedder, got {type(embedder).__name__}; "
                "load one with M3Embedder.from_pretrained(...) or pass model_name instead"
            )
        return embedder
    if model_name is not None and not isinstance(model_name, (str, os.PathLike)):
        raise TypeError(f"model_name must be a hub id or a folder path, got {type(model_name).__name__}")
    return M3Embedder.shared(model_name or DEFAULT_MODEL, device=device, dtype=dtype)


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
