"""An optional final stage: a cross-encoder (e.g. ``BAAI/bge-reranker-v2-m3``) over the top hybrid hits,
and sentence-transformers interop for BGE-M3 checkpoints.

The three-stage pipeline is: dense/sparse candidates -> exact hybrid rerank -> cross-encoder on
the top ``n``. The cross-encoder runs through ``sentence_transformers.CrossEncoder`` (extra
``m3-rag[rerank]``); any object with a ``predict(pairs, batch_size=...)`` method works too.
"""

from __future__ import annotations

import dataclasses
import json
import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from .ranking import SearchHit, top_k

__all__ = [
    "CrossEncoderLike",
    "apply_cross_encoder",
    "cross_encoder_scores",
    "load_cross_encoder",
    "write_sentence_transformers_config",
]

_INSTALL = 'pip install "m3-rag[rerank]"'
_LOADED: dict[str, Any] = {}
_LOCK = threading.Lock()


@runtime_checkable
class CrossEncoderLike(Protocol):
    """What the final stage needs: ``sentence_transformers.CrossEncoder`` has this method."""

    def predict(self, sentences: Any, batch_size: int = ..., show_progress_bar: bool | None = ...) -> Any: ...


def _sentence_transformers() -> Any:
    try:
        import sentence_transformers
    except ImportError as exc:
        raise ImportError(f"the cross-encoder stage needs sentence-transformers: {_INSTALL}") from exc
    return sentence_transformers


def load_cross_encoder(model: str | CrossEncoderLike, *, device: str | None = None) -> CrossEncoderLike:
    """A cross-encoder from a model name or folder (loaded once per process), or ``model`` itself.

    >>> ce = load_cross_encoder("tests/data/tiny-cross-encoder", device="cpu")
    >>> ce is load_cross_encoder("tests/data/tiny-cross-encoder", device="cpu")
    True
    """
    if not isinstance(model, (str, Path)):
        if not isinstance(model, CrossEncoderLike):
            raise TypeError(
                "cross_encoder must be a model name, a folder or an object with predict(pairs), "
                f"got {type(model).__name__}"
            )
        return model
    key = f"{model}|{device}"
    with _LOCK:
        if key not in _LOADED:
            _LOADED[key] = _load(str(model), device)
        return _LOADED[key]


def _load(name: str, device: str | None) -> CrossEncoderLike:
    """Load with sentence-transformers, failing fast (one line) without network, as BGE-M3 loads do."""
    from .checkpoint import CheckpointUnavailableError, probe_hub

    st = _sentence_transformers()
    local = Path(name).is_dir()
    offline = os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")
    reason = None if local or offline else probe_hub(name)
    try:
        return st.CrossEncoder(name, device=device, local_files_only=offline or reason is not None)
    except OSError as exc:
        if local:
            raise
        why = f"cannot reach the Hugging Face hub ({reason})" if reason else "HF_HUB_OFFLINE=1 is set"
        raise CheckpointUnavailableError(
            f"{why} to download the cross-encoder {name!r}, and it is not in the cache",
            "Pass a local folder, or download it once with network access",
        ) from exc


def cross_encoder_scores(
    cross_encoder: str | CrossEncoderLike, query: str, texts: Sequence[str], *, batch_size: int = 32
) -> np.ndarray:
    """(len(texts),) relevance scores of ``(query, text)`` pairs, predicted in batches."""
    if len(texts) == 0:
        return np.zeros(0, dtype=np.float64)
    model = load_cross_encoder(cross_encoder)
    raw = model.predict([(query, text) for text in texts], batch_size=batch_size, show_progress_bar=False)
    scores = np.asarray(raw, dtype=np.float64).reshape(len(texts), -1)
    if scores.shape[1] != 1:
        raise ValueError(f"the cross-encoder gave {scores.shape[1]} scores per pair; expected one (a relevance score)")
    return scores[:, 0]


def apply_cross_encoder(
    cross_encoder: str | CrossEncoderLike,
    query: str,
    hits: Sequence[SearchHit],
    *,
    k: int | None = None,
    batch_size: int = 32,
) -> list[SearchHit]:
    """Reorder ``hits`` by cross-encoder score, best first, and keep the best ``k`` (all if None).

    Each returned hit's ``score`` is the cross-encoder's; ``scores`` keeps the per-mode scores and
    gains ``"hybrid"`` (the hit's previous score) and ``"cross_encoder"``. Ties keep the hybrid order.
    """
    values = cross_encoder_scores(cross_encoder, query, [hit.text for hit in hits], batch_size=batch_size)
    return [
        dataclasses.replace(
            hits[i],
            score=float(values[i]),
            scores={**hits[i].scores, "hybrid": hits[i].score, "cross_encoder": float(values[i])},
        )
        for i in top_k(values, k or len(hits)).tolist()
    ]


def write_sentence_transformers_config(folder: str | Path, *, max_seq_length: int = 8192) -> Path:
    """Make a BGE-M3 checkpoint folder readable by ``SentenceTransformer`` (CLS pooling + normalise).

    Writes ``modules.json``, ``sentence_bert_config.json``, ``1_Pooling/config.json`` and
    ``2_Normalize/``, as ``BAAI/bge-m3`` ships them; existing files are left as they are. The dense
    vectors of ``SentenceTransformer(folder)`` then equal m3-rag's dense output (same tokenizer:
    note that transformers 5 can rebuild an XLM-R tokenizer without the normaliser that
    ``tokenizer.json`` defines, which changes non-ASCII text; m3-rag reads ``tokenizer.json`` as is).
    """
    folder = Path(folder)
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    hidden = int(config["hidden_size"])
    positions = int(config.get("max_position_embeddings", 514)) - 2
    files = {
        "modules.json": [
            {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
            {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
            {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},
        ],
        "sentence_bert_config.json": {"max_seq_length": min(max_seq_length, positions), "do_lower_case": False},
        "1_Pooling/config.json": {
            "word_embedding_dimension": hidden,
            "pooling_mode_cls_token": True,
            "pooling_mode_mean_tokens": False,
            "pooling_mode_max_tokens": False,
            "pooling_mode_mean_sqrt_len_tokens": False,
        },
    }
    for name, content in files.items():
        path = folder / name
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(content, indent=2) + "\n", encoding="utf-8")
    (folder / "2_Normalize").mkdir(exist_ok=True)
    return folder
