"""Model passes per text when LangChain vector stores ask for dense and sparse vectors separately.

``langchain_qdrant.QdrantVectorStore`` (hybrid mode, in-memory Qdrant) embeds each batch of 64
texts densely, then sparsely; ``langchain_milvus.Milvus`` (milvus-lite) embeds all texts of an
``add_texts`` densely before it asks for any sparse vector. With m3-rag's adapters
(``M3Embeddings`` + ``M3QdrantSparseEmbeddings`` / ``M3MilvusSparseEmbedding``) both halves come
from one pass, through the model's encoding cache (``m3_rag.encode_cache``). This counts the texts
the model actually encodes (every ``M3Embedder.encode`` call) while the store adds N distinct
texts and answers one query, and prints passes per text. The tiny checkpoint is enough: what is
counted is passes, not time.

Run from the repository root (needs ``langchain-qdrant`` and ``langchain-milvus``)::

    python benchmarks/langchain_passes.py                 # 5,000 and 50,000 texts, both stores
    python benchmarks/langchain_passes.py --texts 5000 --stores milvus

Writes ``benchmarks/results/langchain_passes.json``.
"""

from __future__ import annotations

import argparse
import tempfile
import time
import warnings
from collections import Counter
from pathlib import Path
from typing import Any

from _common import ROOT, loadavg, write_result

from m3_rag import M3Embedder
from m3_rag.integrations.langchain import M3Embeddings

TINY = ROOT / "tests" / "data" / "tiny-m3"
WORDS = (ROOT / "scripts" / "tiny_corpus.txt").read_text(encoding="utf-8").split()
QUERY = "capital of Germany"


def texts(n: int) -> list[str]:
    """``n`` distinct passages of 12 words."""
    return [f"passage {i}: " + " ".join(WORDS[(7 * i + j) % len(WORDS)] for j in range(12)) for i in range(n)]


class Counting:
    """Counts the texts each ``encode`` call of one model gets."""

    def __init__(self, model: M3Embedder) -> None:
        self.texts: Counter[str] = Counter()
        self.calls = 0
        original = model.encode

        def encode(batch: Any, **kwargs: Any) -> Any:
            self.calls += 1
            self.texts.update([batch] if isinstance(batch, str) else list(batch))
            return original(batch, **kwargs)

        model.encode = encode  # type: ignore[method-assign]


def qdrant(items: list[str], dense: M3Embeddings) -> Any:
    from langchain_qdrant import QdrantVectorStore, RetrievalMode

    from m3_rag.integrations.langchain_qdrant import M3QdrantSparseEmbeddings

    return QdrantVectorStore.from_texts(
        items, embedding=dense, sparse_embedding=M3QdrantSparseEmbeddings(dense),
        retrieval_mode=RetrievalMode.HYBRID, location=":memory:", collection_name="passes",
    )  # fmt: skip


def milvus(items: list[str], dense: M3Embeddings, folder: Path) -> Any:
    from langchain_milvus import Milvus

    from m3_rag.integrations.langchain_milvus import M3MilvusSparseEmbedding

    return Milvus.from_texts(
        items, embedding=[dense, M3MilvusSparseEmbedding(dense)], vector_field=["dense", "sparse"],
        connection_args={"uri": str(folder / "passes.db")},
        index_params=[{"metric_type": "IP", "index_type": "FLAT"},
                      {"metric_type": "IP", "index_type": "SPARSE_INVERTED_INDEX"}],
        search_params=[{"metric_type": "IP", "params": {}}, {"metric_type": "IP", "params": {}}],
    )  # fmt: skip


def measure(store: str, n: int) -> dict[str, Any]:
    model = M3Embedder.from_pretrained(TINY, device="cpu")  # its own encoding cache
    counting = Counting(model)
    dense = M3Embeddings(embedder=model)
    items = texts(n)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as folder, warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # langchain-milvus warns about its own defaults
        vs = qdrant(items, dense) if store == "qdrant" else milvus(items, dense, Path(folder))
        added = time.perf_counter() - start
        before = sum(counting.texts[t] for t in items)
        found = vs.similarity_search(QUERY, k=3)
        if store == "milvus":
            vs.client.close()
    per_text = [counting.texts[t] for t in items]
    return {
        "store": store,
        "texts": n,
        "texts_encoded": sum(per_text),
        "passes_per_text": sum(per_text) / n,
        "max_passes_of_a_text": max(per_text),
        "texts_never_encoded": sum(1 for c in per_text if c == 0),
        "query_passes": counting.texts[QUERY],
        "encode_calls": counting.calls,
        "results": len(found),
        "add_seconds": round(added, 2),
        "store_passes_after_add": before,
        "cache": dense.cache.stats(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--texts", type=int, nargs="+", default=[5000, 50000])
    parser.add_argument("--stores", nargs="+", choices=["qdrant", "milvus"], default=["qdrant", "milvus"])
    args = parser.parse_args()
    load_before = loadavg()
    runs = []
    for n in args.texts:
        for store in args.stores:
            row = measure(store, n)
            runs.append(row)
            print(
                f"{store:7s} {n:>7,} texts: {row['passes_per_text']:.3f} passes per text "
                f"(max {row['max_passes_of_a_text']}, {row['texts_encoded']:,} texts encoded in "
                f"{row['encode_calls']} calls, query {row['query_passes']} pass), add {row['add_seconds']} s",
                flush=True,
            )
    versions = {}
    for name in ("langchain_core", "langchain_qdrant", "qdrant_client", "langchain_milvus", "pymilvus", "milvus_lite"):
        try:
            from importlib.metadata import version

            versions[name] = version(name.replace("_", "-"))
        except Exception:  # a store not installed
            versions[name] = None
    path = write_result(
        "langchain_passes",
        {"load_before": load_before, "load_after": loadavg(), "versions": versions, "runs": runs},
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
