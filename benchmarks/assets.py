"""Benchmark assets: random checkpoints of BGE-M3's real format and corpora of known token lengths.

Nothing can be downloaded from the Hugging Face hub here, so the benchmarks make their own
checkpoints: a random XLM-RoBERTa with BGE-M3's layout (``config.json``, ``tokenizer.json``,
``model.safetensors``, ``colbert_linear.pt``, ``sparse_linear.pt``) and a Unigram tokenizer
with exactly 250,002 pieces in XLM-R's layout (``<s>``=0, ``<pad>``=1, ``</s>``=2, ``<unk>``=3,
..., ``<mask>``=250001) and the normaliser, pre-tokeniser and template of
``scripts/make_tiny_checkpoints.py``. The pieces are synthetic: ``▁`` + 200,000 pseudo-words,
syllables and word fragments (so unknown words split into several tokens, as in real text),
single characters and punctuation.

Compute cost depends on the architecture and the token counts, not on the weights, so a random
checkpoint of the right shape is a faithful stand-in for timing.

Corpora are lists of texts whose token counts (with ``<s>`` and ``</s>``, as both libraries
count them) are drawn uniformly from a range, e.g. 24-200; they are checked by tokenising.

Everything is cached under ``benchmarks/.cache/`` (git-ignored) and rebuilt deterministically::

    python benchmarks/assets.py cpu         # hidden 384, 6 layers: the CPU benchmark's checkpoint
    python benchmarks/assets.py gpu         # bge-m3's architecture (24 x 1024), float16
"""

from __future__ import annotations

import json
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from _common import CACHE

__all__ = ["ARCHS", "CORPORA", "Arch", "build_tokenizer", "checkpoint", "corpus", "corpus_file"]

VOCAB_SIZE = 250_002
N_WORDS = 200_000
SPECIALS = ["<s>", "<pad>", "</s>", "<unk>"]
_CONSONANTS = "bcdfghjklmnprstvwz"
_VOWELS = "aeiou"
_PUNCT = list(".,;:!?'-()\"")


@dataclass(frozen=True)
class Arch:
    """An XLM-R architecture: the CPU benchmark's mid-size one, or bge-m3's own."""

    name: str
    hidden: int
    layers: int
    heads: int
    ffn: int
    dtype: str  # how the weights are saved: "float32" or "float16"
    max_positions: int = 8194


ARCHS = {
    "cpu": Arch("m3-mid-h384-l6", hidden=384, layers=6, heads=12, ffn=1536, dtype="float32"),
    "gpu": Arch("m3-large-h1024-l24", hidden=1024, layers=24, heads=16, ffn=4096, dtype="float16"),
}


def _syllables() -> list[str]:
    cv = [c + v for c in _CONSONANTS for v in _VOWELS]
    return cv + [s + c for s in cv for c in _CONSONANTS]


def _words(rng: np.random.Generator, count: int, syllables: list[str], exclude: set[str] | None = None) -> list[str]:
    """``count`` distinct pseudo-words of 1-4 syllables, in the order drawn."""
    exclude = exclude or set()
    out: dict[str, None] = {}
    syl = np.asarray(syllables)
    while len(out) < count:
        n = rng.integers(1, 5, size=count)
        parts = rng.integers(0, len(syl), size=(count, 4))
        for k, row in zip(n.tolist(), parts.tolist()):
            word = "".join(syl[row[:k]])
            if len(word) > 2 and word not in exclude:
                out[word] = None
                if len(out) == count:
                    break
    return list(out)


