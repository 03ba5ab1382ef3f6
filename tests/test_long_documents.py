"""What a user sees when a document is over the model's limit: one warning per call, on stderr.

Run as a plain script would run (a fresh process, no logging configured): Python's last-resort
handler prints the ``m3_rag`` logger's warnings to stderr, for the core API and for the adapters,
which encode through it. README.md ("Long documents") promises this and how to silence it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

TINY = Path(__file__).parent / "data" / "tiny-m3"
WARNING = (
    "1 of 2 texts were longer than max_length=512 tokens and were truncated "
    "(split long documents with m3_rag.chunking.chunk_text)"
)  # the tiny model's limit

SCRIPT = f"""
import logging, sys
from m3_rag import M3Embedder
from m3_rag.integrations.langchain import M3Embeddings
from m3_rag.integrations.llama_index import M3Embedding

LONG, SHORT = "word " * 2000, "short"
OTHER = "other " * 2000  # the adapters share one encoding cache: a text already encoded is not encoded again
def step(name):
    print(f"-- {{name}}", file=sys.stderr, flush=True)

step("core")
M3Embedder.from_pretrained({str(TINY)!r}).encode_documents([LONG, SHORT])
step("langchain")
M3Embeddings(model_name={str(TINY)!r}).embed_documents([LONG, SHORT])
step("llama_index")
M3Embedding({str(TINY)!r}).get_text_embedding_batch([OTHER, SHORT + " too"])
step("silenced")
logging.getLogger("m3_rag").setLevel(logging.ERROR)  # what README.md says silences it
M3Embedder.from_pretrained({str(TINY)!r}).encode_documents([LONG, SHORT])
step("end")
"""


@pytest.mark.slow
def test_truncation_is_one_visible_warning_per_call() -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stderr.splitlines() == [
        "-- core",
        WARNING,
        "-- langchain",
        WARNING,
        "-- llama_index",
        WARNING,
        "-- silenced",
        "-- end",
    ]
