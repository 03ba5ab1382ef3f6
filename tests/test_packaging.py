"""The package as it is shipped: pyproject's package list, and the wheel and sdist that `python -m build` makes.

The package is not on PyPI: users install from a checkout or from a wheel built here (README.md,
"Install"). .ci/run also installs the wheel into a clean environment and runs tests/wheel_smoke.py.
"""

from __future__ import annotations

import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")  # Python >= 3.11

ROOT = Path(__file__).parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


def source_packages() -> set[str]:
    """Every package folder of the source tree, by the name it is installed under."""
    found = {
        ".".join(("m3_rag", *p.parent.relative_to(ROOT / "m3_rag").parts))
        for p in (ROOT / "m3_rag").rglob("__init__.py")
    }
    found |= {
        ".".join(("m3_rag.integrations", *p.parent.relative_to(ROOT / "integrations").parts))
        for p in (ROOT / "integrations").rglob("__init__.py")
    }
    return {name.rstrip(".") for name in found}


def test_every_package_folder_is_listed() -> None:
    setuptools = PYPROJECT["tool"]["setuptools"]
    assert set(setuptools["packages"]) == source_packages()
    assert setuptools["package-dir"] == {"m3_rag": "m3_rag", "m3_rag.integrations": "integrations"}


def test_metadata_is_current() -> None:
    project = PYPROJECT["project"]
    assert project["license"] == "MIT"  # an SPDX expression: the TOML table form is deprecated
    assert "version" in project["dynamic"]
    assert PYPROJECT["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "m3_rag.__version__"}
    assert project["scripts"] == {"m3-rag": "m3_rag.cli:main"}


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, str]:
    out = tmp_path_factory.mktemp("dist")
    done = subprocess.run(
        [sys.executable, "-m", "build", "--outdir", str(out), str(ROOT)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    log = done.stdout + done.stderr
    assert done.returncode == 0, log[-4000:]
    (wheel,) = out.glob("*.whl")
    (sdist,) = out.glob("*.tar.gz")
    return wheel, sdist, log


@pytest.mark.slow
def test_the_build_does_not_warn(built: tuple[Path, Path, str]) -> None:
    log = built[2]
    assert "deprecat" not in log.lower(), log[-4000:]
    assert "Successfully built" in log


@pytest.mark.slow
def test_the_wheel_holds_the_package_and_nothing_else(built: tuple[Path, Path, str]) -> None:
    import m3_rag

    wheel = built[0]
    assert wheel.name == f"m3_rag-{m3_rag.__version__}-py3-none-any.whl"
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names}
    assert tops == {"m3_rag", f"m3_rag-{m3_rag.__version__}.dist-info"}
    assert "m3_rag/py.typed" in names
    for module in (
        "cli.py",
        "index/m3_index.py",
        "integrations/langchain/retriever.py",
        "integrations/llama_index/retriever.py",
    ):
        assert f"m3_rag/{module}" in names, module
    assert {
        f"m3_rag/integrations/{p.relative_to(ROOT / 'integrations')}" for p in (ROOT / "integrations").rglob("*.py")
    } <= set(names)
    assert not [n for n in names if "tests" in n or n.endswith((".safetensors", ".pt", ".npz", ".ipynb"))]
    meta = zipfile.ZipFile(wheel).read(f"m3_rag-{m3_rag.__version__}.dist-info/METADATA").decode()
    assert "License-Expression: MIT" in meta
    entry_points = zipfile.ZipFile(wheel).read(f"m3_rag-{m3_rag.__version__}.dist-info/entry_points.txt").decode()
    assert "m3-rag = m3_rag.cli:main" in entry_points


@pytest.mark.slow
def test_the_sdist_builds_the_same_package(built: tuple[Path, Path, str]) -> None:
    with tarfile.open(built[1]) as sdist:
        names = sdist.getnames()
    root = names[0].split("/")[0]
    for path in (
        "pyproject.toml",
        "README.md",
        "m3_rag/py.typed",
        "m3_rag/cli.py",
        "integrations/langchain/retriever.py",
        "LICENSE",
        "docs/RELIABILITY.md",
    ):
        assert f"{root}/{path}" in names, path
    assert not [n for n in names if n.startswith(f"{root}/tests/")]  # the tests need the checkout
