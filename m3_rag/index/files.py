"""Files of an index folder, read as if an attacker wrote them: checked paths, checked ``.npy`` headers,
checksums, fsynced writes, and the ``flock`` locks that tell which segment files are still in use.

- Paths: every file is opened by a fixed name inside a folder that is not a symbolic link, with
  ``O_NOFOLLOW``; nothing outside the index folder is ever opened.
- ``.npy``: the header is parsed and checked (dtype, order, shape, and that the file holds exactly
  that many bytes) before any data is read or mapped, so a header claiming 10**12 rows is a clear
  error, not a ``MemoryError``; never ``allow_pickle``.
- Locks: a segment's ``.lock`` file is held exclusively by the process writing the segment until
  its commit, and shared by every process that has the segment open; a dropped segment's files
  are removed only by a process that gets the lock exclusively (no reader can still need them).
  ``flock`` locks die with their process, so a killed process never leaves a lock behind.
"""

from __future__ import annotations

import ast
import contextlib
import hashlib
import mmap
import mmap as _mmap_module  # the name mmap is also a parameter of load_npy
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np

from ..errors import IndexFormatError

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no flock; files of dropped segments are removed when possible
    fcntl = None  # type: ignore[assignment]

__all__ = [
    "NpyWriter",
    "SegmentLock",
    "damaged",
    "file_entry",
    "folder_lock",
    "fsync_dir",
    "load_npy",
    "prefetch_rows",
    "try_lock_exclusive",
]

_MAX_HEADER = 4096
_HASH_LIMIT = 1 << 31  # files above 2 GiB (ColBERT) are checked by size only: hashing them would cost seconds


def damaged(path: Path, problem: str) -> IndexFormatError:
    """The error for a damaged file: names the file and what is wrong, and what to do."""
    return IndexFormatError(f"{path} is damaged: {problem}. Restore the index from a backup or re-index")


def fsync_dir(path: Path) -> None:
    """Make a rename or a new file in ``path`` durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _open_regular(path: Path) -> int:
    """An fd of the regular file ``path`` (not a link), or IndexFormatError."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise damaged(path, f"it cannot be opened as a regular file ({exc.strerror})") from exc
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise damaged(path, "it is not a regular file")
    return fd


def _sha256_fd(fd: int, size: int) -> str:
    digest = hashlib.sha256()
    position = 0
    while position < size:
        block = os.pread(fd, min(1 << 22, size - position), position)
        if not block:
            break
        digest.update(block)
        position += len(block)
    return digest.hexdigest()


def file_entry(path: Path, *, checksum: bool = True) -> dict[str, Any]:
    """``{"bytes": size, "sha256": hex}`` of a file just written (size only without ``checksum`` or above 2 GiB)."""
    fd = _open_regular(path)
    try:
        size = os.fstat(fd).st_size
        entry: dict[str, Any] = {"bytes": size}
        if checksum and size <= _HASH_LIMIT:
            entry["sha256"] = _sha256_fd(fd, size)
        return entry
    finally:
        os.close(fd)


def _read_header(fd: int, path: Path) -> tuple[np.dtype, tuple[int, ...], int]:
    """(dtype, shape, data offset) of a C-order .npy file, checked."""
    head = os.pread(fd, _MAX_HEADER, 0)
    if len(head) < 10 or head[:6] != b"\x93NUMPY":
        raise damaged(path, "it is not a .npy file")
    major = head[6]
    if major == 1:
        length, start = int.from_bytes(head[8:10], "little"), 10
    elif major in (2, 3):
        length, start = int.from_bytes(head[8:12], "little"), 12
    else:
        raise damaged(path, f"unknown .npy version {major}")
    if start + length > len(head):
        raise damaged(path, "its .npy header is too long")
    try:
        header = ast.literal_eval(head[start : start + length].decode("latin1"))
    except (ValueError, SyntaxError, MemoryError, RecursionError) as exc:
        raise damaged(path, "its .npy header cannot be parsed") from exc
    if not isinstance(header, dict) or set(header) != {"descr", "fortran_order", "shape"}:
        raise damaged(path, "its .npy header is not a plain array header")
    descr, shape = header["descr"], header["shape"]
    if not isinstance(descr, str) or header["fortran_order"] is not False:
        raise damaged(path, "only C-order arrays of a plain dtype are allowed")
    if not isinstance(shape, tuple) or not all(
        isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
    ):
        raise damaged(path, f"its shape {shape!r} is not a tuple of sizes")
    try:
        dtype = np.dtype(descr)
    except TypeError as exc:
        raise damaged(path, f"its dtype {descr!r} is not understood") from exc
    return dtype, shape, start + length


