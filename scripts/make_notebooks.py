"""Write the notebooks under notebooks/ (outputs cleared). Edit here, then run:

    python scripts/make_notebooks.py

Every notebook reads its model from ``M3_RAG_MODEL`` (default ``BAAI/bge-m3``); the tests run
them end to end offline against the tiny checkpoint (tests/test_notebooks.py), check that the
quickstart shows its figure (inline PNG: do not force a matplotlib backend here) and that no cell
writes to stderr (warnings). Bar labels are ids, not texts: matplotlib's default font has no CJK
glyphs and would warn about the Chinese passage.
"""

from __future__ import annotations

from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

OUT = Path(__file__).resolve().parent.parent / "notebooks"

SETUP = """import os
MODEL = os.environ.get("M3_RAG_MODEL", "BAAI/bge-m3")  # a hub id or a local folder
CORPUS = [
    "BGE-M3 is a multilingual encoder: one forward pass gives dense, sparse and ColBERT outputs.",
    "Hybrid search takes candidates from dense and sparse retrieval and reranks them with all three scores.",
    "Berlin is the capital of Germany and its largest city.",
    "Paris is the capital of France, famous for the Louvre and the Eiffel Tower.",
    "Die Hauptstadt von Deutschland ist Berlin.",
    "北京是中华人民共和国的首都。",
    "Retrieval-augmented generation lets a language model answer from documents it was not trained on.",
    "Product code XK-4411 refers to the 2024 model of the espresso machine.",
]"""

QUICKSTART = [
    new_markdown_cell(
        "# m3-rag quickstart\n\nBGE-M3 gives three representations in one forward pass. This notebook shows each "
        "mode's score, then the hybrid rerank, and plots how much each mode contributes to every hit."
    ),
    new_code_cell(SETUP),
    new_code_cell(
        "from m3_rag import M3Embedder\n\n"
        "m3 = M3Embedder.from_pretrained(MODEL)\n"
        'out = m3.encode(["What is BGE-M3?", CORPUS[0]])\n'
        "print(out.dense.shape)             # (2, dim): one unit vector per text\n"
        "print(sorted(out.sparse[0].items(), key=lambda kv: -kv[1])[:5])  # token id -> weight\n"
        "print(out.colbert[0].shape)        # (n_tokens - 1, dim)"
    ),
    new_markdown_cell("## The three scores of one query against every passage"),
    new_code_cell(
        'query = "What is the capital of Germany?"\n'
        "scores = m3.compute_score([(query, passage) for passage in CORPUS], weights=(0.4, 0.2, 0.4))\n"
        'for passage, d, s, c, h in zip(CORPUS, scores["dense"], scores["sparse"], scores["colbert"],\n'
        '                               scores["colbert+sparse+dense"]):\n'
        '    print(f"{h:.3f}  dense {d:.3f}  sparse {s:.3f}  colbert {c:.3f}  {passage[:50]}")'
    ),
    new_markdown_cell(
        "## Hybrid retrieval with the embedded index\n\nFirst stage: dense and sparse candidates; "
        "then the exact hybrid rerank of their union."
    ),
    new_code_cell(
        "from m3_rag import M3Index\n\n"
        'ids = ["bge-m3", "hybrid", "berlin", "paris", "berlin-de", "beijing-zh", "rag", "espresso"]\n'
        "index = M3Index(m3)\n"
        'index.add(CORPUS, ids=ids, metadatas=[{"n": i} for i in range(len(CORPUS))])\n'
        "weights = (0.4, 0.2, 0.4)  # BAAI's weighting; the default (1, 1, 1) is the plain average\n"
        "hits = index.search(query, k=5, weights=weights)\n"
        "for hit in hits:\n"
        "    s = hit.scores\n"
        "    print(f\"{hit.score:.3f}  dense {s['dense']:.3f}  sparse {s['sparse']:.3f}  colbert {s['colbert']:.3f}  \"\n"
        '          f"{hit.id:11} {hit.text[:40]}")'
    ),
    new_markdown_cell("## What each mode contributes to each hit's hybrid score"),
    new_code_cell(
        "import matplotlib.pyplot as plt\n\n"
        "total = sum(weights)\n"
        'modes = ["dense", "sparse", "colbert"]\n'
        "fig, ax = plt.subplots(figsize=(7, 3))\n"
        "left = [0.0] * len(hits)\n"
        "for mode, w in zip(modes, weights):\n"
        "    part = [w * hit.scores[mode] / total for hit in hits]\n"
        '    ax.barh([h.id for h in hits], part, left=left, label=f"{mode} x {w / total:.2f}")\n'
        "    left = [a + b for a, b in zip(left, part)]\n"
        "ax.invert_yaxis()\n"
        'ax.set_xlabel("hybrid score")\n'
        "ax.legend()\n"
        "fig.tight_layout()\n"
        "assert all(abs(l - h.score) < 1e-5 for l, h in zip(left, hits))  # the bars add up to the hybrid score\n"
        "plt.show()"
    ),
]

