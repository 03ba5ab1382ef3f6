"""Which checkpoint is this? A fingerprint of the whole model, read from its files.

An index records the fingerprint of the model that made its vectors and refuses another
model's. :func:`checkpoint_fingerprint` hashes (SHA-256, 128 bits kept as 32 hex digits):

- the config fields that change the math (``model_type``, sizes, ``hidden_act``,
  ``layer_norm_eps``, ``pad_token_id``, ``type_vocab_size``, ``position_embedding_type``), read
  from ``config.json`` with XLM-R's defaults filled in (so a transformers upgrade does not move it);
- for every floating-point tensor of the encoder's weight files (``model.safetensors``, its
  shards, or ``pytorch_model.bin``): its name, stored dtype and shape, and
  :data:`SAMPLES_PER_TENSOR` values at evenly spread positions of the flattened tensor (all of
  them for smaller tensors), converted to little-endian float32. Integer buffers such as
  ``position_ids``, which some ``.bin`` files carry and others do not, are left out;
- both heads in full (``sparse_linear.pt``, ``colbert_linear.pt``, as float32);
- the SHA-256 of ``tokenizer.json`` (or ``sentencepiece.bpe.model``) and the special tokens.

It is the same for a checkpoint wherever it lies, in safetensors or ``.bin``, whatever device
and dtype it is loaded in (the values come from the files, before any cast), and it moves for
any change that touches a tensor broadly: fine-tuning changes nearly every value, and a change
of a fraction ``f`` of one tensor's values at random goes unseen with probability
``(1 - f) ** 1024``. A change confined to values between the sample points (one edited weight)
is not seen.

Cost, measured with ``benchmarks/fingerprint.py`` on a random checkpoint of exactly BGE-M3's
architecture saved as BGE-M3 ships it (float32, 2.27 GB, 391 tensors, 1024 x 1024 ColBERT head,
16 MB tokenizer.json), on 2 shared CPU cores (load average 6-8): 0.33-0.49 s within a
8.5-10 s float32 load with the files in the page cache (about 5%: the hashing is 20 ms for the
samples, 28 ms for tokenizer.json and 12 ms for the heads; the rest is the page faults of
touching ~400k pages of the memory map), and 1.4 s when the files are not cached (the samples
are spread, so nearly every page is read from disk). :func:`load_model` computes it after the
backbone is loaded, so it reads what the load already brought into the page cache. Hashing
every byte instead (SHA-256 of the weight file) took 3.3-4.5 s with the file cached.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from .errors import CheckpointError

__all__ = [
    "FINGERPRINT_VERSION",
    "SAMPLES_PER_TENSOR",
    "StoredTensors",
    "checkpoint_fingerprint",
    "file_sha256",
    "load_state_dict",
    "math_config",
    "sample_positions",
    "weight_files",
]

FINGERPRINT_VERSION = "m3-rag checkpoint fingerprint v1"
#: Values sampled from each tensor (every value of a tensor this small or smaller).
SAMPLES_PER_TENSOR = 1024
#: XLM-R's defaults for the config fields that change the math (XLMRobertaConfig's).
_MATH_DEFAULTS: dict[str, Any] = {
    "hidden_act": "gelu",
    "layer_norm_eps": 1e-12,
    "pad_token_id": 1,
    "type_vocab_size": 2,
    "position_embedding_type": "absolute",
}
_MATH_REQUIRED = (
    "model_type",
    "vocab_size",
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "intermediate_size",
    "max_position_embeddings",
)
# safetensors dtype -> (numpy dtype as stored, is floating point)
_SAFETENSORS_DTYPES: dict[str, tuple[str, bool]] = {
    "F64": ("<f8", True),
    "F32": ("<f4", True),
    "F16": ("<f2", True),
    "BF16": ("<u2", True),
    "F8_E4M3": ("u1", True),
    "F8_E5M2": ("u1", True),
    "I64": ("<i8", False),
    "I32": ("<i4", False),
    "I16": ("<i2", False),
    "I8": ("i1", False),
    "U64": ("<u8", False),
    "U32": ("<u4", False),
    "U16": ("<u2", False),
    "U8": ("u1", False),
    "BOOL": ("u1", False),
}
_TORCH_NAMES = {
    "float64": "F64",
    "float32": "F32",
    "float16": "F16",
    "bfloat16": "BF16",
    "float8_e4m3fn": "F8_E4M3",
    "float8_e5m2": "F8_E5M2",
}
_MAX_HEADER = 100 * 1024 * 1024  # safetensors' own limit


def sample_positions(numel: int, count: int = SAMPLES_PER_TENSOR) -> np.ndarray:
    """Flat positions of the sampled values: ``floor(i * numel / count)``, or all of them.

    >>> sample_positions(10, 4).tolist(), sample_positions(3, 4).tolist()
    ([0, 2, 5, 7], [0, 1, 2])
    """
    if numel <= count:
        return np.arange(numel, dtype=np.int64)
    return (np.arange(count, dtype=np.int64) * numel) // count


def _canonical(values: np.ndarray, dtype: str) -> bytes:
    """Sampled values as little-endian float32 bytes (float8 stays as stored: its raw bytes)."""
    if dtype == "BF16":  # bfloat16 is the top half of a float32
        return (values.astype("<u4") << 16).astype("<u4").tobytes()
    if dtype in ("F64", "F32", "F16"):
        return values.astype("<f4").tobytes()
    return values.astype("u1").tobytes()


def file_sha256(path: Path) -> str:
    """SHA-256 of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def weight_files(folder: Path) -> list[Path]:
    """The encoder weight files transformers loads, in its order of preference."""
    for single, index in (
        ("model.safetensors", "model.safetensors.index.json"),
        ("pytorch_model.bin", "pytorch_model.bin.index.json"),
    ):
        if (folder / single).is_file():
            return [folder / single]
        if (folder / index).is_file():
            try:
                weight_map = json.loads((folder / index).read_text(encoding="utf-8"))["weight_map"]
                names = sorted(set(weight_map.values()))
            except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
                raise CheckpointError(
                    f"{folder / index} is not a valid shard index (a JSON object with a 'weight_map' of "
                    f"tensor -> file): {type(exc).__name__}: {exc}"
                ) from exc
            shards = [folder / n for n in names if isinstance(n, str)]
            if len(shards) != len(names) or any(p.parent != folder or not p.is_file() for p in shards):
                raise CheckpointError(f"{folder / index} names shards that are not files of {folder}: {names}")
            return shards
    shards = sorted(folder.glob("model-*.safetensors"))
    if shards:
        return shards
    raise CheckpointError(f"{folder} has no encoder weights (model.safetensors or pytorch_model.bin)")


