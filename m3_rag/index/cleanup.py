"""Clean-up of an index folder's ``segments/``: files of dropped segments that no process uses any
more, and what killed writers left behind (see :mod:`m3_rag.index.folder` for the lock protocol).

A folder is removed only while this process holds its ``.lock`` exclusively (so no reader has it
open and no writer is at work on it), and a segment-named folder only when the catalog -- read
again under that lock -- does not name it. Removal renames the folder to ``.trash-*`` first (atomic),
so a removal cut short leaves only trash, which the next clean-up deletes.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import time
import uuid
from collections.abc import Container
from pathlib import Path

from .catalog import SEGMENT_NAME, Catalog
from .files import try_lock_exclusive

__all__ = ["collect_garbage", "remove_folder"]

logger = logging.getLogger(__name__)

#: A ``.new-*`` folder (a writer killed between mkdir and taking its lock) is removed after this long.
STALE_NEW_SECONDS = 3600


def collect_garbage(segments: Path, catalog: Catalog, *, in_use: Container[str]) -> None:
    """Remove what nobody needs under ``segments`` (``in_use``: segments this process has open)."""
    for name in catalog.dropped_segments():
        if name in in_use:
            continue
        folder = segments / name
        if not folder.exists():
            catalog.forget_segment(name)
            continue
        lock = try_lock_exclusive(folder)
        if lock is not None:
            try:
                remove_folder(folder)
                catalog.forget_segment(name)
            finally:
                lock.release()
    try:
        entries = list(os.scandir(segments))
    except OSError:
        return
    known: set[str] | None = None
    for entry in entries:
        name = entry.name
        if name.startswith(".trash-"):
            remove_folder(Path(entry.path))
        elif name.startswith(".new-"):  # a writer killed between mkdir and its lock: old ones only
            with contextlib.suppress(OSError):
                if time.time() - entry.stat(follow_symlinks=False).st_mtime > STALE_NEW_SECONDS:
                    remove_folder(Path(entry.path))
        elif name.startswith(".tmp-") or SEGMENT_NAME.match(name):
            if SEGMENT_NAME.match(name):
                known = catalog.all_segment_names() if known is None else known
                if name in known:
                    continue
            lock = try_lock_exclusive(Path(entry.path))
            if lock is None:
                continue  # its writer is at work (or it is a segment being removed)
            try:  # we hold the lock: its writer is gone; check again that no commit names it
                if not (SEGMENT_NAME.match(name) and name in catalog.all_segment_names()):
                    remove_folder(Path(entry.path))
            finally:
                lock.release()
    catalog.prune_deletions()


def remove_folder(folder: Path) -> None:
    """Rename out of the way (atomic), then delete; a folder that cannot be removed yet stays."""
    trash = (
        folder
        if folder.name.startswith(".trash-")
        else folder.with_name(f".trash-{uuid.uuid4().hex[:8]}-{folder.name}")
    )
    try:
        if trash != folder:
            os.rename(folder, trash)
        shutil.rmtree(trash, ignore_errors=True)
    except OSError as exc:
        logger.debug("could not remove %s yet: %s", folder, exc)
