"""Opening and releasing a milvus-lite database: one process at a time, released on ``close()``.

How milvus-lite 3.x locks (read from ``milvus_lite/db.py`` and ``server_manager.py``): a ``.db``
uri is a *folder*; pymilvus asks ``milvus_lite.server_manager.server_manager_instance`` for it,
which starts an in-process gRPC server over ``MilvusLite(folder)``, and that takes an exclusive,
non-blocking ``fcntl.flock`` on ``<folder>/LOCK`` (``msvcrt.locking`` on Windows). A second
process fails with ``DataDirLockedError``, which the server manager logs and turns into
pymilvus's ``ConnectionConfigException("Open local milvus failed")``. The server, and so the
lock, lives until ``server_manager_instance.release_server(folder)`` or the end of the process:
``MilvusClient.close()`` only drops the connection, so a closed store kept the file locked.

Here: before connecting, the lock is probed (a non-blocking ``flock`` on our own descriptor,
released at once) unless this process already serves the folder; a held lock is a
:class:`ConnectionError` that names the holder (its pid and command line from ``/proc/locks``
on Linux) and says what to do. The clients made here count the stores of this process that use
each folder; closing the last one stops the server this module started, which releases the lock.
"""

from __future__ import annotations

import os
import sys
import threading
from functools import cache
from pathlib import Path
from typing import Any

__all__ = ["connect_lite", "lock_holder"]

_LOCK_FILE = "LOCK"  # milvus_lite.constants.LOCK_FILENAME
_users: dict[str, int] = {}  # data folder -> open clients made here
_started: set[str] = set()  # data folders whose server a client made here started
_guard = threading.Lock()


def _server_manager() -> Any:
    from milvus_lite.server_manager import server_manager_instance

    return server_manager_instance


def _served_here(folder: str) -> bool:
    servers = getattr(_server_manager(), "_servers", None)
    return isinstance(servers, dict) and folder in servers


def _holder_pid(lock: Path) -> int | None:
    """The pid that holds a flock on ``lock``, from ``/proc/locks`` (Linux), or None."""
    try:
        st = os.stat(lock)
        table = Path("/proc/locks").read_text(encoding="ascii", errors="replace")
    except OSError:
        return None
    exact = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    by_inode = None
    for line in table.splitlines():  # "1: FLOCK  ADVISORY  WRITE 7280 fe:00:2146530 0 EOF"
        fields = line.split()
        if len(fields) < 6 or fields[1] != "FLOCK" or not fields[4].isdigit():
            continue  # another kind of lock, or a waiter ("1: -> FLOCK ...")
        pid = int(fields[4])
        if fields[5] == exact and pid > 0:
            return pid
        if fields[5].rsplit(":", 1)[-1] == str(st.st_ino) and pid > 0:
            by_inode = pid  # overlay file systems report another device number
    return by_inode


def _describe(pid: int) -> str:
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        command = " ".join(a.decode("utf-8", "replace") for a in argv if a)
    except OSError:
        command = ""
    if pid == os.getpid():
        return f"this process ({pid}), through a client m3-rag did not open"
    return f"process {pid}" + (f": {command[:120]}" if command else "")


def lock_holder(folder: str | os.PathLike[str]) -> str | None:
    """Who holds milvus-lite's lock on the database ``folder``, in words; None when it is free.

    ``"process 1234: python serve.py"`` on Linux, ``"another process"`` where it cannot tell.
    The probe is a non-blocking ``flock`` on a descriptor of our own, released at once; it never
    creates the lock file.
    """
    if sys.platform == "win32":
        return None  # milvus-lite uses msvcrt.locking there: the connection error tells
    import fcntl

    lock = Path(folder) / _LOCK_FILE
    try:
        fd = os.open(lock, os.O_RDWR)
    except OSError:
        return None  # no database yet, or not ours to probe
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        pid = _holder_pid(lock)
        return "another process" if pid is None else _describe(pid)
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def _in_use(uri: str, folder: str, holder: str) -> ConnectionError:
    return ConnectionError(
        f"the milvus-lite database {uri!r} is in use by another process ({holder}): milvus-lite opens a "
        f"database in one process at a time (an exclusive lock on {Path(folder) / _LOCK_FILE}). Close it there "
        "(MilvusStore.close(), or end that process) and retry, or share it between processes through a server: "
        f"`milvus-lite server --data-dir {folder} --port 19530` and uri='http://127.0.0.1:19530'"
    )


def _release(folder: str) -> None:
    with _guard:
        left = _users.get(folder, 0) - 1
        if left > 0:
            _users[folder] = left
            return
        _users.pop(folder, None)
        if folder not in _started:
            return  # someone else's server (a MilvusClient opened outside m3-rag): leave it running
        _started.discard(folder)
        _server_manager().release_server(folder)  # stops the server, closes the database, unlocks


@cache
def _client_class(base: type) -> type:
    class LiteClient(base):
        """A ``MilvusClient`` on a milvus-lite database whose ``close()`` releases the database
        when no other store of this process uses it (idempotent)."""

        _m3_folder: str | None = None

        def close(self) -> None:
            super().close()
            folder, self._m3_folder = self._m3_folder, None
            if folder is not None:
                _release(folder)

    return LiteClient


def connect_lite(pm: Any, uri: str, **kwargs: Any) -> Any:
    """A ``pm.MilvusClient`` for the milvus-lite database ``uri`` (a ``.db`` path).

    Raises :class:`ConnectionError` naming the holder when another process has the database
    open; other failures propagate as pymilvus raises them. ``close()`` on the client releases
    the database once the last client made here for it is closed.
    """
    folder = os.path.abspath(uri)  # the key milvus-lite's server manager uses
    with _guard:
        running = _served_here(folder)
        if not running:
            holder = lock_holder(folder)
            if holder is not None:
                raise _in_use(uri, folder, holder)
        try:
            client = _client_class(pm.MilvusClient)(uri=uri, **kwargs)
        except pm.MilvusException as exc:
            holder = None if running else lock_holder(folder)  # taken between the probe and the open
            if holder is not None:
                raise _in_use(uri, folder, holder) from exc
            raise
        if not running:
            _started.add(folder)
        _users[folder] = _users.get(folder, 0) + 1
        client._m3_folder = folder
    return client
