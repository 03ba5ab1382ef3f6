"""Model passes per text with LlamaIndex: Qdrant and Milvus hybrid stores, and M3VectorStore.

Counts every text the model runs on (``M3Embedder.iter_encode``, the one door to the network)
while ``VectorStoreIndex.from_documents`` indexes ``--docs`` documents and while ``--queries``
hybrid queries are answered, for each setup below, next to the same setup without the sharing
that m3-rag does (the "without" rows: each adapter encoding for itself). Passes per text do not
depend on the weights, so the tiny test checkpoint is used.

Run from the repository root::

    python benchmarks/llama_index_passes.py

The LlamaIndex Milvus rows need ``llama-index-vector-stores-milvus``, which wants pymilvus < 3
(``pip install "pymilvus>=2.6.7,<3" llama-index-vector-stores-milvus``); without it they are
skipped. Writes ``results/llama_index_passes.json`` and the table in ``README.md``.
"""

from __future__ import annotations

import gc
import re
import tempfile
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
from _common import HERE, ROOT, loadavg, write_result
from llama_index.core import Document, Settings, StorageContext, VectorStoreIndex
from llama_index.core.llms import MockLLM
from llama_index.core.node_parser import SentenceSplitter

from m3_rag import M3Embedder, M3Index
from m3_rag.encode_cache import cache_for
from m3_rag.integrations.llama_index import M3Embedding, M3SparseEmbedding, M3VectorStore
from m3_rag.integrations.llama_index.handoff import handoff_for

WORDS = (ROOT / "scripts" / "tiny_corpus.txt").read_text(encoding="utf-8").split()
README = HERE / "README.md"
BEGIN, END = "<!-- passes:begin -->", "<!-- passes:end -->"


class Counting:
    """Texts through the model and calls of ``iter_encode`` (one call: one or more forward batches)."""

    def __init__(self, embedder: M3Embedder) -> None:
        self.texts: Counter[str] = Counter()
        self.calls = 0
        self._original = embedder.iter_encode

        def counting(texts: Any, **kwargs: Any) -> Iterator[Any]:
            items = [texts] if isinstance(texts, str) else list(texts)
            self.texts.update(items)
            self.calls += 1
            return self._original(items, **kwargs)

        embedder.iter_encode = counting  # type: ignore[method-assign]

    def take(self) -> tuple[Counter[str], int]:
        texts, calls = Counter(self.texts), self.calls
        self.texts.clear()
        self.calls = 0
        return texts, calls


def corpus(n: int, with_metadata: bool, seed: int = 0) -> list[Document]:
    rng = np.random.default_rng(seed)
    docs = []
    for i, start in enumerate(rng.integers(0, len(WORDS) - 60, n).tolist()):
        text = " ".join(WORDS[start : start + int(rng.integers(20, 60))]) + f" (document {i})"  # all distinct
        meta = {"file_name": f"file{i}.txt", "page": i % 7} if with_metadata else {}
        docs.append(Document(text=text, id_=f"doc{i}", metadata=meta))
    return docs


def queries(n: int) -> list[str]:
    rng = np.random.default_rng(1)
    return [" ".join(WORDS[s : s + 6]) + f" {i}" for i, s in enumerate(rng.integers(0, len(WORDS) - 6, n).tolist())]


def measure(
    embedder: M3Embedder,
    counting: Counting,
    make_store: Callable[[], Any],
    *,
    docs: list[Document],
    asks: list[str],
    mode: str,
    share: bool,
) -> dict[str, Any]:
    cache, handoff = cache_for(embedder), handoff_for(embedder)
    cache.clear()
    handoff.clear()
    cache.max_pending_bytes, cache.recent = (512 << 20, 2048) if share else (0, 0)
    handoff.max_bytes = (1 << 30) if share else 0
    store = make_store()
    embed = M3Embedding(embedder=embedder)
    counting.take()
    index = VectorStoreIndex.from_documents(
        docs, storage_context=StorageContext.from_defaults(vector_store=store), embed_model=embed,
        transformations=[SentenceSplitter(chunk_size=1024)],
    )  # fmt: skip
    texts, calls = counting.take()
    retriever = index.as_retriever(vector_store_query_mode=mode, similarity_top_k=5)
    for q in asks:
        retriever.retrieve(q)
    asked, query_calls = counting.take()
    close = getattr(getattr(store, "store", None), "close", None) or getattr(store, "close", None)
    del index, retriever, store
    if close is not None:
        close()
    gc.collect()
    return {
        "documents": len(docs),
        "texts_encoded": sum(texts.values()),
        "distinct_texts": len(texts),
        "passes_per_document": round(sum(texts.values()) / len(docs), 3),
        "passes_per_text": round(sum(texts.values()) / max(1, len(texts)), 3),
        "encode_calls_indexing": calls,
        "queries": len(asks),
        "passes_per_query": round(sum(asked.values()) / len(asks), 3),
        "encode_calls_querying": query_calls,
    }


