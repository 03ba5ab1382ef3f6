"""One commit of the index benchmark, measured in a fresh process (started by ``index_search.py``).

Usage: ``_commit_worker.py FOLDER MODE ADD DIM``, MODE ``load`` or ``open``, ADD documents to add (0: none).

- ``load``: ``M3Index.load(FOLDER)`` -> ``add_encoded(ADD documents)`` -> ``save()``;
- ``open``: ``M3Index.open(FOLDER)`` (persistent) -> ``add_encoded(ADD documents)`` (it commits);
  with ADD 0, ``save()`` (a commit of nothing).

The synthetic encodings are made after the load and before the measured part. Measured around
the commit alone: ``/proc/self/io`` (``wchar``, ``write_bytes``, ``cancelled_write_bytes``), the
folder's files (each inode once), the peak RSS (``VmHWM`` reset just before the commit), and the
time. (``ru_maxrss`` is recorded too but is no use here: Linux folds the RSS the parent had when
it started this process into it.) Prints one JSON line.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from _index_data import (
    SyntheticEmbedder,
    folder_bytes,
    make_documents,
    max_rss_mb,
    peak_rss_since_reset_mb,
    proc_io,
    reset_peak_rss,
    rss_mb,
)

from m3_rag import M3Index


def main() -> None:
    folder, mode, add, dim = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    embedder = SyntheticEmbedder(dim)
    rss_start = rss_mb()
    t0 = time.perf_counter()
    index = M3Index.load(folder, embedder) if mode == "load" else M3Index.open(folder, embedder, create=False)
    load_s = time.perf_counter() - t0
    before_docs = len(index)
    rss_loaded, load_peak = rss_mb(), peak_rss_since_reset_mb()  # VmHWM: this process's peak so far (the load)
    docs = make_documents(add, dim) if add else None
    texts = [f"new document {i}" for i in range(add)]
    ids = [f"new-{i}" for i in range(add)]
    rss_ready = rss_mb()
    peak_reset = reset_peak_rss()

    io0, size0 = proc_io(), folder_bytes(folder)
    t0 = time.perf_counter()
    add_s = 0.0
    if docs is not None:
        index.add_encoded(texts, docs, ids=ids)
        add_s = time.perf_counter() - t0
    if mode == "load" or docs is None:
        index.save()
    commit_s = time.perf_counter() - t0
    io1, size1 = proc_io(), folder_bytes(folder)
    peak, lifetime_peak = (peak_rss_since_reset_mb() if peak_reset else max_rss_mb()), max_rss_mb()

    after_docs = len(index)
    index.close()
    check = M3Index.load(folder, embedder)  # what another process now sees
    seen = len(check)
    check.close()
    encodings_mb = 0.0
    if docs is not None:
        encodings_mb = (docs.dense.nbytes + sum(c.nbytes for c in docs.colbert)) / 2**20  # type: ignore[union-attr]
    print(json.dumps({
        "mode": mode,
        "added": add,
        "load_s": round(load_s, 3),
        "commit_s": round(commit_s, 3),
        "add_encoded_s": round(add_s, 3),
        "documents_before": before_docs,
        "documents_after": after_docs,
        "documents_seen_by_a_new_load": seen,
        "wchar": io1["wchar"] - io0["wchar"],
        "write_bytes": io1["write_bytes"] - io0["write_bytes"],
        "cancelled_write_bytes": io1["cancelled_write_bytes"] - io0["cancelled_write_bytes"],
        "read_bytes": io1["read_bytes"] - io0["read_bytes"],
        "folder_bytes_change": size1["bytes"] - size0["bytes"],
        "folder_allocated_bytes_change": size1["allocated_bytes"] - size0["allocated_bytes"],
        "folder_files_change": size1["files"] - size0["files"],
        "folder_bytes_before": size0["bytes"],
        "rss_start_mb": round(rss_start, 1),
        "rss_loaded_mb": round(rss_loaded, 1),
        "rss_ready_mb": round(rss_ready, 1),
        "input_encodings_mb": round(encodings_mb, 1),
        "peak_rss_mb": round(peak, 1),
        "peak_source": "VmHWM reset before the commit" if peak_reset else "ru_maxrss (lifetime)",
        "load_peak_rss_mb": round(load_peak, 1),
        "ru_maxrss_mb": round(lifetime_peak, 1),
        "peak_over_loaded_mb": round(peak - rss_loaded, 1),
        "peak_over_ready_mb": round(peak - rss_ready, 1),
    }))  # fmt: skip


if __name__ == "__main__":
    main()
