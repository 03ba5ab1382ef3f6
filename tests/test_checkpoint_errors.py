"""A malformed tokenizer.json, config.json or weight file is a CheckpointError naming the file.

Never a bare ``Exception`` from the tokenizers library, a transformers traceback, or a model
that transformers silently completes with random weights; the CLI prints one line.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from m3_rag import CheckpointError, M3Embedder

ROOT = Path(__file__).parent.parent
TINY = ROOT / "tests" / "data" / "tiny-m3"


def broken(tmp_path: Path, name: str, write: Callable[[Path], None]) -> Path:
    folder = tmp_path / name
    shutil.copytree(TINY, folder)
    write(folder)
    return folder


def json_edit(file: str, edit: Callable[[dict], object]) -> Callable[[Path], None]:
    """Change the JSON object in ``file`` in place (``edit``'s return value is ignored)."""

    def write(folder: Path) -> None:
        data = json.loads((folder / file).read_text(encoding="utf-8"))
        edit(data)
        (folder / file).write_text(json.dumps(data), encoding="utf-8")

    return write


def text(file: str, content: str) -> Callable[[Path], None]:
    return lambda folder: (folder / file).write_text(content, encoding="utf-8")


def expect(folder: Path, *patterns: str) -> CheckpointError:
    with pytest.raises(CheckpointError) as info:
        M3Embedder.from_pretrained(folder, device="cpu")
    message = str(info.value)
    for pattern in patterns:
        assert pattern in message, message
    assert "\n" not in message
    return info.value


TOKENIZER_CASES = {
    "invalid-json": (text("tokenizer.json", '{"version": "1.0", "model": '), ["tokenizer.json", "EOF"]),
    "a-list": (text("tokenizer.json", "[1, 2, 3]"), ["tokenizer.json"]),
    "no-model": (json_edit("tokenizer.json", lambda t: t.pop("model")), ["tokenizer.json", "model"]),
    "unknown-model": (
        json_edit("tokenizer.json", lambda t: t["model"].update(type="Nonsense")),
        ["tokenizer.json", "Nonsense"],
    ),
    "broken-vocab": (
        json_edit("tokenizer.json", lambda t: t["model"].update(vocab="not a list")),
        ["tokenizer.json"],
    ),
    "no-post-processor": (
        json_edit("tokenizer.json", lambda t: t.update(post_processor=None)),
        ["tokenizer.json", "post_processor"],
    ),
    "unknown-special": (
        json_edit("special_tokens_map.json", lambda t: t.update(cls_token="<CLS-nowhere>")),
        ["tokenizer.json", "cls_token", "<CLS-nowhere>"],
    ),
    "config-invalid-json": (text("tokenizer_config.json", "{oops"), ["tokenizer_config.json", "not valid JSON"]),
    "config-a-string": (text("special_tokens_map.json", '"<s>"'), ["special_tokens_map.json", "JSON object"]),
}


@pytest.mark.parametrize("case", list(TOKENIZER_CASES))
def test_malformed_tokenizer(tmp_path: Path, case: str) -> None:
    write, patterns = TOKENIZER_CASES[case]
    error = expect(broken(tmp_path, case, write), *patterns)
    if case not in ("no-post-processor", "unknown-special", "config-a-string"):
        assert error.__cause__ is not None  # the library's own error is chained


CONFIG_CASES = {
    "invalid-json": (text("config.json", '{"model_type": "xlm-roberta",'), ["config.json", "not valid JSON"]),
    "not-utf8": (lambda f: (f / "config.json").write_bytes(b"\xff\xfe{}"), ["config.json"]),
    "deep": (text("config.json", "[" * 100_000 + "]" * 100_000), ["config.json"]),
    "a-list": (text("config.json", "[]"), ["config.json", "JSON object"]),
    "no-model-type": (json_edit("config.json", lambda c: c.pop("model_type")), ["config.json", "model_type"]),
    "bert": (json_edit("config.json", lambda c: c.update(model_type="bert")), ["config.json", "'bert'", "XLM-R"]),
    "gpt2": (json_edit("config.json", lambda c: c.update(model_type="gpt2")), ["config.json", "'gpt2'"]),
    "no-hidden-size": (json_edit("config.json", lambda c: c.pop("hidden_size")), ["config.json", "hidden_size"]),
    "hidden-size-str": (json_edit("config.json", lambda c: c.update(hidden_size="32")), ["hidden_size", "'32'"]),
    "hidden-size-neg": (json_edit("config.json", lambda c: c.update(hidden_size=-4)), ["hidden_size", "-4"]),
    "hidden-size-float": (json_edit("config.json", lambda c: c.update(hidden_size=32.0)), ["hidden_size"]),
    "hidden-size-bool": (json_edit("config.json", lambda c: c.update(hidden_size=True)), ["hidden_size"]),
    "vocab-huge": (json_edit("config.json", lambda c: c.update(vocab_size=10**12)), ["vocab_size"]),
    "heads": (json_edit("config.json", lambda c: c.update(num_attention_heads=3)), ["num_attention_heads 3"]),
    "positions": (json_edit("config.json", lambda c: c.update(max_position_embeddings=3)), ["max_position_embeddings"]),
    "pad": (json_edit("config.json", lambda c: c.update(pad_token_id=10**6)), ["pad_token_id"]),
    "eps": (json_edit("config.json", lambda c: c.update(layer_norm_eps="small")), ["layer_norm_eps"]),
    "act": (json_edit("config.json", lambda c: c.update(hidden_act="nope")), ["hidden_act", "'nope'"]),
    # sizes that parse but do not fit the weights: transformers would raise deep inside, or
    # silently give random layers (more layers) or drop some (fewer)
    "vocab-other": (json_edit("config.json", lambda c: c.update(vocab_size=1000)), ["vocab_size", "(456, 32)"]),
    "hidden-other": (json_edit("config.json", lambda c: c.update(hidden_size=64)), ["hidden_size", "(456, 32)"]),
    "ffn-other": (json_edit("config.json", lambda c: c.update(intermediate_size=65)), ["intermediate_size"]),
    "more-layers": (json_edit("config.json", lambda c: c.update(num_hidden_layers=3)), ["num_hidden_layers=3"]),
    "fewer-layers": (json_edit("config.json", lambda c: c.update(num_hidden_layers=1)), ["num_hidden_layers=1"]),
}


@pytest.mark.parametrize("case", list(CONFIG_CASES))
def test_malformed_config(tmp_path: Path, case: str) -> None:
    write, patterns = CONFIG_CASES[case]
    expect(broken(tmp_path, case, write), *patterns)


def _truncate(folder: Path) -> None:
    data = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(data[: len(data) // 2])


def _bad_header(folder: Path) -> None:
    data = (folder / "model.safetensors").read_bytes()
    length = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + length])
    header["embeddings.word_embeddings.weight"]["shape"] = [456, 33]
    raw = json.dumps(header, separators=(",", ":")).encode()
    assert len(raw) <= length
    (folder / "model.safetensors").write_bytes(data[:8] + raw.ljust(length) + data[8 + length :])


WEIGHT_CASES = {
    "empty": (text("model.safetensors", ""), ["model.safetensors", "not a safetensors file"]),
    "truncated": (_truncate, ["model.safetensors"]),
    "header-shape": (_bad_header, ["model.safetensors", "embeddings.word_embeddings.weight"]),
    "bin-not-a-dict": (
        lambda f: ((f / "model.safetensors").unlink(), __import__("torch").save([1, 2], f / "pytorch_model.bin")),
        ["pytorch_model.bin"],
    ),
    "bad-shard-index": (
        lambda f: (
            (f / "model.safetensors").rename(f / "model-00001-of-00001.safetensors"),
            (f / "model.safetensors.index.json").write_text("[]"),
        ),
        ["model.safetensors.index.json", "weight_map"],
    ),
    "missing-tensor": (
        lambda f: _rewrite(f, lambda s: s.pop("encoder.layer.1.output.dense.weight")),
        ["missing", "encoder.layer.1.output.dense.weight", "random"],
    ),
}


def _rewrite(folder: Path, edit: Callable[[dict], object]) -> None:
    from safetensors.torch import load_file, save_file

    state = load_file(folder / "model.safetensors")
    edit(state)
    save_file(state, folder / "model.safetensors", metadata={"format": "pt"})


@pytest.mark.parametrize("case", list(WEIGHT_CASES))
def test_malformed_weights(tmp_path: Path, case: str) -> None:
    write, patterns = WEIGHT_CASES[case]
    expect(broken(tmp_path, case, write), *patterns)


def run_cli(*args: str, model: Path) -> subprocess.CompletedProcess[str]:
    script = Path(sys.executable).with_name("m3-rag")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "m3_rag"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "M3_RAG_MODEL": str(model)}
    return subprocess.run([*command, *args], capture_output=True, text=True, env=env, timeout=300)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("case", "file"),
    [("invalid-json", "tokenizer.json"), ("unknown-model", "tokenizer.json"), ("bert", "config.json")],
)
def test_cli_prints_one_line(tmp_path: Path, case: str, file: str) -> None:
    write, _ = (CONFIG_CASES if file == "config.json" else TOKENIZER_CASES)[case]
    folder = broken(tmp_path, case, write)
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "a.txt").write_text("Berlin is the capital of Germany.", encoding="utf-8")
    result = run_cli("index", str(corpus), "--index", str(tmp_path / "index"), "-q", model=folder)
    assert result.returncode == 1, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("m3-rag: error: ") and file in lines[0], lines[0]
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "index").exists()
