"""Every code block of README.md runs, offline, against the tiny checkpoints.

Python blocks run section by section in one namespace each (``BAAI/bge-m3`` and
``BAAI/bge-reranker-v2-m3`` swapped for the tiny checkpoints, ``my_llm`` is a ``MockLLM``);
the ``m3-rag`` commands of the bash blocks run through the real entry point.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")
TINY = ROOT / "tests" / "data" / "tiny-m3"
SWAPS = {'"BAAI/bge-m3"': repr(str(TINY)), '"BAAI/bge-reranker-v2-m3"': repr(str(TINY.with_name("tiny-cross-encoder")))}


def sections() -> dict[str, str]:
    parts = re.split(r"^(#{2,3} .+)$", README, flags=re.M)
    return {title.strip("# ").strip(): body for title, body in zip(parts[1::2], parts[2::2])}


def blocks(language: str) -> list[tuple[str, str]]:
    found = []
    for title, body in sections().items():
        code = "\n".join(re.findall(rf"```{language}\n(.*?)```", body, re.S))
        if code.strip():
            found.append((title, code))
    return found


PYTHON = blocks("python")
SHELL = [b for b in blocks("bash") if "m3-rag " in b[1]]


def test_the_readme_has_code() -> None:
    assert len(PYTHON) >= 4 and SHELL


def swapped(code: str) -> str:
    for old, new in SWAPS.items():
        code = code.replace(old, new)
    return code


@pytest.mark.parametrize(("title", "code"), PYTHON, ids=[t for t, _ in PYTHON])
def test_python_blocks_run(title: str, code: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from llama_index.core.llms import MockLLM

    # the cross-encoder example continues the index example above it
    prelude = dict(PYTHON)["Hybrid retrieval with the embedded index"] if title.startswith("A cross-encoder") else ""
    monkeypatch.chdir(tmp_path)
    scope: dict[str, Any] = {"my_llm": MockLLM()}
    exec(compile(swapped(prelude + "\n" + code), f"README.md ({title})", "exec"), scope)


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
