"""Find a BGE-M3 checkpoint: a local folder, or a Hugging Face hub id resolved through its cache.

The layout is that of ``BAAI/bge-m3``: ``config.json``, ``tokenizer.json`` (and its configs),
encoder weights (``model.safetensors`` or ``pytorch_model.bin``), ``colbert_linear.pt`` and
``sparse_linear.pt``.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .errors import CheckpointError, CheckpointUnavailableError

__all__ = [
    "COLBERT_HEAD",
    "PROBE_TIMEOUT",
    "SPARSE_HEAD",
    "WEIGHT_FILES",
    "CheckpointUnavailableError",
    "check_config_fits_weights",
    "probe_hub",
    "read_config",
    "resolve_checkpoint",
]

logger = logging.getLogger(__name__)

COLBERT_HEAD = "colbert_linear.pt"
SPARSE_HEAD = "sparse_linear.pt"
#: Encoder weight files, in order of preference.
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "sentencepiece.bpe.model")
#: Seconds the one reachability check of the hub may take, unless ``HF_HUB_ETAG_TIMEOUT`` says otherwise.
PROBE_TIMEOUT = 5.0
_TRUE = {"1", "on", "yes", "true"}


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


def _one_line(exc: BaseException) -> str:
    """An exception's message on one line, at most 300 characters."""
    return (" ".join(str(exc).split()) or type(exc).__name__)[:300]


def _offline(local_files_only: bool) -> bool:
    from huggingface_hub import constants

    env = (os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or "").strip().lower()
    return local_files_only or bool(constants.HF_HUB_OFFLINE) or env in _TRUE


def _probe_timeout() -> float:
    raw = os.environ.get("HF_HUB_ETAG_TIMEOUT", "").strip()
    try:
        value = float(raw)
    except ValueError:
        return PROBE_TIMEOUT
    return value if value > 0 else PROBE_TIMEOUT


def _is_network_error(exc: BaseException) -> bool:
    """No answer from the server at all: refused, unresolvable, timed out, offline mode, proxy down..."""
    if isinstance(exc, (OSError, TimeoutError)):
        return True
    for module in ("httpx2", "httpx", "requests"):  # the hub's HTTP stack, whichever version is installed
        found = sys.modules.get(module)
        base = getattr(found, "TransportError", None) or getattr(found, "RequestException", None)
        if isinstance(base, type) and isinstance(exc, base):
            return True
    return False