LANGCHAIN = [
    new_markdown_cell(
        "# RAG with LangChain\n\nAn m3-rag hybrid retriever feeds a prompt and a chat model; a hybrid "
        "reranker can sit on top of any other retriever. The chat model here is LangChain's offline fake "
        "model: put your own LLM in its place."
    ),
    new_code_cell(SETUP),
    new_code_cell(
        "from m3_rag import M3Embedder\n"
        "from m3_rag.integrations.langchain import M3HybridRetriever, M3Reranker\n\n"
        "m3 = M3Embedder.shared(MODEL)\n"
        "retriever = M3HybridRetriever.from_texts(CORPUS, embedder=m3, k=3, weights=(0.4, 0.2, 0.4))\n"
        'for doc, scores in retriever.invoke_with_scores("What is the capital of Germany?"):\n'
        '    print(round(scores["relevance_score"], 3), doc.page_content[:60])'
    ),
    new_code_cell(
        "from langchain_core.language_models import FakeListChatModel\n"
        "from langchain_core.output_parsers import StrOutputParser\n"
        "from langchain_core.prompts import ChatPromptTemplate\n"
        "from langchain_core.runnables import RunnablePassthrough\n\n"
        'prompt = ChatPromptTemplate.from_template("Answer from the context.\\n\\n{context}\\n\\nQuestion: {question}")\n'
        'llm = FakeListChatModel(responses=["Berlin."])  # your LLM here\n'
        'format_docs = lambda docs: "\\n\\n".join(d.page_content for d in docs)\n'
        'chain = {"context": retriever | format_docs, "question": RunnablePassthrough()} | prompt | llm | StrOutputParser()\n'
        'print(chain.invoke("What is the capital of Germany?"))'
    ),
    new_markdown_cell("## The hybrid reranker on top of another retriever"),
    new_code_cell(
        "from langchain_classic.retrievers import ContextualCompressionRetriever\n\n"
        "reranking = ContextualCompressionRetriever(\n"
        "    base_compressor=M3Reranker(embedder=m3, top_n=2),\n"
        '    base_retriever=M3HybridRetriever.from_texts(CORPUS, embedder=m3, k=6, first_stage="dense"),\n'
        ")\n"
        'for doc in reranking.invoke("capital of Germany"):\n'
        '    print(round(doc.metadata["relevance_score"], 3), doc.page_content[:60])'
    ),
]

LLAMAINDEX = [
    new_markdown_cell(
        "# RAG with LlamaIndex\n\nA query engine with M3 embeddings and the M3 hybrid reranker. `MockLLM` "
        "keeps this offline: set `llm=` to your own model."
    ),
    new_code_cell(SETUP),
    new_code_cell(
        "from llama_index.core import Document, VectorStoreIndex\n"
        "from llama_index.core.llms import MockLLM\n"
        "from m3_rag import M3Embedder\n"
        "from m3_rag.integrations.llama_index import M3Embedding, M3Reranker, scores_of\n\n"
        "m3 = M3Embedder.shared(MODEL)\n"
        "index = VectorStoreIndex.from_documents([Document(text=t) for t in CORPUS], embed_model=M3Embedding(embedder=m3))\n"
        "engine = index.as_query_engine(\n"
        "    llm=MockLLM(), similarity_top_k=6, node_postprocessors=[M3Reranker(embedder=m3, top_n=3)]\n"
        ")\n"
        'response = engine.query("What is the capital of Germany?")\n'
        "for node in response.source_nodes:\n"
        '    print(round(node.score, 3), scores_of(node)["dense"], node.node.get_content()[:60])'
    ),
    new_markdown_cell("## The M3 hybrid retriever, with metadata filters"),
    new_code_cell(
        "from llama_index.core.query_engine import RetrieverQueryEngine\n"
        "from llama_index.core.vector_stores import MetadataFilter, MetadataFilters\n"
        "from m3_rag import M3Index\n"
        "from m3_rag.integrations.llama_index import M3Retriever\n\n"
        "store = M3Index(m3)\n"
        'store.add(CORPUS, metadatas=[{"lang": "de" if "Deutschland" in t else "other"} for t in CORPUS])\n'
        'filters = MetadataFilters(filters=[MetadataFilter(key="lang", value="other")])\n'
        "engine = RetrieverQueryEngine.from_args(M3Retriever(store, similarity_top_k=3, filters=filters), llm=MockLLM())\n"
        'for node in engine.query("capital of Germany").source_nodes:\n'
        '    print(round(node.score, 3), node.node.metadata["lang"], node.node.get_content()[:60])'
    ),
]


def write(name: str, cells: list) -> None:
    notebook = new_notebook(cells=cells)
    for n, cell in enumerate(notebook.cells):
        cell.id = f"{Path(name).stem}-{n}"  # stable ids: regenerating changes only what was edited
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    OUT.mkdir(exist_ok=True)
    nbformat.write(notebook, OUT / name)
    print(f"wrote notebooks/{name}")


if __name__ == "__main__":
    write("quickstart.ipynb", QUICKSTART)
    write("langchain_rag.ipynb", LANGCHAIN)
    write("llamaindex_rag.ipynb", LLAMAINDEX)
