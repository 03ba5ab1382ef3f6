"""FlagEmbedding's side of the rerank comparison; runs in the reference environment.

Started by ``index_search.py`` with the synthetic corpus folder and the queries it reranks.
For each query number read from stdin, it takes the query's candidates from the same files
m3-rag's index uses, converts them to the formats FlagEmbedding's ``encode`` returns (float32
ColBERT matrices, lexical weights as ``{str(token_id): weight}``; not timed), then times the
hybrid rerank with FlagEmbedding's own calls, unbound (they do not use the model):
``M3Embedder.compute_lexical_matching_score`` and ``M3Embedder.colbert_score`` per pair.
Reads ``<query> <threads>`` lines (threads 0: torch's default) and answers one JSON line per
query; query ``-1`` answers the library versions.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import FlagEmbedding
import numpy as np
import torch
import transformers
from FlagEmbedding.inference.embedder.encoder_only.m3 import M3Embedder

WEIGHTS = (1.0, 1.0, 1.0)


def main() -> None:
    folder, colbert_docs, queries = Path(sys.argv[1]), int(sys.argv[2]), np.load(sys.argv[3])
    dense_all = np.load(folder / "dense.npy", mmap_mode="r")
    s_ids, s_w = np.load(folder / "sparse_ids.npy"), np.load(folder / "sparse_weights.npy")
    s_off = np.load(folder / "sparse_offsets.npy")
    colbert_all = np.load(folder / "colbert.npy", mmap_mode="r")
    c_off = np.load(folder / "colbert_offsets.npy")
    default_threads = torch.get_num_threads()
    for line in sys.stdin:
        j, threads = (int(x) for x in line.split())
        torch.set_num_threads(threads or default_threads)
        if j < 0:
            print(json.dumps({"FlagEmbedding": getattr(FlagEmbedding, "__version__", "1.4.2"),
                              "torch": torch.__version__, "transformers": transformers.__version__, "threads": default_threads}), flush=True)  # fmt: skip
            continue
        rows = queries[f"q{j}_rows"]
        q_dense, q_colbert = queries[f"q{j}_dense"], queries[f"q{j}_colbert"]
        q_lex = {
            str(i): float(w)
            for i, w in zip(queries[f"q{j}_sparse_ids"].tolist(), queries[f"q{j}_sparse_weights"].tolist())
        }
        p_dense = np.asarray(dense_all[rows])
        p_lex = [
            {str(i): float(w) for i, w in zip(s_ids[a:b].tolist(), s_w[a:b].tolist())}
            for a, b in zip(s_off[rows].tolist(), s_off[rows + 1].tolist())
        ]
        src = rows % colbert_docs  # as in _index_data.colbert_source
        p_colbert = [colbert_all[a:b].astype(np.float32) for a, b in zip(c_off[src].tolist(), c_off[src + 1].tolist())]

        t0 = time.perf_counter()
        dense = p_dense @ q_dense
        sparse = [M3Embedder.compute_lexical_matching_score(None, q_lex, p) for p in p_lex]  # type: ignore[arg-type]
        colbert = [float(M3Embedder.colbert_score(None, q_colbert, p)) for p in p_colbert]  # type: ignore[arg-type]
        w_d, w_s, w_c = WEIGHTS
        hybrid = (w_d * dense + w_s * np.asarray(sparse) + w_c * np.asarray(colbert)) / (w_d + w_s + w_c)
        np.argsort(-hybrid)[:10]
        ms = (time.perf_counter() - t0) * 1000
        diff = float(np.abs(hybrid - queries[f"q{j}_m3_hybrid"]).max())
        print(json.dumps({"ms": ms, "max_abs_diff_vs_m3": diff, "threads": torch.get_num_threads()}), flush=True)


if __name__ == "__main__":
    main()
