"""Where MilvusStore's ColBERT vectors live: re-encode the candidates, or read a local side store.

Times, per query with 100 candidates of ~175 tokens:

1. ``MilvusStore.search`` end to end (milvus-lite, dense first stage of exactly 100) with the
   float16 side store and with ``colbert=None`` (re-encoding), and the ColBERT step alone;
2. the same re-encoding with a mid-size random checkpoint (hidden 384, 6 layers), whose tokens/s
   scales to BGE-M3 by FLOPs (~29x more per token);
3. the side store at BGE-M3's size: 1024-d float16 vectors, 2,000 passages (700 MB), 100 random
   look-ups + the ColBERT scores.

Run from the repository root: ``python benchmarks/milvus_colbert.py`` (CPU; set
``--device cuda`` on a GPU machine). Medians of ``--repeats`` runs.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from m3_rag import M3Embedder, MilvusStore
from m3_rag.index.colbert_cache import ColbertCache, text_keys
from m3_rag.scoring import colbert_scores

ROOT = Path(__file__).resolve().parent.parent
WORDS = (ROOT / "scripts" / "tiny_corpus.txt").read_text(encoding="utf-8").split()


def passages(n: int, words: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    starts = rng.integers(0, len(WORDS) - words, n)
    return [" ".join(WORDS[s : s + words]) for s in starts.tolist()]


def median_time(fn, repeats: int) -> float:
    fn()  # warm up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def mid_checkpoint(folder: Path) -> Path:
    from transformers import XLMRobertaConfig, XLMRobertaModel

    tiny = ROOT / "tests" / "data" / "tiny-m3"
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(tiny / name, folder / name)
    vocab = json.loads((tiny / "config.json").read_text())["vocab_size"]
    config = XLMRobertaConfig(vocab_size=vocab, hidden_size=384, num_hidden_layers=6, num_attention_heads=6,
                              intermediate_size=1536, max_position_embeddings=514, type_vocab_size=1, pad_token_id=1,
                              bos_token_id=0, eos_token_id=2)  # fmt: skip
    config.architectures = ["XLMRobertaModel"]
    torch.manual_seed(0)
    XLMRobertaModel(config).save_pretrained(folder)
    torch.save(torch.nn.Linear(384, 384).state_dict(), folder / "colbert_linear.pt")
    torch.save(torch.nn.Linear(384, 1).state_dict(), folder / "sparse_linear.pt")
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--words", type=int, default=45, help="words per passage (~175 tiny-tokenizer tokens)")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="m3-milvus-bench-"))
    try:
        tiny = M3Embedder.from_pretrained(ROOT / "tests" / "data" / "tiny-m3", device=args.device)
        corpus, queries = passages(300, args.words), passages(8, 6, seed=1)
        tokens = sum(len(t) for t in tiny.tokenizer.encode_with_overflow(corpus[:100], 8192)[0])
        print(f"100 candidates = {tokens} tokens ({tokens / 100:.0f} per passage)")
        for colbert in ("float16", None):
            store = MilvusStore(tiny, str(tmp / "bench.db"), f"c_{colbert}", colbert=colbert)
            store.add(corpus, ids=[f"p{i}" for i in range(len(corpus))])
            per_query = median_time(
                lambda s=store: [s.search(q, k=10, candidates=100, first_stage="dense") for q in queries], args.repeats
            ) / len(queries)
            step = median_time(lambda s=store: s._candidate_colbert(corpus[:100]), args.repeats)
            print(
                f"tiny, colbert={colbert!s:8}: search {per_query * 1e3:7.1f} ms/query, ColBERT step {step * 1e3:7.1f} ms"
            )
            store.close()

        mid = M3Embedder.from_pretrained(mid_checkpoint(tmp / "mid"), device=args.device)
        encode = median_time(
            lambda: mid.encode_documents(corpus[:100], dense=False, sparse=False, colbert=True),
            max(1, args.repeats // 2),
        )
        flops = 2 * 12 * 384**2 * 6, 2 * 310e6
        print(f"mid 384x6 re-encode: {encode * 1e3:.0f} ms for 100 candidates ({tokens / encode:.0f} tokens/s); "
              f"BGE-M3 by FLOPs ({flops[1] / flops[0]:.0f}x): ~{encode * flops[1] / flops[0]:.1f} s")  # fmt: skip

        length = tokens // 100
        cache = ColbertCache(tmp / "big", fingerprint="bench", dim=1024, dtype="float16")
        rng = np.random.default_rng(0)
        keys = text_keys([f"doc {i}" for i in range(2000)], max_length=8192)
        for start in range(0, 2000, 250):
            vectors = rng.standard_normal((250 * length, 1024), dtype=np.float32)
            cache.put(keys[start : start + 250], vectors, np.arange(0, 251 * length, length))
        query = rng.standard_normal((24, 1024)).astype(np.float32)

        def side_store() -> None:
            _, vectors, offsets = cache.get(keys[rng.choice(2000, 100, replace=False)])
            colbert_scores(query, vectors, offsets)

        t = median_time(side_store, args.repeats * 4)
        print(f"side store at BGE-M3 size (1024-d float16, {length} tokens/passage, 100 of 2000): {t * 1e3:.1f} ms/query, "
              f"{100 * length * 2048 / 1e6:.0f} MB read")  # fmt: skip
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
