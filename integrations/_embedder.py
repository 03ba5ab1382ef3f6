"""The one rule every adapter uses to pick its model (no framework imported here)."""

from __future__ import annotations

import os
from typing import Any

from m3_rag.encoder import DEFAULT_MODEL, M3Embedder

__all__ = ["resolve_embedder"]


def resolve_embedder(
    model_name: str | os.PathLike[str] | None,
    embedder: M3Embedder | None,
    *,
    device: Any = None,
    dtype: Any = None,
) -> M3Embedder:
    """The model an adapter uses: ``embedder`` as given, or the process-wide shared model.

    ``model_name`` (default ``"BAAI/bge-m3"``) goes through :meth:`M3Embedder.shared`, so
    adapters built from the same name, device and dtype share one loaded model. An ``embedder``
    is already loaded, so passing it with a ``model_name``, ``device`` or ``dtype`` is an error
    rather than a silent choice.

    >>> resolve_embedder("BAAI/bge-m3", M3Embedder.__new__(M3Embedder))
    Traceback (most recent call last):
    ...
    ValueError: pass either model_name or embedder, not both (got model_name='BAAI/bge-m3'); ...
    """
    if embedder is not None:
        if not isinstance(embedder, M3Embedder):
            raise TypeError(
                f"embedder must be an m3_rag.M3Embedder, got {type(embedder).__name__}; "
                "load one with M3Embedder.from_pretrained(...) or pass model_name instead"
            )
        if model_name is not None:
            raise ValueError(
                f"pass either model_name or embedder, not both (got model_name={str(model_name)!r}); "
                "the embedder already names its model"
            )
        if device is not None or dtype is not None:
            raise ValueError(
                "device and dtype apply when loading by model_name; an embedder is already loaded "
                f"on {embedder.device} as {embedder.dtype}"
            )
        return embedder
    if model_name is not None and not isinstance(model_name, (str, os.PathLike)):
        raise TypeError(f"model_name must be a hub id or a folder path, got {type(model_name).__name__}")
    return M3Embedder.shared(model_name or DEFAULT_MODEL, device=device, dtype=dtype)
