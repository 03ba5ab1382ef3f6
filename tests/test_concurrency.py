"""Many processes on one index folder: writers, readers, kills, full disks (real processes, real files)."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from m3_rag import IndexFormatError, M3Embedder, M3Index
from m3_rag.index import files as index_files
from m3_rag.index.catalog import Catalog

TINY = Path(__file__).parent / "data" / "tiny-m3"
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}

# Every commit adds one "batch": documents b<batch>-0 .. b<batch>-<size-1>, all tagged {"batch": ..., "size": ...}.
# A reader that sees a batch partly has seen half a commit.
WRITER = textwrap.dedent(
    """
    import sys
    from m3_rag import M3Embedder, M3Index
    folder, name, rounds, size = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    embedder = M3Embedder.from_pretrained(sys.argv[5], device="cpu")
    for r in range(rounds):
        index = M3Index.load(folder, embedder)
        batch = f"{name}{r}"
        index.add([f"{name} round {r} text {i}" for i in range(size)], ids=[f"{batch}-{i}" for i in range(size)],
                  metadatas=[{"batch": batch, "size": size}] * size)
        index.delete([f"{name}{r - 1}-0"])  # and delete one document of its previous round
        index.save()
    print("done", flush=True)
    """
)


def complete_batches(index: M3Index) -> dict[str, int]:
    """Batch -> documents seen; asserts every batch is whole (a round's first document may be deleted)."""
    seen: dict[str, set[int]] = {}
    sizes = {}
    for record in index:
        batch, number = record.id.rsplit("-", 1)
        seen.setdefault(batch, set()).add(int(number))
        sizes[batch] = record.metadata["size"]
    for batch, numbers in seen.items():
        assert numbers | {0} == set(range(sizes[batch])), f"half a commit: batch {batch} has {sorted(numbers)}"
    return {b: len(n) for b, n in seen.items()}


def start(code: str, *args: object) -> subprocess.Popen[str]:
    command = [sys.executable, "-c", code, *map(str, args)]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)


@pytest.fixture(scope="module")
def embedder() -> M3Embedder:
    return M3Embedder.shared(TINY, device="cpu")


def new_index(embedder: M3Embedder, folder: Path) -> Path:
    index = M3Index(embedder)
    index.add(["seed document"], ids=["seed-0"], metadatas=[{"batch": "seed", "size": 1}])
    index.save(folder)
    return folder


@pytest.mark.slow
def test_two_writers_lose_nothing(embedder: M3Embedder, tmp_path: Path) -> None:
    """load -> add -> delete -> save in two processes at once, for many rounds: both processes' changes land."""
    folder = new_index(embedder, tmp_path / "idx")
    rounds, size = 12, 5
    writers = [start(WRITER, folder, name, rounds, size, TINY) for name in ("a", "b")]
    for w in writers:
        out, err = w.communicate(timeout=600)
        assert w.returncode == 0 and "done" in out, err
    final = M3Index.load(folder, embedder)
    batches = complete_batches(final)
    for name in ("a", "b"):
        for r in range(rounds):
            deleted_first = r < rounds - 1  # the next round deleted this round's document 0
            assert batches[f"{name}{r}"] == size - deleted_first, (name, r, batches.get(f"{name}{r}"))
    assert len(final) == 1 + 2 * (rounds * size - (rounds - 1))
    hits = final.search("b round 11 text 3", k=1, candidates=len(final))
    assert hits and hits[0].id == "b11-3"


READER = textwrap.dedent(
    """
    import sys, time
    from m3_rag import M3Embedder, M3Index
    folder, seconds = sys.argv[1], float(sys.argv[2])
    embedder = M3Embedder.from_pretrained(sys.argv[3], device="cpu")
    loads = failures = 0
    end = time.time() + seconds
    while time.time() < end:
        try:
            index = M3Index.load(folder, embedder)
            seen = {}
            for record in index:
                batch, number = record.id.rsplit("-", 1)
                seen.setdefault(batch, set()).add(int(number))
                size = record.metadata["size"]
                seen[batch + "/size"] = size
            for batch, numbers in list(seen.items()):
                if not batch.endswith("/size") and numbers | {0} != set(range(seen[batch + "/size"])):
                    raise AssertionError(f"half a commit: {batch} {sorted(numbers)}")
            index.search("round text", k=3)
            index.close()
            loads += 1
        except Exception as exc:
            failures += 1
            print(f"failure: {type(exc).__name__}: {exc}", flush=True)
    print(f"loads {loads} failures {failures}", flush=True)
    """
)


