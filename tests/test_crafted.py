"""Crafted index folders: every array and catalog field mutated as an attacker would, checksums recomputed.

Each case is loaded and searched in a worker process: it must end in IndexFormatError or a search
that works (finite scores). A signal (SIGSEGV, SIGABRT, SIGBUS), a hang (a link to a FIFO outside
the folder would block the first read) or any other exception fails the test.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from m3_rag import M3Embedder, M3Index

TINY = Path(__file__).parent / "data" / "tiny-m3"

WORKER = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    from m3_rag import IndexFormatError, M3Embedder, M3Index
    embedder = M3Embedder.from_pretrained(sys.argv[1], device="cpu")
    for folder in sys.argv[2:]:
        print("CASE", folder, flush=True)
        try:
            index = M3Index.load(folder, embedder)
            for hits in index.search_batch(["capital of Germany", "北京"], k=5, candidates=50):
                assert all(np.isfinite(h.score) for h in hits)
            index.search("capital", k=3, filter={"n": {"$gte": 1}})
            [r.metadata for r in index]
            index.add(["one more"], ids=["extra"])
            index.save()
            outcome = "ok"
        except IndexFormatError as exc:
            outcome = "refused " + str(exc).splitlines()[0][:200]
        except Exception as exc:
            outcome = f"OTHER {type(exc).__name__}: {exc}"
        print("RESULT", outcome, flush=True)
    """
)


@pytest.fixture(scope="module")
def original(tmp_path_factory: pytest.TempPathFactory) -> Path:
    index = M3Index(M3Embedder.shared(TINY, device="cpu"), colbert_dtype="int8")
    texts = ["Berlin is the capital of Germany.", "Paris is in France.", "北京是中国的首都。", "Hybrid search."]
    index.add(texts, ids=[f"d{i}" for i in range(4)], metadatas=[{"n": i, "tag": ["a"]} for i in range(4)])
    return index.save(tmp_path_factory.mktemp("crafted") / "idx")


def segment_of(folder: Path) -> Path:
    return next(p for p in (folder / "segments").iterdir() if not p.name.startswith("."))


def rewrite(folder: Path, name: str, data: bytes) -> None:
    """Replace a segment file and recompute its entry in the catalog, as an attacker can."""
    segment = segment_of(folder)
    (segment / name).write_bytes(data)
    with sqlite3.connect(folder / "catalog.sqlite") as db:
        (files,) = db.execute("SELECT files FROM segments WHERE name = ?", (segment.name,)).fetchone()
        entries = json.loads(files)
        entries[name] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
        db.execute("UPDATE segments SET files = ? WHERE name = ?", (json.dumps(entries), segment.name))


def npy(array: np.ndarray) -> bytes:
    import io

    out = io.BytesIO()
    np.save(out, array, allow_pickle=True)
    return out.getvalue()


def huge_header(dtype: np.dtype, shape: tuple[int, ...]) -> bytes:
    """A valid .npy header claiming ``shape`` (10**12 rows), followed by 64 bytes of data."""
    import io

    out = io.BytesIO()
    np.lib.format.write_array_header_1_0(out, {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False,
                                               "shape": shape})  # fmt: skip
    return out.getvalue() + b"\0" * 64


