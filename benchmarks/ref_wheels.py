"""FlagEmbedding 1.4.2 for a machine without network: wheels carried in, installed offline.

The GPU machines that run ``encode_gpu.py`` reach no package registry and have a recent
transformers (5.x), with which FlagEmbedding does not import. This module downloads, here, the
few wheels FlagEmbedding needs on top of such a machine's packages (FlagEmbedding, transformers
4.57, the tokenizers and huggingface_hub it accepts, datasets, peft, accelerate, ...), for the
Python version of that machine; there it installs them into a folder of their own and writes a
``python`` wrapper that puts the folder first on ``PYTHONPATH``. m3-rag's own process never sees
that folder. Torch, numpy, pyarrow etc. are the machine's own::

    python benchmarks/ref_wheels.py download --python 3.12      # here: ~20 MB of wheels
    # carry benchmarks/.cache/ref-wheels to the GPU machine, then there:
    python benchmarks/ref_wheels.py install                     # prints the wrapper to use
    M3_BENCH_REF_PYTHON=$(python benchmarks/ref_wheels.py install) python benchmarks/encode_gpu.py

``encode_gpu.py`` does the install itself when ``M3_BENCH_REF_PYTHON`` is unset and wheels for
its Python version are there.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

from _common import CACHE

__all__ = ["REQUIREMENTS", "WHEELS", "download", "install", "wheels_for"]

WHEELS = CACHE / "ref-wheels"
#: Pinned so that the set installs without a resolver (``--no-deps``) next to a recent torch.
REQUIREMENTS = [
    "FlagEmbedding==1.4.2",
    "transformers==4.57.6",
    "tokenizers>=0.22,<0.23",
    "huggingface_hub>=0.34,<1.0",
    "datasets>=3,<5",
    "dill>=0.3,<0.4.1",
    "multiprocess<0.70.19",
    "peft>=0.13,<0.18",
    "accelerate>=1.0,<2",
    "sentencepiece>=0.2",
]
_PLATFORMS = ["manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64",
              "manylinux1_x86_64"]  # fmt: skip


def _tag(python: str) -> str:
    return "cp" + python.replace(".", "")


def wheels_for(python: str | None = None) -> Path:
    """The wheel folder for a Python version (``"3.12"``; default: this interpreter's)."""
    return WHEELS / _tag(python or f"{sys.version_info.major}.{sys.version_info.minor}")


def download(python: str) -> Path:
    """Download the wheels for CPython ``python`` on x86-64 Linux (needs the network)."""
    target = wheels_for(python)
    target.mkdir(parents=True, exist_ok=True)
    platforms = [arg for p in _PLATFORMS for arg in ("--platform", p)]
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--python-version", python,
           "--implementation", "cp", *platforms, "-d", str(target), *REQUIREMENTS]  # fmt: skip
    subprocess.run(cmd, check=True)
    size = sum(p.stat().st_size for p in target.glob("*.whl")) / 2**20
    print(f"{len(list(target.glob('*.whl')))} wheels, {size:.1f} MiB in {target}", file=sys.stderr)
    return target


def install(python_exe: str | None = None) -> Path:
    """Install the wheels for this interpreter offline; return the path of a python wrapper."""
    source = wheels_for()
    wheels = sorted(source.glob("*.whl"))
    if not wheels:
        raise FileNotFoundError(f"no wheels in {source}: run `python benchmarks/ref_wheels.py download` first")
    site = CACHE / f"ref-site-{source.name}"
    done = site / ".installed"
    names = "\n".join(w.name for w in wheels)
    if not done.is_file() or done.read_text() != names:
        cmd = [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
               "--no-cache-dir", "--upgrade", "--target", str(site), *map(str, wheels)]  # fmt: skip
        subprocess.run(cmd, check=True)
        done.write_text(names)
    wrapper = CACHE / f"ref-python-{source.name}"
    python = python_exe or sys.executable
    wrapper.write_text(f'#!/bin/sh\nPYTHONPATH="{site}${{PYTHONPATH:+:$PYTHONPATH}}" exec "{python}" "$@"\n')
    wrapper.chmod(0o755)
    return wrapper


def ensure_ref_python() -> bool:
    """Point ``M3_BENCH_REF_PYTHON`` at the carried wheels when it is unset and they are there."""
    if os.environ.get("M3_BENCH_REF_PYTHON") or not any(wheels_for().glob("*.whl")):
        return False
    os.environ["M3_BENCH_REF_PYTHON"] = str(install())
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    get = sub.add_parser("download", help="download the wheels (here, with the network)")
    get.add_argument("--python", default=f"{sys.version_info.major}.{sys.version_info.minor}",
                     help="the Python version of the machine that will install them, e.g. 3.12")  # fmt: skip
    sub.add_parser("install", help="install them offline; print the python wrapper to use")
    args = parser.parse_args()
    if args.command == "download":
        print(download(args.python))
    else:
        print(install())


if __name__ == "__main__":
    main()
