"""LlamaIndex nodes in an m3-rag store, and scored nodes whose scores never touch the node.

**Round trip.** A node is stored as one record of a :class:`~m3_rag.retrieval.HybridStore`:

- ``id`` = ``node.node_id``;
- ``text`` = ``node.get_content(MetadataMode.EMBED)``: what LlamaIndex's embedding model sees
  (the metadata it does not exclude, in the node's templates), so that every score -- the dense
  and sparse vectors, and ColBERT re-encoded from the text by stores that keep no vectors -- is
  computed on exactly the stored text;
- ``metadata`` = LlamaIndex's own ``node_to_metadata_dict(node, remove_text=False)``: the node's
  metadata at the top level (what filters see), the whole node as JSON under ``_node_content``
  (text, relationships, ``ref_doc_id``, excluded-metadata keys, templates, character offsets;
  not the embedding), ``_node_type``, ``ref_doc_id`` / ``doc_id`` / ``document_id``, plus
  ``_node_id``. The same layout as LlamaIndex's Qdrant store, so a node comes back equal to the
  one stored (its ``hash`` too), from :class:`M3VectorStore` and :class:`M3Retriever` alike.

A record written without LlamaIndex (``M3Index.add``, the CLI) becomes a ``TextNode`` with the
record's text and metadata whose source document (``ref_doc_id``) is ``metadata["ref_doc_id"]``
when that is a string, else the record itself.

**Scores.** ``node.hash`` covers text and metadata, and LlamaIndex's fusion retrievers and
docstores key on it: a score written into metadata splits one node into two. The m3-rag
retriever and reranker therefore return :class:`M3NodeWithScore`: ``score`` is the ranking score
and ``scores`` holds the per-mode scores (``dense``, ``sparse``, ``colbert``; ``hybrid`` and
``cross_encoder`` after a cross-encoder stage; ``retrieval``, the score before reranking), while
the node stays exactly as stored.

>>> from llama_index.core.schema import TextNode
>>> node = TextNode(text="Berlin.", id_="n1", metadata={"lang": "en"})
>>> text, metadata = node_record(node)
>>> text
'lang: en\\n\\nBerlin.'
>>> back = record_node("n1", text, metadata)
>>> back.text, back.metadata, back.hash == node.hash
('Berlin.', {'lang': 'en'}, True)
>>> scores_of(M3NodeWithScore(node=back, score=0.5, scores={"dense": 0.7}))
{'dense': 0.7}
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from llama_index.core.bridge.pydantic import Field
from llama_index.core.schema import (
    BaseNode,
    Document,
    ImageDocument,
    MetadataMode,
    NodeRelationship,
    NodeWithScore,
    RelatedNodeInfo,
    TextNode,
)
from llama_index.core.vector_stores.utils import metadata_dict_to_node, node_to_metadata_dict

__all__ = [
    "NODE_ID_KEY",
    "RESERVED_KEYS",
    "M3NodeWithScore",
    "node_record",
    "record_node",
    "ref_doc_id_of",
    "scores_of",
]

#: Top-level metadata key holding the node id (for ``VectorStoreQuery.node_ids``).
NODE_ID_KEY = "_node_id"
#: Metadata keys the round trip writes next to the node's own metadata.
RESERVED_KEYS = ("_node_content", "_node_type", "document_id", "doc_id", "ref_doc_id", NODE_ID_KEY)
_OWN_KEYS = ("_node_content", "_node_type", NODE_ID_KEY)  # user metadata may not use these
_DOCUMENTS: dict[str, type[Document]] = {Document.class_name(): Document, ImageDocument.class_name(): ImageDocument}


class M3NodeWithScore(NodeWithScore):
    """A ``NodeWithScore`` that also carries the per-mode scores, leaving the node untouched."""

    scores: dict[str, float] = Field(
        default_factory=dict,
        description="Per-mode scores: dense, sparse, colbert (hybrid, cross_encoder, retrieval when known).",
    )

    @classmethod
    def class_name(cls) -> str:
        return "M3NodeWithScore"


def scores_of(node: NodeWithScore) -> dict[str, float]:
    """The per-mode scores of a retrieved node (``{}`` for a node that is not an :class:`M3NodeWithScore`)."""
    return dict(getattr(node, "scores", None) or {})


def node_record(node: BaseNode) -> tuple[str, dict[str, Any]]:
    """``(text, metadata)`` to store for ``node`` (see the module docs); its id is ``node.node_id``."""
    if not isinstance(node, BaseNode):
        raise TypeError(f"expected a llama_index BaseNode (TextNode, Document, ...), got {type(node).__name__}")
    clash = [k for k in _OWN_KEYS if k in node.metadata]
    if clash:
        raise ValueError(
            f"node {node.node_id!r} has metadata keys {clash}, which m3-rag uses to store the node itself; rename them"
        )
    metadata = node_to_metadata_dict(node, remove_text=False, flat_metadata=False)
    metadata[NODE_ID_KEY] = node.node_id
    return node.get_content(metadata_mode=MetadataMode.EMBED), metadata


def ref_doc_id_of(doc_id: str, metadata: Mapping[str, Any]) -> str:
    """The source document of a record: ``metadata["ref_doc_id"]`` when it names one, else the record."""
    ref = metadata.get("ref_doc_id")
    return ref if isinstance(ref, str) and ref not in ("", "None") else doc_id


def record_node(doc_id: str, text: str, metadata: Mapping[str, Any]) -> BaseNode:
    """The node a stored record holds (see the module docs)."""
    if "_node_content" in metadata:
        try:
            kind = _DOCUMENTS.get(str(metadata.get("_node_type")))  # LlamaIndex's helper makes Documents TextNodes
            node = kind.from_json(metadata["_node_content"]) if kind else metadata_dict_to_node(dict(metadata))
        except (ValueError, TypeError) as exc:  # pydantic's ValidationError is a ValueError
            raise ValueError(
                f"record {doc_id!r} holds a LlamaIndex node (_node_content) that does not parse ({exc}); "
                "the stored metadata was changed outside LlamaIndex: re-insert that node"
            ) from exc
        node.id_ = doc_id
        return node
    source = RelatedNodeInfo(node_id=ref_doc_id_of(doc_id, metadata))
    return TextNode(id_=doc_id, text=text, metadata=dict(metadata), relationships={NodeRelationship.SOURCE: source})
