"""Encode throughput on CPU: m3-rag vs FlagEmbedding 1.4.2, same checkpoint, same texts.

Checkpoint: a random XLM-R of BGE-M3's format, hidden 384, 6 layers, 12 heads, FFN 1536, the
250,002-token vocabulary, 8,194 positions, with ``colbert_linear.pt`` and ``sparse_linear.pt``
(made by ``assets.py``). Corpora: 2,000 passages of 24-200 tokens and 100 documents of
400-2,000 tokens (``<s>``/``</s>`` included). Both libraries run float32 on the CPU:
FlagEmbedding ``BGEM3FlagModel(use_fp16=False, devices="cpu")`` with its default batch size and
``max_length=8192`` (its default 512 would truncate the documents), m3-rag with its defaults.
Each run is a fresh process (its peak RSS is its own); the libraries alternate, which goes
first alternates too; the summary has medians over the runs and the ratio of median tokens/s.

Runs accumulate in ``benchmarks/results/encode_cpu.json`` (``--fresh`` starts over), so on a
busy machine the repetitions can be spread over several invocations of under ~15 minutes::

    python benchmarks/encode_cpu.py                                   # everything, 3 repetitions
    python benchmarks/encode_cpu.py --corpus documents --modes all --reps 1   # one pair of runs
    python benchmarks/encode_cpu.py --corpus passages --profile --reps 0      # cProfile of m3-rag

Set ``M3_BENCH_REF_PYTHON`` to use an existing FlagEmbedding environment (see ``ref_env.py``).
"""

from __future__ import annotations

import argparse

from _encode_bench import run_benchmark


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", nargs="+", choices=["passages", "documents"], default=["passages", "documents"])
    parser.add_argument("--modes", nargs="+", choices=["all", "dense"], default=["all", "dense"])
    parser.add_argument("--reps", type=int, default=3, help="pairs of runs (m3-rag, FlagEmbedding) per row")
    parser.add_argument("--fresh", action="store_true", help="forget the runs already in the result file")
    parser.add_argument("--max-minutes", type=float, default=float("inf"), help="start no new pair after this")
    parser.add_argument("--profile", action="store_true", help="also write a cProfile of one m3-rag run per corpus")
    args = parser.parse_args()
    path = run_benchmark(
        result_name="encode_cpu",
        kind="cpu",
        device="cpu",
        fp16=False,
        corpora=args.corpus,
        modes=args.modes,
        reps=args.reps,
        fresh=args.fresh,
        serve=False,
        max_minutes=args.max_minutes,
        profile=args.profile,
    )
    print(path)


if __name__ == "__main__":
    main()