def setups(embedder: M3Embedder, tmp: Path) -> list[tuple[str, bool, str, Callable[[], Any] | None, str]]:
    """(figure, metadata, query mode, store factory or None, why skipped)."""
    from llama_index.vector_stores.qdrant import QdrantVectorStore
    from qdrant_client import QdrantClient

    sparse = M3SparseEmbedding(embedder=embedder)
    counter = iter(range(1000))

    def qdrant() -> Any:
        return QdrantVectorStore(
            client=QdrantClient(location=":memory:"), collection_name="bench", enable_hybrid=True,
            sparse_doc_fn=sparse.sparse_doc_fn, sparse_query_fn=sparse.sparse_query_fn,
        )  # fmt: skip

    out: list[tuple[str, bool, str, Callable[[], Any] | None, str]] = [
        ("LlamaIndex QdrantVectorStore(enable_hybrid=True), in memory", False, "hybrid", qdrant, ""),
        (
            "LlamaIndex QdrantVectorStore(enable_hybrid=True), metadata seen by the embedding model",
            True,
            "hybrid",
            qdrant,
            "",
        ),
    ]
    try:
        from llama_index.vector_stores.milvus import MilvusVectorStore

        from m3_rag.integrations.llama_index.milvus import M3MilvusSparseFunction, M3MilvusVectorStore

        def milvus(cls: type) -> Callable[[], Any]:
            def make() -> Any:
                uri = str(tmp / f"li{next(counter)}.db")
                function = M3MilvusSparseFunction(M3Embedding(embedder=embedder))
                return cls(uri=uri, dim=embedder.dim, overwrite=True, enable_sparse=True,
                           sparse_embedding_function=function, similarity_metric="IP")  # fmt: skip

            return make

        plain, batched, why = milvus(MilvusVectorStore), milvus(M3MilvusVectorStore), ""
    except ImportError as exc:
        plain = batched = None
        why = f"needs llama-index-vector-stores-milvus (pymilvus < 3): {exc}"
    out += [
        ("LlamaIndex MilvusVectorStore(enable_sparse=True) + M3MilvusSparseFunction", False, "hybrid", plain, why),
        (
            "LlamaIndex MilvusVectorStore + M3MilvusSparseFunction, metadata seen by the embedding model",
            True,
            "hybrid",
            plain,
            why,
        ),
        (
            "M3MilvusVectorStore + M3MilvusSparseFunction, metadata seen by the embedding model",
            True,
            "hybrid",
            batched,
            why,
        ),
    ]

    def m3_index() -> Any:
        return M3VectorStore(M3Index(embedder))

    def milvus_store() -> Any:
        from m3_rag.index import MilvusStore

        return M3VectorStore(MilvusStore(embedder, str(tmp / f"m3-{next(counter)}.db")))

    out += [
        ("M3VectorStore(M3Index), metadata seen by the embedding model", True, "default", m3_index, ""),
        ("M3VectorStore(MilvusStore), metadata seen by the embedding model", True, "default", milvus_store, ""),
    ]
    return out


def _cell(row: dict[str, Any]) -> str:
    return (f"{row['passes_per_document']:.2f} per document ({row['passes_per_text']:.2f} per distinct text, "
            f"{row['encode_calls_indexing']} encode calls); {row['passes_per_query']:.2f} per query")  # fmt: skip


def table(result: dict[str, Any]) -> str:
    date = result["date"][:10]
    setup = result["setup"]
    lines = [
        f"Model passes while `VectorStoreIndex.from_documents` indexes {setup['documents']} documents (one node each) "
        f"and {setup['queries']} hybrid queries are answered; tiny checkpoint, {date}. "
        "Reproduce: `python benchmarks/llama_index_passes.py`.",
        "",
        "| setup | m3-rag adapters (shared pass) | each adapter on its own |",
        "|---|---|---|",
    ]
    for row in result["rows"]:
        if "skipped" in row:
            lines.append(f"| {row['figure']} | skipped: {row['skipped']} | |")
            continue
        lines.append(f"| {row['figure']} | **{_cell(row['shared'])}** | {_cell(row['alone'])} |")
    return "\n".join(lines)


def main() -> None:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--docs", type=int, default=200)
    parser.add_argument("--queries", type=int, default=20)
    parser.add_argument("--no-readme", action="store_true", help="do not rewrite the README table")
    args = parser.parse_args()
    Settings.llm = MockLLM()
    embedder = M3Embedder.from_pretrained(ROOT / "tests" / "data" / "tiny-m3", device="cpu")
    counting = Counting(embedder)
    asks = queries(args.queries)
    load_before = loadavg()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for figure, meta, mode, factory, why in setups(embedder, Path(tmp)):
            if factory is None:
                rows.append({"figure": figure, "skipped": why})
                print(f"{figure}: skipped ({why})", flush=True)
                continue
            docs = corpus(args.docs, meta)
            shared = measure(embedder, counting, factory, docs=docs, asks=asks, mode=mode, share=True)
            alone = measure(embedder, counting, factory, docs=docs, asks=asks, mode=mode, share=False)
            rows.append({"figure": figure, "metadata": meta, "query_mode": mode, "shared": shared, "alone": alone})
            print(f"{figure}: {_cell(shared)} | alone: {_cell(alone)}", flush=True)
    payload = {"setup": {"documents": args.docs, "queries": args.queries, "checkpoint": "tests/data/tiny-m3"},
               "load_before": load_before, "load_after": loadavg(), "rows": rows}  # fmt: skip
    path = write_result("llama_index_passes", payload)
    result = {**payload, "date": __import__("json").loads(path.read_text())["date"]}
    print(table(result))
    if not args.no_readme:
        text = README.read_text(encoding="utf-8")
        pattern = re.compile(re.escape(BEGIN) + ".*?" + re.escape(END), re.DOTALL)
        if pattern.search(text):
            README.write_text(pattern.sub(lambda _: f"{BEGIN}\n{table(result)}\n{END}", text), encoding="utf-8")


if __name__ == "__main__":
    main()
