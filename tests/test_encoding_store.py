"""EncodingStore: round trips per dtype, keys, stats, eviction, damaged entries, model checks, processes."""

from __future__ import annotations

import logging
import sqlite3
import struct
import subprocess
import sys
import textwrap
import time
import zlib
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from _fake_encodings import FACTS, fake_output

from m3_rag import EncodingStore, IndexFormatError, M3Embedder, M3Output, encode_with_store, fetch_encodings
from m3_rag.encoding_entries import ROW_OVERHEAD
from m3_rag.scoring import colbert_scores

TEXTS = [f"text number {i}" for i in range(12)]
TOL = {"float32": 0.0, "float16": 1e-3, "int8": 4e-3}


def fresh(tmp_path: Path, dtype: str = "float16", **kwargs: Any) -> EncodingStore:
    return EncodingStore(tmp_path / "enc.sqlite", FACTS, colbert_dtype=dtype, **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize("dtype", ["float32", "float16", "int8"])
def test_round_trip(tmp_path: Path, dtype: str) -> None:
    store = fresh(tmp_path, dtype)
    out = fake_output(TEXTS)
    returned = store.put(TEXTS, out, max_length=16)
    got = store.get(TEXTS, max_length=16)
    for i, entry in enumerate(got):
        assert entry is not None
        np.testing.assert_array_equal(entry.dense, out.dense[i])
        assert entry.sparse.to_dict() == pytest.approx(out.sparse[i], rel=1e-6) and entry.sparse == returned[i].sparse
        assert entry.colbert is not None and entry.colbert.dtype.name == dtype
        np.testing.assert_array_equal(entry.colbert, returned[i].colbert)  # what put returned is what is kept
        assert np.abs(entry.colbert_float32() - out.colbert[i]).max() <= TOL[dtype]
        assert (entry.scales is not None) == (dtype == "int8")
    light = store.get(TEXTS[:2], max_length=16, colbert=False)
    assert all(e is not None and e.colbert is None for e in light)
    assert light[0].dense.tolist() == got[0].dense.tolist()  # type: ignore[union-attr]
    with pytest.raises(ValueError, match="without its ColBERT"):
        light[0].colbert_float32()  # type: ignore[union-attr]
    stats = store.stats()
    assert (stats.entries, stats.stored, stats.hits, stats.misses) == (12, 12, 14, 0)
    item = {"float32": 4, "float16": 2, "int8": 1}[dtype]
    arrays = sum(
        4 * 4 + 8 * len(s) + len(c) * (3 * item + 4 * (dtype == "int8")) for s, c in zip(out.sparse, out.colbert)
    )
    assert stats.bytes == arrays + 12 * ROW_OVERHEAD and stats.file_bytes > 0


def test_keys_texts_lengths_and_stats(tmp_path: Path) -> None:
    store = fresh(tmp_path)
    store.put(TEXTS[:3], fake_output(TEXTS[:3]), max_length=16)
    again = store.put(TEXTS[:3] + TEXTS[:1], fake_output(TEXTS[:3] + TEXTS[:1]), max_length=16)
    assert len(again) == 4 and len(store) == 3 and store.stats().stored == 3  # stored once
    got = store.get([TEXTS[0], TEXTS[0] + " (edited)", TEXTS[1], TEXTS[0]], max_length=16)
    assert [e is not None for e in got] == [True, False, True, True]  # an edited text is another key
    assert store.get([TEXTS[0]], max_length=32) == [None]  # so is another max_length
    assert store.contains([TEXTS[2], "nope"], max_length=16) == [True, False]
    stats = store.stats()
    assert (stats.hits, stats.misses, stats.damaged) == (3, 2, 0) and stats.hit_rate == pytest.approx(0.6)
    assert store.get([], max_length=16) == []
    with pytest.raises(ValueError, match="max_length must be an int"):
        store.get(TEXTS, max_length=True)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="list of str"):
        store.get("one text", max_length=16)
    store.clear()
    assert len(store) == 0 and store.stats().bytes == 0 and store.get(TEXTS[:1], max_length=16) == [None]


