"""Loading checkpoints: local folders, the hub cache, missing heads, hostile files, bad options."""

from __future__ import annotations

import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from m3_rag import CheckpointError, M3Embedder, MissingHeadError


def copy_checkpoint(src: Path, dst: Path, *, drop: tuple[str, ...] = ()) -> Path:
    shutil.copytree(src, dst)
    for name in drop:
        (dst / name).unlink()
    return dst


def test_bin_and_safetensors_checkpoints_load(checkpoint) -> None:
    name, m3, _ = checkpoint
    assert m3.dtype == torch.float32 and m3.device.type == "cpu"
    assert m3.has_sparse and m3.has_colbert
    assert m3.max_length == 512
    assert name in repr(m3)


@pytest.mark.parametrize(("missing", "mode"), [("sparse_linear.pt", "sparse"), ("colbert_linear.pt", "colbert")])
def test_missing_head_is_a_clear_error_when_asked_for(tiny_path, tmp_path, missing, mode) -> None:
    folder = copy_checkpoint(tiny_path, tmp_path / "ckpt", drop=(missing,))
    m3 = M3Embedder.from_pretrained(folder)
    out = m3.encode(["hello"], dense=True, sparse=False, colbert=False)  # dense still works
    assert out.dense is not None and out.dense.shape == (1, m3.dim)
    with pytest.raises(MissingHeadError, match=missing):
        m3.encode(["hello"], **{mode: True})
    with pytest.raises(MissingHeadError, match=missing):
        m3.compute_score([("a", "b")])


def test_not_a_checkpoint(tmp_path, tiny_path) -> None:
    with pytest.raises(CheckpointError, match=r"config\.json"):
        M3Embedder.from_pretrained(tmp_path)
    folder = copy_checkpoint(tiny_path, tmp_path / "noweights", drop=("model.safetensors",))
    with pytest.raises(CheckpointError, match="no encoder weights"):
        M3Embedder.from_pretrained(folder)
    with pytest.raises(CheckpointError, match="not a folder"):
        M3Embedder.from_pretrained(str(tmp_path / "does-not-exist"))


class _Payload:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_pickle_payload_in_a_head_is_refused_without_running(tiny_path, tmp_path) -> None:
    folder = copy_checkpoint(tiny_path, tmp_path / "evil")
    marker = tmp_path / "payload-ran"
    state = torch.load(tiny_path / "sparse_linear.pt", weights_only=True)
    state["extra"] = _Payload(str(marker))
    with open(folder / "sparse_linear.pt", "wb") as f:
        pickle.dump(state, f)  # a plain pickle with a code-running reduce
    with pytest.raises(CheckpointError, match="weights_only=True"):
        M3Embedder.from_pretrained(folder)
    assert not marker.exists()


def test_head_of_the_wrong_shape(tiny_path, tmp_path) -> None:
    folder = copy_checkpoint(tiny_path, tmp_path / "wrong")
    torch.save(torch.nn.Linear(7, 1).state_dict(), folder / "sparse_linear.pt")
    with pytest.raises(CheckpointError, match="does not fit"):
        M3Embedder.from_pretrained(folder)


def test_hub_id_resolves_through_the_cache_offline(tiny_path, tmp_path, monkeypatch) -> None:
    # The layout huggingface_hub keeps: models--org--name/{refs/main, snapshots/<commit>/files}
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--m3-test--tiny"
    shutil.copytree(tiny_path, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    m3 = M3Embedder.from_pretrained("m3-test/tiny", cache_dir=tmp_path / "hub", local_files_only=True)
    local = M3Embedder.from_pretrained(tiny_path)
    assert m3.name == "m3-test/tiny"
    a, b = (
        m3.encode(["hello world"], sparse=False, colbert=False),
        local.encode(["hello world"], sparse=False, colbert=False),
    )
    assert a.dense is not None and b.dense is not None
    np.testing.assert_array_equal(a.dense, b.dense)


def test_hub_id_not_in_cache_offline(tmp_path) -> None:
    with pytest.raises(CheckpointError, match="m3-test/absent"):
        M3Embedder.from_pretrained("m3-test/absent", cache_dir=tmp_path, local_files_only=True)


@pytest.mark.parametrize(
    ("spelling", "expected"), [("fp16", torch.float16), ("bfloat16", torch.bfloat16), (torch.float32, torch.float32)]
)
def test_dtypes(tiny_path, spelling, expected) -> None:
    m3 = M3Embedder.from_pretrained(tiny_path, dtype=spelling)
    assert m3.dtype == expected
    out = m3.encode(["What is BGE-M3?"])
    ref = M3Embedder.from_pretrained(tiny_path).encode(["What is BGE-M3?"])
    assert out.dense is not None and ref.dense is not None and out.dense.dtype == np.float32
    np.testing.assert_allclose(out.dense, ref.dense, atol=0.05)  # half precision stays close


def test_unknown_dtype_and_device_list_the_allowed(tiny_path) -> None:
    with pytest.raises(ValueError, match=r"unknown dtype 'int8'.*float32.*bf16"):
        M3Embedder.from_pretrained(tiny_path, dtype="int8")
    with pytest.raises(ValueError, match=r"unknown device 'gpu0'.*cpu, cuda, mps"):
        M3Embedder.from_pretrained(tiny_path, device="gpu0")
    with pytest.raises(TypeError, match="dtype must be"):
        M3Embedder.from_pretrained(tiny_path, dtype=3)  # type: ignore[arg-type]
