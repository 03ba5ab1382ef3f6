"""The model fingerprint identifies the whole checkpoint: backbone, heads, config and tokenizer.

It must not move with the path, the file format (safetensors, .bin, shards), the device or the
dtype the model is loaded in, and must move when backbone weights change (the bug: it covered
only the heads, so another encoder with the same heads opened this model's index).
"""

from __future__ import annotations

import copy
import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from m3_rag import IndexFormatError, M3Embedder, M3Index
from m3_rag.fingerprint import SAMPLES_PER_TENSOR, StoredTensors, sample_positions

DATA = Path(__file__).parent / "data"
TINY = DATA / "tiny-m3"
# Indexes and Milvus collections record these: a change of what is hashed must be deliberate
# (bump FINGERPRINT_VERSION, and have the stores accept the values they recorded before).
GOLDEN = {
    "tiny-m3": ("98f76a4d44ef21262523bda8cc608624", "ea39448d4255ab4c"),
    "tiny-m3-bin": ("d0cc0ca2737736b8e193c8444ea68151", "f78ae33da7724b08"),
}
TEXTS = ["Berlin is the capital of Germany.", "北京是中国的首都。"]


def load(folder: Path, **kwargs) -> M3Embedder:
    return M3Embedder.from_pretrained(folder, device="cpu", **kwargs)


def with_weights(tmp_path: Path, name: str, edit: Callable[[dict[str, torch.Tensor]], None]) -> Path:
    """A copy of tiny-m3 whose model.safetensors went through ``edit`` (heads untouched)."""
    folder = tmp_path / name
    shutil.copytree(TINY, folder)
    state = load_file(folder / "model.safetensors")
    edit(state)
    save_file(state, folder / "model.safetensors", metadata={"format": "pt"})
    return folder


def test_golden_values() -> None:
    for name, (fingerprint, legacy) in GOLDEN.items():
        m3 = load(DATA / name)
        assert (m3.fingerprint, m3.legacy_fingerprint) == (fingerprint, legacy)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_same_in_every_dtype(embedder: M3Embedder, dtype: str) -> None:
    other = load(TINY, dtype=dtype)
    assert other.dtype == getattr(torch, dtype)
    assert other.fingerprint == embedder.fingerprint == GOLDEN["tiny-m3"][0]
    assert other.legacy_fingerprint == embedder.legacy_fingerprint


def test_same_wherever_and_however_stored(embedder: M3Embedder, tmp_path: Path) -> None:
    moved = tmp_path / "some" / "other-name"
    shutil.copytree(TINY, moved)
    state = load_file(TINY / "model.safetensors")

    as_bin = tmp_path / "as-bin"
    shutil.copytree(TINY, as_bin)
    (as_bin / "model.safetensors").unlink()
    torch.save(state, as_bin / "pytorch_model.bin")

    sharded = tmp_path / "sharded"
    shutil.copytree(TINY, sharded)
    (sharded / "model.safetensors").unlink()
    names = sorted(state)
    halves = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
    for file, part in halves.items():
        save_file({n: state[n] for n in part}, sharded / file, metadata={"format": "pt"})
    weight_map = {n: file for file, part in halves.items() for n in part}
    (sharded / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))

    for folder in (moved, as_bin, sharded):
        m3 = load(folder)
        np.testing.assert_array_equal(m3.encode(TEXTS).dense, embedder.encode(TEXTS).dense)  # the same model
        assert m3.fingerprint == embedder.fingerprint, folder.name
    assert StoredTensors(as_bin).files[0].name == "pytorch_model.bin"
    assert len(StoredTensors(sharded).files) == 2


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_files_read_alike_in_both_formats(tmp_path: Path, dtype: torch.dtype) -> None:
    """safetensors values are converted by numpy (bfloat16 by bit shifting), .bin ones by torch."""
    st = with_weights(tmp_path, "st", lambda s: s.update({k: v.to(dtype) for k, v in s.items()}))
    as_bin = tmp_path / "bin"
    shutil.copytree(st, as_bin)
    torch.save(load_file(st / "model.safetensors"), as_bin / "pytorch_model.bin")
    (as_bin / "model.safetensors").unlink()
    a, b = StoredTensors(st), StoredTensors(as_bin)
    assert a.floating() == b.floating()
    for name in a.floating():
        assert a.dtype(name) == b.dtype(name) == {torch.float16: "F16", torch.bfloat16: "BF16"}[dtype]
        assert a.sample(name) == b.sample(name)
        expected = load_file(st / "model.safetensors")[name].reshape(-1).float().numpy()
        positions = sample_positions(expected.size)
        np.testing.assert_array_equal(np.frombuffer(a.sample(name), "<f4"), expected[positions])
    assert load(st).fingerprint == load(as_bin).fingerprint != GOLDEN["tiny-m3"][0]