def test_put_refuses_what_it_could_not_read_back(tmp_path: Path) -> None:
    store = fresh(tmp_path)
    out = fake_output(TEXTS[:2])
    bad_colbert = [out.colbert[0] * np.nan, out.colbert[1]]
    with pytest.raises(ValueError, match=r"texts\[0\].*finite"):
        store.put(TEXTS[:2], M3Output(out.dense, out.sparse, bad_colbert), max_length=16)
    with pytest.raises(ValueError, match=r"texts\[1\].*\(tokens, 3\)"):
        store.put(TEXTS[:2], M3Output(out.dense, out.sparse, [out.colbert[0], np.ones((2, 5))]), max_length=16)
    with pytest.raises(ValueError, match="token ids in"):
        store.put(TEXTS[:1], M3Output(out.dense[:1], [{99: 0.5}], out.colbert[:1]), max_length=16)
    with pytest.raises(ValueError, match="one encoding per text"):
        store.put(TEXTS[:3], out, max_length=16)
    with pytest.raises(ValueError, match="colbert=True"):
        store.put(TEXTS[:2], M3Output(out.dense, out.sparse, None), max_length=16)
    assert len(store) == 0  # nothing half-written


def test_one_store_one_model_and_dtype(tmp_path: Path) -> None:
    fresh(tmp_path, "int8").close()
    with pytest.raises(IndexFormatError, match=r"keeps ColBERT vectors as int8, not float16.*EncodingStore.open"):
        fresh(tmp_path, "float16")
    assert EncodingStore.open(tmp_path / "enc.sqlite", FACTS).colbert_dtype == "int8"
    other = SimpleNamespace(**{**vars(FACTS), "fingerprint": "another-model", "name": "other"})
    with pytest.raises(IndexFormatError, match="One store file holds one model"):
        EncodingStore.open(tmp_path / "enc.sqlite", other)  # type: ignore[arg-type]
    (tmp_path / "junk.sqlite").write_bytes(b"not a database at all" * 100)
    with pytest.raises(IndexFormatError, match="not a readable encoding store"):
        EncodingStore.open(tmp_path / "junk.sqlite", FACTS)
    with pytest.raises(ValueError, match="is a folder"):
        EncodingStore.open(tmp_path, FACTS)
    with pytest.raises(ValueError, match="max_bytes"):
        fresh(tmp_path, "int8", max_bytes=0)
    store = EncodingStore.open(tmp_path / "new.sqlite", FACTS)
    assert store.colbert_dtype == "float16"
    with pytest.raises(ValueError, match="holds encodings of 'fake-m3'"):
        store.check_embedder(other)  # type: ignore[arg-type]


def _raw(store: EncodingStore, text: str, max_length: int = 16) -> tuple[Any, ...]:
    db = sqlite3.connect(store.path)
    row = db.execute("SELECT * FROM entries WHERE key = ?", store.keys([text], max_length=max_length)).fetchone()
    db.close()
    return tuple(row)


def _write_raw(store: EncodingStore, text: str, **columns: Any) -> None:
    db = sqlite3.connect(store.path)
    sets = ", ".join(f"{name} = ?" for name in columns)
    db.execute(f"UPDATE entries SET {sets} WHERE key = ?", (*columns.values(), *store.keys([text], max_length=16)))
    db.commit()
    db.close()


def _forged(row: tuple[Any, ...], **changes: bytes) -> dict[str, Any]:
    """New columns with the checksums recomputed, as an attacker would."""
    names = ["key", "used", "max_length", "tokens", "terms", "size", "crc_head", "crc_colbert",
             "dense", "ids", "weights", "scales", "colbert"]  # fmt: skip
    col = dict(zip(names, row))
    col.update(changes)
    head = struct.pack("<qqq", col["max_length"], col["tokens"], col["terms"])
    col["crc_head"] = zlib.crc32(col["weights"], zlib.crc32(col["ids"], zlib.crc32(col["dense"], zlib.crc32(head))))
    col["crc_colbert"] = zlib.crc32(col["colbert"], zlib.crc32(col["scales"], zlib.crc32(head[8:16])))
    return {k: col[k] for k in ("crc_head", "crc_colbert", *changes)}


