"""Encode throughput on one CUDA GPU: m3-rag vs FlagEmbedding 1.4.2, float16 (prepared; not yet run).

Checkpoint: random weights with exactly bge-m3's architecture (XLM-R, 24 layers, hidden 1024,
16 heads, FFN 4096, 250,002-token vocabulary, 8,194 positions, ColBERT and sparse heads), saved
float16 and built on the GPU by ``assets.py`` -- the same compute as the real model. Corpora:
2,000 passages of 24-200 tokens and 100 documents of 400-2,000 tokens. FlagEmbedding runs
``BGEM3FlagModel(use_fp16=True, devices="cuda:0")`` with its default batch size and
``max_length=8192``; m3-rag ``M3Embedder.from_pretrained(device="cuda", dtype="float16")``
with its defaults. One worker process per library keeps its model loaded; requests alternate
between them (3 repetitions of all three outputs and of dense alone, on both corpora).

Needs, on the GPU machine (which may have no network): this repository importable with a
CUDA build of torch, and a FlagEmbedding environment -- point ``M3_BENCH_REF_PYTHON`` at its
python (``pip install torch && pip install "transformers<5" FlagEmbedding==1.4.2``). Expected
wall time on an H100: ~1 minute to build the checkpoint and corpora, then ~2-4 minutes::

    M3_BENCH_REF_PYTHON=/path/to/ref/bin/python python benchmarks/encode_gpu.py

It prints tokens/s per library and writes ``benchmarks/results/encode_gpu.json``.
"""

from __future__ import annotations

import argparse
import json

from _common import CACHE
from _encode_bench import run_benchmark


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", nargs="+", choices=["passages", "documents"], default=["passages", "documents"])
    parser.add_argument("--modes", nargs="+", choices=["all", "dense"], default=["all", "dense"])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--device", default="cuda:0")
    parser.add_argument("--max-minutes", type=float, default=7.0, help="start no new pair after this")
    parser.add_argument("--smoke", action="store_true", help="check the script on the CPU: small model and corpora")
    args = parser.parse_args()
    smoke = args.smoke
    path = run_benchmark(
        result_name="encode_gpu_smoke" if smoke else "encode_gpu",
        kind="cpu" if smoke else "gpu",
        device="cpu" if smoke else args.device,
        fp16=not smoke,
        counts={"passages": 40, "documents": 3} if smoke else None,
        corpora=args.corpus,
        modes=args.modes,
        reps=args.reps,
        fresh=True,
        serve=True,
        max_minutes=args.max_minutes,
    )
    if smoke:  # a check of the script, not a result: keep it out of results/
        path = path.replace(CACHE / path.name)
    summary = json.loads(path.read_text(encoding="utf-8"))["summary"]
    for key, row in summary.items():
        m3 = row.get("m3_rag", {}).get("tokens_per_s_median", float("nan"))
        flag = row.get("flagembedding", {}).get("tokens_per_s_median", float("nan"))
        print(f"{key:20s} m3-rag {m3:10.0f} tokens/s   FlagEmbedding {flag:10.0f} tokens/s   ratio {m3 / flag:.2f}")
    print(path)


if __name__ == "__main__":
    main()
