"""Rerank from the encoding store vs re-encoding the candidates, and the store's bytes on disk per document.

CPU, the mid-size checkpoint (random XLM-R hidden 384, 6 layers, 250,002 vocabulary, float32).
Candidates: the 100 passages of 180-200 tokens of the benchmark corpus. For 20 and for 100
candidates, ``m3_rag.rerank_texts`` runs

- re-encoding: no store (the query and every candidate are encoded, as rerankers did before), and
- from the store: ``encoding_store=`` a store of each ColBERT dtype that already holds the
  candidates (only the query is encoded; the rest is read and scored from the stored dtype),

side by side in one process, alternated query by query (the order rotates every round), with
medians over the rounds. Both paths encode the query, so the ratio is end to end. The store path
is also split into its steps (query encode, store read and checks, scoring). Then bytes per
document: the SQLite file per document, and the entries' bytes per document, per dtype, also
projected to BGE-M3's 1024 dimensions.

One torch thread by default, for both paths: on this shared 2-core machine two threads of small
operations (a query of 8 tokens, the scoring of 20 candidates) stall on each other whenever other
processes run; measured at load ~4.5, the store path then took 0.3-0.35 s instead of 45-120 ms.

    python benchmarks/rerank_store.py                    # ~2-4 minutes; results/rerank_store.json
    python benchmarks/rerank_store.py --threads 2 --name rerank_store_2threads
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from _common import ROOT, loadavg, summary, write_result
from assets import checkpoint, corpus

sys.path.insert(0, str(ROOT))

import torch

from m3_rag import EncodingStore, M3Embedder, fetch_encodings, rerank_texts
from m3_rag.colbert_codec import bytes_per_token

DTYPES = ("float32", "float16", "int8")


def _queries(texts: list[str], n: int, seed: int = 3) -> list[str]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        words = texts[int(rng.integers(len(texts)))].split()
        start = int(rng.integers(0, len(words) - 8))
        out.append(" ".join(words[start : start + int(rng.integers(4, 9))]))
    return out


def _timed(fn: Any) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds (each: every mode once per size)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (both paths)")
    parser.add_argument("--name", default="rerank_store", help="result file: results/<name>.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    ckpt = checkpoint("cpu")
    texts, tokens = corpus("passages", ckpt)
    candidates = [t for t, n in zip(texts, tokens) if n >= 180][:100]
    cand_tokens = [n for n in tokens if n >= 180][:100]
    queries = _queries(candidates, args.rounds + 1)
    m3 = M3Embedder.from_pretrained(ckpt, device="cpu")
    scratch = tempfile.TemporaryDirectory(prefix="m3-rerank-store-")
    folder = Path(scratch.name)
    stores = {d: EncodingStore(folder / f"{d}.sqlite", m3, colbert_dtype=d) for d in DTYPES}  # type: ignore[arg-type]
    t0 = time.perf_counter()
    encoded = m3.encode_documents(candidates)
    encode_s = time.perf_counter() - t0
    for store in stores.values():
        store.put(candidates, encoded, max_length=m3.passage_max_length)
    print(f"{len(candidates)} candidates of {min(cand_tokens)}-{max(cand_tokens)} tokens encoded in {encode_s:.1f} s",
          flush=True)  # fmt: skip

    modes = ["re-encode", *(f"store {d}" for d in DTYPES)]

    def run(mode: str, query: str, n: int) -> float:
        store = None if mode == "re-encode" else stores[mode.split()[1]]
        return _timed(lambda: rerank_texts(m3, query, candidates[:n], encoding_store=store))

    for mode in modes:  # warm-up: one of each (re-encoding 100 would only repeat the 20 at length)
        for n in (20, 100) if mode != "re-encode" else (20,):
            run(mode, queries[-1], n)
    times: dict[str, dict[str, list[float]]] = {str(n): {m: [] for m in modes} for n in (20, 100)}
    load_before = loadavg()
    for r in range(args.rounds):
        order = modes[r % len(modes) :] + modes[: r % len(modes)]
        for n in (20, 100):
            for mode in order:
                times[str(n)][mode].append(run(mode, queries[r], n))
        print(f"round {r + 1}/{args.rounds}: "
              + ", ".join(f"{n}: {statistics.median(t['re-encode']) / statistics.median(t['store float16']):.0f}x"
                          for n, t in times.items()), flush=True)  # fmt: skip
    load_after = loadavg()

    steps: dict[str, Any] = {}
    for n in (20, 100):
        query = queries[0]
        q_s = [_timed(lambda q=query: m3.encode_queries([q])) for _ in range(args.rounds)]
        out: dict[str, Any] = {"query_encode": summary(q_s)}
        q = m3.encode_queries([query]).colbert[0]  # type: ignore[index]
        for d in DTYPES:
            read = [_timed(lambda d=d, n=n: fetch_encodings(m3, candidates[:n], stores[d])) for _ in range(args.rounds)]
            packed = fetch_encodings(m3, candidates[:n], stores[d])
            score = [_timed(lambda p=packed, q=q: p.colbert_scores(q)) for _ in range(args.rounds)]
            out[d] = {"read_and_check": summary(read), "colbert_scoring": summary(score)}
        steps[str(n)] = out

    disk: dict[str, Any] = {}
    mean_tokens = float(np.mean(cand_tokens))
    for d, store in stores.items():
        stats = store.stats()
        store.close()  # checkpoints the WAL into the database file
        file_bytes = (folder / f"{d}.sqlite").stat().st_size
        terms = float(np.mean([len(s) for s in encoded.sparse]))  # type: ignore[union-attr]
        vectors = mean_tokens - 1  # ColBERT vectors per text: every token but <s>
        disk[d] = {
            "file_bytes_per_doc": file_bytes / len(candidates),
            "entry_bytes_per_doc": stats.bytes / len(candidates),
            "colbert_bytes_per_token": bytes_per_token(d, m3.colbert_dim or 0),  # type: ignore[arg-type]
            "bge_m3_colbert_bytes_per_token": bytes_per_token(d, 1024),  # type: ignore[arg-type]
            "bge_m3_entry_bytes_per_doc": vectors * bytes_per_token(d, 1024) + 1024 * 4 + terms * 8 + 96,  # type: ignore[arg-type]
        }

    results: dict[str, Any] = {}
    for n, by_mode in times.items():
        base = statistics.median(by_mode["re-encode"])
        results[n] = {
            mode: {**summary(values), "ratio_vs_re_encode": base / statistics.median(values)}
            for mode, values in by_mode.items()
        }
    setup = {
        "checkpoint": ckpt.name,
        "candidates": len(candidates),
        "candidate_tokens_mean": mean_tokens,
        "candidate_tokens_range": [min(cand_tokens), max(cand_tokens)],
        "rounds": args.rounds,
        "torch_threads": args.threads,
        "target_ratio": 50,
    }
    path = write_result(args.name, {"setup": setup, "rerank_s": results, "steps_s": steps, "disk": disk,
                                          "load_before": load_before, "load_after": load_after})  # fmt: skip
    for n, by_mode in results.items():
        print(n, {m: f"{r['median'] * 1e3:.1f} ms ({r['ratio_vs_re_encode']:.0f}x)" for m, r in by_mode.items()})
    print({d: round(v["file_bytes_per_doc"]) for d, v in disk.items()}, path)
    scratch.cleanup()


if __name__ == "__main__":
    main()