def perturb(name: str, rows: slice | None = None, scale: float = 1e-2) -> Callable[[dict[str, torch.Tensor]], None]:
    def edit(state: dict[str, torch.Tensor]) -> None:
        gen = torch.Generator().manual_seed(0)
        tensor = state[name].clone()
        target = tensor if rows is None else tensor[rows]
        target += scale * torch.randn(target.shape, generator=gen)
        state[name] = tensor

    return edit


@pytest.mark.parametrize(
    "edit",
    [
        perturb("encoder.layer.1.attention.self.query.weight"),  # one matrix of one layer, as fine-tuning it
        perturb("encoder.layer.0.output.LayerNorm.bias"),  # 32 values, all of them sampled
        perturb("embeddings.word_embeddings.weight", rows=slice(100, 110)),  # 10 token embeddings
    ],
    ids=["query-weight", "layernorm-bias", "ten-embedding-rows"],
)
def test_another_backbone_with_the_same_heads_has_another_fingerprint(embedder, tmp_path, edit) -> None:
    folder = with_weights(tmp_path, "tuned", edit)
    tuned = load(folder)
    assert tuned.legacy_fingerprint == embedder.legacy_fingerprint  # the old value could not tell them apart
    assert tuned.fingerprint != embedder.fingerprint
    assert load(folder, dtype="float16").fingerprint == tuned.fingerprint


def test_the_backbone_change_moves_the_vectors_and_the_index_refuses_it(embedder, tmp_path) -> None:
    folder = with_weights(tmp_path, "tuned", perturb("encoder.layer.1.attention.self.query.weight", scale=0.5))
    tuned = load(folder)
    assert np.abs(tuned.encode(TEXTS).dense - embedder.encode(TEXTS).dense).max() > 1e-3
    index = M3Index(embedder)
    index.add(TEXTS, ids=["a", "b"])
    path = index.save(tmp_path / "index")
    with pytest.raises(IndexFormatError, match="was built with model"):
        M3Index.load(path, tuned)
    assert len(M3Index.load(path, load(TINY, dtype="bfloat16"))) == 2  # the same model in another dtype opens it


def _edit_json(folder: Path, name: str, edit: Callable[[dict], None]) -> None:
    data = json.loads((folder / name).read_text(encoding="utf-8"))
    edit(data)
    (folder / name).write_text(json.dumps(data), encoding="utf-8")


def test_heads_config_and_tokenizer_are_covered(embedder, tmp_path) -> None:
    def variant(name: str, change: Callable[[Path], None]) -> M3Embedder:
        folder = tmp_path / name
        shutil.copytree(TINY, folder)
        change(folder)
        return load(folder)

    def other_head(folder: Path) -> None:
        state = torch.load(folder / "colbert_linear.pt", weights_only=True)
        state["bias"] = state["bias"] + 1e-3
        torch.save(state, folder / "colbert_linear.pt")

    def other_normalizer(folder: Path) -> None:
        _edit_json(folder, "tokenizer.json", lambda t: t.update(normalizer=None))

    moved = {
        "head": variant("head", other_head),
        "eps": variant("eps", lambda f: _edit_json(f, "config.json", lambda c: c.update(layer_norm_eps=1e-6))),
        "normalizer": variant("normalizer", other_normalizer),
    }
    for name, m3 in moved.items():
        assert m3.fingerprint != embedder.fingerprint, name
    assert moved["head"].legacy_fingerprint != embedder.legacy_fingerprint
    kept = {
        "version": variant("v", lambda f: _edit_json(f, "config.json", lambda c: c.update(transformers_version="9"))),
        "max-length": variant(
            "m", lambda f: _edit_json(f, "tokenizer_config.json", lambda c: c.update(model_max_length=99))
        ),
    }
    for name, m3 in kept.items():  # fields that do not change the vectors
        assert m3.fingerprint == embedder.fingerprint, name


def test_a_model_built_in_memory(embedder) -> None:
    model = copy.deepcopy(embedder.model)
    model.fingerprint = model.legacy_fingerprint = ""
    built = M3Embedder(model, embedder.tokenizer, name="in-memory")
    assert len(built.fingerprint) == 32 and built.fingerprint != embedder.fingerprint  # from the parameters
    assert built.legacy_fingerprint == embedder.legacy_fingerprint  # heads as they are
    before = built.fingerprint
    with torch.no_grad():
        model.backbone.encoder.layer[1].attention.self.query.weight.add_(1e-2)
    assert built.fingerprint != before


def test_sample_positions_spread_over_the_tensor() -> None:
    positions = sample_positions(250_002 * 1024)
    assert len(positions) == SAMPLES_PER_TENSOR and len(np.unique(positions)) == SAMPLES_PER_TENSOR
    assert positions[0] == 0 and positions[-1] > 250_002 * 1024 * (1 - 2 / SAMPLES_PER_TENSOR)
    np.testing.assert_array_equal(sample_positions(5), np.arange(5))
