"""Shared fixtures: the committed tiny checkpoints and the reference's golden values."""

from __future__ import annotations

import json
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # hermetic: never reach the hub

import numpy as np
import pytest

from m3_rag import M3Embedder

DATA = Path(__file__).parent / "data"
ROOT = Path(__file__).parent.parent
CHECKPOINTS = ("tiny-m3", "tiny-m3-bin")
SPEC = json.loads((ROOT / "scripts" / "golden_texts.json").read_text(encoding="utf-8"))


@pytest.fixture(scope="session")
def tiny_path() -> Path:
    return DATA / "tiny-m3"


@pytest.fixture(scope="session")
def embedder(tiny_path: Path) -> M3Embedder:
    return M3Embedder.from_pretrained(tiny_path, device="cpu")


@pytest.fixture(scope="session", params=CHECKPOINTS)
def checkpoint(request: pytest.FixtureRequest) -> tuple[str, M3Embedder, dict[str, np.ndarray]]:
    name = request.param
    golden = dict(np.load(DATA / "golden" / f"{name}.npz"))
    return name, M3Embedder.from_pretrained(DATA / name, device="cpu"), golden


@pytest.fixture(scope="session")
def spec() -> dict:
    return SPEC


def unpack(values: np.ndarray, offsets: np.ndarray) -> list[np.ndarray]:
    return [values[offsets[i] : offsets[i + 1]] for i in range(len(offsets) - 1)]
