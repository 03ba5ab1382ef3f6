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

import logging
from pathlib import Path
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from .checkpoint import COLBERT_HEAD, SPARSE_HEAD
from .errors import CheckpointError, MissingHeadError

__all__ = ["ColbertHead", "M3Forward", "M3Model", "SparseHead", "load_head", "load_model", "model_fingerprint"]

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
        self.fingerprint = ""
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
    """Read a plain ``nn.Linear`` state dict (as BGE-M3 ships its heads).

    Only tensors are accepted (``weights_only=True``): a file that carries other pickled
    objects is refused without running them.
    """
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(
            f"could not load {path.name} as a plain state dict of tensors ({type(exc).__name__}: {exc}); "
            "m3-rag loads heads with weights_only=True and refuses pickled code"
        ) from exc
    if not isinstance(state, dict) or not isinstance(state.get("weight"), torch.Tensor):
        raise CheckpointError(
            f"{path.name} should hold the state dict of an nn.Linear (keys 'weight', 'bias'), "
            f"got {type(state).__name__}"
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


def _load_backbone(
    folder: Path, dtype: torch.dtype, trust_remote_code: bool, attn_implementation: str | None
) -> nn.Module:
    import transformers
    from transformers import AutoConfig, AutoModel

    config = AutoConfig.from_pretrained(folder, trust_remote_code=trust_remote_code)
    kwargs: dict[str, object] = {"trust_remote_code": trust_remote_code}
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
        model = AutoModel.from_pretrained(folder, config=config, **kwargs)
    finally:
        hf_logging.set_verbosity(previous)
        if bar:
            hf_logging.enable_progress_bar()
    return model.eval()


def load_model(
    folder: Path,
    *,
    device: torch.device,
    dtype: torch.dtype,
    trust_remote_code: bool = False,
    attn_implementation: str | None = None,
) -> M3Model:
    """Load backbone and heads from a checkpoint folder onto ``device`` in ``dtype``."""
    try:
        backbone = _load_backbone(folder, dtype, trust_remote_code, attn_implementation)
    except CheckpointError:
        raise
    except Exception as exc:
        raise CheckpointError(f"could not load the encoder of {folder}: {type(exc).__name__}: {exc}") from exc
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
    fingerprint = model_fingerprint(model)  # from the heads as stored, before any cast
    model = model.to(device=device, dtype=dtype).eval()
    model.fingerprint = fingerprint
    return model


def model_fingerprint(model: M3Model) -> str:
    """A short hash that identifies a checkpoint whatever its path, name, device or dtype.

    Covers the dimensions and both heads' weights; call it before changing the model's dtype
    (:func:`load_model` does, and stores it as ``model.fingerprint``).
    """
    import hashlib

    digest = hashlib.sha256()
    config = model.config
    digest.update(f"{config.model_type}:{config.hidden_size}:{config.vocab_size}:{model.colbert_dim}".encode())
    for head in (model.sparse_head, model.colbert_head):
        if head is not None:
            for tensor in (head.linear.weight, head.linear.bias):
                digest.update(tensor.detach().float().cpu().numpy().tobytes())
    return digest.hexdigest()[:16]