@pytest.mark.slow
def test_readers_never_fail_while_others_write_and_compact(embedder: M3Embedder, tmp_path: Path) -> None:
    folder = new_index(embedder, tmp_path / "idx")
    reader = start(READER, folder, 25, TINY)
    writer = M3Index.open(folder, embedder)
    deadline = time.time() + 20
    rounds = 0
    while time.time() < deadline:
        with writer.transaction():
            writer.add([f"w round {rounds} text {i}" for i in range(4)], ids=[f"w{rounds}-{i}" for i in range(4)],
                       metadatas=[{"batch": f"w{rounds}", "size": 4}] * 4)  # fmt: skip
            writer.delete([f"w{rounds - 1}-0"])
        if rounds % 5 == 4:
            writer.compact()  # rewrites everything and drops the old segments under the reader
        rounds += 1
    out, err = reader.communicate(timeout=120)
    assert reader.returncode == 0, err
    assert "failures 0" in out, out
    loads = int(out.split("loads ")[1].split()[0])
    assert loads >= 3 and rounds >= 5, (loads, rounds)
    assert complete_batches(M3Index.load(folder, embedder))


KILLED = textwrap.dedent(
    """
    import sys, time
    from m3_rag import M3Embedder, M3Index
    from m3_rag.index import files
    slow = files.fsync_dir
    def fsync_dir(path):  # widen the window so that the kill lands inside a commit
        slow(path)
        time.sleep(0.02)
    files.fsync_dir = fsync_dir
    import m3_rag.index.folder as folder_module
    folder_module.fsync_dir = fsync_dir
    embedder = M3Embedder.from_pretrained(sys.argv[2], device="cpu")
    index = M3Index.open(sys.argv[1], embedder)
    print("writing", flush=True)
    r = 0
    while True:
        index.add([f"k round {r} text {i}" for i in range(3)], ids=[f"k{r}-{i}" for i in range(3)],
                  metadatas=[{"batch": f"k{r}", "size": 3}] * 3)
        r += 1
    """
)


@pytest.mark.slow
@pytest.mark.parametrize("delay", [0.05, 0.23, 0.61])
def test_sigkill_during_commits_leaves_the_last_commit(embedder: M3Embedder, tmp_path: Path, delay: float) -> None:
    folder = new_index(embedder, tmp_path / "idx")
    child = start(KILLED, folder, TINY)
    assert child.stdout is not None and child.stdout.readline().strip() == "writing"
    time.sleep(delay + 0.5)
    child.send_signal(signal.SIGKILL)
    child.wait(timeout=30)
    index = M3Index.load(folder, embedder)  # loads, every batch whole
    batches = complete_batches(index)
    assert "seed" in batches
    index.add(["after the crash"], ids=["after-0"], metadatas=[{"batch": "after", "size": 1}])
    index.save()  # a retry works, and leftovers of the killed writer are cleaned up
    leftovers = [p.name for p in (folder / "segments").iterdir() if p.name.startswith((".tmp-", ".trash-"))]
    assert leftovers == []
    again = M3Index.load(folder, embedder)
    assert complete_batches(again)["after"] == 1 and len(again) == len(index)


