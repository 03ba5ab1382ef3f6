"""Find a BGE-M3 checkpoint: a local folder, or a Hugging Face hub id resolved through its cache.

The layout is that of ``BAAI/bge-m3``: ``config.json``, ``tokenizer.json`` (and its configs),
encoder weights (``model.safetensors`` or ``pytorch_model.bin``), ``colbert_linear.pt`` and
``sparse_linear.pt``.
"""

from __future__ import annotations

import os
from pathlib import Path

from .errors import CheckpointError

__all__ = ["COLBERT_HEAD", "SPARSE_HEAD", "WEIGHT_FILES", "resolve_checkpoint"]

COLBERT_HEAD = "colbert_linear.pt"
SPARSE_HEAD = "sparse_linear.pt"
#: Encoder weight files, in order of preference.
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "sentencepiece.bpe.model")


def _check_folder(folder: Path) -> Path:
    if not (folder / "config.json").is_file():
        raise CheckpointError(
            f"{folder} is not a BGE-M3 checkpoint: config.json is missing. Expected a folder like "
            "BAAI/bge-m3 with config.json, tokenizer.json, model.safetensors or pytorch_model.bin, "
            f"{COLBERT_HEAD} and {SPARSE_HEAD}"
        )
    if not any((folder / w).is_file() for w in WEIGHT_FILES) and not any(folder.glob("model-*.safetensors")):
        raise CheckpointError(f"{folder} is not a BGE-M3 checkpoint: no encoder weights ({' or '.join(WEIGHT_FILES)})")
    if not (folder / "tokenizer.json").is_file() and not (folder / "sentencepiece.bpe.model").is_file():
        raise CheckpointError(f"{folder} is not a BGE-M3 checkpoint: no tokenizer.json")
    return folder


def resolve_checkpoint(
    name_or_path: str | os.PathLike[str],
    *,
    revision: str | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    token: str | bool | None = None,
    local_files_only: bool = False,
) -> Path:
    """Return a local folder that holds the checkpoint ``name_or_path``.

    A path to an existing folder is used as it is. Anything else is a hub repository id,
    downloaded into (or, with ``HF_HUB_OFFLINE=1`` or ``local_files_only``, read from) the
    Hugging Face cache: only the files that m3-rag reads are fetched, and only one weight
    file (``model.safetensors`` when the repository has it, else ``pytorch_model.bin``).

    >>> resolve_checkpoint("tests/data/tiny-m3").name
    'tiny-m3'
    """
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return _check_folder(path)
    name = str(name_or_path)
    if path.exists() or name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise CheckpointError(f"{name!r} is not a folder and cannot be a hub repository id")

    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

    def fetch(filename: str, *, required: bool) -> Path | None:
        try:
            return Path(
                hf_hub_download(
                    name,
                    filename,
                    revision=revision,
                    cache_dir=None if cache_dir is None else Path(cache_dir),
                    token=token,
                    local_files_only=local_files_only,
                )
            )
        except (EntryNotFoundError, LocalEntryNotFoundError) as exc:
            if required:
                raise CheckpointError(
                    f"could not get {filename} of {name!r} from the Hugging Face hub or its cache "
                    f"({type(exc).__name__}); check the name, your network, or pass a local folder"
                ) from exc
            return None
        except Exception as exc:  # repository not found, gated, HTTP errors...
            raise CheckpointError(
                f"could not get {name!r} from the Hugging Face hub: {exc}. Check the name, your network "
                "(HF_HUB_OFFLINE=1 reads only the cache), or pass a local folder"
            ) from exc

    config = fetch("config.json", required=True)
    assert config is not None
    for filename in (*_TOKENIZER_FILES, COLBERT_HEAD, SPARSE_HEAD):
        fetch(filename, required=False)
    if fetch(WEIGHT_FILES[0], required=False) is None:
        fetch(WEIGHT_FILES[1], required=True)
    return _check_folder(config.parent)