def _vocab_pieces() -> tuple[list[tuple[str, float]], list[str]]:
    """The 250,002 (piece, log-prob) entries, and the in-vocabulary words by frequency rank."""
    rng = np.random.default_rng(2402_03216)
    syllables = _syllables()
    words = _words(rng, N_WORDS, syllables, exclude=set(syllables))
    pieces: list[tuple[str, float]] = [(t, 0.0) for t in SPECIALS]
    pieces.append(("▁", -10.0))
    chars = sorted(set("abcdefghijklmnopqrstuvwxyz0123456789") | set(_PUNCT))
    pieces += [(c, -16.0) for c in chars] + [("▁" + c, -16.5) for c in chars]
    pieces += [(s, -12.0) for s in syllables] + [("▁" + s, -12.0) for s in syllables]
    ranks = np.arange(1, N_WORDS + 1)
    pieces += [("▁" + w, float(-5.0 - np.log(r))) for w, r in zip(words, ranks.tolist())]
    seen = {p for p, _ in pieces}
    fill = VOCAB_SIZE - 1 - len(pieces)  # the last id is <mask>
    fragments = [f for f in _words(rng, fill + len(seen), syllables) if f not in seen and "▁" + f not in seen]
    pieces += [(f, -14.0) for f in fragments[:fill]]
    pieces.append(("<mask>", 0.0))
    assert len(pieces) == VOCAB_SIZE and len({p for p, _ in pieces}) == VOCAB_SIZE
    return pieces, words