def test_a_full_disk_leaves_the_previous_state_and_no_files(
    embedder: M3Embedder, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = new_index(embedder, tmp_path / "idx")
    before = sorted(os.listdir(folder / "segments"))
    index = M3Index.load(folder, embedder)
    index.add(["doomed"], ids=["doomed-0"], metadatas=[{"batch": "doomed", "size": 1}])
    calls = {"n": 0}
    real_write = index_files.NpyWriter.write

    def full(self: index_files.NpyWriter, block: np.ndarray) -> None:
        calls["n"] += 1
        if calls["n"] == 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        real_write(self, block)

    monkeypatch.setattr(index_files.NpyWriter, "write", full)
    with pytest.raises(OSError, match="No space left"):
        index.save()
    monkeypatch.undo()
    assert sorted(os.listdir(folder / "segments")) == before  # nothing left behind
    assert sorted(M3Index.load(folder, embedder).ids) == ["seed-0"]
    index.save()  # the retry works: the change is still pending
    assert sorted(M3Index.load(folder, embedder).ids) == ["doomed-0", "seed-0"]


def test_ctrl_c_right_after_the_catalog_commit_keeps_the_segment(
    embedder: M3Embedder, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A KeyboardInterrupt after SQLite's COMMIT but before the commit returns (what a Ctrl-C of
    `m3-rag index` can hit) must not remove the segment the catalog now names."""
    folder = new_index(embedder, tmp_path / "idx")
    index = M3Index.load(folder, embedder)
    index.add(["kept"], ids=["kept-0"], metadatas=[{"batch": "kept", "size": 1}])
    real_commit = Catalog.commit

    def interrupted(self: Catalog, **kwargs: object) -> int:
        real_commit(self, **kwargs)  # type: ignore[arg-type]
        raise KeyboardInterrupt

    monkeypatch.setattr(Catalog, "commit", interrupted)
    with pytest.raises(KeyboardInterrupt):
        index.save()
    monkeypatch.undo()
    assert sorted(M3Index.load(folder, embedder).ids) == ["kept-0", "seed-0"]  # the commit counts
    index.save()  # the change is still pending here: committed again, same result
    again = M3Index.load(folder, embedder)
    assert sorted(again.ids) == ["kept-0", "seed-0"] and again.search("kept", k=1)[0].id == "kept-0"


def test_a_full_catalog_leaves_the_previous_state(embedder: M3Embedder, tmp_path: Path) -> None:
    """SQLite's own 'database or disk is full' (a page limit stands in for the disk)."""
    folder = new_index(embedder, tmp_path / "idx")
    index = M3Index.load(folder, embedder)
    assert index._folder is not None
    db = index._folder.catalog._db
    pages = db.execute("PRAGMA page_count").fetchone()[0]
    db.execute(f"PRAGMA max_page_count = {pages}")
    index.add(["x" * 20000] * 3, ids=[f"big-{i}" for i in range(3)], metadatas=[{"batch": "big", "size": 3}] * 3)
    with pytest.raises(Exception, match="full"):
        index.save()
    assert [p.name for p in (folder / "segments").iterdir() if p.name.startswith(".")] == []
    assert sorted(M3Index.load(folder, embedder).ids) == ["seed-0"]
    db.execute("PRAGMA max_page_count = 1073741823")
    index.save()
    assert len(M3Index.load(folder, embedder)) == 4


def test_open_index_sees_other_processes_commits(embedder: M3Embedder, tmp_path: Path) -> None:
    folder = new_index(embedder, tmp_path / "idx")
    reader = M3Index.open(folder, embedder)
    writer = M3Index.open(folder, embedder)
    writer.add(["Berlin is the capital of Germany."], ids=["de-0"], metadatas=[{"batch": "de", "size": 1}])
    assert "de-0" in reader.ids and reader.search("capital of Germany", k=1)[0].id == "de-0"
    writer.delete("de-0")
    assert [h.id for h in reader.search("capital of Germany", k=5)] == ["seed-0"]
    snapshot = M3Index.load(folder, embedder)
    writer.add(["later"], ids=["later-0"], metadatas=[{"batch": "later", "size": 1}])
    assert "later-0" not in snapshot.ids  # a loaded index is a snapshot until refresh() or save()
    snapshot.refresh()
    assert "later-0" in snapshot.ids


def test_transaction_commits_once_or_not_at_all(embedder: M3Embedder, tmp_path: Path) -> None:
    folder = new_index(embedder, tmp_path / "idx")
    index = M3Index.open(folder, embedder)

    def failing() -> None:
        with index.transaction():
            index.add(["one"], ids=["t-0"], metadatas=[{"batch": "t", "size": 2}])
            index.delete("seed-0")
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        failing()
    assert sorted(index.ids) == ["seed-0"] and sorted(M3Index.load(folder, embedder).ids) == ["seed-0"]
    generation = index._folder.catalog.generation() if index._folder else -1
    with index.transaction():
        index.add(["one"], ids=["t-0"], metadatas=[{"batch": "t", "size": 2}])
        index.add(["two"], ids=["t-1"], metadatas=[{"batch": "t", "size": 2}])
    assert index._folder is not None and index._folder.catalog.generation() == generation + 1
    assert complete_batches(M3Index.load(folder, embedder))["t"] == 2


def test_a_commit_writes_what_changed(embedder: M3Embedder, tmp_path: Path) -> None:
    """Adding 2 documents to an index of 200 writes a segment of 2 documents, not the index."""
    index = M3Index(embedder)
    index.add([f"document number {i}" for i in range(200)], ids=[f"base-{i}" for i in range(200)])
    folder = index.save(tmp_path / "idx")
    first = {p.name for p in (folder / "segments").iterdir()}
    loaded = M3Index.load(folder, embedder)
    loaded.save()  # no change: no new segment
    assert {p.name for p in (folder / "segments").iterdir()} == first
    loaded.add(["two more", "documents"], ids=["new-0", "new-1"])
    loaded.save()
    (new,) = {p.name for p in (folder / "segments").iterdir()} - first
    dense = folder / "segments" / new / "dense.npy"
    assert np.load(dense).shape == (2, embedder.dim)


def test_empty_index_is_truthy_and_legacy_folders_upgrade(embedder: M3Embedder, tmp_path: Path, caplog) -> None:
    assert bool(M3Index(embedder)) and len(M3Index(embedder)) == 0
    import shutil

    legacy = tmp_path / "legacy"
    shutil.copytree(Path(__file__).parent / "data" / "legacy-v1-index", legacy)
    with caplog.at_level("WARNING"):
        index = M3Index.load(legacy, embedder)
    assert any("upgraded the index" in r.getMessage() for r in caplog.records)
    assert sorted(index.ids) == ["d0", "d1", "d2", "d3"] and not (legacy / "manifest.json").exists()
    fresh = M3Index(embedder)
    records = index.get(sorted(index.ids))
    fresh.add([r.text for r in records], ids=[r.id for r in records], metadatas=[r.metadata for r in records])
    for query in ("capital of Germany", "中国的首都"):
        a, b = index.search(query, k=4), fresh.search(query, k=4)
        assert [h.id for h in a] == [h.id for h in b]
        np.testing.assert_allclose([h.score for h in a], [h.score for h in b], rtol=1e-6)
    with pytest.raises(IndexFormatError, match="was built with model"):
        M3Index.load(legacy, M3Embedder.shared(TINY.with_name("tiny-m3-bin"), device="cpu"))
