"""Make the tiny BGE-M3-format checkpoints that the tests use.

Each checkpoint has exactly the layout of ``BAAI/bge-m3`` -- ``config.json``, a
``tokenizer.json`` (XLM-R style: NFKC normaliser, WhitespaceSplit + Metaspace,
``<s> $A </s>`` template), ``tokenizer_config.json``, ``special_tokens_map.json``,
encoder weights, ``colbert_linear.pt`` and ``sparse_linear.pt`` -- but random
weights and a few layers, so that they are small enough to commit.

Run from the repository root (any transformers >= 4.46)::

    python scripts/make_tiny_checkpoints.py

The output is deterministic for a given torch / tokenizers version; the committed
golden values (``scripts/make_golden.py``) are tied to the committed files, so do
not regenerate the checkpoints without regenerating the golden values.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import XLMRobertaConfig, XLMRobertaModel

ROOT = Path(__file__).resolve().parent.parent
CORPUS = Path(__file__).with_name("tiny_corpus.txt")
OUT = ROOT / "tests" / "data"

SPECIALS = ["<s>", "<pad>", "</s>", "<unk>"]


def train_tokenizer(vocab_size: int) -> Tokenizer:
    lines = [line for line in CORPUS.read_text(encoding="utf-8").splitlines() if line.strip()]
    tok = Tokenizer(models.Unigram())
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Replace(Regex(" {2,}"), " ")])
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")]
    )
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    trainer = trainers.UnigramTrainer(
        vocab_size=vocab_size, special_tokens=SPECIALS, unk_token="<unk>", shrinking_factor=0.75
    )
    tok.train_from_iterator(lines * 3, trainer)
    tok.add_special_tokens(["<mask>"])
    assert [tok.token_to_id(t) for t in SPECIALS] == [0, 1, 2, 3]
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>",
        pair="<s> $A </s> </s> $B </s>",
        special_tokens=[("<s>", 0), ("</s>", 2)],
    )
    return tok


def tokenizer_files(folder: Path, tok: Tokenizer, max_length: int) -> None:
    tok.save(str(folder / "tokenizer.json"))
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


def make(name: str, *, hidden: int, layers: int, heads: int, ffn: int, safetensors: bool, seed: int) -> None:
    folder = OUT / name
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    tok = train_tokenizer(vocab_size=1200)
    max_positions = 514  # 512 tokens, like XLM-R: positions start after the padding index
    tokenizer_files(folder, tok, max_length=max_positions - 2)

    torch.manual_seed(seed)
    config = XLMRobertaConfig(
        vocab_size=tok.get_vocab_size(),
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=ffn,
        max_position_embeddings=max_positions,
        type_vocab_size=1,
        pad_token_id=1,
        bos_token_id=0,
        eos_token_id=2,
        initializer_range=0.2,  # wide enough that random texts give well-separated vectors
        layer_norm_eps=1e-5,
    )
    config.architectures = ["XLMRobertaModel"]
    model = XLMRobertaModel(config).eval()
    model.save_pretrained(folder, safe_serialization=safetensors)
    if not safetensors:
        # transformers 5 always writes safetensors: write the .bin the way BAAI/bge-m3 ships it.
        for f in folder.glob("model*.safetensors"):
            f.unlink()
        torch.save(model.state_dict(), folder / "pytorch_model.bin")

    colbert = torch.nn.Linear(hidden, hidden)
    sparse = torch.nn.Linear(hidden, 1)
    with torch.no_grad():
        # Centre the sparse head on the corpus so that about half of the token weights
        # are positive: a random head is often all-negative, which would make every
        # sparse test vacuous.
        lines = [line for line in CORPUS.read_text(encoding="utf-8").splitlines() if line.strip()]
        ids = [torch.tensor([e.ids]) for e in tok.encode_batch(lines)]
        hidden_states = torch.cat([model(input_ids=i).last_hidden_state[0] for i in ids])
        sparse.bias.copy_(-sparse(hidden_states).median() + sparse.bias)
    torch.save(colbert.state_dict(), folder / "colbert_linear.pt")
    torch.save(sparse.state_dict(), folder / "sparse_linear.pt")
    size = sum(f.stat().st_size for f in folder.iterdir())
    print(f"{folder.relative_to(ROOT)}: {size / 1e6:.2f} MB, vocab {config.vocab_size}")


def make_cross_encoder(name: str = "tiny-cross-encoder", *, seed: int = 2) -> None:
    """A random XLM-R sequence classifier (one label), the format of BAAI/bge-reranker-v2-m3."""
    from transformers import XLMRobertaForSequenceClassification

    folder = OUT / name
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    tok = train_tokenizer(vocab_size=1200)
    tokenizer_files(folder, tok, max_length=512)
    torch.manual_seed(seed)
    config = XLMRobertaConfig(
        vocab_size=tok.get_vocab_size(),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=514,
        type_vocab_size=1,
        pad_token_id=1,
        bos_token_id=0,
        eos_token_id=2,
        initializer_range=0.2,
        num_labels=1,
    )
    config.architectures = ["XLMRobertaForSequenceClassification"]
    XLMRobertaForSequenceClassification(config).eval().save_pretrained(folder)
    size = sum(f.stat().st_size for f in folder.iterdir())
    print(f"{folder.relative_to(ROOT)}: {size / 1e6:.2f} MB")


if __name__ == "__main__":
    make("tiny-m3", hidden=32, layers=2, heads=4, ffn=64, safetensors=True, seed=0)
    make("tiny-m3-bin", hidden=48, layers=3, heads=4, ffn=96, safetensors=False, seed=1)
    make_cross_encoder()
