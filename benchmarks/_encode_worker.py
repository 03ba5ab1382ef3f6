"""One timed encode in a fresh process: m3-rag (its own environment) or FlagEmbedding (the reference one).

Prints one JSON line: seconds, texts, tokens, peak RSS, and a fingerprint of the outputs.
``encode_cpu.py`` starts it once per run (so that each run's peak RSS is its own), alternating
libraries; ``encode_gpu.py`` keeps one ``--serve`` process per library (model loaded once) and
alternates requests. Not meant to be run by hand, but it can be::

    python benchmarks/_encode_worker.py --lib m3 --checkpoint CKPT --corpus CORPUS.json --modes all
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import pstats
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from _common import peak_rss_mb

MAX_LENGTH = 8192  # both libraries see every token (FlagEmbedding's default passage_max_length is 512)


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


class _M3:
    def __init__(self, checkpoint: str, device: str, fp16: bool, prefetch: int | None = None) -> None:
        from m3_rag import M3Embedder

        self.model = M3Embedder.from_pretrained(checkpoint, device=device, dtype="float16" if fp16 else "float32")
        if prefetch is not None:  # batches made ahead in the input thread (0: in the calling thread)
            self.model.input_prefetch = prefetch
        self.settings = {"input_prefetch": self.model.input_prefetch, "max_batch_tokens": self.model.max_batch_tokens}

    def encode(self, texts: list[str], dense_only: bool) -> dict[str, Any]:
        out = self.model.encode(texts, sparse=not dense_only, colbert=not dense_only, show_progress=False)
        return {"dense": out.dense, "sparse": out.sparse, "colbert": out.colbert}


class _Flag:
    def __init__(self, checkpoint: str, device: str, fp16: bool) -> None:
        from FlagEmbedding import BGEM3FlagModel

        self.model = BGEM3FlagModel(checkpoint, use_fp16=fp16, devices=device)  # default batch_size (256)
        self.settings: dict[str, Any] = {"batch_size": 256}

    def encode(self, texts: list[str], dense_only: bool) -> dict[str, Any]:
        out = self.model.encode(
            texts,
            max_length=MAX_LENGTH,
            return_dense=True,
            return_sparse=not dense_only,
            return_colbert_vecs=not dense_only,
        )
        return {"dense": out["dense_vecs"], "sparse": out["lexical_weights"], "colbert": out["colbert_vecs"]}


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def _load_corpus(path: str, cache: dict[str, tuple[list[str], list[int]]]) -> tuple[list[str], list[int]]:
    if path not in cache:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        cache[path] = (data["texts"], data["tokens"])
    return cache[path]


def timed_encode(
    lib: _M3 | _Flag,
    texts: list[str],
    tokens: list[int],
    *,
    modes: str,
    device: str,
    save_dense: str | None = None,
    profile: str | None = None,
) -> dict[str, Any]:
    """Warm up, then time one encode of ``texts``; returns the measurements."""
    dense_only = modes == "dense"
    lib.encode(texts[:16], dense_only)  # warm-up: first-call allocations, lazy initialisation
    _sync(device)
    if device.startswith("cuda"):
        import torch

        torch.cuda.reset_peak_memory_stats()
    rss_before = _rss_mb()
    peak_before = peak_rss_mb()
    profiler = cProfile.Profile() if profile else None
    if profiler is not None:
        profiler.enable()
    t0 = time.perf_counter()
    out = lib.encode(texts, dense_only)
    _sync(device)
    seconds = time.perf_counter() - t0
    if profiler is not None:
        profiler.disable()
        buffer = io.StringIO()
        stats = pstats.Stats(profiler, stream=buffer)
        stats.sort_stats("cumulative").print_stats(45)
        stats.sort_stats("tottime").print_stats(25)
        Path(str(profile)).write_text(buffer.getvalue(), encoding="utf-8")
    gpu_peak = None
    if device.startswith("cuda"):
        import torch

        gpu_peak = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    dense = np.asarray(out["dense"], dtype=np.float32)
    if save_dense:
        np.save(save_dense, dense)
    return {
        "seconds": seconds,
        "texts": len(texts),
        "tokens": int(sum(tokens)),
        "tokens_per_s": sum(tokens) / seconds,
        "docs_per_s": len(texts) / seconds,
        "rss_before_encode_mb": round(rss_before, 1),
        "peak_rss_before_encode_mb": round(peak_before, 1),
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "gpu_peak_allocated_mb": gpu_peak,
        "dense_shape": list(dense.shape),
        "sparse_entries": None if out["sparse"] is None else int(sum(len(d) for d in out["sparse"])),
        "colbert_rows": None if out["colbert"] is None else int(sum(len(c) for c in out["colbert"])),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--lib", choices=["m3", "flag"], required=True)
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--fp16", action="store_true")
    parser.add_argument("--corpus", help="JSON {texts: [...], tokens: [...]}; one run, then exit")
    parser.add_argument("--modes", choices=["all", "dense"], default="all")
    parser.add_argument("--save-dense", default=None, help="write the dense vectors here (.npy)")
    parser.add_argument("--profile", default=None, help="write cProfile stats (text) here")
    parser.add_argument("--serve", action="store_true", help="load once, then answer JSON requests on stdin")
    parser.add_argument("--prefetch", type=int, default=None, help="m3-rag: input_prefetch (default: its own)")
    args = parser.parse_args()

    t0 = time.perf_counter()
    lib: _M3 | _Flag
    lib = _M3(args.checkpoint, args.device, args.fp16, args.prefetch) if args.lib == "m3" else _Flag(
        args.checkpoint, args.device, args.fp16)  # fmt: skip
    load_s = time.perf_counter() - t0
    corpora: dict[str, tuple[list[str], list[int]]] = {}
    if not args.serve:
        texts, tokens = _load_corpus(args.corpus, corpora)
        result = timed_encode(lib, texts, tokens, modes=args.modes, device=args.device,
                              save_dense=args.save_dense, profile=args.profile)  # fmt: skip
        print(json.dumps({"lib": args.lib, "modes": args.modes, "load_seconds": load_s, "settings": lib.settings,
                          **result}), flush=True)  # fmt: skip
        return
    print(json.dumps({"ready": True, "load_seconds": load_s, "settings": lib.settings}), flush=True)
    for line in sys.stdin:
        request = json.loads(line)
        texts, tokens = _load_corpus(request["corpus"], corpora)
        result = timed_encode(lib, texts, tokens, modes=request["modes"], device=args.device,
                              save_dense=request.get("save_dense"))  # fmt: skip
        print(json.dumps({"lib": args.lib, "modes": request["modes"], "settings": lib.settings, **result}), flush=True)


if __name__ == "__main__":
    main()
