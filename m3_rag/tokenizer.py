"""Tokenisation exactly as the checkpoint's ``tokenizer.json`` defines it.

transformers 5 rebuilds XLM-R tokenizers from a class template and can drop the normaliser that
``tokenizer.json`` defines, so the same checkpoint tokenises differently under 4.x and 5.x. This
module reads ``tokenizer.json`` with the ``tokenizers`` library directly, which matches what
transformers 4.x (and so the reference implementation) does.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import numpy as np
from tokenizers import Tokenizer

from .errors import CheckpointError

__all__ = ["M3Tokenizer", "read_special_tokens"]

_DEFAULT_SPECIALS = {"cls_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>", "unk_token": "<unk>"}


def _token_content(value: Any) -> str | None:
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and isinstance(value.get("content"), str):
        return value["content"]
    return None


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:300]


def read_special_tokens(folder: str | Path) -> dict[str, str]:
    """The ``<s>``, ``</s>``, pad and unk tokens that ``tokenizer_config.json`` and
    ``special_tokens_map.json`` name (XLM-R's when they name none).

    A file that is not a JSON object is a :class:`CheckpointError` naming it.

    >>> read_special_tokens("tests/data/tiny-m3")["cls_token"]
    '<s>'
    """
    specials = dict(_DEFAULT_SPECIALS)
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        path = Path(folder) / name
        if not path.is_file():
            continue
        try:
            config = json.loads(path.read_text(encoding="utf-8"))
        except (ValueError, RecursionError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
            raise CheckpointError(
                f"{path} is not valid JSON ({_one_line(exc)}); restore it or delete it (XLM-R's tokens are the default)"
            ) from exc
        if not isinstance(config, dict):
            raise CheckpointError(f"{path} should hold a JSON object, got a {type(config).__name__}")
        for role in specials:
            content = _token_content(config.get(role))
            if content is not None:
                specials[role] = content
    return specials


_MODEL_TYPES = ("BPE", "Unigram", "WordLevel", "WordPiece")


def _diagnose(path: Path) -> str:
    """What is wrong with a ``tokenizer.json`` the library refused, in words (only on that error path)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, RecursionError) as exc:
        return f"it is not valid JSON: {_one_line(exc)}"
    if not isinstance(data, dict):
        return f"it holds a JSON {type(data).__name__}, not an object"
    model = data.get("model")
    if not isinstance(model, dict):
        return "it has no 'model' object"
    kind = model.get("type")
    if kind is not None and kind not in _MODEL_TYPES:
        return f"its model type {kind!r} is not one the tokenizers library knows ({', '.join(_MODEL_TYPES)})"
    return "its structure is not the tokenizers library's"


def _read_tokenizer(folder: Path) -> Tokenizer:
    path = folder / "tokenizer.json"
    if path.is_file():
        try:
            return Tokenizer.from_file(str(path))
        except Exception as exc:  # the tokenizers library raises a bare Exception for every problem
            raise CheckpointError(
                f"{path} is not a tokenizer the tokenizers library can read: {_diagnose(path)} ({_one_line(exc)}); "
                "restore the checkpoint's tokenizer.json (e.g. download it again)"
            ) from exc
    from transformers import AutoTokenizer  # only sentencepiece.bpe.model: let transformers convert it

    try:
        return AutoTokenizer.from_pretrained(str(folder)).backend_tokenizer
    except Exception as exc:
        raise CheckpointError(
            f"could not build a tokenizer from {folder / 'sentencepiece.bpe.model'} ({type(exc).__name__}: "
            f"{_one_line(exc)}); add the checkpoint's tokenizer.json"
        ) from exc


class M3Tokenizer:
    """A thread-safe wrapper around ``tokenizers.Tokenizer`` with BGE-M3's special tokens.

    >>> tok = M3Tokenizer.from_folder("tests/data/tiny-m3")
    >>> [ids.tolist()[0] for ids in tok.encode(["hello", ""], max_length=8)]
    [0, 0]
    >>> tok.encode([""], max_length=8)[0].tolist()
    [0, 2]
    """

    def __init__(self, tokenizer: Tokenizer, special_tokens: dict[str, str], *, source: str = "the tokenizer") -> None:
        self._tokenizer = tokenizer
        self._tokenizer.no_padding()
        self._tokenizer.no_truncation()
        self._lock = threading.Lock()
        ids: dict[str, int] = {}
        for role, token in special_tokens.items():
            token_id = tokenizer.token_to_id(token)
            if token_id is None:
                raise CheckpointError(
                    f"{source} has no {role} {token!r} (named by its tokenizer_config.json / special_tokens_map.json, "
                    "or XLM-R's default); use the checkpoint's own tokenizer files"
                )
            ids[role] = token_id
        self.cls_id = ids["cls_token"]
        self.eos_id = ids["eos_token"]
        self.pad_id = ids["pad_token"]
        self.unk_id = ids["unk_token"]
        wrapped = tokenizer.encode("", add_special_tokens=True).ids
        if wrapped[:1] != [self.cls_id] or wrapped[-1:] != [self.eos_id]:
            raise CheckpointError(
                f"{source} does not put {special_tokens['cls_token']!r} ... {special_tokens['eos_token']!r} around a "
                f"text (it gives {wrapped} for ''), as BGE-M3's tokenizer does; its post_processor is missing or "
                "another model's"
            )
        #: Token ids that never carry a sparse weight (the reference drops the same four).
        self.unused_ids = np.array(sorted({self.cls_id, self.eos_id, self.pad_id, self.unk_id}), dtype=np.int64)

    @classmethod
    def from_folder(cls, folder: str | Path) -> M3Tokenizer:
        """Load ``tokenizer.json`` and the special tokens named by the folder's configs."""
        folder = Path(folder)
        specials = read_special_tokens(folder)
        return cls(_read_tokenizer(folder), specials, source=str(folder / "tokenizer.json"))

    @property
    def vocab_size(self) -> int:
        return int(self._tokenizer.get_vocab_size(with_added_tokens=True))

    def encode(self, texts: list[str], max_length: int) -> list[np.ndarray]:
        """Token ids of each text with ``<s>`` and ``</s>``, truncated to ``max_length`` tokens.

        Returns one int64 array per text (``len >= 2``: the empty string is ``[<s>, </s>]``).
        """
        return [np.asarray(ids, dtype=np.int64) for ids in self.encode_with_overflow(texts, max_length)[0]]

    def encode_with_overflow(self, texts: list[str], max_length: int) -> tuple[list[list[int]], list[bool]]:
        """Like :meth:`encode`, also saying for each text whether it was truncated."""
        with self._lock:
            self._tokenizer.enable_truncation(max_length)
            try:
                encodings = self._tokenizer.encode_batch(texts, add_special_tokens=True)
            finally:
                self._tokenizer.no_truncation()
        return [e.ids for e in encodings], [bool(e.overflowing) for e in encodings]

    def offsets(self, text: str) -> list[tuple[int, int]]:
        """Character span of every token of ``text`` (no special tokens, no truncation)."""
        with self._lock:
            encoding = self._tokenizer.encode(text, add_special_tokens=False)
        return [(int(a), int(b)) for a, b in encoding.offsets]

    def convert_ids_to_tokens(self, ids: list[int]) -> list[str]:
        """The token string of each id (``None`` ids become ``''``)."""
        return [self._tokenizer.id_to_token(int(i)) or "" for i in ids]

    def decode(self, ids: list[int]) -> str:
        return str(self._tokenizer.decode([int(i) for i in ids]))
