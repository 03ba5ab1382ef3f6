"""Produce the golden reference values with FlagEmbedding 1.4.2.

FlagEmbedding does not import with transformers 5, so this runs in its own virtual
environment and the project never depends on it::

    python -m venv /tmp/ref && /tmp/ref/bin/pip install torch==2.13.0
    /tmp/ref/bin/pip install "transformers<5" FlagEmbedding==1.4.2
    /tmp/ref/bin/python scripts/make_golden.py

It writes ``tests/data/golden/<checkpoint>.npz`` for every tiny checkpoint: the
tokenisation, dense vectors, sparse weights and ColBERT vectors of
``scripts/golden_texts.json`` at two maximum lengths (one that truncates), and
``compute_score`` of the pairs with two weightings, float32 on CPU.
"""

from __future__ import annotations

import json
from pathlib import Path

import FlagEmbedding
import numpy as np
import transformers
from FlagEmbedding import BGEM3FlagModel

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "tests" / "data"
SPEC = json.loads(Path(__file__).with_name("golden_texts.json").read_text(encoding="utf-8"))
MAX_LENGTHS = (512, 12)
WEIGHTS = {"w111": None, "w424": [0.4, 0.2, 0.4]}


def packed(arrays: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    offsets = np.cumsum([0] + [len(a) for a in arrays]).astype(np.int64)
    return offsets, np.concatenate(arrays, axis=0)


def run(name: str) -> None:
    folder = DATA / name
    model = BGEM3FlagModel(str(folder), use_fp16=False, devices="cpu")
    texts = SPEC["texts"]
    out: dict[str, np.ndarray] = {}
    for max_length in MAX_LENGTHS:
        tag = f"L{max_length}"
        ids = [np.asarray(model.tokenizer(t, truncation=True, max_length=max_length)["input_ids"]) for t in texts]
        out[f"{tag}_ids_offsets"], out[f"{tag}_ids"] = packed(ids)
        enc = model.encode(
            texts,
            batch_size=4,
            max_length=max_length,
            return_dense=True,
            return_sparse=True,
            return_colbert_vecs=True,
        )
        out[f"{tag}_dense"] = enc["dense_vecs"].astype(np.float32)
        keys = [np.asarray([int(k) for k in d], dtype=np.int64) for d in enc["lexical_weights"]]
        vals = [np.asarray([float(v) for v in d.values()], dtype=np.float32) for d in enc["lexical_weights"]]
        out[f"{tag}_sparse_offsets"], out[f"{tag}_sparse_ids"] = packed(keys)
        out[f"{tag}_sparse_weights"] = packed(vals)[1]
        out[f"{tag}_colbert_offsets"], out[f"{tag}_colbert"] = packed(list(enc["colbert_vecs"]))

    pairs = [tuple(p) for p in SPEC["pairs"]]
    for wtag, weights in WEIGHTS.items():
        # batch_size=1: no padding, so the scores are exactly the documented formulas.
        # With padding, the reference's ColBERT max also sees the zero vectors of padded
        # passage positions (see the note in tests/test_parity.py).
        for btag, batch_size in (("b1", 1), ("b256", 256)):
            scores = model.compute_score(
                pairs,
                batch_size=batch_size,
                max_query_length=512,
                max_passage_length=512,
                weights_for_different_modes=weights,
            )
            for key, values in scores.items():
                out[f"score_{wtag}_{btag}_{key}"] = np.asarray(values, dtype=np.float64)
    out["versions"] = np.asarray(
        [FlagEmbedding.__version__ if hasattr(FlagEmbedding, "__version__") else "1.4.2", transformers.__version__]
    )
    target = DATA / "golden" / f"{name}.npz"
    target.parent.mkdir(exist_ok=True)
    np.savez_compressed(target, **out)
    print(f"wrote {target.relative_to(ROOT)} ({target.stat().st_size / 1e3:.0f} kB)")


if __name__ == "__main__":
    for checkpoint in ("tiny-m3", "tiny-m3-bin"):
        run(checkpoint)
