"""``m3-rag index``: find files, chunk them, and commit them to an index batch by batch.

- Files: ``.txt`` and ``.md`` files given, or found in folders (recursively). Symbolic links:
  a link to a file inside the folder being indexed is indexed under the link's own path; links
  that lead outside that folder, links to folders (never followed, so no cycles) and broken
  links are skipped. Empty files, files that are not UTF-8 text, files that cannot be read and
  names that are not valid UTF-8 are skipped too. Every skip is counted by reason in the summary
  (and named with ``-v``).
- Changes: a file whose chunks are all stored with its current content hash is left alone; a
  changed file's chunks are replaced; chunks of files that no longer exist are removed.
- Commits: chunks are encoded and committed in batches (``--batch-chunks``), each batch in one
  transaction, so an interrupted run keeps every committed batch and the next run goes on where
  it stopped; two runs into one index at the same time both land.
"""

from __future__ import annotations

import hashlib
import os
import sys
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .chunking import chunk_text
from .progress import tqdm

__all__ = ["SUFFIXES", "FileScan", "collect_files", "index_files"]

SUFFIXES = (".txt", ".md")


class CliError(Exception):
    """A user error: printed as one line, exit status 1."""


@dataclass
class FileScan:
    """The files to index and the ones skipped, by reason."""

    files: list[Path] = field(default_factory=list)
    skipped: Counter[str] = field(default_factory=Counter)
    notes: list[str] = field(default_factory=list)

    def skip(self, path: str | Path, reason: str) -> None:
        self.skipped[reason] += 1
        self.notes.append(f"skipped {os.fsdecode(path)!r}: {reason}")


def _valid_name(path: Path) -> bool:
    try:
        os.fsencode(path).decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _walk(root: Path, scan: FileScan) -> Iterator[Path]:
    """Files under ``root`` (links to folders not followed), sorted, with skips recorded."""
    real_root = root.resolve()
    for folder, dirs, names in os.walk(root, followlinks=False):
        base = Path(folder)
        for d in list(dirs):
            if (base / d).is_symlink():
                scan.skip(base / d, "link to a folder (not followed)")
                dirs.remove(d)
        dirs.sort()
        for name in sorted(names):
            path = base / name
            if path.suffix.lower() not in SUFFIXES:
                continue
            if path.is_symlink():
                try:
                    target = path.resolve(strict=True)
                except (OSError, RuntimeError):
                    scan.skip(path, "broken link")
                    continue
                if not target.is_relative_to(real_root):
                    scan.skip(path, "link to a file outside the folder")
                    continue
            yield path


def collect_files(paths: Sequence[str]) -> FileScan:
    """The files named by ``paths`` (files and folders); see the module docs for what is skipped."""
    scan = FileScan()
    found: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            found.extend(_walk(path, scan))
        elif path.is_file():
            if path.suffix.lower() not in SUFFIXES:
                raise CliError(f"{raw}: only {' and '.join(SUFFIXES)} files are indexed")
            found.append(path)
        elif path.is_symlink():
            scan.skip(path, "broken link")
        else:
            raise CliError(f"{raw}: no such file or folder")
    for path in dict.fromkeys(Path(os.path.abspath(p)) for p in found):
        if not _valid_name(path):
            scan.skip(path, "name is not valid UTF-8")
        else:
            scan.files.append(path)
    return scan


def _read(path: Path, scan: FileScan) -> str | None:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        scan.skip(path, f"cannot be read ({exc.strerror or exc})")
        return None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        scan.skip(path, f"not UTF-8 text (byte {exc.start})")
        return None
    if not text.strip():
        scan.skip(path, "empty")
        return None
    return text


def _stored_sources(index: Any) -> dict[str, list[str]]:
    """Chunk ids by source file: ids are ``<path>#<n>``."""
    out: dict[str, list[str]] = {}
    for doc_id in index.ids:
        source, sep, number = doc_id.rpartition("#")
        if sep and number.isdigit():
            out.setdefault(source, []).append(doc_id)
    return out


def index_files(index: Any, scan: FileScan, *, chunk_tokens: int, overlap: int, batch_chunks: int, quiet: bool) -> str:
    """Chunk, encode and commit ``scan.files`` into ``index``; returns the summary line."""
    stored = _stored_sources(index)
    tokenizer = index.embedder.tokenizer
    work: list[tuple[str, list[str], list[dict[str, Any]], list[str]]] = []  # (source, texts, metas, stale ids)
    unchanged = 0
    for path in tqdm(scan.files, desc="Reading", unit="file", disable=quiet or len(scan.files) < 20, file=sys.stderr):
        text = _read(path, scan)
        if text is None:
            continue
        source = str(path)
        digest = hashlib.sha256(text.encode("utf-8")).hexdigest()
        old = stored.get(source, [])
        if old and all(r.metadata.get("sha256") == digest for r in index.get(old)):
            unchanged += 1
            continue
        chunks = chunk_text(text, tokenizer, max_tokens=chunk_tokens, overlap=min(overlap, chunk_tokens - 3))
        metas = [
            {"source": source, "chunk": n, "start": c.start, "end": c.end, "sha256": digest}
            for n, c in enumerate(chunks)
        ]
        work.append((source, [c.text for c in chunks], metas, old))
    seen = {str(p) for p in scan.files}
    gone = [ids for source, ids in stored.items() if source not in seen and not os.path.isfile(source)]
    removed_files = len(gone)
    removed = index.delete([i for ids in gone for i in ids]) if gone else 0
    total = sum(len(texts) for _, texts, _, _ in work)
    added = 0
    with tqdm(total=total, desc="Indexing", unit="chunk", disable=quiet or total == 0, file=sys.stderr) as bar:
        for batch in _batches(work, batch_chunks):
            texts = [t for _, chunk_texts, _, _ in batch for t in chunk_texts]
            ids = [f"{source}#{n}" for source, chunk_texts, _, _ in batch for n in range(len(chunk_texts))]
            metas = [m for _, _, chunk_metas, _ in batch for m in chunk_metas]
            stale = sorted({i for _, _, _, old in batch for i in old} - set(ids))
            with _transaction(index):
                if texts:
                    index.add(texts, ids=ids, metadatas=metas, show_progress=False)
                removed += index.delete(stale) if stale else 0
            added += len(texts)
            bar.update(len(texts))
    skipped = ", ".join(f"{n} {reason}" for reason, n in sorted(scan.skipped.items())) or "none"
    return (
        f"indexed {len(work)} file(s) into {added} chunk(s), {unchanged} unchanged, {removed} old chunk(s) removed "
        f"({removed_files} file(s) no longer exist); skipped: {skipped}"
    )


def _batches(work: list[Any], size: int) -> Iterator[list[Any]]:
    batch: list[Any] = []
    count = 0
    for item in work:
        batch.append(item)
        count += max(1, len(item[1]))
        if count >= size:
            yield batch
            batch, count = [], 0
    if batch:
        yield batch


class _NoTransaction:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def _transaction(index: Any) -> Any:
    return index.transaction() if hasattr(index, "transaction") else _NoTransaction()