def build_tokenizer() -> tuple[object, list[str]]:
    """A ``tokenizers.Tokenizer`` with 250,002 pieces in XLM-R layout, and its words by rank."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    pieces, words = _vocab_pieces()
    tok = Tokenizer(models.Unigram(pieces, unk_id=3, byte_fallback=False))
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Replace(Regex(" {2,}"), " ")])
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")]
    )
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    tok.add_special_tokens([*SPECIALS, "<mask>"])
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>",
        pair="<s> $A </s> </s> $B </s>",
        special_tokens=[("<s>", 0), ("</s>", 2)],
    )
    assert [tok.token_to_id(t) for t in [*SPECIALS, "<mask>"]] == [0, 1, 2, 3, VOCAB_SIZE - 1]
    assert tok.get_vocab_size() == VOCAB_SIZE
    return tok, words


def _tokenizer_files(folder: Path, tok: object, max_length: int) -> None:
    tok.save(str(folder / "tokenizer.json"))  # type: ignore[attr-defined]
    specials = {
        "bos_token": "<s>",
        "eos_token": "</s>",
        "unk_token": "<unk>",
        "sep_token": "</s>",
        "pad_token": "<pad>",
        "cls_token": "<s>",
        "mask_token": {"content": "<mask>", "lstrip": True, "normalized": False, "rstrip": False, "single_word": False},
    }
    (folder / "special_tokens_map.json").write_text(json.dumps(specials, indent=2) + "\n")
    config = {"tokenizer_class": "XLMRobertaTokenizer", "model_max_length": max_length, **specials}
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")


def checkpoint(kind: str = "cpu", *, device: str | None = None) -> Path:
    """The folder of the random checkpoint ``kind`` ("cpu" or "gpu"), built when missing."""
    import torch
    from transformers import XLMRobertaConfig, XLMRobertaModel

    arch = ARCHS[kind]
    folder = CACHE / arch.name
    if (folder / "DONE").is_file():
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    tok, _ = build_tokenizer()
    _tokenizer_files(folder, tok, max_length=arch.max_positions - 2)
    torch.manual_seed(0)
    config = XLMRobertaConfig(
        vocab_size=VOCAB_SIZE,
        hidden_size=arch.hidden,
        num_hidden_layers=arch.layers,
        num_attention_heads=arch.heads,
        intermediate_size=arch.ffn,
        max_position_embeddings=arch.max_positions,
        type_vocab_size=1,
        pad_token_id=1,
        bos_token_id=0,
        eos_token_id=2,
        layer_norm_eps=1e-5,
    )
    config.architectures = ["XLMRobertaModel"]
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    with dev:
        model = XLMRobertaModel(config).eval()
        colbert = torch.nn.Linear(arch.hidden, arch.hidden)
        sparse = torch.nn.Linear(arch.hidden, 1)
    with torch.no_grad():
        # centre the sparse head so that about half of the token weights are positive (a random
        # head is often all-negative, which would make the sparse output empty and cheap)
        texts = corpus("passages", folder, count=16)[0]
        hidden = []
        for enc in tok.encode_batch(texts):  # type: ignore[attr-defined]
            ids = torch.tensor([enc.ids], device=dev)
            hidden.append(model(input_ids=ids).last_hidden_state[0])
        sparse.bias.copy_(sparse.bias - sparse(torch.cat(hidden)).median())
    dtype = getattr(torch, arch.dtype)
    model.to(dtype).save_pretrained(folder)
    torch.save({k: v.to("cpu", dtype) for k, v in colbert.state_dict().items()}, folder / "colbert_linear.pt")
    torch.save({k: v.to("cpu", dtype) for k, v in sparse.state_dict().items()}, folder / "sparse_linear.pt")
    (folder / "DONE").write_text(json.dumps(arch.__dict__) + "\n")
    return folder


CORPORA = {
    # name: (count, min tokens, max tokens), token counts with <s> and </s>
    "passages": (2000, 24, 200),
    "documents": (100, 400, 2000),
}


def corpus_file(name: str, checkpoint_dir: Path, *, count: int | None = None, seed: int = 0) -> Path:
    """The cached JSON ``{"texts": [...], "tokens": [...]}`` of corpus ``name`` (built when missing)."""
    corpus(name, checkpoint_dir, count=count, seed=seed)
    return _corpus_path(name, count or CORPORA[name][0], seed)


def _corpus_path(name: str, count: int, seed: int) -> Path:
    return CACHE / f"corpus-{name}-{count}-{seed}.json"


def corpus(name: str, checkpoint_dir: Path, *, count: int | None = None, seed: int = 0) -> tuple[list[str], list[int]]:
    """Texts of corpus ``name`` and their token counts (checked with the checkpoint's tokenizer).

    Words are drawn Zipf-like from the tokenizer's 200,000 words; 5% are unknown words (they
    split into several tokens) and some carry punctuation, like real text.
    """
    from tokenizers import Tokenizer

    n, low, high = CORPORA[name]
    n = count or n
    cached = _corpus_path(name, n, seed)
    if cached.is_file():
        data = json.loads(cached.read_text(encoding="utf-8"))
        return data["texts"], data["tokens"]
    tok = Tokenizer.from_file(str(Path(checkpoint_dir) / "tokenizer.json"))
    _, words = _vocab_pieces()
    rng = np.random.default_rng(1000 + seed)
    targets = rng.integers(low, high + 1, size=n)
    zipf = 1.0 / (np.arange(len(words)) + 2.7)
    cdf = np.cumsum(zipf / zipf.sum())
    unknown = _words(np.random.default_rng(7), 20_000, _syllables(), exclude=set(words))
    unknown_len = [len(e.ids) for e in tok.encode_batch(unknown, add_special_tokens=False)]
    texts: list[str] = []
    for target in targets.tolist():
        budget = target - 2
        parts: list[str] = []
        while budget > 0:
            draw = rng.random()
            if draw < 0.05 and budget >= 2:  # an unknown word: several tokens
                j = int(rng.integers(len(unknown)))
                if unknown_len[j] <= budget:
                    parts.append(unknown[j])
                    budget -= unknown_len[j]
                    continue
            word = words[min(int(np.searchsorted(cdf, rng.random())), len(words) - 1)]
            if draw > 0.9 and budget >= 2:  # a word with punctuation: two tokens
                parts.append(word + _PUNCT[int(rng.integers(0, 3))])
                budget -= 2
            else:
                parts.append(word)
                budget -= 1
        texts.append(" ".join(parts))
    tokens = [len(e.ids) for e in tok.encode_batch(texts)]
    if tokens != targets.tolist():
        bad = next(i for i, (a, b) in enumerate(zip(tokens, targets.tolist())) if a != b)
        raise AssertionError(f"text {bad} has {tokens[bad]} tokens, wanted {targets[bad]}: {texts[bad][:200]!r}")
    CACHE.mkdir(parents=True, exist_ok=True)
    cached.write_text(json.dumps({"texts": texts, "tokens": tokens}), encoding="utf-8")
    return texts, tokens


if __name__ == "__main__":
    kind = sys.argv[1] if len(sys.argv) > 1 else "cpu"
    folder = checkpoint(kind)
    for corpus_name in CORPORA:
        _, counts = corpus(corpus_name, folder)
        print(f"{corpus_name}: {len(counts)} texts, {sum(counts)} tokens ({min(counts)}-{max(counts)} each)")
    print(folder)