def probe_hub(
    name: str, *, revision: str | None = None, token: str | bool | None = None, filename: str = "config.json"
) -> str | None:
    """Ask the hub once, with a short timeout and no retries, for ``filename`` of repository ``name``.

    Returns ``None`` when the hub answered (even with an error status: the download then reports
    it), else a one-line description of the network failure. huggingface_hub itself retries a
    failed request five times with back-off (~25 s) before it gives up, which is what a user
    without network would otherwise wait through on every command. Any loader of hub models
    (the cross-encoder too) can call this first and read only the cache when it returns a reason.
    The timeout is :data:`PROBE_TIMEOUT` (5 s) unless ``HF_HUB_ETAG_TIMEOUT`` is set.
    """
    from huggingface_hub import hf_hub_url
    from huggingface_hub.utils import build_hf_headers, http_backoff

    try:
        # no retry on any exception or status (huggingface_hub >= 0.2x and 1.x/2.x alike): one request
        http_backoff(
            "HEAD",
            hf_hub_url(name, filename, revision=revision),
            headers=build_hf_headers(token=token),
            timeout=_probe_timeout(),
            retry_on_exceptions=(),
            retry_on_status_codes=(),
        )
    except Exception as exc:
        if not _is_network_error(exc):
            raise
        if any("timeout" in cls.__name__.lower() for cls in type(exc).__mro__):
            return f"no answer within {_probe_timeout():g} s; on a slow network raise HF_HUB_ETAG_TIMEOUT"
        # requests wraps the socket error in two layers of urllib3 text: keep "[Errno 111] Connection refused"
        errno = re.search(r"\[Errno -?\d+\][^'\"()\]]+", str(exc))
        return errno.group(0).strip() if errno else _one_line(exc)
    return None  # any answer, 200 or 404 or 401: the hub is there


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

    The hub is asked once first, with a short timeout (5 s, or ``HF_HUB_ETAG_TIMEOUT``) and no
    retries. When it does not answer, the cached copy is used if there is one; otherwise a
    :class:`CheckpointUnavailableError` is raised at once (so it is in offline mode when the cache
    lacks the checkpoint).

    >>> resolve_checkpoint("tests/data/tiny-m3").name
    'tiny-m3'
    """
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return _check_folder(path)
    name = str(name_or_path)
    if path.exists() or name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise CheckpointError(f"{name!r} is not a folder and cannot be a hub repository id")

    from huggingface_hub import constants

    cache = Path(cache_dir) if cache_dir is not None else Path(getattr(constants, "HF_HUB_CACHE", "the default cache"))
    if _offline(local_files_only):
        try:
            return _download(name, revision=revision, cache_dir=cache_dir, token=token, local_files_only=True)
        except _NotCached as exc:
            why = "local_files_only=True" if local_files_only else "HF_HUB_OFFLINE=1"
            raise CheckpointUnavailableError(
                f"{name!r} is not in the Hugging Face cache {cache} ({exc.filename} is missing), and {why} "
                "forbids downloading it",
                "Pass a local checkpoint folder instead of the hub id, or download it once with network access",
            ) from exc
    problem = probe_hub(name, revision=revision, token=token)
    if problem is None:
        return _download(name, revision=revision, cache_dir=cache_dir, token=token, local_files_only=False)
    try:
        folder = _download(name, revision=revision, cache_dir=cache_dir, token=token, local_files_only=True)
    except _NotCached as exc:
        raise CheckpointUnavailableError(
            f"cannot reach the Hugging Face hub at {constants.ENDPOINT} ({problem}) to download {name!r}, "
            f"and it is not in the cache {cache}",
            "Pass a local checkpoint folder instead of the hub id, or download it once with network access "
            "(then HF_HUB_OFFLINE=1 reads the cache without asking the hub)",
        ) from exc
    logger.info("the Hugging Face hub did not answer (%s): using the cached %s", problem, name)
    return folder


class _NotCached(CheckpointError):
    def __init__(self, message: str, filename: str) -> None:
        super().__init__(message)
        self.filename = filename


def _download(
    name: str,
    *,
    revision: str | None,
    cache_dir: str | os.PathLike[str] | None,
    token: str | bool | None,
    local_files_only: bool,
) -> Path:
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
            if not required:
                return None
            if local_files_only and isinstance(exc, LocalEntryNotFoundError):
                raise _NotCached(f"{filename} of {name!r} is not in the Hugging Face cache", filename) from exc
            raise CheckpointError(
                f"could not get {filename} of {name!r} from the Hugging Face hub or its cache "
                f"({type(exc).__name__}); check the name, your network, or pass a local folder"
            ) from exc
        except Exception as exc:  # repository not found, gated, HTTP errors...
            raise CheckpointError(
                f"could not get {name!r} from the Hugging Face hub: {_one_line(exc)}. Check the name, your "
                "network (HF_HUB_OFFLINE=1 reads only the cache), or pass a local folder"
            ) from exc

    config = fetch("config.json", required=True)
    assert config is not None
    for filename in (*_TOKENIZER_FILES, COLBERT_HEAD, SPARSE_HEAD):
        fetch(filename, required=False)
    if fetch(WEIGHT_FILES[0], required=False) is None:
        fetch(WEIGHT_FILES[1], required=True)
    return _check_folder(config.parent)


# ---------------------------------------------------------------------------- config.json
#: Model types M3Embedder runs (BGE-M3 is an XLM-RoBERTa encoder).
MODEL_TYPES = ("xlm-roberta",)
# field -> (smallest, largest) accepted; generous bounds that refuse nonsense before any allocation
_SIZES = {
    "vocab_size": (1, 1 << 24),
    "hidden_size": (1, 1 << 16),
    "num_hidden_layers": (1, 1024),
    "num_attention_heads": (1, 1 << 12),
    "intermediate_size": (1, 1 << 20),
    "max_position_embeddings": (3, 1 << 20),
}


def read_config(folder: Path, *, trust_remote_code: bool = False) -> dict[str, Any]:
    """Read and check ``config.json``: an XLM-R encoder of sensible sizes.

    Raises :class:`CheckpointError` naming the file and the field: invalid JSON, not an object,
    a ``model_type`` other than ``xlm-roberta`` (any type with ``trust_remote_code=True``), a
    missing size or one that is not an int in a sane range, ``hidden_size`` not a multiple of
    ``num_attention_heads``, no room for positions after ``pad_token_id``, an unknown
    ``hidden_act`` or a ``layer_norm_eps`` that is not a positive number.

    >>> read_config(Path("tests/data/tiny-m3"))["hidden_size"]
    32
    """
    path = folder / "config.json"
    where = str(path)
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise CheckpointError(f"{where} is not UTF-8 text ({_one_line(exc)})") from exc
    except ValueError as exc:
        raise CheckpointError(f"{where} is not valid JSON ({_one_line(exc)}); restore the checkpoint's config") from exc
    except RecursionError as exc:
        raise CheckpointError(f"{where} is nested too deeply to be a model config") from exc
    except OSError as exc:
        raise CheckpointError(f"could not read {where}: {_one_line(exc)}") from exc
    if not isinstance(config, dict):
        raise CheckpointError(f"{where} should hold a JSON object, got a {type(config).__name__}")
    model_type = config.get("model_type")
    if not isinstance(model_type, str):
        raise CheckpointError(f'{where} has no model_type (expected "xlm-roberta", as in BAAI/bge-m3)')
    if model_type not in MODEL_TYPES and not trust_remote_code:
        raise CheckpointError(
            f"{where} has model_type {model_type!r}, but BGE-M3 is an XLM-RoBERTa encoder "
            f'(model_type "xlm-roberta"); use a BGE-M3 checkpoint, or trust_remote_code=True for a custom one'
        )
    for field, (low, high) in _SIZES.items():
        value = config.get(field)
        if value is None:
            raise CheckpointError(f"{where} has no {field} (an int; BAAI/bge-m3 has one)")
        if type(value) is not int or not low <= value <= high:
            raise CheckpointError(f"{where}: {field} should be an int in [{low}, {high}], got {value!r}")
    hidden, heads = config["hidden_size"], config["num_attention_heads"]
    if hidden % heads:
        raise CheckpointError(f"{where}: hidden_size {hidden} is not a multiple of num_attention_heads {heads}")
    pad = config.get("pad_token_id", 1)
    if pad is not None and (type(pad) is not int or not 0 <= pad < config["vocab_size"]):
        raise CheckpointError(f"{where}: pad_token_id should be an int in [0, vocab_size), got {pad!r}")
    offset = (pad or 0) + 1 if model_type == "xlm-roberta" else 0
    if config["max_position_embeddings"] - offset < 2:
        raise CheckpointError(
            f"{where}: max_position_embeddings {config['max_position_embeddings']} leaves no room for <s> and </s> "
            f"after the {offset} positions XLM-R reserves (pad_token_id + 1)"
        )
    type_vocab = config.get("type_vocab_size", 1)
    if type(type_vocab) is not int or not 1 <= type_vocab <= 1 << 16:
        raise CheckpointError(f"{where}: type_vocab_size should be an int >= 1, got {type_vocab!r}")
    eps = config.get("layer_norm_eps", 1e-12)
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not (math.isfinite(eps) and 0 < eps < 1):
        raise CheckpointError(f"{where}: layer_norm_eps should be a small positive number, got {eps!r}")
    act = config.get("hidden_act", "gelu")
    if not isinstance(act, str):
        raise CheckpointError(f"{where}: hidden_act should be the name of an activation, got {act!r}")
    from transformers.activations import ACT2FN

    if act not in ACT2FN:
        raise CheckpointError(f"{where}: hidden_act {act!r} is not an activation transformers knows (e.g. 'gelu')")
    return config


_LAYER = re.compile(r"^(?:roberta\.)?encoder\.layer\.(\d+)\.")


def check_config_fits_weights(
    config: Mapping[str, Any], shapes: Mapping[str, tuple[int, ...]], folder: Path, weight_files: str
) -> None:
    """Check ``config.json``'s sizes against the stored tensors' shapes, before anything is allocated.

    ``shapes`` maps tensor names to shapes as stored (optionally with a ``roberta.`` prefix);
    ``weight_files`` names the weight file(s) in the message. Only for XLM-R (model_type
    ``xlm-roberta``); other checkpoints are checked by the load itself.
    """
    source = f"{weight_files} of {folder}"
    where = folder / "config.json"
    if config.get("model_type") not in MODEL_TYPES:
        return

    def find(name: str) -> tuple[int, ...] | None:
        return shapes.get(name, shapes.get(f"roberta.{name}"))

    hidden = config["hidden_size"]
    expected = {
        "embeddings.word_embeddings.weight": ((config["vocab_size"], hidden), "vocab_size, hidden_size"),
        "embeddings.position_embeddings.weight": (
            (config["max_position_embeddings"], hidden),
            "max_position_embeddings, hidden_size",
        ),
        "encoder.layer.0.intermediate.dense.weight": (
            (config["intermediate_size"], hidden),
            "intermediate_size, hidden_size",
        ),
    }
    for name, (shape, fields) in expected.items():
        found = find(name)
        if found is None:
            raise CheckpointError(f"{source} has no tensor {name}: not the weights of an XLM-RoBERTa encoder")
        if tuple(found) != shape:
            raise CheckpointError(
                f"{where} says ({fields}) = {shape}, but {name} in {source} has shape {tuple(found)}: the "
                "config does not belong to these weights"
            )
    layers = sorted({int(m.group(1)) for m in map(_LAYER.match, shapes) if m})
    if layers != list(range(config["num_hidden_layers"])):
        held = str(layers) if len(layers) <= 6 else f"{len(layers)} layers, {layers[0]}..{layers[-1]}"
        raise CheckpointError(
            f"{where} says num_hidden_layers={config['num_hidden_layers']}, but {source} holds encoder layers "
            f"{held}: the config does not belong to these weights"
        )
