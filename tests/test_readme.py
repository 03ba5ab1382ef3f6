"""Every code block of README.md runs as written, on its own, offline, against the tiny checkpoints.

Each ``python`` block runs by itself in a fresh process (working directory: an empty temporary
folder, ``HF_HUB_OFFLINE=1``), with only the model names swapped: ``"BAAI/bge-m3"`` for
tests/data/tiny-m3 and ``"BAAI/bge-reranker-v2-m3"`` for tests/data/tiny-cross-encoder. Nothing
is defined for a block beforehand, so a block that leans on another one's variables, or on a
placeholder such as an undefined ``my_llm``, fails here as it would for a reader. The ``m3-rag``
commands of the bash blocks run through the real entry point.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")
TINY = ROOT / "tests" / "data" / "tiny-m3"
SWAPS = {
    '"BAAI/bge-m3"': repr(str(TINY)),
    '"BAAI/bge-reranker-v2-m3"': repr(str(TINY.with_name("tiny-cross-encoder"))),
}


def code_blocks(language: str) -> list[tuple[str, str]]:
    """``(id, code)`` of every fenced block in ``language``, the id naming its section."""
    found: list[tuple[str, str]] = []
    title = "top"
    count: dict[str, int] = {}
    for match in re.finditer(rf"^(#{{2,3}} [^\n]+)$|^```{language}\n(.*?)^```", README, flags=re.M | re.S):
        if match.group(1):
            title = match.group(1).strip("# ").strip()
            continue
        count[title] = count.get(title, 0) + 1
        found.append((f"{title} #{count[title]}", match.group(2)))
    return found


PYTHON = code_blocks("python")
SHELL = [b for b in code_blocks("bash") if "m3-rag " in b[1]]


def swapped(code: str) -> str:
    for old, new in SWAPS.items():
        code = code.replace(old, new)
    return code


def test_the_readme_has_code() -> None:
    assert len(PYTHON) >= 8 and SHELL
    sections = {block_id.rsplit(" #", 1)[0] for block_id, _ in PYTHON}
    assert {"Core API", "LangChain", "LlamaIndex", "Milvus"} <= sections


def test_the_swaps_leave_no_hub_name() -> None:
    for block_id, code in PYTHON:
        assert "BAAI/" not in swapped(code), f"{block_id}: a model name the test does not swap"


def run_block(code: str, folder: Path) -> subprocess.CompletedProcess[str]:
    """One block, by itself, in a fresh interpreter whose working directory is an empty folder."""
    folder.mkdir(parents=True)
    script = folder / "block.py"
    script.write_text(swapped(code), encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if k != "M3_RAG_MODEL"}
    env.update(HF_HUB_OFFLINE="1", PYTHONPATH="")
    return subprocess.run(
        [sys.executable, str(script)], cwd=folder, env=env, capture_output=True, text=True, timeout=600
    )


@pytest.fixture(scope="module")
def block_runs(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Every selected block's run, two processes at a time (each one mostly imports: CPU-bound)."""
    selected = {
        item.callspec.params["block_id"]
        for item in request.session.items
        if getattr(item, "originalname", "") == "test_python_block_runs_on_its_own" and item.path == Path(__file__)
    }
    root = tmp_path_factory.mktemp("readme")
    blocks = [(block_id, code) for block_id, code in PYTHON if block_id in selected]
    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = {
            block_id: pool.submit(run_block, code, root / f"block{n}") for n, (block_id, code) in enumerate(blocks)
        }
        return {block_id: future.result() for block_id, future in futures.items()}


@pytest.mark.slow
@pytest.mark.parametrize(("block_id", "code"), PYTHON, ids=[b for b, _ in PYTHON])
def test_python_block_runs_on_its_own(block_id: str, code: str, block_runs: dict[str, Any]) -> None:
    done = block_runs[block_id]
    assert done.returncode == 0, f"README.md ({block_id}) failed:\n{done.stderr[-3000:]}"
    assert "Traceback" not in done.stderr


@pytest.mark.slow
def test_shell_blocks_run(tmp_path: Path) -> None:
    shutil.copytree(ROOT / "examples", tmp_path / "examples")
    script = Path(sys.executable).with_name("m3-rag")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "M3_RAG_MODEL": str(TINY)}
    ran = 0
    for _, code in SHELL:
        for line in code.splitlines():
            for part in line.split("#")[0].split("&&"):
                words = shlex.split(part)
                if not words or words[0] != "m3-rag":
                    continue  # pip / ruff / pytest lines are not re-run here
                command = [str(script), *words[1:]] if script.exists() else [sys.executable, "-m", "m3_rag", *words[1:]]
                done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
                assert done.returncode == 0, f"{part.strip()}: {done.stderr}"
                ran += 1
    assert ran >= 5
