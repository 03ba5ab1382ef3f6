"""Several devices, out-of-memory splits and the input thread, all checked on the CPU.

Two ``"cpu"`` replicas stand in for two GPUs (the dealing code is the same); out-of-memory
errors are injected by a forward pass that raises ``torch.cuda.OutOfMemoryError`` (the class exists
on CPU builds) above a number of padded tokens.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from m3_rag import M3Embedder, M3Output
from m3_rag.batching import StreamPlanner, plan_batches, text_windows
from m3_rag.devices import resolve_devices
from m3_rag.input_batches import Prefetcher, host_batches

WORDS = [
    "Berlin",
    "capital",
    "Germany",
    "river",
    "Spree",
    "museum",
    "island",
    "北京",
    "是",
    "中国",
    "首都",
    "la",
    "ville",
]


def corpus(n: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, size=int(rng.integers(0, 40)))) for _ in range(n)]


def live_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("m3-rag")]


def assert_same(a: M3Output, b: M3Output, atol: float = 0.0) -> None:
    assert a.dense is not None and b.dense is not None
    np.testing.assert_allclose(a.dense, b.dense, rtol=0, atol=atol)
    assert a.sparse is not None and b.sparse is not None and a.colbert is not None and b.colbert is not None
    for x, y in zip(a.sparse, b.sparse, strict=True):
        assert x.keys() == y.keys()
        np.testing.assert_allclose(list(x.values()), [y[k] for k in x], rtol=0, atol=atol)
    for x, y in zip(a.colbert, b.colbert, strict=True):
        assert x.shape == y.shape
        np.testing.assert_allclose(x, y, rtol=0, atol=atol)


@pytest.fixture(scope="module")
def texts() -> list[str]:
    return corpus(120)


@pytest.fixture(scope="module")
def one(tiny_path: Path) -> M3Embedder:
    return M3Embedder.from_pretrained(tiny_path, device="cpu", max_batch_tokens=96)


@pytest.fixture(scope="module")
def two(tiny_path: Path) -> M3Embedder:
    return M3Embedder.from_pretrained(tiny_path, device=["cpu", "cpu"], max_batch_tokens=96)


# ---------------------------------------------------------------------- several devices
def test_two_replicas_give_exactly_the_outputs_of_one(one: M3Embedder, two: M3Embedder, texts: list[str]) -> None:
    assert len(two.replicas) == 2 and two.devices == (torch.device("cpu"), torch.device("cpu"))
    assert two.device == torch.device("cpu") and two.model is two.replicas[0].model
    assert "device=['cpu', 'cpu']" in repr(two) and "device='cpu'" in repr(one)
    a, b = one.encode(texts), two.encode(texts)
    assert_same(a, b)  # the same batches on the same weights: bit for bit
    # input order: reversed input, reversed output (texts of equal length may share a batch with
    # other neighbours then, hence the float32 tolerance explained in the out-of-memory test)
    np.testing.assert_allclose(a.dense, two.encode(texts[::-1]).dense[::-1], rtol=0, atol=1e-6)


def test_iter_encode_streams_the_same_batches_in_the_same_order(
    one: M3Embedder, two: M3Embedder, texts: list[str]
) -> None:
    mine = list(two.iter_encode(texts, sparse=False))
    ref = list(one.iter_encode(texts, sparse=False))
    assert len(mine) > 10  # many batches, over several windows of input
    assert [b.indices.tolist() for b in mine] == [b.indices.tolist() for b in ref]
    assert sorted(np.concatenate([b.indices for b in mine]).tolist()) == list(range(len(texts)))
    for x, y in zip(mine, ref):
        assert x.dense is not None and y.dense is not None and x.colbert is not None and y.colbert is not None
        np.testing.assert_array_equal(x.dense, y.dense)
        np.testing.assert_array_equal(x.colbert, y.colbert)
    assert not live_threads()


def test_every_replica_works(two: M3Embedder, texts: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict[int, int] = {0: 0, 1: 0}
    for k, replica in enumerate(two.replicas):
        original = replica.forward

        def counted(batch, modes, _k=k, _original=original):  # type: ignore[no-untyped-def]
            seen[_k] += 1
            time.sleep(0.002)  # no replica can take every batch before the other thread starts
            return _original(batch, modes)

        monkeypatch.setattr(replica, "forward", counted)
    two.encode(texts)
    assert seen[0] > 0 and seen[1] > 0, seen


def test_an_error_in_one_replica_stops_the_others_and_is_raised(
    two: M3Embedder, texts: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = {"good": 0}
    good = two.replicas[0].forward
    gate = threading.Event()

    def broken(batch, modes):  # type: ignore[no-untyped-def]
        gate.wait(5)  # fail once the other replica is busy
        raise KeyError("replica 1 broke")

    def counted(batch, modes):  # type: ignore[no-untyped-def]
        calls["good"] += 1
        gate.set()
        return good(batch, modes)

    monkeypatch.setattr(two.replicas[0], "forward", counted)
    monkeypatch.setattr(two.replicas[1], "forward", broken)
    with pytest.raises(KeyError, match="replica 1 broke"):
        two.encode(texts)
    assert not live_threads()
    total = len(plan_batches(np.array([len(t) for t in texts]), max_tokens=96))
    assert calls["good"] < total // 2, calls  # the healthy replica stopped instead of finishing the run


def test_closing_the_stream_early_stops_every_thread(two: M3Embedder, texts: list[str]) -> None:
    stream = two.iter_encode(texts)
    first = next(stream)
    assert len(first) > 0 and live_threads()
    stream.close()
    assert not live_threads()


def test_an_input_error_reaches_the_caller(two: M3Embedder, texts: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise UnicodeError("tokenizer broke")

    monkeypatch.setattr(two.tokenizer, "encode_with_overflow", broken)
    with pytest.raises(UnicodeError, match="tokenizer broke"):
        two.encode(texts)
    assert not live_threads()


def test_shared_keys_on_the_list_of_devices(tiny_path: Path) -> None:
    pair = M3Embedder.shared(tiny_path, device=["cpu", "cpu"])
    assert pair is M3Embedder.shared(tiny_path, device=["cpu", "cpu"])
    assert pair is not M3Embedder.shared(tiny_path, device="cpu")
    assert len(pair.replicas) == 2 and len(M3Embedder.shared(tiny_path, device="cpu").replicas) == 1
    assert pair.replicas[0].model is pair.replicas[1].model  # one device: one copy of the weights


def test_device_lists_are_checked() -> None:
    with pytest.raises(ValueError, match="empty list"):
        resolve_devices([])
    with pytest.raises(TypeError, match=r"str or torch\.device"):
        resolve_devices(["cpu", 0])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="unknown device"):
        resolve_devices(["cpu", "gpu7"])


# ---------------------------------------------------------------------- out of memory
def oom_above(embedder: M3Embedder, limit: int, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Make the forward pass raise CUDA's out-of-memory error above ``limit`` padded tokens."""
    failed: list[int] = []
    original = embedder.model.forward

    def forward(input_ids, attention_mask, **kwargs):  # type: ignore[no-untyped-def]
        if input_ids.numel() > limit:
            failed.append(int(input_ids.numel()))
            raise torch.cuda.OutOfMemoryError(f"CUDA out of memory. Tried to allocate {input_ids.numel()} tokens")
        return original(input_ids, attention_mask, **kwargs)

    monkeypatch.setattr(embedder.model, "forward", forward)
    return failed


