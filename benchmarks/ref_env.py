"""The FlagEmbedding 1.4.2 reference environment the benchmarks compare against.

m3-rag never depends on FlagEmbedding (and FlagEmbedding does not import with transformers 5),
so the reference runs in its own virtual environment, in a subprocess. This module finds it or
makes it:

1. ``M3_BENCH_REF_PYTHON=/path/to/bin/python`` -- an existing environment with FlagEmbedding;
2. otherwise ``benchmarks/.cache/ref-venv`` (git-ignored), created on first use with::

       python -m venv benchmarks/.cache/ref-venv
       benchmarks/.cache/ref-venv/bin/pip install torch==2.13.0
       benchmarks/.cache/ref-venv/bin/pip install "transformers<5" FlagEmbedding==1.4.2

Run it alone to create (or check) the environment::

    python benchmarks/ref_env.py            # prints the interpreter and its versions
    M3_BENCH_TORCH="torch==2.13.0" ...      # the torch requirement to install (e.g. a CUDA build)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import venv
from pathlib import Path

from _common import CACHE

__all__ = ["FLAG_VERSION", "REF_VENV", "ref_python", "ref_versions"]

FLAG_VERSION = "1.4.2"
REF_VENV = CACHE / "ref-venv"
_PROBE = (
    "import json, FlagEmbedding, torch, transformers; "
    "from FlagEmbedding import BGEM3FlagModel; "
    "print(json.dumps({'torch': torch.__version__, 'transformers': transformers.__version__}))"
)


def ref_versions(python: Path) -> dict[str, str] | None:
    """Versions of torch and transformers in ``python``'s environment, or None without FlagEmbedding."""
    if not python.exists():
        return None
    proc = subprocess.run([str(python), "-c", _PROBE], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        return None
    versions = json.loads(proc.stdout.strip().splitlines()[-1])
    pip = subprocess.run(
        [str(python), "-m", "pip", "show", "FlagEmbedding"], capture_output=True, text=True, check=False
    )
    for line in pip.stdout.splitlines():
        if line.startswith("Version:"):
            versions["FlagEmbedding"] = line.split(":", 1)[1].strip()
    return versions


def _create(target: Path) -> None:
    print(f"creating the FlagEmbedding {FLAG_VERSION} reference environment in {target} ...", file=sys.stderr)
    venv.EnvBuilder(with_pip=True, clear=True).create(target)
    pip = [str(target / "bin" / "python"), "-m", "pip", "install", "-q"]
    torch_req = os.environ.get("M3_BENCH_TORCH", "torch==2.13.0")
    subprocess.run([*pip, torch_req], check=True)  # torch first: pick the build, then the rest
    subprocess.run([*pip, "transformers<5", f"FlagEmbedding=={FLAG_VERSION}"], check=True)


def ref_python(*, create: bool = True) -> Path:
    """The interpreter of the reference environment (created when missing and ``create``)."""
    override = os.environ.get("M3_BENCH_REF_PYTHON")
    if override:
        python = Path(override)
        if ref_versions(python) is None:
            raise RuntimeError(
                f"M3_BENCH_REF_PYTHON={override} cannot import FlagEmbedding; point it at the python of an "
                f'environment made with `pip install torch==2.13.0 && pip install "transformers<5" '
                f"FlagEmbedding=={FLAG_VERSION}`, or unset it to let the benchmarks create {REF_VENV}"
            )
        return python
    python = REF_VENV / "bin" / "python"
    if ref_versions(python) is None:
        if not create:
            raise RuntimeError(f"no reference environment at {REF_VENV}; run `python benchmarks/ref_env.py`")
        _create(REF_VENV)
        if ref_versions(python) is None:
            raise RuntimeError(f"created {REF_VENV} but FlagEmbedding still does not import there")
    return python


if __name__ == "__main__":
    exe = ref_python()
    print(json.dumps({"python": str(exe), **(ref_versions(exe) or {})}))
