"""``M3Embedder``: tokenise, batch by token budget, run the network once, return ``M3Output``."""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from .batching import pad_batch, plan_batches
from .checkpoint import resolve_checkpoint
from .devices import resolve_device, resolve_dtype
from .model import M3Model, legacy_fingerprint, load_model, model_fingerprint
from .output import EncodedBatch, M3Output
from .pair_scores import compute_pair_scores
from .records import check_texts
from .sparse import SparseVector
from .tokenizer import M3Tokenizer

__all__ = ["CPU_BATCH_TOKENS", "DEFAULT_MODEL", "M3Embedder"]

logger = logging.getLogger(__name__)

DEFAULT_MODEL = "BAAI/bge-m3"
#: Padded tokens per forward pass on the CPU (on CUDA: 32768), unless ``max_batch_tokens`` says.
CPU_BATCH_TOKENS = 2048
_PROGRESS_MIN_TEXTS = 1000  # show_progress=None shows a bar from this many texts on
_SHARED: dict[tuple[str, str, str], M3Embedder] = {}
_SHARED_LOCK = threading.Lock()


_check_texts = check_texts  # the one check of texts (lone surrogates refused): m3_rag.records


class M3Embedder:
    """BGE-M3: dense, sparse and ColBERT outputs from one forward pass.

    Load with :meth:`from_pretrained`; one instance is safe to share between threads and
    between adapters (one model per process).

    Example:
        >>> from m3_rag import M3Embedder
        >>> m3 = M3Embedder.from_pretrained("tests/data/tiny-m3")
        >>> out = m3.encode(["What is BGE-M3?", "A multilingual encoder."])
        >>> out.dense.shape, len(out.sparse), out.colbert[0].shape[1]
        ((2, 32), 2, 32)
    """

    def __init__(
        self,
        model: M3Model,
        tokenizer: M3Tokenizer,
        *,
        name: str,
        max_batch_tokens: int | None = None,
        batch_size: int | None = None,
        query_max_length: int = 512,
        passage_max_length: int | None = None,
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.name = name
        param = next(model.parameters())
        self.device: torch.device = param.device
        self.dtype: torch.dtype = param.dtype
        config = model.config
        positions = int(getattr(config, "max_position_embeddings", 514))
        offset = int(getattr(config, "pad_token_id", 1) or 0) + 1 if config.model_type == "xlm-roberta" else 0
        #: The most tokens (with ``<s>`` and ``</s>``) the model takes: 8192 for BGE-M3.
        self.max_length: int = positions - offset
        self.vocab_size: int = max(int(config.vocab_size), tokenizer.vocab_size)
        # CPU: small batches keep each layer's activations in cache; 2,048 tokens encoded short
        # passages 1.7x, long documents 6.1x FlagEmbedding, up from 1.5x and 3.8x (benchmarks/README.md)
        self.max_batch_tokens = max_batch_tokens or (32768 if self.device.type == "cuda" else CPU_BATCH_TOKENS)
        self.batch_size = batch_size
        self.query_max_length = self._check_max_length(query_max_length)
        self.passage_max_length = self._check_max_length(passage_max_length or self.max_length)
        self._unused_ids = torch.from_numpy(tokenizer.unused_ids).to(self.device)

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | os.PathLike[str] = DEFAULT_MODEL,
        *,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = None,
        revision: str | None = None,
        cache_dir: str | os.PathLike[str] | None = None,
        token: str | bool | None = None,
        local_files_only: bool = False,
        trust_remote_code: bool = False,
        attn_implementation: str | None = None,
        max_batch_tokens: int | None = None,
        batch_size: int | None = None,
        query_max_length: int = 512,
        passage_max_length: int | None = None,
    ) -> M3Embedder:
        """Load a BGE-M3 checkpoint from the hub (``"BAAI/bge-m3"``) or a local folder.

        Args:
            name_or_path: hub id or folder with BGE-M3's layout.
            device: ``"cuda"``, ``"mps"``, ``"cpu"`` (optionally ``"cuda:1"``...); ``None`` picks
                cuda, then mps, then cpu.
            dtype: ``"float32"``, ``"float16"``/``"fp16"``, ``"bfloat16"``/``"bf16"`` or a torch
                dtype; ``None`` is float16 on CUDA and float32 elsewhere.
            revision, cache_dir, token, local_files_only: passed to the hub download
                (``HF_HUB_OFFLINE=1`` reads the cache only).
            trust_remote_code: off unless you turn it on.
            attn_implementation: e.g. ``"sdpa"`` or ``"eager"``; ``None`` lets transformers pick.
            max_batch_tokens: padded tokens per forward pass (default 32768 on CUDA, else 2048).
            batch_size: optional cap on texts per forward pass.
            query_max_length: default ``max_length`` of :meth:`encode_queries` (512).
            passage_max_length: default of :meth:`encode` and :meth:`encode_documents` (the
                model's limit, 8192 for BGE-M3).
        """
        torch_device = resolve_device(device)
        torch_dtype = resolve_dtype(dtype, torch_device)
        folder = resolve_checkpoint(
            name_or_path, revision=revision, cache_dir=cache_dir, token=token, local_files_only=local_files_only
        )
        tokenizer = M3Tokenizer.from_folder(folder)
        model = load_model(
            folder,
            device=torch_device,
            dtype=torch_dtype,
            trust_remote_code=trust_remote_code,
            attn_implementation=attn_implementation,
        )
        # a local folder is recorded by its absolute path, so that a saved index finds it again
        name = str(Path(name_or_path).resolve()) if Path(name_or_path).is_dir() else str(name_or_path)
        return cls(
            model,
            tokenizer,
            name=name,
            max_batch_tokens=max_batch_tokens,
            batch_size=batch_size,
            query_max_length=query_max_length,
            passage_max_length=passage_max_length,
        )

    @classmethod
    def shared(
        cls,
        name_or_path: str | os.PathLike[str] = DEFAULT_MODEL,
        *,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = None,
        **kwargs: Any,
    ) -> M3Embedder:
        """One loaded model per (name, device, dtype) in this process: what the adapters use.

        The first call loads with :meth:`from_pretrained` (``kwargs`` go there); later calls with
        the same name, device and dtype return the same instance.

        >>> M3Embedder.shared("tests/data/tiny-m3") is M3Embedder.shared("tests/data/tiny-m3")
        True
        """
        torch_device = resolve_device(device)
        torch_dtype = resolve_dtype(dtype, torch_device)
        path = Path(name_or_path)
        name = str(path.resolve()) if path.is_dir() else str(name_or_path)
        key = (name, str(torch_device), str(torch_dtype))
        with _SHARED_LOCK:
            if key not in _SHARED:
                _SHARED[key] = cls.from_pretrained(name_or_path, device=torch_device, dtype=torch_dtype, **kwargs)
            return _SHARED[key]

    def __repr__(self) -> str:
        return f"M3Embedder({self.name!r}, device={str(self.device)!r}, dtype={str(self.dtype).removeprefix('torch.')})"

    # ------------------------------------------------------------------ facts
    @property
    def dim(self) -> int:
        """Size of the dense vectors (1024 for BGE-M3)."""
        return self.model.hidden_size

    @property
    def colbert_dim(self) -> int | None:
        """Size of the ColBERT vectors, or None when the checkpoint has no ColBERT head."""
        return self.model.colbert_dim

    @property
    def fingerprint(self) -> str:
        """Identifies the whole checkpoint (backbone, heads, config, tokenizer): indexes record it
        to refuse another model's vectors.

        32 hex digits, the same wherever the checkpoint lies, in safetensors or ``.bin``, on any
        device and in any dtype (see :mod:`m3_rag.fingerprint` for what it hashes and its cost).
        A model built in memory rather than loaded gets :func:`~m3_rag.model.model_fingerprint`.
        """
        return self.model.fingerprint or model_fingerprint(self.model)

    @property
    def legacy_fingerprint(self) -> str:
        """The heads-only fingerprint (16 hex digits) that indexes and Milvus collections saved
        before :attr:`fingerprint` recorded; it does not tell backbones apart."""
        return self.model.legacy_fingerprint or legacy_fingerprint(self.model)

    @property
    def has_sparse(self) -> bool:
        return self.model.sparse_head is not None

    @property
    def has_colbert(self) -> bool:
        return self.model.colbert_head is not None

    def _check_max_length(self, max_length: int | None) -> int:
        if max_length is None:
            return self.passage_max_length
        if isinstance(max_length, bool) or not isinstance(max_length, (int, np.integer)):
            raise TypeError(f"max_length must be an int, got {type(max_length).__name__}")
        if max_length < 2:
            raise ValueError(f"max_length must be >= 2 (room for <s> and </s>), got {max_length}")
        if max_length > self.max_length:
            raise ValueError(
                f"max_length={max_length} is more than this model takes ({self.max_length} tokens); "
                f"pass max_length <= {self.max_length}"
            )
        return int(max_length)

    # ------------------------------------------------------------------ encoding
    def iter_encode(
        self,
        texts: str | Sequence[str],
        *,
        dense: bool = True,
        sparse: bool = True,
        colbert: bool = True,
        max_length: int | None = None,
        batch_size: int | None = None,
        show_progress: bool | None = None,
    ) -> Iterator[EncodedBatch]:
        """Encode batch by batch, longest texts first; each :class:`EncodedBatch` says which
        input positions it holds. Use it to stream a large corpus without holding every
        ColBERT matrix in memory."""
        items = _check_texts(texts)
        max_length = self._check_max_length(max_length)
        if not (dense or sparse or colbert):
            raise ValueError("nothing to compute: pass at least one of dense=True, sparse=True, colbert=True")
        self.model.check_modes(sparse=sparse, colbert=colbert, source=self.name)
        if not items:
            return
        ids, overflow = self.tokenizer.encode_with_overflow(items, max_length)
        truncated = np.asarray(overflow, dtype=bool)
        if truncated.any():
            logger.warning(
                "%d of %d texts were longer than max_length=%d tokens and were truncated",
                int(truncated.sum()),
                len(items),
                max_length,
            )
        lengths = np.fromiter((len(x) for x in ids), dtype=np.int64, count=len(ids))
        batches = plan_batches(lengths, max_tokens=self.max_batch_tokens, max_items=batch_size or self.batch_size)
        show = len(items) >= _PROGRESS_MIN_TEXTS if show_progress is None else show_progress
        with tqdm(total=len(items), desc="Encoding", unit="text", disable=not show) as bar:
            for positions in batches:
                batch_ids = [np.asarray(ids[i], dtype=np.int64) for i in positions.tolist()]
                yield self._encode_batch(
                    positions, batch_ids, truncated[positions], dense=dense, sparse=sparse, colbert=colbert
                )
                bar.update(len(positions))

    def _encode_batch(
        self,
        positions: np.ndarray,
        batch_ids: list[np.ndarray],
        truncated: np.ndarray,
        *,
        dense: bool,
        sparse: bool,
        colbert: bool,
    ) -> EncodedBatch:
        input_np, mask_np = pad_batch(batch_ids, self.tokenizer.pad_id)
        lengths = mask_np.sum(axis=1)
        input_ids = torch.from_numpy(input_np).to(self.device, non_blocking=True)
        mask = torch.from_numpy(mask_np).to(self.device, non_blocking=True)
        fields: dict[str, Any] = {"indices": positions, "truncated": truncated}
        with torch.inference_mode():
            out = self.model(input_ids, mask, dense=dense, sparse=sparse, colbert=colbert)
            if out.dense is not None:
                fields["dense"] = out.dense.float().cpu().numpy()
            if out.sparse is not None:
                fields.update(self._gather_sparse(out.sparse, input_ids[mask.bool()], lengths))
            if out.colbert is not None:
                fields["colbert"] = out.colbert.float().cpu().numpy()
                fields["colbert_offsets"] = np.concatenate([[0], np.cumsum(lengths - 1)])
        return EncodedBatch(**fields)

    def _gather_sparse(self, weights: torch.Tensor, token_ids: torch.Tensor, lengths: np.ndarray) -> dict[str, Any]:
        """Per text, the max weight of each token id, dropping special tokens and weights <= 0.

        ``weights`` and ``token_ids`` are (N,) over the batch's real tokens, row-major.
        """
        rows = torch.repeat_interleave(
            torch.arange(len(lengths), device=weights.device), torch.from_numpy(lengths).to(weights.device)
        )
        keep = (weights > 0) & ~torch.isin(token_ids, self._unused_ids)
        keys = rows[keep] * self.vocab_size + token_ids[keep]
        unique, inverse = torch.unique(keys, sorted=True, return_inverse=True)
        best = torch.zeros(len(unique), dtype=torch.float32, device=weights.device)
        best = best.scatter_reduce(0, inverse, weights[keep].float(), reduce="amax", include_self=False)
        counts = torch.bincount(unique // self.vocab_size, minlength=len(lengths))
        return {
            "sparse_ids": (unique % self.vocab_size).cpu().numpy(),
            "sparse_weights": best.cpu().numpy(),
            "sparse_offsets": np.concatenate([[0], np.cumsum(counts.cpu().numpy())]),
        }

    def encode(
        self,
        texts: str | Sequence[str],
        *,
        dense: bool = True,
        sparse: bool = True,
        colbert: bool = True,
        max_length: int | None = None,
        batch_size: int | None = None,
        show_progress: bool | None = None,
    ) -> M3Output:
        """Encode texts into dense, sparse and ColBERT outputs in one forward pass per batch.

        Args:
            texts: a str (one text) or a sequence of str.
            dense, sparse, colbert: which outputs to compute; the others are None.
            max_length: tokens per text, ``<s>``/``</s>`` included (default: the passage
                maximum, 8192 for BGE-M3); longer texts are truncated with a logged warning.
            batch_size: optional cap on texts per forward pass (batches are otherwise sized by
                the token budget ``max_batch_tokens``).
            show_progress: a progress bar; ``None`` shows one from 1,000 texts on.

        Returns:
            :class:`M3Output` in input order. An empty list gives empty outputs:
            ``dense.shape == (0, dim)``, ``sparse == []``, ``colbert == []``.

        >>> m3 = M3Embedder.from_pretrained("tests/data/tiny-m3")
        >>> out = m3.encode("repeat repeat", colbert=False)
        >>> out.colbert is None, all(w > 0 for w in out.sparse[0].values())
        (True, True)
        """
        items = _check_texts(texts)
        n = len(items)
        dense_out = np.zeros((n, self.dim), dtype=np.float32) if dense else None
        sparse_out: list[SparseVector] | None = [SparseVector.empty()] * n if sparse else None
        colbert_out: list[np.ndarray] | None = (
            [np.zeros((0, self.colbert_dim or 0), np.float32)] * n if colbert else None
        )
        for batch in self.iter_encode(
            items,
            dense=dense,
            sparse=sparse,
            colbert=colbert,
            max_length=max_length,
            batch_size=batch_size,
            show_progress=show_progress,
        ):
            positions = batch.indices.tolist()
            if dense_out is not None and batch.dense is not None:
                dense_out[batch.indices] = batch.dense
            if sparse_out is not None:
                for i, weights in zip(positions, batch.sparse_vectors()):
                    sparse_out[i] = weights
            if colbert_out is not None:
                for i, vectors in zip(positions, batch.colbert_list()):
                    colbert_out[i] = vectors
        return M3Output(dense=dense_out, sparse=sparse_out, colbert=colbert_out)

    def encode_queries(self, queries: str | Sequence[str], *, max_length: int | None = None, **kwargs: Any) -> M3Output:
        """:meth:`encode` with the query default ``max_length`` (``query_max_length``, 512)."""
        return self.encode(queries, max_length=max_length or self.query_max_length, **kwargs)

    def encode_documents(
        self, documents: str | Sequence[str], *, max_length: int | None = None, **kwargs: Any
    ) -> M3Output:
        """:meth:`encode` with the document default ``max_length`` (``passage_max_length``)."""
        return self.encode(documents, max_length=max_length or self.passage_max_length, **kwargs)

    # ------------------------------------------------------------------ pair scores
    def compute_score(
        self,
        pairs: Sequence[tuple[str, str]] | tuple[str, str],
        *,
        weights: Sequence[float] = (1.0, 1.0, 1.0),
        max_query_length: int = 512,
        max_passage_length: int | None = None,
        batch_size: int | None = None,
        show_progress: bool | None = None,
    ) -> dict[str, list[float]]:
        """Scores of (query, passage) pairs, as FlagEmbedding's ``compute_score`` gives them.

        Each distinct query and passage is encoded once (the reference re-encodes per pair and
        builds B x Lq x B x Lp tensors); scoring is batched over pairs.

        Args:
            pairs: a list of ``(query, passage)`` tuples, or one tuple.
            weights: ``(w_dense, w_sparse, w_colbert)`` for the combined keys.
            max_query_length: 512 by default.
            max_passage_length: the passage maximum by default (8192 for BGE-M3).

        Returns:
            ``{"dense", "sparse", "colbert", "sparse+dense", "colbert+sparse+dense"}``, each a
            list with one float per pair (``"sparse+dense"`` uses ``w_dense`` and ``w_sparse``).

        >>> m3 = M3Embedder.from_pretrained("tests/data/tiny-m3")
        >>> scores = m3.compute_score([("capital of Germany", "Berlin is the capital of Germany.")])
        >>> sorted(scores)
        ['colbert', 'colbert+sparse+dense', 'dense', 'sparse', 'sparse+dense']
        """
        return compute_pair_scores(
            self,
            pairs,
            weights=weights,
            max_query_length=max_query_length,
            max_passage_length=max_passage_length or self.passage_max_length,
            batch_size=batch_size,
            show_progress=show_progress,
        )
