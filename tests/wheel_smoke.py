"""Smoke test of an installed m3-rag wheel, run by .ci/run in a clean virtual environment.

    python tests/wheel_smoke.py CHECKOUT    # from any folder but the checkout

It checks that the package comes from site-packages (not the checkout), that its version, typing
marker, adapters and console script are there, that a framework adapter without its framework
names the extra to install, and that the tiny checkpoint of the checkout encodes and searches.
Not collected by pytest (no ``test_`` prefix); the body runs only as a script.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path


def main(checkout: Path) -> None:
    os.environ["HF_HUB_OFFLINE"] = "1"
    import m3_rag
    from m3_rag import M3Embedder, M3Index

    package = Path(m3_rag.__file__).resolve().parent
    assert checkout.resolve() not in package.parents, f"m3_rag imported from the checkout: {package}"
    assert "site-packages" in package.parts, package
    assert importlib.metadata.version("m3-rag") == m3_rag.__version__
    assert (package / "py.typed").is_file()
    assert (package / "integrations" / "langchain" / "retriever.py").is_file()
    for name in ("m3_rag.integrations.langchain", "m3_rag.integrations.llama_index"):
        try:
            importlib.import_module(name)
        except ImportError as exc:  # the clean environment has no frameworks: the error names the extra
            message = str(exc)
        else:
            raise AssertionError(f"{name} imported without its framework installed")
        assert "pip install" in message and "m3-rag[" in message, message

    tiny = checkout / "tests" / "data" / "tiny-m3"
    m3 = M3Embedder.from_pretrained(tiny, device="cpu")
    out = m3.encode(["What is BGE-M3?", "BGE-M3 is a multilingual embedding model."])
    assert out.dense is not None and out.dense.shape == (2, 32)  # the tiny checkpoint: hidden size 32
    index = M3Index(m3)
    index.add(["Berlin is the capital of Germany.", "Paris is the capital of France."], ids=["de", "fr"])
    assert len(index.search("capital of Germany", k=1)) == 1

    script = shutil.which("m3-rag")
    assert script is not None and Path(script).parent == Path(sys.executable).parent, script
    shown = subprocess.run([script, "--help"], capture_output=True, text=True, check=True)
    assert "index" in shown.stdout and "search" in shown.stdout
    with tempfile.TemporaryDirectory() as work:
        env = {**os.environ, "M3_RAG_MODEL": str(tiny)}
        corpus = str(checkout / "examples" / "corpus")
        subprocess.run([script, "index", corpus, "--index", "idx", "-q"], cwd=work, env=env, check=True)
        found = subprocess.run(
            [script, "search", "capital of Germany", "--index", "idx", "-k", "1", "--json"],
            cwd=work,
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
        assert '"rank": 1' in found.stdout
    print(f"wheel smoke test passed: m3-rag {m3_rag.__version__} from {package}")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