class _Safetensors:
    """One ``.safetensors`` file: its header, checked, and its data memory-mapped."""

    def __init__(self, path: Path) -> None:
        self.path = path
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            length = int.from_bytes(head, "little") if len(head) == 8 else -1
            if not 2 <= length <= min(_MAX_HEADER, size - 8):
                found = f"only {size} bytes" if length < 0 else f"a header length of {length} in {size} bytes"
                raise CheckpointError(
                    f"{path} is not a safetensors file ({found}); re-save the weights (save_pretrained) or "
                    "download them again"
                )
            raw = f.read(length)
        try:
            header = json.loads(raw)
        except ValueError as exc:
            raise CheckpointError(f"{path}: the safetensors header is not valid JSON ({exc})") from exc
        if not isinstance(header, dict):
            raise CheckpointError(f"{path}: the safetensors header is a {type(header).__name__}, not an object")
        data_size = size - 8 - length
        self.entries: dict[str, tuple[str, tuple[int, ...], int, int]] = {}
        for name, entry in header.items():
            if name == "__metadata__":
                continue
            self.entries[name] = self._check_entry(name, entry, data_size)
        self._data = (
            np.memmap(path, dtype=np.uint8, mode="r", offset=8 + length, shape=(data_size,)) if data_size else None
        )

    def _check_entry(self, name: str, entry: Any, data_size: int) -> tuple[str, tuple[int, ...], int, int]:
        problem = None
        if not isinstance(entry, dict) or not isinstance(entry.get("dtype"), str):
            problem = "its entry is not an object with a dtype"
        elif entry["dtype"] not in _SAFETENSORS_DTYPES:
            problem = f"dtype {entry['dtype']!r} is not one of {sorted(_SAFETENSORS_DTYPES)}"
        else:
            shape, offsets = entry.get("shape"), entry.get("data_offsets")
            ints = (list, tuple)
            if not isinstance(shape, ints) or not all(type(d) is int and d >= 0 for d in shape):
                problem = f"shape {shape!r} is not a list of sizes >= 0"
            elif (
                not isinstance(offsets, ints)
                or len(offsets) != 2
                or not all(type(o) is int for o in offsets)
                or not 0 <= offsets[0] <= offsets[1] <= data_size
            ):
                problem = f"data_offsets {offsets!r} do not lie within the {data_size} data bytes"
            else:
                itemsize = np.dtype(_SAFETENSORS_DTYPES[entry["dtype"]][0]).itemsize
                if offsets[1] - offsets[0] != math.prod(shape) * itemsize:
                    problem = f"shape {shape} of {entry['dtype']} does not fill data_offsets {offsets}"
                else:
                    return entry["dtype"], tuple(shape), offsets[0], offsets[1]
        raise CheckpointError(f"{self.path}: tensor {name!r} is malformed: {problem}; download the weights again")

    def sample(self, name: str, count: int) -> bytes:
        dtype, shape, begin, end = self.entries[name]
        if self._data is None or begin == end:
            return b""
        values = self._data[begin:end].view(_SAFETENSORS_DTYPES[dtype][0])
        return _canonical(np.asarray(values[sample_positions(math.prod(shape), count)]), dtype)