@pytest.mark.slow
def test_out_of_memory_batches_are_split_with_the_same_outputs(
    tiny_path: Path, texts: list[str], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    reference = M3Embedder.from_pretrained(tiny_path, device="cpu", max_batch_tokens=4096).encode(texts)
    m3 = M3Embedder.from_pretrained(tiny_path, device="cpu", max_batch_tokens=4096)
    failed = oom_above(m3, 300, monkeypatch)
    with caplog.at_level(logging.WARNING, logger="m3_rag"):
        out = m3.encode(texts)
    assert failed and "out of memory on cpu" in caplog.text
    budget = m3.replicas[0].budget
    assert budget is not None and budget <= 300
    # halves are padded to their own longest text, so a text's batch has another shape: float32
    # products may then sum in another order (other BLAS blockings). 1e-6 on unit vectors and
    # weights of order 0.1-1 is a few ulps: any real mix-up of texts or tokens is far larger.
    assert_same(out, reference, atol=1e-6)
    # the budget holds for the rest of the run and the next ones: no new failure
    failed.clear()
    assert_same(m3.encode(texts), reference, atol=1e-6)
    assert not failed
    assert max(b.padded_tokens for b in host_batches(
        m3.tokenizer, texts, max_length=8192, max_tokens=m3._token_budget, window_chars=4096
    ) if len(b) > 1) <= budget  # fmt: skip


def test_two_replicas_split_on_their_own(tiny_path: Path, texts: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    reference = M3Embedder.from_pretrained(tiny_path, device="cpu", max_batch_tokens=4096).encode(texts)
    m3 = M3Embedder.from_pretrained(tiny_path, device=["cpu", "cpu"], max_batch_tokens=4096)
    oom_above(m3, 500, monkeypatch)  # both replicas share the one model (one device)
    assert_same(m3.encode(texts), reference, atol=1e-6)
    assert all(r.budget is not None and r.budget <= 500 for r in m3.replicas if r.budget is not None)
    assert not live_threads()


def test_a_text_too_long_even_alone_is_a_clear_error(tiny_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    m3 = M3Embedder.from_pretrained(tiny_path, device="cpu")
    oom_above(m3, 40, monkeypatch)
    long_text = " ".join(["Berlin"] * 60)
    n_tokens = len(m3.tokenizer.encode([long_text], max_length=8192)[0])
    with pytest.raises(torch.cuda.OutOfMemoryError) as info:
        m3.encode(["short", long_text, "tiny"])
    message = str(info.value)
    assert f"one text of {n_tokens} tokens" in message and "on cpu" in message and "position 1" in message
    assert "max_length" in message
    assert isinstance(info.value.__cause__, torch.cuda.OutOfMemoryError)


# ---------------------------------------------------------------------- the input thread
def test_the_input_thread_gives_the_same_outputs(tiny_path: Path) -> None:
    texts = corpus(40, seed=3)
    m3 = M3Embedder.from_pretrained(tiny_path, device="cpu", max_batch_tokens=96)
    inline = m3.encode(texts)
    m3.input_prefetch = 2
    assert_same(m3.encode(texts), inline)
    stream = m3.iter_encode(texts)
    next(stream)
    assert live_threads() == ["m3-rag-input"]
    stream.close()
    assert not live_threads()


def test_the_input_thread_raises_in_the_caller(tiny_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    m3 = M3Embedder.from_pretrained(tiny_path, device="cpu", max_batch_tokens=96)
    m3.input_prefetch = 2

    def broken(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise OSError("disk")

    monkeypatch.setattr(m3.tokenizer, "encode_with_overflow", broken)
    with pytest.raises(OSError, match="disk"):
        m3.encode(corpus(30))
    assert not live_threads()


def test_prefetcher_stops_a_producer_blocked_on_a_full_queue() -> None:
    closed = threading.Event()

    def endless():  # type: ignore[no-untyped-def]
        try:
            i = 0
            while True:
                yield i
                i += 1
        finally:
            closed.set()

    items = Prefetcher(endless(), depth=1)
    assert [next(items) for _ in range(3)] == [0, 1, 2]
    items.close()
    assert closed.is_set() and not live_threads()
    with pytest.raises(StopIteration):
        next(items)


# ---------------------------------------------------------------------- planning
@pytest.mark.parametrize("seed", range(5))
def test_windows_and_the_stream_planner_keep_every_text_within_budget(seed: int) -> None:
    rng = np.random.default_rng(seed)
    lengths = rng.integers(2, 300, size=500)
    chars = lengths * 4 + rng.integers(-3, 4, size=500)  # characters track tokens, roughly
    planner, batches = StreamPlanner(max_items=50), []
    windows = text_windows(chars, max_chars=3000)
    assert len(windows) > 10 and sorted(np.concatenate(windows).tolist()) == list(range(500))
    for k, window in enumerate(windows):
        batches += planner.add(window, lengths[window], max_tokens=1024, last=k == len(windows) - 1)
    assert len(planner) == 0
    assert sorted(np.concatenate(batches).tolist()) == list(range(500))
    assert all(len(b) <= 50 and (len(b) == 1 or len(b) * lengths[b].max() <= 1024) for b in batches)
    padded = sum(len(b) * int(lengths[b].max()) for b in batches)
    ideal = sum(len(b) * int(lengths[b].max()) for b in plan_batches(lengths, max_tokens=1024, max_items=50))
    assert padded <= 1.15 * ideal  # windows sorted by characters pad almost as little as a global sort


def test_one_window_plans_exactly_like_plan_batches() -> None:
    lengths = np.random.default_rng(1).integers(2, 100, size=200)
    planned = StreamPlanner(max_items=7).add(np.arange(200), lengths, max_tokens=500, last=True)
    expected = plan_batches(lengths, max_tokens=500, max_items=7)
    assert [b.tolist() for b in planned] == [b.tolist() for b in expected]
