"""m3-rag against FlagEmbedding 1.4.2 (golden values from scripts/make_golden.py), float32 CPU.

Agreement: relative 1e-5. Vectors (a dense vector, a ColBERT vector, a text's sparse weights)
are measured by ``||ours - ref|| / ||ref||``; scores by ``|ours - ref| <= 1e-5 * |ref| + 1e-7``.

About ColBERT and padding: the reference's ``compute_score`` pads each batch and its max over
passage vectors also sees the zero vectors at padded positions, so a query token whose best
passage match is negative scores 0 instead, depending on what else is in the batch. m3-rag
scores exactly the documented formula (no padding). The golden values hold both the unpadded
(``b1``) and the batched (``b256``) reference numbers; on these checkpoints they agree.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import unpack

from m3_rag import M3Embedder

RTOL = 1e-5


def assert_vectors_close(ours: np.ndarray, ref: np.ndarray) -> None:
    assert ours.shape == ref.shape
    if ref.size:
        err = np.linalg.norm(ours - ref, axis=-1) / np.maximum(np.linalg.norm(ref, axis=-1), 1e-12)
        assert err.max() <= RTOL, f"relative error {err.max():.2e}"


@pytest.mark.parametrize("max_length", [512, 12])
def test_tokenization_matches_reference(checkpoint, spec, max_length: int) -> None:
    _, m3, golden = checkpoint
    ours = m3.tokenizer.encode(spec["texts"], max_length=max_length)
    ref = unpack(golden[f"L{max_length}_ids"], golden[f"L{max_length}_ids_offsets"])
    assert [o.tolist() for o in ours] == [r.tolist() for r in ref]


def test_non_ascii_tokens_survive(embedder: M3Embedder) -> None:
    # the transformers-5 trap: an NFKC normaliser dropped turns fullwidth text into <unk>
    ids = embedder.tokenizer.encode(["Fullwidth question？ ＢＧＥ"], max_length=64)[0]
    assert embedder.tokenizer.unk_id not in ids.tolist()


@pytest.mark.parametrize("max_length", [512, 12])
def test_encode_matches_reference(checkpoint, spec, max_length: int) -> None:
    _, m3, golden = checkpoint
    tag = f"L{max_length}"
    out = m3.encode(spec["texts"], max_length=max_length)
    assert out.dense is not None and out.sparse is not None and out.colbert is not None
    assert out.dense.dtype == np.float32
    assert_vectors_close(out.dense, golden[f"{tag}_dense"])

    ids = unpack(golden[f"{tag}_sparse_ids"], golden[f"{tag}_sparse_offsets"])
    weights = unpack(golden[f"{tag}_sparse_weights"], golden[f"{tag}_sparse_offsets"])
    assert sum(len(w) for w in out.sparse) > 20  # the test must see real weights
    for i, (ref_ids, ref_w) in enumerate(zip(ids, weights)):
        ours = out.sparse[i]
        assert sorted(ours) == sorted(ref_ids.tolist()), f"text {i}: token ids differ"
        got = np.array([ours[k] for k in ref_ids.tolist()], dtype=np.float32)
        assert_vectors_close(got, ref_w)  # the text's weight vector, relative to its norm
        assert all(isinstance(k, int) for k in ours)

    colbert = unpack(golden[f"{tag}_colbert"], golden[f"{tag}_colbert_offsets"])
    for ours, ref in zip(out.colbert, colbert):
        assert ours.dtype == np.float32
        assert_vectors_close(ours, ref)


@pytest.mark.parametrize(("weights_tag", "weights"), [("w111", (1, 1, 1)), ("w424", (0.4, 0.2, 0.4))])
@pytest.mark.parametrize("batch_tag", ["b1", "b256"])
def test_compute_score_matches_reference(checkpoint, spec, weights_tag, weights, batch_tag) -> None:
    _, m3, golden = checkpoint
    pairs = [tuple(p) for p in spec["pairs"]]
    scores = m3.compute_score(pairs, weights=weights, query_max_length=512, passage_max_length=512)
    assert set(scores) == {"dense", "sparse", "colbert", "sparse+dense", "colbert+sparse+dense"}
    for key, values in scores.items():
        ref = golden[f"score_{weights_tag}_{batch_tag}_{key}"]
        assert len(values) == len(pairs)
        np.testing.assert_allclose(values, ref, rtol=RTOL, atol=1e-7, err_msg=key)
    assert max(scores["sparse"]) > 0  # real lexical overlap is exercised


@pytest.mark.slow
def test_batching_does_not_change_outputs(tiny_path, spec) -> None:
    one = M3Embedder.from_pretrained(tiny_path, max_batch_tokens=1)  # every text alone
    many = M3Embedder.from_pretrained(tiny_path, max_batch_tokens=1 << 20)
    a, b = one.encode(spec["texts"]), many.encode(spec["texts"])
    assert a.dense is not None and b.dense is not None
    np.testing.assert_allclose(a.dense, b.dense, atol=1e-6)
    assert a.sparse is not None and b.sparse is not None and a.colbert is not None and b.colbert is not None
    for x, y in zip(a.sparse, b.sparse):
        assert x.keys() == y.keys()
        np.testing.assert_allclose(list(x.values()), [y[k] for k in x], atol=1e-6)
    for x, y in zip(a.colbert, b.colbert):
        np.testing.assert_allclose(x, y, atol=1e-6)


def test_modes_are_independent(embedder: M3Embedder, spec) -> None:
    full = embedder.encode(spec["texts"])
    dense_only = embedder.encode(spec["texts"], sparse=False, colbert=False)
    sparse_only = embedder.encode(spec["texts"], dense=False, colbert=False)
    colbert_only = embedder.encode(spec["texts"], dense=False, sparse=False)
    assert dense_only.sparse is None and dense_only.colbert is None
    assert sparse_only.dense is None and colbert_only.dense is None
    assert full.dense is not None and dense_only.dense is not None
    np.testing.assert_array_equal(full.dense, dense_only.dense)
    assert sparse_only.sparse == full.sparse
    assert colbert_only.colbert is not None and full.colbert is not None
    for x, y in zip(colbert_only.colbert, full.colbert):
        np.testing.assert_array_equal(x, y)


def test_output_invariants(embedder: M3Embedder, spec) -> None:
    out = embedder.encode(spec["texts"], max_length=512)
    lengths = [len(ids) for ids in embedder.tokenizer.encode(spec["texts"], max_length=512)]
    assert out.dense is not None and out.sparse is not None and out.colbert is not None
    np.testing.assert_allclose(np.linalg.norm(out.dense, axis=1), 1.0, atol=1e-5)
    for vectors, n_tokens in zip(out.colbert, lengths):
        assert vectors.shape == (n_tokens - 1, embedder.colbert_dim)  # <s> dropped, </s> kept
        np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    special = set(embedder.tokenizer.unused_ids.tolist())
    for weights in out.sparse:
        assert all(w > 0 for w in weights.values()) and not special & weights.keys()
    assert out.sparse[spec["texts"].index("")] == {}


def test_repeated_tokens_keep_max_weight(embedder: M3Embedder) -> None:
    text = "repeat repeat repeat repeat"
    ids = embedder.tokenizer.encode([text], max_length=64)[0]
    model_out = embedder.encode(text, dense=False, colbert=False)
    assert model_out.sparse is not None
    assert len(model_out.sparse[0]) < len(ids) - 2  # duplicates collapsed


def test_single_string_is_one_text(embedder: M3Embedder) -> None:
    out = embedder.encode("What is BGE-M3?")
    assert len(out) == 1 and out.dense is not None and out.dense.shape == (1, embedder.dim)
