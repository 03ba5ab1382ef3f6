"""``M3Embedder``: tokenise, batch by token budget, run the network once, return ``M3Output``."""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Generator, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .checkpoint import resolve_checkpoint
from .devices import resolve_devices, resolve_dtype
from .input_batches import HostBatch, Prefetcher, host_batches
from .model import M3Model, legacy_fingerprint, load_model, model_fingerprint
from .output import EncodedBatch, M3Output
from .pair_scores import compute_pair_scores
from .progress import tqdm
from .records import check_texts
from .replicas import Modes, Replica, deal
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
    between adapters (one model per process). With a list of devices
    (``device=["cuda:0", "cuda:1"]``) there is one replica of the model per device and the
    batches of each call are dealt to them (see :attr:`devices`).

    Example:
        >>> from m3_rag import M3Embedder
        >>> m3 = M3Embedder.from_pretrained("tests/data/tiny-m3")
        >>> out = m3.encode(["What is BGE-M3?", "A multilingual encoder."])
        >>> out.dense.shape, len(out.sparse), out.colbert[0].shape[1]
        ((2, 32), 2, 32)
    """

    def __init__(
        self,
        model: M3Model | Sequence[M3Model],
        tokenizer: M3Tokenizer,
        *,
        name: str,
        max_batch_tokens: int | None = None,
        batch_size: int | None = None,
        query_max_length: int = 512,
        passage_max_length: int | None = None,
    ) -> None:
        models = [model] if isinstance(model, M3Model) else list(model)
        if not models:
            raise ValueError("M3Embedder needs at least one model")
        model = models[0]
        #: The model on the first device (the one to inspect: config, heads, fingerprint).
        self.model = model
        self.tokenizer = tokenizer
        self.name = name
        param = next(model.parameters())
        #: The first device (that of :attr:`model`); :attr:`devices` lists every replica's.
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
        #: One per device, in the order given (two entries of one device share its weights).
        self.replicas: tuple[Replica, ...] = tuple(Replica(m, tokenizer.unused_ids, self.vocab_size) for m in models)
        #: Batches tokenised and padded ahead in a background thread with one device (2 on CUDA,
        #: 0 = in the calling thread on the CPU, where the model keeps every core busy anyway).
        #: Several devices always make their input in a background thread.
        self.input_prefetch: int = 2 if self.device.type == "cuda" else 0

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | os.PathLike[str] = DEFAULT_MODEL,
        *,
        device: str | torch.device | Sequence[str | torch.device] | None = None,
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
                cuda, then mps, then cpu. A list (``["cuda:0", "cuda:1"]``) loads one replica per
                device and deals each call's batches to them, one thread per device; the
                outputs are those of one device, in input order.
            dtype: ``"float32"``, ``"float16"``/``"fp16"``, ``"bfloat16"``/``"bf16"`` or a torch
                dtype; ``None`` is float16 on CUDA and float32 elsewhere.
            revision, cache_dir, token, local_files_only: passed to the hub download
                (``HF_HUB_OFFLINE=1`` reads the cache only).
            trust_remote_code: off unless you turn it on.
            attn_implementation: e.g. ``"sdpa"`` or ``"eager"``; ``None`` lets transformers pick.
            max_batch_tokens: padded tokens per forward pass (default 32768 on CUDA, else 2048);
                a device that runs out of memory lowers its own budget (see :class:`Replica`).
            batch_size: optional cap on texts per forward pass.
            query_max_length: default ``max_length`` of :meth:`encode_queries` (512).
            passage_max_length: default of :meth:`encode` and :meth:`encode_documents` (the
                model's limit, 8192 for BGE-M3).
        """
        devices = resolve_devices(device)
        torch_dtype = resolve_dtype(dtype, devices[0])
        folder = resolve_checkpoint(
            name_or_path, revision=revision, cache_dir=cache_dir, token=token, local_files_only=local_files_only
        )
        tokenizer = M3Tokenizer.from_folder(folder)
        loaded: dict[torch.device, M3Model] = {}
        for torch_device in devices:  # one copy of the weights per distinct device
            if torch_device not in loaded:
                loaded[torch_device] = load_model(
                    folder,
                    device=torch_device,
                    dtype=torch_dtype,
                    trust_remote_code=trust_remote_code,
                    attn_implementation=attn_implementation,
                )
        # a local folder is recorded by its absolute path, so that a saved index finds it again
        name = str(Path(name_or_path).resolve()) if Path(name_or_path).is_dir() else str(name_or_path)
        return cls(
            [loaded[d] for d in devices],
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
        device: str | torch.device | Sequence[str | torch.device] | None = None,
        dtype: str | torch.dtype | None = None,
        **kwargs: Any,
    ) -> M3Embedder:
        """One loaded model per (name, device, dtype) in this process: what the adapters use.

        The first call loads with :meth:`from_pretrained` (``kwargs`` go there); later calls with
        the same name, device (or list of devices, in order) and dtype return the same instance.

        >>> M3Embedder.shared("tests/data/tiny-m3") is M3Embedder.shared("tests/data/tiny-m3")
        True
        """
        devices = resolve_devices(device)
        torch_dtype = resolve_dtype(dtype, devices[0])
        path = Path(name_or_path)
        name = str(path.resolve()) if path.is_dir() else str(name_or_path)
        key = (name, ",".join(str(d) for d in devices), str(torch_dtype))
        with _SHARED_LOCK:
            if key not in _SHARED:
                chosen = devices[0] if len(devices) == 1 else devices
                _SHARED[key] = cls.from_pretrained(name_or_path, device=chosen, dtype=torch_dtype, **kwargs)
            return _SHARED[key]

    def __repr__(self) -> str:
        devices = [str(d) for d in self.devices]
        shown = repr(devices[0]) if len(devices) == 1 else repr(devices)
        return f"M3Embedder({self.name!r}, device={shown}, dtype={str(self.dtype).removeprefix('torch.')})"

    # ------------------------------------------------------------------ facts
    @property
    def devices(self) -> tuple[torch.device, ...]:
        """Every replica's device, in the order given (one entry for a single device)."""
        return tuple(r.device for r in self.replicas)

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
        input positions it holds (``batch.indices``). Use it to stream a large corpus without
        holding every ColBERT matrix in memory: texts are tokenised window by window, so memory
        stays bounded however many there are. With several devices the batches come in the
        same order as with one."""
        items = _check_texts(texts)
        max_length = self._check_max_length(max_length)
        if not (dense or sparse or colbert):
            raise ValueError("nothing to compute: pass at least one of dense=True, sparse=True, colbert=True")
        self.model.check_modes(sparse=sparse, colbert=colbert, source=self.name)
        if not items:
            return
        batches = host_batches(
            self.tokenizer,
            items,
            max_length=max_length,
            max_tokens=self._token_budget,
            max_items=batch_size or self.batch_size,
            window_chars=max(4096, 8 * self._token_budget()),
            pin_memory=self.device.type == "cuda" and torch.cuda.is_available(),
        )
        results = self._run_batches(batches, (dense, sparse, colbert))
        show = len(items) >= _PROGRESS_MIN_TEXTS if show_progress is None else show_progress
        truncated = 0
        try:
            with tqdm(total=len(items), desc="Encoding", unit="text", disable=not show) as bar:
                for batch in results:
                    truncated += int(batch.truncated.sum())
                    yield batch
                    bar.update(len(batch))
        finally:
            results.close()
            if truncated:
                logger.warning(
                    "%d of %d texts were longer than max_length=%d tokens and were truncated "
                    "(split long documents with m3_rag.chunking.chunk_text)",
                    truncated,
                    len(items),
                    max_length,
                )

    def _token_budget(self) -> int:
        """Padded tokens per batch: ``max_batch_tokens``, or less once a device ran out of memory."""
        return min([self.max_batch_tokens, *[r.budget for r in self.replicas if r.budget is not None]])

    def _run_batches(self, batches: Generator[HostBatch], modes: Modes) -> Generator[EncodedBatch]:
        """Run the batches: dealt to the replicas, or on the one device in this thread."""
        if len(self.replicas) > 1:
            yield from deal(self.replicas, batches, modes)
            return
        replica = self.replicas[0]
        source = Prefetcher(batches, self.input_prefetch) if self.input_prefetch > 0 else batches
        try:
            for batch in source:
                yield replica.run(batch, modes)
        finally:
            source.close()

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
        query_max_length: int | None = None,
        passage_max_length: int | None = None,
        batch_size: int | None = None,
        show_progress: bool | None = None,
    ) -> dict[str, list[float]]:
        """Scores of (query, passage) pairs, as FlagEmbedding's ``compute_score`` gives them.

        Each distinct query and passage is encoded once (the reference re-encodes per pair and
        builds B x Lq x B x Lp tensors); scoring is batched over pairs.

        Args:
            pairs: a list of ``(query, passage)`` tuples, or one tuple.
            weights: ``(w_dense, w_sparse, w_colbert)`` for the combined keys.
            query_max_length: the query maximum by default (``query_max_length``, 512).
            passage_max_length: the passage maximum by default (8192 for BGE-M3).

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
            query_max_length=query_max_length or self.query_max_length,
            passage_max_length=passage_max_length or self.passage_max_length,
            batch_size=batch_size,
            show_progress=show_progress,
        )
