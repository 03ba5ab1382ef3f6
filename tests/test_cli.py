"""The ``m3-rag`` command through its real entry point (a subprocess)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent
CORPUS = ROOT / "examples" / "corpus"
TINY = ROOT / "tests" / "data" / "tiny-m3"


def m3_rag(*args: str, model: Path | None = TINY, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    script = Path(sys.executable).with_name("m3-rag")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "m3_rag"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    env.pop("M3_RAG_MODEL", None)
    if model is not None:
        env["M3_RAG_MODEL"] = str(model)
    return subprocess.run([*command, *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=300)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    work = tmp_path_factory.mktemp("cli")
    corpus = work / "corpus"
    shutil.copytree(CORPUS, corpus)
    index = work / "index"
    result = m3_rag("index", str(corpus), "--index", str(index), "--chunk-tokens", "48", "--overlap", "8", "-q")
    assert result.returncode == 0, result.stderr
    assert "into" in result.stdout
    return corpus, index


@pytest.mark.slow
def test_index_and_search_json(built) -> None:
    _corpus, index = built
    result = m3_rag("search", "Hauptstadt Deutschland Berlin", "--index", str(index), "-k", "3", "--json")
    assert result.returncode == 0, result.stderr
    hits = json.loads(result.stdout)
    assert [h["rank"] for h in hits] == [1, 2, 3]
    assert hits[0]["source"].endswith("berlin.de.txt")
    assert all(set(h["scores"]) == {"dense", "sparse", "colbert"} for h in hits)
    assert hits[0]["score"] == pytest.approx(sum(hits[0]["scores"].values()) / 3, rel=1e-5)
    assert hits[0]["score"] >= hits[1]["score"] >= hits[2]["score"]


@pytest.mark.slow
def test_chunks_never_exceed_the_limit(built) -> None:
    from m3_rag.tokenizer import M3Tokenizer

    _, index = built
    result = m3_rag("search", "BGE-M3 model", "--index", str(index), "-k", "50", "--json")
    hits = json.loads(result.stdout)
    tok = M3Tokenizer.from_folder(TINY)
    lengths = [len(ids) for ids in tok.encode([h["text"] for h in hits], max_length=1 << 20)]
    assert max(lengths) <= 48
    assert len({h["source"] for h in hits}) == len(list(CORPUS.iterdir()))  # every file is in
    assert any(h["chunk"] > 0 for h in hits)  # long files were split


@pytest.mark.slow
def test_text_output_and_weights(built) -> None:
    _, index = built
    result = m3_rag("search", "capital of France", "--index", str(index), "-k", "2", "--weights", "0,0,1")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("1. ")
    assert "dense" in result.stdout and "colbert" in result.stdout


@pytest.mark.slow
def test_rerank_model(built) -> None:
    _, index = built
    ce = ROOT / "tests" / "data" / "tiny-cross-encoder"
    args = ("search", "capital", "--index", str(index), "-k", "2", "--cross-encoder", str(ce))
    args = (*args, "--cross-encoder-top-n", "5")
    result = m3_rag(*args, "--json")
    assert result.returncode == 0, result.stderr
    hits = json.loads(result.stdout)
    assert len(hits) == 2 and hits[0]["score"] == hits[0]["scores"]["cross_encoder"]
    assert "hybrid" in hits[0]["scores"]


@pytest.mark.slow
def test_info(built) -> None:
    _, index = built
    info = json.loads(m3_rag("info", "--index", str(index), "--json", model=None).stdout)
    assert info["sources"] == len(list(CORPUS.iterdir()))
    assert info["chunks"] > info["sources"] and info["dense_dim"] == 32
    assert info["model"] == str(TINY.resolve())
    assert m3_rag("info", "--index", str(index), model=None).returncode == 0


@pytest.mark.slow
def test_reindex_replaces_a_changed_file_only(built, tmp_path) -> None:
    corpus, index = built
    copy = tmp_path / "index"
    shutil.copytree(index, copy)
    before = json.loads(m3_rag("info", "--index", str(copy), "--json").stdout)["chunks"]
    (corpus / "rag.txt").write_text("Zebras graze on the savanna.", encoding="utf-8")
    try:
        result = m3_rag("index", str(corpus), "--index", str(copy), "--chunk-tokens", "48", "-q")
    finally:
        shutil.copy(CORPUS / "rag.txt", corpus / "rag.txt")
    assert result.returncode == 0, result.stderr
    assert "indexed 1 file(s)" in result.stdout and f"{len(list(CORPUS.iterdir())) - 1} unchanged" in result.stdout
    hits = json.loads(m3_rag("search", "Zebras savanna", "--index", str(copy), "-k", "40", "--json").stdout)
    rag = [h for h in hits if h["source"].endswith("rag.txt")]
    assert [h["text"] for h in rag] == ["Zebras graze on the savanna."]
    after = json.loads(m3_rag("info", "--index", str(copy), "--json").stdout)["chunks"]
    assert after < before  # the old chunks of rag.txt are gone


@pytest.mark.slow
def test_model_from_the_index_when_none_given(built) -> None:
    _, index = built
    implicit = m3_rag("search", "Madrid", "--index", str(index), "-k", "3", "--json", model=None)
    explicit = m3_rag("search", "Madrid", "--index", str(index), "-k", "3", "--json", model=TINY)
    assert implicit.returncode == 0, implicit.stderr
    assert json.loads(implicit.stdout) == json.loads(explicit.stdout)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("index", "/no/such/path", "--index", "{tmp}/i"), "no such file or folder"),
        (("search", "q", "--index", "{tmp}"), "is not an m3-rag index"),
        (("info", "--index", "{tmp}/missing"), "is not an m3-rag index"),
        (("search", "q", "--index", "{index}", "--weights", "1,2"), "--weights must be three numbers"),
        (("search", "q", "--index", "{index}", "--model", str(TINY.parent / "tiny-m3-bin")), "was built with model"),
        (("index", "{corpus}", "--index", "{tmp}/j", "--model", "{tmp}"), "not a BGE-M3 checkpoint"),
    ],
)
def test_errors_are_one_line(built, tmp_path, args, message) -> None:
    corpus, index = built
    filled = [a.format(tmp=tmp_path, index=index, corpus=corpus) for a in args]
    result = m3_rag(*filled)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("m3-rag: error:"), result.stderr
    assert message in lines[0]
    assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_wrong_file_type(tmp_path) -> None:
    (tmp_path / "a.pdf").write_bytes(b"%PDF")
    result = m3_rag("index", str(tmp_path / "a.pdf"), "--index", str(tmp_path / "i"))
    assert result.returncode == 1 and "only .txt and .md files" in result.stderr


@pytest.mark.slow
def test_milvus_store(tmp_path) -> None:
    pytest.importorskip("pymilvus")
    corpus = tmp_path / "corpus"
    shutil.copytree(CORPUS, corpus)
    db = str(tmp_path / "m3.db")
    first = m3_rag("index", str(corpus), "--index", "docs", "--milvus", db, "--chunk-tokens", "48", "-q")
    assert first.returncode == 0, first.stderr
    again = m3_rag("index", str(corpus), "--index", "docs", "--milvus", db, "--chunk-tokens", "48", "-q")
    assert f"{len(list(CORPUS.iterdir()))} unchanged" in again.stdout
    hits = json.loads(m3_rag("search", "Berlin", "--index", "docs", "--milvus", db, "-k", "2", "--json").stdout)
    assert len(hits) == 2 and all(set(h["scores"]) == {"dense", "sparse", "colbert"} for h in hits)
    info = json.loads(m3_rag("info", "--index", "docs", "--milvus", db, "--json").stdout)
    assert info["chunks"] > len(list(CORPUS.iterdir()))


@pytest.mark.slow
def test_milvus_collection_remembers_its_model(tmp_path) -> None:
    pytest.importorskip("pymilvus")
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "a.txt").write_text("Berlin is the capital of Germany.", encoding="utf-8")
    db = str(tmp_path / "m3.db")
    assert m3_rag("index", str(corpus), "--index", "docs", "--milvus", db, "-q").returncode == 0
    info = m3_rag("info", "--index", "docs", "--milvus", db, "--json", model=None)  # no --model, no $M3_RAG_MODEL
    assert info.returncode == 0, info.stderr
    assert json.loads(info.stdout)["model"] == str(TINY.resolve())
    found = m3_rag("search", "Berlin", "--index", "docs", "--milvus", db, "--json", model=None)
    assert found.returncode == 0 and json.loads(found.stdout)[0]["source"].endswith("a.txt")


@pytest.mark.slow
def test_index_skips_what_it_cannot_read_and_forgets_deleted_files(tmp_path) -> None:
    corpus = tmp_path / "corpus"
    (corpus / "sub").mkdir(parents=True)
    outside = tmp_path / "outside.txt"
    outside.write_text("A file outside the folder.", encoding="utf-8")
    (corpus / "good.txt").write_text("Berlin is the capital of Germany.", encoding="utf-8")
    (corpus / "sub" / "deep.md").write_text("Madrid is the capital of Spain.", encoding="utf-8")
    (corpus / "keep.txt").write_text("Paris is the capital of France.", encoding="utf-8")
    (corpus / "empty.txt").write_text("  \n", encoding="utf-8")
    (corpus / "latin1.txt").write_bytes("caf\xe9 cr\xe8me".encode("latin-1"))
    (corpus / "broken.txt").symlink_to(tmp_path / "nowhere.txt")
    (corpus / "out.txt").symlink_to(outside)
    (corpus / "inside.txt").symlink_to(corpus / "good.txt")
    (corpus / "loop").symlink_to(corpus, target_is_directory=True)
    (corpus / os.fsdecode(b"bad-\xff-name.txt")).write_text("odd name", encoding="utf-8")
    index = tmp_path / "index"
    first = m3_rag("index", str(corpus), "--index", str(index), "-q", "-v")
    assert first.returncode == 0, first.stderr
    out = first.stdout
    assert "indexed 4 file(s)" in out  # good, deep, keep and the link inside the folder (under its own path)
    for reason in ("1 broken link", "1 empty", "1 link to a file outside the folder", "1 link to a folder",
                   "1 name is not valid UTF-8", "1 not UTF-8 text"):  # fmt: skip
        assert reason in out, out
    assert "latin1.txt" in first.stderr and "skipped" in first.stderr  # -v names each skipped file
    hits = json.loads(m3_rag("search", "capital", "--index", str(index), "-k", "10", "--json").stdout)
    sources = {Path(h["source"]).name for h in hits}
    assert sources == {"good.txt", "deep.md", "keep.txt", "inside.txt"}
    assert all(h["start"] == 0 and h["end"] > 0 for h in hits)  # --json keeps the offsets
    (corpus / "keep.txt").unlink()
    (corpus / "sub" / "deep.md").unlink()
    second = m3_rag("index", str(corpus), "--index", str(index), "-q")
    assert second.returncode == 0, second.stderr
    assert "2 old chunk(s) removed (2 file(s) no longer exist)" in second.stdout and "2 unchanged" in second.stdout
    hits = json.loads(m3_rag("search", "capital", "--index", str(index), "-k", "10", "--json").stdout)
    assert {Path(h["source"]).name for h in hits} == {"good.txt", "inside.txt"}


def many_files(folder: Path, n: int, tag: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        (folder / f"{tag}{i:03d}.txt").write_text(f"Document {tag} {i}: " + "words about cities " * 5, encoding="utf-8")
    return folder


@pytest.mark.slow
def test_an_interrupted_run_keeps_its_batches_and_the_next_run_resumes(tmp_path) -> None:
    corpus = many_files(tmp_path / "corpus", 300, "f")
    index = tmp_path / "index"
    script = Path(sys.executable).with_name("m3-rag")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "m3_rag"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "M3_RAG_MODEL": str(TINY)}
    args = ["index", str(corpus), "--index", str(index), "--batch-chunks", "2"]
    child = subprocess.Popen([*command, *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and not (index / "catalog.sqlite").exists():
        time.sleep(0.05)
    while time.time() < deadline:  # wait for a few commits (read the catalog directly), then interrupt
        with contextlib.suppress(sqlite3.Error), sqlite3.connect(index / "catalog.sqlite") as db:
            if db.execute("SELECT COUNT(*) FROM docs").fetchone()[0] >= 8:
                break
        time.sleep(0.02)
    child.send_signal(signal.SIGINT)
    _, err = child.communicate(timeout=60)
    assert child.returncode == 130 and "every committed batch is kept" in err, err
    kept = json.loads(m3_rag("info", "--index", str(index), "--json").stdout)["chunks"]
    assert 8 <= kept < 300
    resumed = m3_rag("index", str(corpus), "--index", str(index), "-q")
    assert resumed.returncode == 0, resumed.stderr
    assert f"{kept} unchanged" in resumed.stdout and f"indexed {300 - kept} file(s)" in resumed.stdout
    assert json.loads(m3_rag("info", "--index", str(index), "--json").stdout)["chunks"] == 300


@pytest.mark.slow
def test_two_index_runs_at_once_both_land(tmp_path) -> None:
    a, b = many_files(tmp_path / "a", 25, "a"), many_files(tmp_path / "b", 25, "b")
    index = tmp_path / "index"
    script = Path(sys.executable).with_name("m3-rag")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "m3_rag"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "M3_RAG_MODEL": str(TINY)}
    pipes = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, "text": True, "env": env}
    runs = [
        subprocess.Popen([*command, "index", str(folder), "--index", str(index), "--batch-chunks", "5", "-q"], **pipes)
        for folder in (a, b)
    ]
    for run in runs:
        out, err = run.communicate(timeout=300)
        assert run.returncode == 0, err
        assert "indexed 25 file(s)" in out
    info = json.loads(m3_rag("info", "--index", str(index), "--json").stdout)
    assert info["chunks"] == 50 and info["sources"] == 50


@pytest.mark.slow
def test_small_edges(built, tmp_path) -> None:
    _, index = built
    version = m3_rag("--version")
    assert version.returncode == 0 and version.stdout.startswith("m3-rag ")
    negative = m3_rag("search", "q", "--index", str(index), "--weights", "-1,1,1")
    assert negative.returncode == 1 and "weights must be finite, >= 0" in negative.stderr  # parsed, then refused
    wide = m3_rag("search", "capital", "--index", str(index), "-k", "300", "--candidates", "3", "--json")
    hits = json.loads(wide.stdout)
    chunks = json.loads(m3_rag("info", "--index", str(index), "--json").stdout)["chunks"]
    assert len(hits) == chunks and f"found {chunks} hit(s) (asked for 300" in wide.stderr  # the pool widened to -k
    script = Path(sys.executable).with_name("m3-rag")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "m3_rag"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "M3_RAG_MODEL": str(TINY)}
    pipeline = f"{' '.join(command)} search capital --index {index} -k 50 | head -1"  # the exit status is m3-rag's
    piped = subprocess.run(["bash", "-o", "pipefail", "-c", pipeline], env=env, capture_output=True, text=True)
    assert piped.returncode == 0 and "Broken pipe" not in piped.stderr and piped.stdout.startswith("1. ")
