"""A fake model for the encoding store tests: its encodings of a text are a pure function of the text.

So any process (the concurrency test runs several) can check any entry without loading a model.
"""

from __future__ import annotations

import hashlib
from types import SimpleNamespace

import numpy as np

from m3_rag import M3Output

FACTS = SimpleNamespace(name="fake-m3", vocab_size=50, fingerprint="fake-fingerprint", dim=4, colbert_dim=3)


def _unit(rng: np.random.Generator, shape: int | tuple[int, int]) -> np.ndarray:
    x = rng.standard_normal(shape).astype(np.float32)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def fake_output(texts: list[str]) -> M3Output:
    """Dense (4,), sparse (0-4 ids in [4, 50)) and ColBERT (1-11, 3) unit vectors, drawn from the text's hash."""
    dense, sparse, colbert = [], [], []
    for text in texts:
        rng = np.random.default_rng(int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little"))
        dense.append(_unit(rng, 4))
        ids = np.sort(rng.choice(np.arange(4, 50), size=int(rng.integers(0, 5)), replace=False))
        sparse.append({int(i): float(w) for i, w in zip(ids, rng.uniform(0.01, 0.5, len(ids)))})
        colbert.append(_unit(rng, (int(rng.integers(max(1, len(ids)), 12)), 3)))
    return M3Output(dense=np.stack(dense), sparse=sparse, colbert=colbert)
