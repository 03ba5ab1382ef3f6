"""The network: an XLM-RoBERTa backbone with BGE-M3's dense, sparse and ColBERT heads.

Each head is a small ``nn.Module`` (as in sentence-transformers' ``models/Dense.py``); the
formulas are those of FlagEmbedding's ``EncoderOnlyEmbedderM3Model``:

- dense: ``normalize(H[:, 0])``
- sparse: ``relu(sparse_linear(H))``, one weight per token
- ColBERT: ``normalize(colbert_linear(H[:, 1:]))`` at the non-padding positions

Heads load with ``torch.load(..., weights_only=True)``; a missing head is ``None`` and asking
for its mode raises :class:`~m3_rag.errors.MissingHeadError`.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .checkpoint import COLBERT_HEAD, SPARSE_HEAD, check_config_fits_weights, read_config
from .errors import CheckpointError, MissingHeadError
from .fingerprint import SAMPLES_PER_TENSOR, StoredTensors, checkpoint_fingerprint, load_state_dict, sample_positions
from .tokenizer import read_special_tokens

__all__ = [
    "ColbertHead",
    "M3Forward",
    "M3Model",
    "SparseHead",
    "legacy_fingerprint",
    "load_head",
    "load_model",
    "model_fingerprint",
]

logger = logging.getLogger(__name__)


class SparseHead(nn.Module):
    """``relu(Linear(hidden, 1))``: one lexical weight per token, shape (N, hidden) -> (N,)."""

    def __init__(self, hidden_size: int) -> None:
        super().__init__()
        self.linear = nn.Linear(hidden_size, 1)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.linear(hidden)).squeeze(-1)


class ColbertHead(nn.Module):
    """``normalize(Linear(hidden, dim))``: one unit vector per token, (N, hidden) -> (N, dim)."""

    def __init__(self, hidden_size: int, dim: int) -> None:
        super().__init__()
        self.linear = nn.Linear(hidden_size, dim)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.linear(hidden), dim=-1)


class M3Forward(NamedTuple):
    """What one forward pass gives, on the model's device.

    - ``dense``: (B, d) unit vectors, or None
    - ``sparse``: (N,) weights of the ``N`` non-padding tokens in row-major order, or None
    - ``colbert``: (M, d) unit vectors of the non-padding tokens after ``<s>``, row-major, or None
    """

    dense: torch.Tensor | None
    sparse: torch.Tensor | None
    colbert: torch.Tensor | None


class M3Model(nn.Module):
    """Backbone plus heads. ``forward`` computes only the modes asked for."""

    def __init__(self, backbone: nn.Module, sparse: SparseHead | None, colbert: ColbertHead | None) -> None:
        super().__init__()
        self.backbone = backbone
        self.config: Any = backbone.config
        #: :func:`~m3_rag.fingerprint.checkpoint_fingerprint` of the files it was loaded from ("" if built by hand)
        self.fingerprint = ""
        #: the heads-only fingerprint that m3-rag recorded before the whole-checkpoint one ("" if built by hand)
        self.legacy_fingerprint = ""
        self.sparse_head = sparse
        self.colbert_head = colbert

    @property
    def hidden_size(self) -> int:
        return int(self.config.hidden_size)

    @property
    def colbert_dim(self) -> int | None:
        return None if self.colbert_head is None else int(self.colbert_head.linear.out_features)

    def check_modes(self, *, sparse: bool, colbert: bool, source: str = "this checkpoint") -> None:
        """Raise :class:`MissingHeadError` when a requested mode has no head."""
        if sparse and self.sparse_head is None:
            raise MissingHeadError(
                f"sparse output was asked for but {source} has no {SPARSE_HEAD}; "
                "use a full BGE-M3 checkpoint or pass sparse=False"
            )
        if colbert and self.colbert_head is None:
            raise MissingHeadError(
                f"ColBERT output was asked for but {source} has no {COLBERT_HEAD}; "
                "use a full BGE-M3 checkpoint or pass colbert=False"
            )

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        *,
        dense: bool = True,
        sparse: bool = False,
        colbert: bool = False,
    ) -> M3Forward:
        """Run the encoder once. ``input_ids`` and ``attention_mask`` are (B, L), right-padded."""
        self.check_modes(sparse=sparse, colbert=colbert)
        hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        dense_out = F.normalize(hidden[:, 0], dim=-1) if dense else None
        sparse_out = colbert_out = None
        if sparse:
            assert self.sparse_head is not None
            sparse_out = self.sparse_head(hidden[attention_mask.bool()])
        if colbert:
            assert self.colbert_head is not None
            colbert_out = self.colbert_head(hidden[:, 1:][attention_mask[:, 1:].bool()])
        return M3Forward(dense_out, sparse_out, colbert_out)


def _read_state(path: Path) -> dict[str, torch.Tensor]:
    """Read a plain ``nn.Linear`` state dict (as BGE-M3 ships its heads), through
    :func:`~m3_rag.fingerprint.load_state_dict`: only tensors, pickled code refused unrun."""
    state = load_state_dict(path)
    if not isinstance(state.get("weight"), torch.Tensor):
        raise CheckpointError(
            f"{path.name} should hold the state dict of an nn.Linear (keys 'weight', 'bias'), got keys {sorted(state)}"
        )
    return state


def load_head(path: Path, hidden_size: int) -> SparseHead | ColbertHead:
    """Build the head stored in ``path`` (sparse if it has one output, else ColBERT)."""
    state = _read_state(path)
    out_features = int(state["weight"].shape[0])
    head: SparseHead | ColbertHead
    head = SparseHead(hidden_size) if path.name == SPARSE_HEAD else ColbertHead(hidden_size, out_features)
    try:
        head.linear.load_state_dict(state)
    except RuntimeError as exc:
        raise CheckpointError(f"{path.name} does not fit an encoder of hidden size {hidden_size}: {exc}") from exc
    return head


_IGNORED_KEYS = re.compile(r"(^|\.)(pooler|lm_head)\.|(^|\.)(position_ids|token_type_ids)$")


def _check_loading_info(info: dict[str, Any], folder: Path) -> None:
    """Refuse a backbone that transformers would silently complete with random weights."""
    missing = [k for k in info.get("missing_keys") or () if not _IGNORED_KEYS.search(k)]
    unexpected = [k for k in info.get("unexpected_keys") or () if not _IGNORED_KEYS.search(k)]
    mismatched = list(info.get("mismatched_keys") or ())
    if missing or mismatched:
        names = sorted(missing) + [str(m[0]) if isinstance(m, tuple) else str(m) for m in mismatched]
        raise CheckpointError(
            f"the weights of {folder} do not fill the model that config.json describes: {len(names)} tensors are "
            f"missing or of another shape ({', '.join(names[:3])}...); they would be random. Use the config.json "
            "that belongs to these weights"
        )
    if unexpected:
        raise CheckpointError(
            f"the weights of {folder} hold {len(unexpected)} tensors that the model config.json describes does not "
            f"use ({', '.join(sorted(unexpected)[:3])}...); use the config.json that belongs to these weights"
        )


def _load_backbone(
    folder: Path, dtype: torch.dtype, trust_remote_code: bool, attn_implementation: str | None
) -> nn.Module:
    import transformers
    from transformers import AutoConfig, AutoModel

    config = AutoConfig.from_pretrained(folder, trust_remote_code=trust_remote_code)
    kwargs: dict[str, object] = {"trust_remote_code": trust_remote_code, "output_loading_info": True}
    if getattr(config, "model_type", None) in {"xlm-roberta", "roberta", "bert"}:
        kwargs["add_pooling_layer"] = False  # the pooler is unused: skip its compute
    if attn_implementation is not None:
        kwargs["attn_implementation"] = attn_implementation
    major, minor = (int(x) for x in transformers.__version__.split(".")[:2])
    kwargs["dtype" if (major, minor) >= (4, 56) else "torch_dtype"] = dtype
    hf_logging = transformers.utils.logging
    previous, bar = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()  # silence "unused pooler weights" and the per-tensor bar
    hf_logging.disable_progress_bar()
    try:
        model, info = AutoModel.from_pretrained(folder, config=config, **kwargs)
    finally:
        hf_logging.set_verbosity(previous)
        if bar:
            hf_logging.enable_progress_bar()
    _check_loading_info(info, folder)
    return model.eval()


def _head_tensors(model: M3Model) -> Iterator[tuple[str, torch.Tensor]]:
    for name, head in ((SPARSE_HEAD, model.sparse_head), (COLBERT_HEAD, model.colbert_head)):
        if head is not None:
            yield f"{name}:weight", head.linear.weight
            yield f"{name}:bias", head.linear.bias


def load_model(
    folder: Path,
    *,
    device: torch.device,
    dtype: torch.dtype,
    trust_remote_code: bool = False,
    attn_implementation: str | None = None,
) -> M3Model:
    """Load backbone and heads from a checkpoint folder onto ``device`` in ``dtype``.

    ``config.json`` and the weight files are checked first (:func:`~m3_rag.checkpoint.read_config`,
    :func:`~m3_rag.checkpoint.check_config_fits_weights`); a problem is a :class:`CheckpointError`
    naming the file. The model's ``fingerprint`` is that of the files
    (:func:`~m3_rag.fingerprint.checkpoint_fingerprint`), the same for any ``device`` and ``dtype``.
    """
    raw_config = read_config(folder, trust_remote_code=trust_remote_code)
    stored = StoredTensors(folder)
    check_config_fits_weights(raw_config, stored.shapes, folder, " + ".join(p.name for p in stored.files))
    try:
        backbone = _load_backbone(folder, dtype, trust_remote_code, attn_implementation)
    except CheckpointError:
        raise
    except Exception as exc:
        message = " ".join(str(exc).split())[:300]
        raise CheckpointError(f"could not load the encoder of {folder}: {type(exc).__name__}: {message}") from exc
    config: Any = backbone.config
    hidden = int(config.hidden_size)
    heads: dict[str, nn.Module | None] = {}
    for name in (SPARSE_HEAD, COLBERT_HEAD):
        if (folder / name).is_file():
            heads[name] = load_head(folder / name, hidden)
        else:
            heads[name] = None
            logger.info("%s has no %s: that output is unavailable", folder, name)
    sparse, colbert = heads[SPARSE_HEAD], heads[COLBERT_HEAD]
    assert sparse is None or isinstance(sparse, SparseHead)
    assert colbert is None or isinstance(colbert, ColbertHead)
    model = M3Model(backbone, sparse, colbert)
    # both from the heads as stored (float32 copies of the file's values), before any cast
    legacy = legacy_fingerprint(model)
    fingerprint = checkpoint_fingerprint(
        folder,
        config=raw_config,
        heads=list(_head_tensors(model)),
        special_tokens=read_special_tokens(folder),
        stored=stored,
    )
    model = model.to(device=device, dtype=dtype).eval()
    model.fingerprint, model.legacy_fingerprint = fingerprint, legacy
    return model


def model_fingerprint(model: M3Model, *, samples: int = SAMPLES_PER_TENSOR) -> str:
    """A fingerprint of a model built in memory (not by :func:`load_model`), from its parameters.

    It hashes the config's sizes and, for every floating-point tensor of the state dict, its
    name, shape and ``samples`` evenly spread values as float32, so unlike the
    fingerprint of :func:`load_model` (read from the files) it depends on the dtype the
    model is in now. Another model (any fine-tuning) has another fingerprint.
    """
    digest = hashlib.sha256(b"m3-rag in-memory model fingerprint v1\n")
    config = model.config
    digest.update(f"{config.model_type}:{config.hidden_size}:{config.vocab_size}:{model.colbert_dim}\n".encode())
    for name, tensor in sorted(model.state_dict().items()):
        if not tensor.is_floating_point():
            continue
        flat = tensor.detach().reshape(-1)
        picked = flat[torch.from_numpy(sample_positions(flat.numel(), samples)).to(flat.device)]
        digest.update(f"{name}|{tensor.dtype!s}|{list(tensor.shape)}\n".encode())
        digest.update(picked.float().cpu().numpy().astype(np.dtype("<f4")).tobytes())
    return digest.hexdigest()[:32]


def legacy_fingerprint(model: M3Model) -> str:
    """The fingerprint that m3-rag recorded before the whole-checkpoint one: dimensions and heads only.

    It does not see the backbone (a checkpoint with other encoder weights and the same heads has
    the same one); it is kept so that indexes and Milvus collections saved with it can still be
    recognised. New ones record :func:`~m3_rag.fingerprint.checkpoint_fingerprint`. Call it before changing the
    model's dtype (:func:`load_model` does, and stores it as ``model.legacy_fingerprint``).
    """
    digest = hashlib.sha256()
    config = model.config
    digest.update(f"{config.model_type}:{config.hidden_size}:{config.vocab_size}:{model.colbert_dim}".encode())
    for head in (model.sparse_head, model.colbert_head):
        if head is not None:
            for tensor in (head.linear.weight, head.linear.bias):
                digest.update(tensor.detach().float().cpu().numpy().tobytes())
    return digest.hexdigest()[:16]