def test_damaged_entries_are_misses_never_crashes(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    store = fresh(tmp_path, "float16")
    store.put(TEXTS, fake_output(TEXTS), max_length=16)
    row = {t: _raw(store, t) for t in TEXTS}
    victims = TEXTS[:7]
    with_terms = next(t for t in victims if row[t][4] > 0)  # forge a token id of a text that has some
    bit_rot, truncated, nan, too_big, wrong_type, counts = (t for t in victims if t != with_terms)
    flipped = bytearray(row[bit_rot][12])
    flipped[0] ^= 0x10
    nan16 = np.frombuffer(row[nan][12], np.float16).copy()
    nan16[1] = np.nan
    big = np.frombuffer(row[too_big][12], np.float16).copy()
    big[0] = 3.0
    ids = np.frombuffer(row[with_terms][9], np.int32).copy()
    ids[-1] = 10_000  # outside the vocabulary of 50
    _write_raw(store, bit_rot, colbert=bytes(flipped))  # bit rot: the checksum catches it
    _write_raw(store, truncated, dense=row[truncated][8][:-4])
    _write_raw(store, nan, **_forged(row[nan], colbert=nan16.tobytes()))  # forged, checksums recomputed
    _write_raw(store, too_big, **_forged(row[too_big], colbert=big.tobytes()))
    _write_raw(store, with_terms, **_forged(row[with_terms], ids=ids.tobytes()))
    _write_raw(store, wrong_type, colbert="text, not bytes")
    _write_raw(store, counts, tokens=10_000)
    with caplog.at_level(logging.WARNING, logger="m3_rag.encoding_store"):
        got = store.get(TEXTS, max_length=16)
    assert [e is None for e in got] == [True] * 7 + [False] * 5
    reasons = " | ".join(r.getMessage() for r in caplog.records)
    for part in ("checksum of the ColBERT", "dense vector has 12 bytes", "outside [-1, 1]", "sparse token ids",
                 "column holds str", "impossible counts"):  # fmt: skip
        assert part in reasons
    assert store.stats().damaged == 7
    assert store.get([nan], max_length=16, colbert=False)[0] is None  # deleted with the flush after the read
    assert len(store) == 5
    store.put(TEXTS, fake_output(TEXTS), max_length=16)  # the damaged ones are stored again
    assert all(e is not None for e in store.get(TEXTS, max_length=16))


def test_a_damaged_file_is_all_misses(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    store = fresh(tmp_path)
    store.put(TEXTS, fake_output(TEXTS), max_length=16)
    store.close()
    size = store.path.stat().st_size
    with open(store.path, "r+b") as f:  # every page but the first (the schema) overwritten
        f.seek(4096)
        f.write(b"\xff" * (size - 4096))
    with caplog.at_level(logging.WARNING):
        got = store.get(TEXTS, max_length=16)
    assert got == [None] * len(TEXTS) and "could not be read" in caplog.text


def test_eviction_keeps_the_recently_used_under_max_bytes(tmp_path: Path) -> None:
    probe = fresh(tmp_path / "probe")
    probe.put(TEXTS[:1], fake_output(TEXTS[:1]), max_length=16)
    one = probe.stats().bytes
    texts = [f"same size {i}" for i in range(40)]
    outs = fake_output(texts)
    bound = 10 * one * 2  # room for ~20 entries of about this size
    store = fresh(tmp_path, max_bytes=bound, touch_after_s=0)
    store.put(texts[:5], M3Output(outs.dense[:5], outs.sparse[:5], outs.colbert[:5]), max_length=16)
    for i in range(5, 40):
        store.get(texts[:1], max_length=16)  # texts[0] stays in use
        store.put(texts[i : i + 1], M3Output(outs.dense[i : i + 1], outs.sparse[i : i + 1], outs.colbert[i : i + 1]),
                  max_length=16)  # fmt: skip
        assert store.stats().bytes <= bound
    stats = store.stats()
    kept = store.contains(texts, max_length=16)
    assert stats.evicted > 0 and stats.entries == sum(kept) == 40 - stats.evicted
    assert kept[0] and not any(kept[1:5])  # the used one survived, the unused old ones went first
    assert kept[-1] and all(kept[-5:])
    db = sqlite3.connect(store.path)
    columns = "length(dense) + length(ids) + length(weights) + length(scales) + length(colbert)"
    counted = db.execute(f"SELECT COUNT(*), SUM({ROW_OVERHEAD} + {columns}) FROM entries").fetchone()
    assert counted == (stats.entries, stats.bytes)  # the totals kept by the puts are the real ones


WORKER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    sys.path.insert(0, TESTS_DIR)
    from _fake_encodings import FACTS, fake_output
    from m3_rag import EncodingStore
    path, worker = Path(sys.argv[1]), int(sys.argv[2])
    store = EncodingStore(path, FACTS, colbert_dtype="int8")
    texts = [f"shared {i}" for i in range(100)] + [f"own {worker} {i}" for i in range(100)]
    texts = texts[worker * 37 :] + texts[: worker * 37]  # every worker in its own order
    (path.parent / f"ready-{worker}").touch()
    while not (path.parent / "go").exists():  # all start writing at once
        time.sleep(0.01)
    start = time.time()
    for a in range(0, len(texts), 2):
        store.put(texts[a : a + 2], fake_output(texts[a : a + 2]), max_length=64)
        store.get(texts[: a + 2 : 3], max_length=64)
    print(start, time.time())
    store.close()
    """
).replace("TESTS_DIR", repr(str(Path(__file__).parent)))


@pytest.mark.slow
def test_several_processes_fill_one_store(tmp_path: Path) -> None:
    path = tmp_path / "shared.sqlite"
    EncodingStore(path, FACTS, colbert_dtype="int8").close()
    pipes = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE}
    workers = [subprocess.Popen([sys.executable, "-c", WORKER, str(path), str(w)], **pipes) for w in range(3)]
    deadline = time.monotonic() + 120
    while not all((tmp_path / f"ready-{w}").exists() for w in range(3)) and time.monotonic() < deadline:
        assert all(proc.poll() is None for proc in workers), [proc.stderr.read() for proc in workers]  # type: ignore[union-attr]
        time.sleep(0.05)
    (tmp_path / "go").touch()
    windows = []
    for proc in workers:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err.decode()
        windows.append([float(x) for x in out.split()])
    assert max(start for start, _ in windows) < min(end for _, end in windows)  # they did write at the same time
    store = EncodingStore(path, FACTS, colbert_dtype="int8")
    texts = [f"shared {i}" for i in range(100)] + [f"own {w} {i}" for w in range(3) for i in range(100)]
    assert len(store) == len(texts) == 400  # nothing lost, nothing twice
    got = store.get(texts, max_length=64)
    expected = fake_output(texts)
    for i, entry in enumerate(got):
        assert entry is not None, texts[i]
        np.testing.assert_array_equal(entry.dense, expected.dense[i])
        assert np.abs(entry.colbert_float32() - expected.colbert[i]).max() <= TOL["int8"]
    assert store.stats().damaged == 0


# ---------------------------------------------------------------------------- with the model
@pytest.mark.parametrize("dtype", ["float32", "int8"])
def test_encode_with_store_encodes_each_miss_once(embedder: M3Embedder, tmp_path: Path, dtype: str) -> None:
    store = EncodingStore(tmp_path / "enc.sqlite", embedder, colbert_dtype=dtype)
    seen: list[str] = []
    original = embedder.iter_encode

    def counting(texts: Any, **kwargs: Any) -> Any:
        seen.extend(texts)
        return original(texts, **kwargs)

    texts = ["Berlin is the capital of Germany.", "Paris is in France.", "Berlin is the capital of Germany."]
    embedder.iter_encode = counting  # type: ignore[method-assign]
    try:
        first = encode_with_store(embedder, texts, store)
        assert sorted(seen) == sorted(set(texts))  # one pass over the distinct misses
        second = encode_with_store(embedder, [*texts, "A new text."], store)
        assert seen[2:] == ["A new text."]
        packed = fetch_encodings(embedder, texts, store)
        assert seen[3:] == []
    finally:
        del embedder.iter_encode
    ref = embedder.encode(texts, max_length=embedder.passage_max_length)
    assert first.colbert is not None and second.colbert is not None and first.sparse is not None
    for i in range(3):
        np.testing.assert_allclose(first.dense[i], ref.dense[i], atol=1e-6)  # type: ignore[index]  # other batches
        assert first.sparse[i] == pytest.approx(ref.sparse[i], rel=1e-5, abs=1e-6)  # type: ignore[index]
        np.testing.assert_array_equal(first.colbert[i], second.colbert[i])  # hit == what the miss returned
        assert np.abs(first.colbert[i] - ref.colbert[i]).max() <= TOL[dtype] + 1e-6  # type: ignore[index]
    query = embedder.encode_queries(["capital of Germany"]).colbert[0]  # type: ignore[index]
    flat = colbert_scores(
        query, np.concatenate(first.colbert[:3]), np.concatenate([[0], np.cumsum([len(c) for c in first.colbert])])
    )
    np.testing.assert_allclose(packed.colbert_scores(query), flat, atol=1e-6)
    assert packed.colbert.dtype.name == dtype and (packed.scales is not None) == (dtype == "int8")


def test_a_store_that_cannot_be_written_still_encodes(
    embedder: M3Embedder, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    store = EncodingStore(tmp_path / "enc.sqlite", embedder)

    def full(*args: Any, **kwargs: Any) -> Any:
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(store, "put", full)
    with caplog.at_level(logging.WARNING):
        out = encode_with_store(embedder, ["some text"], store)
    assert out.dense is not None and out.dense.shape == (1, embedder.dim) and "disk is full" in caplog.text
    assert len(store) == 0
    other = SimpleNamespace(**{**vars(FACTS), "fingerprint": "x"})
    with pytest.raises(ValueError, match="holds encodings of"):
        encode_with_store(other, ["t"], store)  # type: ignore[arg-type]