def load_npy(
    folder: Path,
    name: str,
    files: dict[str, Any],
    dtype: Any,
    shape: tuple[int, ...],
    *,
    mmap: bool = False,
) -> np.ndarray:
    """Read ``folder/name`` as exactly ``dtype`` and ``shape``, checked against the catalog's ``files`` entry.

    With ``mmap`` the array is a read-only memory map (its pages are read on use).
    """
    path = folder / name
    entry = files.get(name)
    if not isinstance(entry, dict) or not isinstance(entry.get("bytes"), int):
        raise damaged(folder, f"the catalog has no valid entry for {name}")
    try:
        fd = _open_regular(path)
    except FileNotFoundError as exc:
        raise damaged(folder, f"{name} is missing") from exc
    try:
        size = os.fstat(fd).st_size
        if size != entry["bytes"]:
            raise damaged(path, f"it has {size} bytes, the catalog says {entry['bytes']}")
        found, found_shape, offset = _read_header(fd, path)
        want = np.dtype(dtype).newbyteorder("<") if np.dtype(dtype).itemsize > 1 else np.dtype(dtype)
        if found != want:
            raise damaged(path, f"it holds {found} values, expected {want}")
        if found_shape != shape:
            raise damaged(path, f"it has shape {found_shape}, expected {shape}")
        count = int(np.prod(shape, dtype=np.int64))
        if size - offset != count * want.itemsize:
            raise damaged(path, f"it holds {size - offset} bytes of data, its shape needs {count * want.itemsize}")
        sha = entry.get("sha256")
        if sha is not None and _sha256_fd(fd, size) != sha:
            raise damaged(path, "it does not match its checksum")
        if mmap and count:
            mapped = _map(fd, size)
            if hasattr(mapped, "madvise") and hasattr(_mmap_module, "MADV_RANDOM"):
                # rows are read where candidates are: no read-ahead of megabytes around each page fault
                mapped.madvise(_mmap_module.MADV_RANDOM)
            return np.frombuffer(mapped, dtype=want, count=count, offset=offset).reshape(shape)
        data = np.empty(count, dtype=want)
        view = memoryview(data).cast("B")  # type: ignore[arg-type]
        done = 0
        while done < len(view):
            got = os.preadv(fd, [view[done:]], offset + done)
            if got <= 0:
                raise damaged(path, "it ended early")
            done += got
        return data.reshape(shape)
    finally:
        os.close(fd)


def _map(fd: int, size: int) -> mmap.mmap:
    return _mmap_module.mmap(fd, size, access=_mmap_module.ACCESS_READ)


def _mapping_of(values: np.ndarray) -> mmap.mmap | None:
    """The ``mmap`` an array is a view of (numpy 2 puts a ``memoryview`` between them), or None."""
    base: object = values
    for _ in range(32):
        if isinstance(base, _mmap_module.mmap):
            return base
        if isinstance(base, memoryview):
            base = base.obj
        elif isinstance(base, np.ndarray):
            base = base.base
        else:
            return None
    return None


