"""Hostile and broken index files, saves killed midway, concurrent use, and very large inputs."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import numpy as np
import pytest

from m3_rag import IndexFormatError, M3Embedder, M3Index

TINY = Path(__file__).parent / "data" / "tiny-m3"
DOCS = [f"document {i} about {['berlin', 'paris', '北京', 'madrid', 'tokyo'][i % 5]} " * (1 + i % 4) for i in range(40)]


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> Path:
    index = M3Index(M3Embedder.shared(TINY))
    index.add(DOCS, ids=[f"d{i}" for i in range(len(DOCS))], metadatas=[{"i": i} for i in range(len(DOCS))])
    path = index.save(tmp_path_factory.mktemp("fuzz") / "idx")
    index.close()  # the catalog's write-ahead log is folded into catalog.sqlite
    return path


@pytest.mark.slow
def test_fuzzed_index_files_give_one_clear_error(saved: Path, tmp_path: Path) -> None:
    """Flip bytes, truncate or extend every file: loading either works or raises IndexFormatError."""
    rng = np.random.default_rng(1234)
    embedder = M3Embedder.shared(TINY)
    files = sorted(p for p in saved.rglob("*") if p.is_file() and p.name != ".lock")
    outcomes: dict[str, int] = {"loaded": 0, "refused": 0}
    for trial in range(60):
        target_dir = tmp_path / f"t{trial}"
        shutil.copytree(saved, target_dir)
        victim = target_dir / files[trial % len(files)].relative_to(saved)
        raw = bytearray(victim.read_bytes())
        action = rng.integers(3)
        if action == 0 and raw:
            for pos in rng.integers(0, len(raw), size=int(rng.integers(1, 8))):
                raw[pos] ^= int(rng.integers(1, 256))
        elif action == 1:
            raw = raw[: int(rng.integers(0, max(1, len(raw))))]
        else:
            raw += bytes(rng.integers(0, 256, size=int(rng.integers(1, 64)), dtype=np.uint8))
        victim.write_bytes(bytes(raw))
        try:
            index = M3Index.load(target_dir, embedder)
            index.search("berlin", k=3)  # ColBERT values are size-checked, not hashed: a search must still work
        except IndexFormatError:
            outcomes["refused"] += 1
        else:
            outcomes["loaded"] += 1
            assert len(index) == len(DOCS)
        shutil.rmtree(target_dir)
    assert outcomes["refused"] >= 35, outcomes


def test_no_pickle_in_a_saved_index(saved: Path) -> None:
    for file in saved.rglob("*.npy"):
        array = np.load(file, allow_pickle=False)  # raises if an object array were stored
        assert array.dtype != object
    assert (saved / "catalog.sqlite").is_file() and not (saved / "manifest.json").exists()


def test_concurrent_searches_during_adds() -> None:
    embedder = M3Embedder.shared(TINY)
    index = M3Index(embedder)
    expected = {f"d{i}": text for i, text in enumerate(DOCS)}
    index.add(DOCS[:10], ids=list(expected)[:10])
    errors: list[BaseException] = []
    stop = threading.Event()

    def searcher() -> None:
        try:
            while not stop.is_set():
                for hits in index.search_batch(["berlin", "北京 tokyo"], k=5):
                    for hit in hits:
                        assert hit.text == expected[hit.id]  # never a torn row: id and text agree
                        assert np.isfinite(hit.score)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=searcher) for _ in range(3)]
    for t in threads:
        t.start()
    for start in range(10, len(DOCS), 6):
        ids = list(expected)[start : start + 6]
        index.add([expected[i] for i in ids], ids=ids)
        index.delete(ids[:1])
        index.add([expected[ids[0]]], ids=ids[:1])
    stop.set()
    for t in threads:
        t.join(timeout=60)
    assert not errors, errors[0]
    assert len(index) == len(DOCS)


@pytest.mark.slow
def test_million_character_text_is_truncated_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    embedder = M3Embedder.shared(TINY)
    text = ("Berlin Paris 北京 " * 70_000)[:1_000_000]
    with caplog.at_level(logging.WARNING, logger="m3_rag"):
        out = embedder.encode([text, "short"])
    assert "1 of 2 texts were longer than max_length=512" in caplog.text
    assert out.colbert is not None and out.colbert[0].shape[0] == 511


@pytest.mark.slow
def test_million_character_text_memory_is_bounded(tmp_path: Path) -> None:
    code = textwrap.dedent(
        """
        import resource, sys
        from m3_rag import M3Embedder
        m3 = M3Embedder.from_pretrained(sys.argv[1])
        m3.encode(["warm up"])
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        m3.encode([("Berlin Paris 北京 " * 70_000)[:1_000_000]])
        print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before)
        """
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-c", code, str(TINY)], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    growth_mb = int(done.stdout.strip()) / 1024
    assert growth_mb < 400, f"encoding one 1M-character text grew the process by {growth_mb:.0f} MB"


@pytest.mark.slow
def test_many_short_texts_stream_with_a_progress_bar(capsys: pytest.CaptureFixture[str]) -> None:
    embedder = M3Embedder.shared(TINY)
    texts = [f"t{i}" for i in range(100_000)]
    seen = 0
    for batch in embedder.iter_encode(texts, sparse=False, colbert=False, show_progress=None):
        seen += len(batch)
        assert batch.dense is not None and batch.dense.shape[0] == len(batch)
    assert seen == len(texts)
    assert "100000/100000" in capsys.readouterr().err