def array_cases(folder: Path) -> dict[str, Callable[[Path], None]]:
    segment = segment_of(folder)
    arrays = {p.name: np.load(p) for p in segment.glob("*.npy")}
    cases: dict[str, Callable[[Path], None]] = {}

    def put(name: str, value: np.ndarray | bytes) -> Callable[[Path], None]:
        return lambda f: rewrite(f, name, value if isinstance(value, bytes) else npy(value))

    for name, a in arrays.items():
        base = name[:-4]
        cases[f"{base}-float64"] = put(name, a.astype(np.float64))
        cases[f"{base}-extra-row"] = put(name, np.concatenate([a, a[:1]]))
        cases[f"{base}-2d"] = put(name, a.reshape(len(a), -1)[:, :1] if a.ndim == 1 else a.reshape(-1))
        cases[f"{base}-fortran"] = put(name, np.asfortranarray(a.reshape(len(a), -1)) if a.ndim == 2 else a.T)
        cases[f"{base}-objects"] = put(name, np.array([object()] * 3, dtype=object))
        cases[f"{base}-huge-shape"] = put(name, huge_header(a.dtype, (10**12, *a.shape[1:])))
        cases[f"{base}-garbage"] = put(name, b"\x93NUMPY\x01\x00\x10\x00{'descr': eval('1')}" + b"\0" * 40)
        if a.dtype.kind == "f":
            for label, bad in (("nan", np.nan), ("inf", np.inf), ("negative", -1.0)):
                spoiled = a.copy()
                spoiled.reshape(-1)[len(spoiled.reshape(-1)) // 2] = bad
                cases[f"{base}-{label}"] = put(name, spoiled)
        if base.endswith("offsets"):
            cases[f"{base}-decreasing"] = put(name, a[::-1].copy())
            cases[f"{base}-past-the-end"] = put(name, a + np.int64(1 << 40))
            cases[f"{base}-negative"] = put(name, a - 5)
            spoiled = a.copy()
            spoiled[0] = 1
            cases[f"{base}-not-from-zero"] = put(name, spoiled)
        if base == "sparse_ids":
            for label, value in (("vocab", 10**6), ("minus", -1), ("int-max", 2**31 - 1)):
                spoiled = a.copy()
                spoiled[0] = value
                cases[f"{base}-{label}"] = put(name, spoiled)
            cases[f"{base}-unsorted"] = put(name, a[::-1].copy())
        if base == "colbert":  # int8: any value is valid, its scale decides
            cases[f"{base}-int16"] = put(name, a.astype(np.int16))
    return cases


def sql_cases() -> dict[str, Callable[[Path], None]]:
    def run(*statements: str) -> Callable[[Path], None]:
        def edit(folder: Path) -> None:
            with sqlite3.connect(folder / "catalog.sqlite") as db:
                for statement in statements:
                    db.execute(statement)

        return edit

    deep = "[" * 200_000 + "]" * 200_000
    nested = '{"a":' * 500 + "1" + "}" * 500
    return {
        "meta-generation-huge": run("UPDATE meta SET value = '1e400' WHERE key = 'generation'"),
        "meta-generation-minus": run("UPDATE meta SET value = '-1' WHERE key = 'generation'"),
        "meta-dim": run("UPDATE meta SET value = '33' WHERE key = 'dim'"),
        "meta-vocab": run("UPDATE meta SET value = '99' WHERE key = 'vocab_size'"),
        "meta-colbert-dtype": run("UPDATE meta SET value = 'int4' WHERE key = 'colbert_dtype'"),
        "meta-colbert-dtype-f16": run("UPDATE meta SET value = 'float16' WHERE key = 'colbert_dtype'"),
        "meta-missing-format": run("DELETE FROM meta WHERE key = 'format'"),
        "meta-blob": run("UPDATE meta SET value = x'00ff' WHERE key = 'model'"),
        "segment-name-dots": run("UPDATE segments SET name = '../../etc'", "UPDATE docs SET segment = '../../etc'"),
        "segment-name-absolute": run("UPDATE segments SET name = '/etc'", "UPDATE docs SET segment = '/etc'"),
        "segment-rows-zero": run("UPDATE segments SET rows = 0"),
        "segment-rows-huge": run("UPDATE segments SET rows = 1000000000000"),
        "segment-rows-text": run("UPDATE segments SET rows = 'many'"),
        "segment-files-not-json": run("UPDATE segments SET files = '{not json'"),
        "segment-files-deep": run(f"UPDATE segments SET files = '{deep}'"),
        "segment-files-int-entry": run("UPDATE segments SET files = json_set(files, '$.\"dense.npy\"', 7)"),
        "segment-files-huge-bytes": run("UPDATE segments SET files = json_set(files, '$.\"dense.npy\".bytes', 1e400)"),
        "segment-files-system-file": run(
            "UPDATE segments SET files = json_set(files, '$.\"/etc/passwd\"', json('{\"bytes\": 1}'))"
        ),
        "segment-files-missing-entry": run("UPDATE segments SET files = json_remove(files, '$.\"dense.npy\"')"),
        "doc-row-out-of-range": run("UPDATE docs SET row = 99 WHERE id = 'd1'"),
        "doc-row-negative": run("UPDATE docs SET row = -1 WHERE id = 'd1'"),
        "doc-row-text": run("UPDATE docs SET row = 'x' WHERE id = 'd1'"),
        "doc-two-on-one-row": run("UPDATE docs SET row = 0"),
        "doc-unknown-segment": run("UPDATE docs SET segment = 's000000000000000000000000' WHERE id = 'd1'"),
        "doc-metadata-deep": run(f"UPDATE docs SET metadata = '{{\"a\": {deep}}}' WHERE id = 'd1'"),
        "doc-metadata-500-deep": run(f"UPDATE docs SET metadata = '{nested}' WHERE id = 'd1'"),
        "doc-metadata-array": run("UPDATE docs SET metadata = '[1, 2]' WHERE id = 'd1'"),
        "doc-metadata-nan": run("UPDATE docs SET metadata = '{\"n\": NaN}' WHERE id = 'd1'"),
        "doc-metadata-1e400": run("UPDATE docs SET metadata = '{\"n\": 1e400}' WHERE id = 'd1'"),
        "doc-metadata-surrogate": run("UPDATE docs SET metadata = '{\"n\": \"\\ud800\"}' WHERE id = 'd1'"),
        "doc-text-blob": run("UPDATE docs SET text = x'ff00ff' WHERE id = 'd1'"),
        "doc-text-int": run("UPDATE docs SET text = 7 WHERE id = 'd1'"),
        "doc-id-blob": run("UPDATE docs SET id = x'ff' WHERE id = 'd1'"),
        "trigger": run("CREATE TRIGGER evil AFTER INSERT ON docs BEGIN DELETE FROM docs; END"),
        "view": run("CREATE VIEW v AS SELECT 1"),
        "deletion-blob": run("INSERT INTO deletions (id, gen) VALUES (x'ff', 99)"),
    }


def link_cases(outside: Path) -> dict[str, Callable[[Path], None]]:
    fifo = outside / "fifo"
    if not fifo.exists():
        os.mkfifo(fifo)

    def link_file(name: str) -> Callable[[Path], None]:
        def edit(folder: Path) -> None:
            target = segment_of(folder) / name
            target.unlink()
            target.symlink_to(fifo)

        return edit

    def link_segment(folder: Path) -> None:
        segment = segment_of(folder)
        copy = outside / f"copy-{folder.name}"
        shutil.copytree(segment, copy)
        shutil.rmtree(segment)
        segment.symlink_to(copy, target_is_directory=True)

    def link_segments(folder: Path) -> None:
        copy = outside / f"segments-{folder.name}"
        shutil.copytree(folder / "segments", copy)
        shutil.rmtree(folder / "segments")
        (folder / "segments").symlink_to(copy, target_is_directory=True)

    def link_catalog(folder: Path) -> None:
        copy = outside / f"catalog-{folder.name}.sqlite"
        shutil.copy(folder / "catalog.sqlite", copy)
        (folder / "catalog.sqlite").unlink()
        (folder / "catalog.sqlite").symlink_to(copy)

    return {
        "link-dense-to-fifo": link_file("dense.npy"),
        "link-colbert-to-fifo": link_file("colbert.npy"),
        "link-lock-to-fifo": link_file(".lock"),
        "link-segment-out": link_segment,
        "link-segments-out": link_segments,
        "link-catalog-out": link_catalog,
    }


def run_cases(cases: dict[str, Path]) -> dict[str, str]:
    """Outcome per case, from worker processes (a worker that dies is restarted after its case)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    outcomes: dict[str, str] = {}
    todo = list(cases)
    by_path = {str(p): name for name, p in cases.items()}
    while todo:
        worker = subprocess.run(
            [sys.executable, "-c", WORKER, str(TINY), *(str(cases[n]) for n in todo)],
            capture_output=True, text=True, env=env, timeout=900,
        )  # fmt: skip
        current = None
        for line in worker.stdout.splitlines():
            if line.startswith("CASE "):
                current = by_path[line[5:]]
            elif line.startswith("RESULT ") and current is not None:
                outcomes[current] = line[7:]
                current = None
        if current is not None:  # the worker died inside this case
            outcomes[current] = f"CRASH exit {worker.returncode}: {worker.stderr[-300:]}"
        todo = [n for n in todo if n not in outcomes]
        if worker.returncode != 0 and current is None and todo:
            raise AssertionError(f"worker failed before a case: {worker.stderr[-2000:]}")
    return outcomes


@pytest.mark.slow
def test_crafted_folders_are_refused_or_work(original: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    edits = {**array_cases(original), **sql_cases(), **link_cases(outside)}
    folders = {}
    for name, edit in edits.items():
        folder = tmp_path / name
        shutil.copytree(original, folder)
        edit(folder)
        folders[name] = folder
    outcomes = run_cases(folders)
    bad = {name: outcome for name, outcome in outcomes.items() if not outcome.startswith(("ok", "refused"))}
    assert not bad, bad
    assert len(outcomes) == len(edits) >= 90
    # what can never pass: paths leading out, wrong dtypes and shapes, out-of-range ids and offsets
    must_refuse = [n for n in outcomes if n.startswith(("link-", "segment-name", "meta-", "trigger", "view"))]
    must_refuse += [n for n in outcomes if n.endswith(("-float64", "-huge-shape", "-objects", "-vocab", "-decreasing"))]
    wrongly_loaded = [n for n in must_refuse if not outcomes[n].startswith("refused")]
    assert not wrongly_loaded, {n: outcomes[n] for n in wrongly_loaded}
    assert not any(".." in o or "/etc" in o for n, o in outcomes.items() if n.startswith("segment-files-system"))


def test_nan_in_float16_colbert_values_is_refused_at_search(tmp_path: Path) -> None:
    """ColBERT values are not read at load (tens of GB): a NaN there must still never make search return []."""
    from m3_rag import IndexFormatError

    embedder = M3Embedder.shared(TINY, device="cpu")
    index = M3Index(embedder)  # float16
    index.add(["Berlin is the capital of Germany.", "Paris is in France."], ids=["de", "fr"])
    folder = index.save(tmp_path / "idx")
    index.close()
    values = np.load(segment_of(folder) / "colbert.npy")
    values[:] = np.nan
    rewrite(folder, "colbert.npy", npy(values))
    loaded = M3Index.load(folder, embedder)
    with pytest.raises(IndexFormatError, match="non-finite scores"):
        loaded.search("capital of Germany", k=2)


def test_a_segment_removed_by_hand_is_a_clear_error_at_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A segment the catalog names but whose folder is gone is damage, not a race: refused after a few reads."""
    from m3_rag import IndexFormatError
    from m3_rag.index import folder as index_folder

    embedder = M3Embedder.shared(TINY, device="cpu")
    index = M3Index(embedder)
    index.add(["Berlin is the capital of Germany."], ids=["de"])
    folder = index.save(tmp_path / "idx")
    index.close()
    segment = segment_of(folder)
    shutil.rmtree(segment)
    waits: list[float] = []
    monkeypatch.setattr(index_folder.time, "sleep", waits.append)
    with pytest.raises(IndexFormatError, match=f"names segment '{segment.name}', but that folder is missing"):
        M3Index.load(folder, embedder)
    assert len(waits) == index_folder._SAME_MISSING and sum(waits) < 0.1  # not 50 tries
