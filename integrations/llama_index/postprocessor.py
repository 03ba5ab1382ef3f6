"""``M3Reranker``: rerank retrieved nodes with BGE-M3's exact hybrid score."""

from __future__ import annotations

import asyncio
import os
from typing import Any

import torch
from llama_index.core.bridge.pydantic import ConfigDict, Field, PrivateAttr, field_validator
from llama_index.core.callbacks import CBEventType, EventPayload
from llama_index.core.instrumentation import get_dispatcher
from llama_index.core.instrumentation.events.rerank import ReRankEndEvent, ReRankStartEvent
from llama_index.core.postprocessor.types import BaseNodePostprocessor
from llama_index.core.schema import MetadataMode, NodeWithScore, QueryBundle

from m3_rag import DEFAULT_MODEL, EncodingStore, M3Embedder, rerank_texts
from m3_rag.scoring import normalize_weights
from m3_rag.store_encode import open_encoding_store

from ._common import resolve_embedder, with_retrieval_score
from .nodes import M3NodeWithScore

__all__ = ["M3Reranker"]

dispatcher = get_dispatcher(__name__)


class M3Reranker(BaseNodePostprocessor):
    """Rerank nodes by ``(w_d*dense + w_s*sparse + w_c*colbert) / (w_d + w_s + w_c)``.

    The query and the nodes' texts (``node.get_content(metadata_mode)``, by default what the
    embedding model saw) are each encoded once; the scores equal
    ``M3Embedder.compute_score([(query, text), ...], weights=weights)["colbert+sparse+dense"]``.
    Returns :class:`~m3_rag.integrations.llama_index.M3NodeWithScore` objects, best first: ``score``
    is the hybrid score and ``scores`` holds ``dense``, ``sparse``, ``colbert`` and ``retrieval``
    (the score before reranking); the nodes themselves are returned as they came, so their
    ``hash`` and metadata do not change. Only ``keep_retrieval_score=True`` (LlamaIndex's
    convention) puts ``retrieval_score`` into a copy's metadata, hidden from the LLM and the
    embedding model -- that copy has another ``hash``. The input nodes are not changed. Emits LlamaIndex's
    ``ReRankStartEvent`` / ``ReRankEndEvent``; the async path runs in a worker thread.

    Args:
        model_name: hub id or local folder (default ``"BAAI/bge-m3"``), loaded once per process.
        embedder: an already loaded :class:`~m3_rag.M3Embedder` (instead of ``model_name``).
        device, dtype: where and how to load ``model_name``.
        top_n: how many nodes to keep (None: all, reordered).
        weights: ``(w_dense, w_sparse, w_colbert)``, default ``(1, 1, 1)``.
        keep_retrieval_score: keep the incoming score in ``metadata["retrieval_score"]``.
        metadata_mode: which content of a node is scored (default ``MetadataMode.EMBED``).
        query_max_length, passage_max_length: token limits; None uses the embedder's.
        encoding_store: an :class:`~m3_rag.EncodingStore` (or its file path), the one an
            :class:`M3Embedding` filled when the nodes were indexed: then only the query is
            encoded. Lookups are by the scored text, so keep ``metadata_mode`` (default
            ``MetadataMode.EMBED``: exactly the string the embedding model saw, metadata
            included) and ``passage_max_length`` as they were at indexing; a node whose text or
            metadata changed since is another key, encoded once and stored (never a stale score).

    Example:
        >>> from llama_index.core.schema import NodeWithScore, TextNode
        >>> from m3_rag.integrations.llama_index import M3Reranker
        >>> reranker = M3Reranker("tests/data/tiny-m3", device="cpu", top_n=1, keep_retrieval_score=True)
        >>> nodes = [NodeWithScore(node=TextNode(text=t), score=0.5) for t in ["Paris is in France.", "Berlin."]]
        >>> best = reranker.postprocess_nodes(nodes, query_str="capital of Germany")
        >>> len(best), best[0].node.metadata["retrieval_score"]
        (1, 0.5)
    """

    model_config = ConfigDict(protected_namespaces=(), arbitrary_types_allowed=True)

    model_name: str = Field(default=DEFAULT_MODEL, description="Hub id or folder of the BGE-M3 checkpoint.")
    top_n: int | None = Field(default=None, ge=1, description="Nodes to keep after reranking; None keeps all.")
    weights: tuple[float, float, float] = Field(
        default=(1.0, 1.0, 1.0), description="(w_dense, w_sparse, w_colbert) of the hybrid score."
    )
    keep_retrieval_score: bool = Field(
        default=False, description='Keep the score before reranking in metadata["retrieval_score"].'
    )
    metadata_mode: MetadataMode = Field(default=MetadataMode.EMBED, description="Which node content is scored.")
    query_max_length: int | None = Field(default=None, ge=2, description="Tokens per query; None: 512.")
    passage_max_length: int | None = Field(default=None, ge=2, description="Tokens per node; None: the model's.")
    cross_encoder: Any = Field(
        default=None,
        exclude=True,
        description="Optional cross-encoder final stage (a CrossEncoder or a model name, extra m3-rag[rerank]).",
    )
    cross_encoder_top_n: int | None = Field(default=None, ge=1, description="Hybrid results the cross-encoder sees.")

    _embedder: M3Embedder = PrivateAttr()
    _store: EncodingStore | None = PrivateAttr(default=None)

    def __init__(
        self,
        model_name: str | os.PathLike[str] | None = None,
        *,
        embedder: M3Embedder | None = None,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = None,
        encoding_store: EncodingStore | str | os.PathLike[str] | None = None,
        **kwargs: Any,
    ) -> None:
        m3 = resolve_embedder(model_name, embedder, device=device, dtype=dtype)
        super().__init__(**{**kwargs, "model_name": m3.name})
        self._embedder = m3
        self._store = open_encoding_store(encoding_store, m3)

    @field_validator("weights")
    @classmethod
    def _check_weights(cls, value: tuple[float, float, float]) -> tuple[float, float, float]:
        return normalize_weights(value)

    @classmethod
    def class_name(cls) -> str:
        return "M3Reranker"

    @property
    def embedder(self) -> M3Embedder:
        """The loaded model."""
        return self._embedder

    @property
    def encoding_store(self) -> EncodingStore | None:
        """The store the nodes' encodings are read from (or None)."""
        return self._store

    def _postprocess_nodes(
        self, nodes: list[NodeWithScore], query_bundle: QueryBundle | None = None
    ) -> list[NodeWithScore]:
        if query_bundle is None:
            raise ValueError(
                "M3Reranker needs the query: call postprocess_nodes(nodes, query_str=...) or pass a "
                "query_bundle (query engines pass it for you)"
            )
        dispatcher.event(
            ReRankStartEvent(
                query=query_bundle, nodes=nodes, top_n=self.top_n or len(nodes), model_name=self.model_name
            )
        )
        if not nodes:
            dispatcher.event(ReRankEndEvent(nodes=[]))
            return []
        texts = [n.node.get_content(metadata_mode=self.metadata_mode) for n in nodes]
        payload: dict[str, Any] = {
            EventPayload.NODES: nodes,
            EventPayload.MODEL_NAME: self.model_name,
            EventPayload.QUERY_STR: query_bundle.query_str,
            EventPayload.TOP_K: self.top_n,
        }
        with self.callback_manager.event(CBEventType.RERANKING, payload=payload) as event:
            ranked = rerank_texts(
                self._embedder,
                query_bundle.query_str,
                texts,
                weights=self.weights,
                top_n=self.top_n,
                query_max_length=self.query_max_length,
                passage_max_length=self.passage_max_length,
                cross_encoder=self.cross_encoder,
                cross_encoder_top_n=self.cross_encoder_top_n,
                encoding_store=self._store,
            )
            reranked: list[NodeWithScore] = []
            for r in ranked:  # the nodes stay as they came (their hash too); the scores go next to them
                old = nodes[r.index]
                scores = {**r.scores, **({"retrieval": old.score} if old.score is not None else {})}
                node = with_retrieval_score(old.node, old.score) if self.keep_retrieval_score else old.node
                reranked.append(M3NodeWithScore(node=node, score=r.score, scores=scores))
            event.on_end(payload={EventPayload.NODES: reranked})
        dispatcher.event(ReRankEndEvent(nodes=reranked))
        return reranked

    async def _apostprocess_nodes(
        self, nodes: list[NodeWithScore], query_bundle: QueryBundle | None = None
    ) -> list[NodeWithScore]:
        return await asyncio.to_thread(self._postprocess_nodes, nodes, query_bundle)
