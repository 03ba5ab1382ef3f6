"""The floor of an encode: only the network's forward passes, over a given batching plan.

Runs in either environment (it uses transformers and tokenizers only): loads the checkpoint's
backbone with ``AutoModel`` (no heads, no post-processing), tokenises the corpus with its
``tokenizer.json``, pads the batches that a library would form and times the forward passes.

- ``--plan m3``: m3-rag's plan (longest first, ``batch * longest <= 16384`` padded tokens);
- ``--plan flag``: FlagEmbedding's (longest first, 256 texts a batch); the time of its first
  batch is reported too, because FlagEmbedding runs that batch twice (a batch-size probe).

Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
import transformers
from tokenizers import Tokenizer
from transformers import AutoModel


def plan(lengths: np.ndarray, which: str, max_tokens: int) -> list[np.ndarray]:
    order = np.argsort(-lengths, kind="stable")
    batches, start = [], 0
    while start < len(order):
        size = 256 if which == "flag" else max(1, max_tokens // int(lengths[order[start]]))
        batches.append(order[start : start + size])
        start += size
    return batches


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--corpus", required=True)
    parser.add_argument("--plan", choices=["m3", "flag"], required=True)
    parser.add_argument("--max-tokens", type=int, default=16384)
    args = parser.parse_args()

    texts = json.loads(Path(args.corpus).read_text(encoding="utf-8"))["texts"]
    tok = Tokenizer.from_file(str(Path(args.checkpoint) / "tokenizer.json"))
    ids = [e.ids for e in tok.encode_batch(texts)]
    lengths = np.array([len(x) for x in ids])
    model = AutoModel.from_pretrained(args.checkpoint).eval()
    batches = plan(lengths, args.plan, args.max_tokens)
    padded = 0
    times = []
    with torch.inference_mode():
        warm = torch.tensor([ids[0]])
        model(input_ids=warm, attention_mask=torch.ones_like(warm))
        for batch in batches:
            width = int(lengths[batch].max())
            input_ids = torch.ones((len(batch), width), dtype=torch.long)  # <pad> = 1
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for row, i in enumerate(batch.tolist()):
                input_ids[row, : lengths[i]] = torch.tensor(ids[i])
                mask[row, : lengths[i]] = 1
            padded += len(batch) * width
            t0 = time.perf_counter()
            model(input_ids=input_ids, attention_mask=mask)
            times.append(time.perf_counter() - t0)
    print(json.dumps({
        "plan": args.plan,
        "transformers": transformers.__version__,
        "attn_implementation": getattr(model.config, "_attn_implementation", None),
        "batches": len(batches),
        "tokens": int(lengths.sum()),
        "padded_tokens": padded,
        "forward_seconds": sum(times),
        "first_batch_seconds": times[0],
    }))  # fmt: skip


if __name__ == "__main__":
    main()
