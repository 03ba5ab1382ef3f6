"""Every notebook under notebooks/ runs end to end, offline, against the tiny checkpoint.

They run as a user would run them: in a Jupyter kernel with its default (inline) matplotlib
backend, so the quickstart's figure must come out as an image/png output, and no cell may write
to stderr (warnings such as tqdm's "IProgress not found" or matplotlib's missing glyphs).
"""

from __future__ import annotations

import base64
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = Path(__file__).parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


def test_notebooks_are_committed_without_outputs() -> None:
    assert {p.name for p in NOTEBOOKS} >= {"quickstart.ipynb", "langchain_rag.ipynb", "llamaindex_rag.ipynb"}
    for path in NOTEBOOKS:
        notebook = nbformat.read(path, as_version=4)
        assert all(
            not c.get("outputs") and not c.get("execution_count") for c in notebook.cells if c.cell_type == "code"
        )


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs(path: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("M3_RAG_MODEL", str(ROOT / "tests" / "data" / "tiny-m3"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("MPLBACKEND", raising=False)  # the kernel's own default: inline figures
    notebook = nbformat.read(path, as_version=4)
    NotebookClient(
        notebook, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    ).execute()
    outputs = [(n, o) for n, c in enumerate(notebook.cells) if c.cell_type == "code" for o in c.get("outputs", [])]
    errors = [o for _, o in outputs if o.get("output_type") == "error"]
    assert not errors
    assert any(o.get("output_type") == "stream" and o.get("name") == "stdout" for _, o in outputs)
    stderr = [(n, o["text"]) for n, o in outputs if o.get("output_type") == "stream" and o.get("name") == "stderr"]
    assert not stderr, f"cells wrote to stderr: {stderr}"
    images = [n for n, o in outputs if "image/png" in o.get("data", {})]
    if path.stem == "quickstart":
        plot = next(n for n, c in enumerate(notebook.cells) if "plt.subplots" in c.source)
        assert images == [plot], "the quickstart's figure is not shown"
        png = base64.b64decode(
            next(o for n, o in outputs if n == plot and "image/png" in o.get("data", {}))["data"]["image/png"]
        )
        assert png.startswith(b"\x89PNG") and len(png) > 5_000