def load_state_dict(path: Path) -> dict[str, Any]:
    """The state dict (tensor name -> tensor) in the torch file ``path``, loaded with
    ``weights_only=True`` (pickled code is refused, never run) and memory-mapped where the file
    format allows. Anything else is a :class:`~m3_rag.errors.CheckpointError`."""
    import torch

    try:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as exc:  # a legacy (non-zip) file cannot be memory-mapped
            if "mmap" not in str(exc):
                raise
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(
            f"could not read {path} as a state dict of tensors ({type(exc).__name__}: {exc}); "
            "m3-rag loads weights with weights_only=True and refuses pickled code"
        ) from exc
    if not isinstance(state, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        raise CheckpointError(f"{path} should hold a state dict (tensor name -> tensor), got {type(state).__name__}")
    return state


class _TorchBin:
    """A ``pytorch_model.bin`` state dict, loaded memory-mapped with ``weights_only=True``."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.tensors = load_state_dict(path)
        self.entries: dict[str, tuple[str, tuple[int, ...], int, int]] = {}
        for name, tensor in self.tensors.items():
            dtype = _TORCH_NAMES.get(str(tensor.dtype).removeprefix("torch."), str(tensor.dtype))
            self.entries[name] = (dtype, tuple(int(d) for d in tensor.shape), 0, 0)

    def sample(self, name: str, count: int) -> bytes:
        import torch

        tensor = self.tensors[name].reshape(-1)
        picked = tensor[torch.from_numpy(sample_positions(tensor.numel(), count))]
        dtype = self.entries[name][0]
        if dtype in ("F64", "F32", "F16", "BF16"):
            return picked.to(torch.float32).numpy().astype("<f4").tobytes()
        return picked.view(torch.uint8).numpy().tobytes()


class StoredTensors:
    """The encoder's tensors as stored in a checkpoint folder: names, dtypes, shapes, samples.

    Nothing is read beyond the headers until :meth:`sample` is called, and then only the pages
    that hold the sampled values.

    >>> stored = StoredTensors(Path("tests/data/tiny-m3"))
    >>> stored.shapes["embeddings.word_embeddings.weight"], stored.dtype("embeddings.word_embeddings.weight")
    ((456, 32), 'F32')
    """

    def __init__(self, folder: Path) -> None:
        self.files = weight_files(folder)
        self._owner: dict[str, _Safetensors | _TorchBin] = {}
        for path in self.files:
            reader: _Safetensors | _TorchBin = _TorchBin(path) if path.suffix == ".bin" else _Safetensors(path)
            for name in reader.entries:
                if name in self._owner:
                    raise CheckpointError(f"tensor {name!r} is in both {self._owner[name].path.name} and {path.name}")
                self._owner[name] = reader
        self.shapes: dict[str, tuple[int, ...]] = {n: r.entries[n][1] for n, r in self._owner.items()}

    def dtype(self, name: str) -> str:
        """The stored dtype in safetensors' spelling (``"F32"``, ``"BF16"``...)."""
        return self._owner[name].entries[name][0]

    def floating(self) -> list[str]:
        """Names of the floating-point tensors, sorted."""
        return sorted(n for n in self._owner if _SAFETENSORS_DTYPES.get(self.dtype(n), ("", False))[1])

    def sample(self, name: str, count: int = SAMPLES_PER_TENSOR) -> bytes:
        """:func:`sample_positions` values of tensor ``name`` as little-endian float32 bytes."""
        return self._owner[name].sample(name, count)


def math_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """The fields of a ``config.json`` that change the vectors, with XLM-R's defaults filled in.

    >>> math_config({"model_type": "xlm-roberta", "hidden_size": 8, "extra": 1})["layer_norm_eps"]
    1e-12
    """
    fields = {k: config.get(k) for k in _MATH_REQUIRED}
    fields.update({k: config.get(k, default) for k, default in _MATH_DEFAULTS.items()})
    return fields


def checkpoint_fingerprint(
    folder: str | os.PathLike[str],
    *,
    config: Mapping[str, Any],
    heads: Iterable[tuple[str, Any]],
    special_tokens: Mapping[str, str],
    stored: StoredTensors | None = None,
    samples: int = SAMPLES_PER_TENSOR,
) -> str:
    """The fingerprint of the checkpoint in ``folder`` (see the module docs for what it hashes).

    Args:
        folder: the checkpoint folder.
        config: the parsed ``config.json``.
        heads: ``(file name, torch tensor)`` pairs of the heads' weights and biases as stored
            (float32 values), e.g. ``("sparse_linear.pt:weight", tensor)``.
        special_tokens: role -> token (``cls_token``, ``eos_token``, ``pad_token``, ``unk_token``).
        stored: the folder's :class:`StoredTensors`, when already open.
        samples: values per tensor (:data:`SAMPLES_PER_TENSOR`).

    Returns:
        32 hex digits.
    """
    folder = Path(folder)
    stored = stored or StoredTensors(folder)
    digest = hashlib.sha256(FINGERPRINT_VERSION.encode() + b"\n")
    digest.update(json.dumps(math_config(config), sort_keys=True).encode() + b"\n")
    for name in stored.floating():
        meta = f"{name}|{stored.dtype(name)}|{list(stored.shapes[name])}|{samples}\n"
        digest.update(meta.encode("utf-8", "surrogatepass"))
        digest.update(stored.sample(name, samples))
    for name, tensor in heads:
        values = tensor.detach().float().cpu().contiguous().numpy().astype("<f4")
        digest.update(f"{name}|{list(values.shape)}\n".encode())
        digest.update(values.tobytes())
    for tokenizer_file in ("tokenizer.json", "sentencepiece.bpe.model"):
        if (folder / tokenizer_file).is_file():
            digest.update(f"{tokenizer_file}|{file_sha256(folder / tokenizer_file)}\n".encode())
            break
    digest.update(json.dumps(dict(special_tokens), sort_keys=True).encode() + b"\n")
    return digest.hexdigest()[:32]
