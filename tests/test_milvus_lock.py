"""A milvus-lite file open in another process is a clear error, and ``close()`` releases the file.

milvus-lite takes an exclusive ``flock`` on ``<db>/LOCK`` for as long as its in-process server
runs; before, a second process got "check that the server runs", and a closed store kept the
lock until its process ended.
"""

from __future__ import annotations

import fcntl
import os
import queue
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("pymilvus")
pytest.importorskip("milvus_lite")

from m3_rag import IndexFormatError, M3Embedder, MilvusStore
from m3_rag.index.lite_lock import lock_holder

DATA = Path(__file__).parent / "data"
TINY = DATA / "tiny-m3"

CHILD = r"""
import sys
from m3_rag import M3Embedder, MilvusStore

embedder = M3Embedder.from_pretrained(sys.argv[1], device="cpu")
store = MilvusStore(embedder, sys.argv[2], "docs")
if sys.argv[3] == "add":
    store.add(["Berlin is the capital of Germany."], ids=["de"])
print("open", flush=True)
for line in sys.stdin:
    command = line.strip()
    if command == "close":
        store.close()
        print("closed", flush=True)
    elif command == "reopen":
        store = MilvusStore(embedder, sys.argv[2], "docs")
        print(f"reopened {len(store)}", flush=True)
    elif command == "exit":
        store.close()
        break
"""


def locked_by_someone(db: str) -> bool:
    """A non-blocking flock on our own descriptor: refused while any open file holds the lock."""
    fd = os.open(Path(db) / "LOCK", os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return True
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)


class Child:
    """A second process that opens ``db`` with a MilvusStore and follows commands on stdin."""

    def __init__(self, db: str, *, add: bool) -> None:
        env = {**os.environ, "HF_HUB_OFFLINE": "1"}
        command = [sys.executable, "-c", CHILD, str(TINY), db, "add" if add else "-"]
        self.process = subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
        )
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.put(line.strip())
        self.lines.put("<eof>")

    def send(self, command: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(command + "\n")
        self.process.stdin.flush()

    def said(self, timeout: float = 180.0) -> str:
        try:
            return self.lines.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"the child said nothing in {timeout} s") from None

    def stderr(self) -> str:
        self.process.wait(timeout=120)
        return self.process.stderr.read() if self.process.stderr else ""

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


def test_close_releases_the_file_in_this_process(embedder: M3Embedder, tmp_path: Path) -> None:
    db = str(tmp_path / "m3.db")
    a = MilvusStore(embedder, db, "a")
    b = MilvusStore(embedder, db, "b")  # two stores of one process share the engine and its lock
    a.add(["Berlin is the capital of Germany."], ids=["de"])
    assert locked_by_someone(db)
    a.close()
    a.close()  # idempotent
    assert len(b) == 0 and locked_by_someone(db)  # b still uses the file
    b.close()
    assert not locked_by_someone(db)  # released: before, it stayed locked until the process ended
    assert lock_holder(db) is None
    with MilvusStore(embedder, db, "a") as again:  # a new store opens it, with the data
        assert len(again) == 1 and again.get("de")[0].text == "Berlin is the capital of Germany."
        assert locked_by_someone(db)
    assert not locked_by_someone(db)  # __exit__ closed it


def test_a_failed_open_releases_the_file(embedder: M3Embedder, tmp_path: Path) -> None:
    db = str(tmp_path / "m3.db")
    with MilvusStore(embedder, db, "docs") as store:
        store.add(["a text"], ids=["x"])
    other = M3Embedder.from_pretrained(DATA / "tiny-m3-bin", device="cpu")  # another model (dim 48)
    with pytest.raises(IndexFormatError, match="was built with model"):
        MilvusStore(other, db, "docs")
    assert not locked_by_someone(db)


@pytest.mark.slow
def test_a_file_open_in_another_process(embedder: M3Embedder, tmp_path: Path) -> None:
    db = str(tmp_path / "shared.db")
    child = Child(db, add=True)
    try:
        assert child.said() == "open", child.stderr()
        started = time.monotonic()
        with pytest.raises(ConnectionError) as info:
            MilvusStore(embedder, db, "docs")
        message = str(info.value)
        assert "in use by another process" in message
        assert f"process {child.process.pid}" in message  # who holds it (from /proc/locks)
        assert "MilvusStore.close()" in message and "milvus-lite server --data-dir" in message
        assert "check that the server runs" not in message
        assert time.monotonic() - started < 10  # refused at once, not after the 30 s connection timeout
        assert f"process {child.process.pid}" in str(lock_holder(db))

        child.send("close")
        assert child.said() == "closed"
        assert child.process.poll() is None  # still running: close() released the file, not the exit
        with MilvusStore(embedder, db, "docs") as store:  # right after
            assert [h.id for h in store.search("capital of Germany", k=1)] == ["de"]
            store.add(["Paris is the capital of France."], ids=["fr"])
            child.send("reopen")  # now the child gets the clear error in its turn, and dies of it
            assert child.said() == "<eof>"
            error = child.stderr()
            assert child.process.returncode == 1 and "in use by another process" in error, error
            assert f"process {os.getpid()}" in error
    finally:
        child.kill()

    child = Child(db, add=False)  # and another process opens it once this one has closed it
    try:
        assert child.said() == "open", child.stderr()
        child.send("close")
        child.send("reopen")
        assert child.said() == "closed"
        assert child.said() == "reopened 2"
        child.send("exit")
        assert child.process.wait(timeout=60) == 0
    finally:
        child.kill()