def prefetch_rows(values: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> None:
    """Ask the kernel to start reading rows ``starts[i] : starts[i] + lengths[i]`` of a memory-mapped
    array at once (``madvise(WILLNEED)``), so a cold search waits for parallel reads instead of one
    page fault after another. A no-op for arrays in memory."""
    mapped = _mapping_of(values)
    if mapped is None or not hasattr(_mmap_module, "MADV_WILLNEED"):
        return
    row_bytes = values.itemsize * int(np.prod(values.shape[1:], dtype=np.int64))
    start_of_data = values.__array_interface__["data"][0] - np.frombuffer(mapped, np.uint8).ctypes.data
    page = _mmap_module.PAGESIZE
    size = len(mapped)
    for start, length in zip((start_of_data + starts * row_bytes).tolist(), (lengths * row_bytes).tolist()):
        aligned = start - start % page
        _advise(mapped, _mmap_module.MADV_WILLNEED, aligned, min(size - aligned, length + start - aligned))


def _advise(mapped: mmap.mmap, option: int, start: int, length: int) -> None:
    mapped.madvise(option, start, length)


class NpyWriter:
    """Write a .npy file of a known dtype and shape block by block (constant memory), then fsync it."""

    def __init__(self, path: Path, dtype: Any, shape: tuple[int, ...]) -> None:
        self.path = path
        self.dtype = np.dtype(dtype)
        self.shape = shape
        self.count = int(np.prod(shape, dtype=np.int64))
        self.written = 0
        self._file = open(path, "xb")  # noqa: SIM115 - closed in close()
        header = {"descr": np.lib.format.dtype_to_descr(self.dtype), "fortran_order": False, "shape": shape}
        np.lib.format.write_array_header_2_0(self._file, header)

    def write(self, block: np.ndarray) -> None:
        data = np.ascontiguousarray(block, dtype=self.dtype)
        self.written += data.size
        if self.written > self.count:
            raise ValueError(f"{self.path}: more values written than its shape {self.shape} holds")
        self._file.write(memoryview(data).cast("B"))  # type: ignore[arg-type]

    def close(self) -> None:
        if self._file.closed:
            return
        try:
            if self.written != self.count:
                raise ValueError(
                    f"{self.path}: {self.written} values written, its shape {self.shape} needs {self.count}"
                )
            self._file.flush()
            os.fsync(self._file.fileno())
        finally:
            self._file.close()

    def __enter__(self) -> NpyWriter:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if kind is None:
            self.close()
        else:
            self._file.close()


class SegmentLock:
    """A ``flock`` on a segment's ``.lock`` file, held while this process uses (or writes) the segment."""

    def __init__(self, fd: int) -> None:
        self._fd: int | None = fd

    @classmethod
    def create_exclusive(cls, folder: Path) -> SegmentLock:
        """Create ``folder/.lock`` and hold it exclusively (a writer, until its commit)."""
        fd = os.open(folder / ".lock", os.O_RDWR | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o644)
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_EX)
        return cls(fd)

    @classmethod
    def shared(cls, folder: Path) -> SegmentLock | None:
        """Hold ``folder/.lock`` shared, or None when it cannot be had now (the segment is being
        written or removed: read the catalog again)."""
        return _try_flock(folder / ".lock", shared=True)

    def downgrade(self) -> None:
        """Exclusive -> shared (the writer keeps reading its committed segment)."""
        if fcntl is not None and self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_SH)

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the last fd releases the flock
            self._fd = None

    def __del__(self) -> None:
        self.release()


def try_lock_exclusive(folder: Path) -> SegmentLock | None:
    """Hold ``folder/.lock`` exclusively if nobody holds it (None otherwise, or when it is missing)."""
    return _try_flock(folder / ".lock", shared=False)


def _try_flock(path: Path, *, shared: bool) -> SegmentLock | None:
    """An flock on an existing lock file (not a link) without waiting, or None."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0))
    except OSError:
        return None
    if fcntl is not None:
        try:
            fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            return None
    return SegmentLock(fd)


@contextlib.contextmanager
def folder_lock(path: Path, *, wait: bool = True) -> Iterator[bool]:
    """Hold the lock file ``path`` (made when missing) exclusively while the block runs; yields False
    without waiting when ``wait`` is off and another process holds it (the upgrade and compaction locks)."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0), 0o644)
    try:
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
            except OSError:
                yield False
                return
        yield True
    finally:
        os.close(fd)
