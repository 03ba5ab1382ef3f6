"""Encode throughput on one CUDA GPU: m3-rag vs FlagEmbedding 1.4.2, float16, all three outputs.

Checkpoint: random weights with exactly bge-m3's architecture (XLM-R, 24 layers, hidden 1024,
16 heads, FFN 4096, 250,002-token vocabulary, 8,194 positions, ColBERT and sparse heads), saved
float16 and built on the GPU by ``assets.py`` -- the same compute as the real model. Corpora (as
in DESIGN.md's H100 anchors): 20,000 passages of 24-200 tokens and 1,000 documents of
400-2,000 tokens. FlagEmbedding runs ``BGEM3FlagModel(use_fp16=True, devices="cuda:0")`` with
its default batch size and ``max_length=8192``; m3-rag ``M3Embedder.from_pretrained(device="cuda",
dtype="float16")`` with its defaults: 32,768-token batches, input tokenised and padded ahead in
its background thread into pinned memory, non-blocking copies. A third worker runs m3-rag with
that input thread off (``input_prefetch=0``), so the run also says what the overlap pays. One
worker process per library keeps its model loaded; requests rotate between them (3 repetitions
of all three outputs and of dense alone, on both corpora; ``--max-minutes`` stops early).

Targets (the issue's, on an H100 or H200 in float16, all three outputs): >= 450,000 tokens/s on
the passages and >= 380,000 on the documents (about 3x FlagEmbedding's 141,652 and 153,651
measured on an H100).

The GPU machine may have no network and a transformers 5 with which FlagEmbedding does not
import: bring FlagEmbedding's wheels (``ref_wheels.py``, ~20 MB) and the script installs them
into a folder of their own, or point ``M3_BENCH_REF_PYTHON`` at an existing FlagEmbedding
environment. Expected wall time on an H100/H200: ~1-2 minutes to build the checkpoint and the
corpora, then ~4 minutes of runs (at most 10 in all)::

    python benchmarks/ref_wheels.py download --python 3.12     # here, once (the GPU machine's Python)
    python benchmarks/encode_gpu.py --prepare                  # here: the corpora (saves ~2 minutes there)
    python benchmarks/encode_gpu.py                            # there, with the paths --prepare prints carried
    python benchmarks/encode_gpu.py --smoke                    # a check of the script on the CPU

It prints tokens/s per library and writes ``benchmarks/results/encode_gpu.json``
(``python benchmarks/report.py`` then rewrites the table of ``benchmarks/README.md``).
"""

from __future__ import annotations

import json
import sys
import time
from argparse import ArgumentParser, RawDescriptionHelpFormatter

from _common import CACHE, ROOT
from _encode_bench import run_benchmark
from assets import checkpoint, corpus_file
from ref_wheels import ensure_ref_python

#: The issue's targets: tokens/s of m3-rag, all three outputs, float16 on an H100/H200.
GPU_TARGETS: dict[tuple[str, str], dict[str, float]] = {
    ("passages", "all"): {"tokens_per_s": 450_000},
    ("documents", "all"): {"tokens_per_s": 380_000},
}


def main() -> None:
    parser = ArgumentParser(description=__doc__, formatter_class=RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", nargs="+", choices=["passages", "documents"], default=["passages", "documents"])
    parser.add_argument("--modes", nargs="+", choices=["all", "dense"], default=["all", "dense"])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--passages", type=int, default=20_000, help="passages in the corpus")
    parser.add_argument("--documents", type=int, default=1_000, help="documents in the corpus")
    parser.add_argument("--device", default="cuda:0")
    parser.add_argument("--no-inline", action="store_true", help="skip the m3-rag run without its input thread")
    parser.add_argument("--max-minutes", type=float, default=7.0, help="start no new round after this")
    parser.add_argument("--smoke", action="store_true", help="check the script on the CPU: small model and corpora")
    parser.add_argument("--prepare", action="store_true", help="only build the corpora (here, to carry them there)")
    args = parser.parse_args()
    smoke = args.smoke
    started = time.perf_counter()
    counts = {"passages": 40, "documents": 3} if smoke else {"passages": args.passages, "documents": args.documents}
    if args.prepare:  # the corpora depend on the tokenizer only, which both checkpoints share
        tokenizer_dir = checkpoint("cpu", device="cpu")
        paths = [corpus_file(name, tokenizer_dir, count=counts[name]) for name in args.corpus]
        print(" ".join(str(p.relative_to(ROOT)) for p in paths))
        return
    if ensure_ref_python():
        print("FlagEmbedding: from the carried wheels (benchmarks/.cache/ref-wheels)", file=sys.stderr)
    if not smoke:
        import torch

        if not torch.cuda.is_available():
            parser.error("no CUDA device here: run it on a GPU machine, or pass --smoke to check it on the CPU")
        print(f"GPU: {torch.cuda.get_device_name(0)}", file=sys.stderr)
    libs = ("m3", "flag") if args.no_inline else ("m3", "flag", "m3_inline")
    path = run_benchmark(
        result_name="encode_gpu_smoke" if smoke else "encode_gpu",
        kind="cpu" if smoke else "gpu",
        device="cpu" if smoke else args.device,
        fp16=not smoke,
        counts=counts,
        corpora=args.corpus,
        modes=args.modes,
        reps=1 if smoke else args.reps,
        fresh=True,
        serve=True,
        max_minutes=float("inf") if smoke else args.max_minutes,  # a check runs every step, however slow
        libs=libs,
        # the CPU keeps m3-rag's input in the calling thread by default: the smoke check turns the
        # thread on, so that it runs the code the GPU runs
        m3_args=["--prefetch", "2"] if smoke else None,
        targets=GPU_TARGETS,
    )
    if smoke:  # a check of the script, not a result: keep it out of results/
        path = path.replace(CACHE / path.name)
    result = json.loads(path.read_text(encoding="utf-8"))
    for key, row in result["summary"].items():
        if "m3_rag" not in row or "flagembedding" not in row:
            continue
        m3 = row.get("m3_rag", {}).get("tokens_per_s_median", float("nan"))
        flag = row.get("flagembedding", {}).get("tokens_per_s_median", float("nan"))
        inline = row.get("m3_rag_inline", {}).get("tokens_per_s_median", float("nan"))
        target = row.get("target_tokens_per_s")
        verdict = "" if target is None else f"   target {target:,.0f}: {'met' if row.get('target_met') else 'NOT met'}"
        print(f"{key:16s} m3-rag {m3:10,.0f} tokens/s (input thread off: {inline:10,.0f})   "
              f"FlagEmbedding {flag:10,.0f}   ratio {m3 / flag:.2f}{verdict}")  # fmt: skip
    if result.get("checks"):
        print("outputs agree:", json.dumps(result["checks"]))
    print(f"{path} ({(time.perf_counter() - started) / 60:.1f} min)")


if __name__ == "__main__":
    main()
