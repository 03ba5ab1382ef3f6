"""The first command on a machine without network: it fails at once, says so once, and says how to go on.

Every test runs a real process with the hub made unreachable (``HF_ENDPOINT`` on a port where
connections are refused, or a server that accepts and never answers), an empty ``HF_HOME`` and
``HF_HUB_OFFLINE`` unset, as a new user's first run would be. huggingface_hub alone would retry
for ~25 s and print every retry twice through the CLI.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent
TINY = ROOT / "tests" / "data" / "tiny-m3"
CORPUS = ROOT / "examples" / "corpus"
REFUSED = "http://127.0.0.1:9"  # the discard port: nothing listens, connections are refused at once

# Seconds the code itself may take after its imports, measured inside the child process (imports
# alone take seconds on a loaded 2-core machine and say nothing about retries). huggingface_hub's
# own retries sleep 1 + 2 + 4 + 8 + 8 = 23 s, so any bound well below that tells the two apart.
FAIL_FAST_S = 5.0
# Imported before the clock starts: the hub's lazily imported HTTP stack.
PRELOAD = "import huggingface_hub.file_download, huggingface_hub.utils\n"


def env_without_hub(home: Path, endpoint: str = REFUSED, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in {"HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "M3_RAG_MODEL"}}
    env.update(HF_HOME=str(home / "hf"), HF_ENDPOINT=endpoint, **extra)
    env.pop("HF_HUB_CACHE", None)
    env.pop("HUGGINGFACE_HUB_CACHE", None)
    return env


def timed_cli(args: list[str], env: dict[str, str], cwd: Path) -> tuple[subprocess.CompletedProcess[str], float]:
    """Run ``m3_rag.cli.main(args)`` in a child; return the process and the seconds main() took."""
    code = (
        "import sys, time\n"
        "import m3_rag.cli\n"
        f"{PRELOAD}"
        "t = time.monotonic()\n"
        "rc = m3_rag.cli.main(sys.argv[1:])\n"
        "print(f'ELAPSED {time.monotonic() - t:.3f}')\n"
        "sys.exit(rc)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=120
    )
    elapsed = float(done.stdout.rsplit("ELAPSED", 1)[1])
    return done, elapsed


def assert_one_hint_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == len(set(lines)), f"a line printed twice:\n{stderr}"
    assert len(lines) == 1, f"expected one error line, got:\n{stderr}"
    last = lines[-1]
    assert last.startswith("m3-rag: error: ")
    for words in ("--model PATH", "M3_RAG_MODEL", "HF_HUB_OFFLINE=1"):
        assert words in last, (words, last)
    return last


@pytest.mark.slow
def test_first_command_offline_fails_fast_with_one_hint_line(tmp_path: Path) -> None:
    done, elapsed = timed_cli(
        ["index", str(CORPUS), "--index", str(tmp_path / "idx")], env_without_hub(tmp_path), tmp_path
    )
    assert done.returncode == 1
    assert elapsed < FAIL_FAST_S, f"main() took {elapsed:.1f} s: retries?"
    last = assert_one_hint_line(done.stderr)
    assert "cannot reach the Hugging Face hub at http://127.0.0.1:9" in last
    assert "'BAAI/bge-m3'" in last and str(tmp_path / "hf" / "hub") in last
    assert "Retrying" not in done.stderr
    assert not (tmp_path / "idx").exists()  # nothing half-made


@pytest.mark.slow
def test_search_offline_names_the_same_ways_out(tmp_path: Path) -> None:
    (tmp_path / "idx").mkdir()
    done, elapsed = timed_cli(["search", "q", "--index", str(tmp_path / "idx")], env_without_hub(tmp_path), tmp_path)
    # a folder that is not an index is reported before any model is loaded
    assert done.returncode == 1 and "not an m3-rag index" in done.stderr and elapsed < FAIL_FAST_S


@pytest.mark.slow
def test_offline_mode_with_an_empty_cache_is_one_line_too(tmp_path: Path) -> None:
    env = env_without_hub(tmp_path, HF_HUB_OFFLINE="1")
    done, elapsed = timed_cli(["index", str(CORPUS), "--index", str(tmp_path / "idx")], env, tmp_path)
    assert done.returncode == 1 and elapsed < FAIL_FAST_S
    last = assert_one_hint_line(done.stderr)
    assert "is not in the Hugging Face cache" in last and "HF_HUB_OFFLINE=1 forbids downloading it" in last


@pytest.mark.slow
def test_python_api_offline_raises_at_once(tmp_path: Path) -> None:
    code = (
        "import time\n"
        "from m3_rag import M3Embedder\n"
        "from m3_rag.checkpoint import CheckpointUnavailableError\n"
        f"{PRELOAD}"
        "t = time.monotonic()\n"
        "try:\n"
        "    M3Embedder.from_pretrained('BAAI/bge-m3')\n"
        "except CheckpointUnavailableError as exc:\n"
        "    print(f'ELAPSED {time.monotonic() - t:.3f}')\n"
        "    print('ERROR', exc)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env_without_hub(tmp_path), timeout=120
    )
    assert done.returncode == 0, done.stderr
    elapsed = float(done.stdout.split("ELAPSED")[1].split()[0])
    message = done.stdout.split("ERROR ", 1)[1].strip()
    assert elapsed < FAIL_FAST_S
    assert "\n" not in message
    assert message.startswith("cannot reach the Hugging Face hub at http://127.0.0.1:9 ([Errno 111]")
    assert "Pass a local checkpoint folder instead of the hub id" in message
    assert done.stderr.strip() == "", done.stderr  # nothing logged on the way


def fake_cache(home: Path) -> None:
    """The hub cache layout of BAAI/bge-m3, holding the tiny checkpoint's files."""
    repo = home / "hf" / "hub" / "models--BAAI--bge-m3"
    commit = "0123456789abcdef0123456789abcdef01234567"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    shutil.copytree(TINY, repo / "snapshots" / commit)


@pytest.mark.slow
def test_an_unreachable_hub_falls_back_to_the_cache(tmp_path: Path) -> None:
    fake_cache(tmp_path)
    code = (
        "import time\n"
        "from m3_rag import M3Embedder\n"
        "from m3_rag.checkpoint import resolve_checkpoint\n"
        f"{PRELOAD}"
        "t = time.monotonic()\n"
        "folder = resolve_checkpoint('BAAI/bge-m3')\n"
        "print(f'ELAPSED {time.monotonic() - t:.3f}')\n"
        "m3 = M3Embedder.from_pretrained('BAAI/bge-m3', device='cpu')\n"
        "print('DIM', m3.encode(['hello']).dense.shape[1], m3.name)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env_without_hub(tmp_path), timeout=120
    )
    assert done.returncode == 0, done.stderr
    dim = json.loads((TINY / "config.json").read_text())["hidden_size"]
    assert f"DIM {dim}" in done.stdout
    assert float(done.stdout.split("ELAPSED")[1].split()[0]) < FAIL_FAST_S
    assert "BAAI/bge-m3" in done.stdout  # the embedder keeps the hub id as its name
    assert "Retrying" not in done.stderr


@pytest.fixture
def silent_hub() -> Iterator[str]:
    """A server that accepts connections and never answers (a black-holed proxy or firewall)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    try:
        yield f"http://127.0.0.1:{server.getsockname()[1]}"
    finally:
        server.close()


@pytest.mark.slow
def test_a_silent_hub_times_out_after_hf_hub_etag_timeout(tmp_path: Path, silent_hub: str) -> None:
    # telemetry off: huggingface_hub >= 2.4 first fetches an agent registry (a best-effort GET with a
    # 3 s timeout of its own, once per process and day); that wait is the hub's, not the probe's
    env = env_without_hub(tmp_path, silent_hub, HF_HUB_ETAG_TIMEOUT="1", HF_HUB_DISABLE_TELEMETRY="1")
    done, elapsed = timed_cli(["index", str(CORPUS), "--index", str(tmp_path / "idx")], env, tmp_path)
    assert done.returncode == 1
    assert 0.9 < elapsed < 1 + FAIL_FAST_S, f"main() took {elapsed:.1f} s"  # the hub's retry: 60 s
    last = assert_one_hint_line(done.stderr)
    assert f"cannot reach the Hugging Face hub at {silent_hub} (no answer within 1 s; on a slow network raise" in last


@pytest.mark.slow
def test_every_log_message_is_printed_once(tmp_path: Path) -> None:
    """The hub's and transformers' loggers print through their own handlers: the CLI adds none to root."""
    code = (
        "import logging, sys\n"
        "import huggingface_hub, transformers\n"
        "import m3_rag.cli as cli\n"
        "def noisy(args):\n"
        "    logging.getLogger('huggingface_hub.file_download').warning('hub says hi')\n"
        "    transformers.logging.get_logger('transformers.x').warning('transformers says hi')\n"
        "    logging.getLogger('m3_rag.encoder').warning('m3 says hi')\n"
        "    logging.getLogger('m3_rag.encoder').info('m3 whispers')\n"
        "    logging.getLogger('other').warning('other says hi')\n"
        "    return 0\n"
        "cli.cmd_info = noisy\n"
        "assert cli.main(['info', '--index', 'x']) == 0\n"
        "assert cli.main(['info', '--index', 'x']) == 0\n"  # a second call adds no second handler
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env_without_hub(tmp_path), timeout=120
    )
    assert done.returncode == 0, done.stderr
    lines = done.stderr.splitlines()
    assert lines.count("m3-rag: m3 says hi") == 2
    assert lines.count("hub says hi") == 2
    assert sum(line.endswith("transformers says hi") for line in lines) == 2  # 5.x adds "[transformers] "
    assert lines.count("other says hi") == 2
    assert len(lines) == 8, done.stderr
    assert not any("whispers" in line for line in lines)
    assert not any(line.startswith("m3-rag: ") and "m3 says" not in line for line in lines)


@pytest.mark.slow
def test_cli_errors_are_one_line(tmp_path: Path) -> None:
    code = (
        "import m3_rag.cli as cli\n"
        "def fails(args):\n"
        '    raise OSError("We couldn\'t connect to the hub.\\nCheck your internet connection.")\n'
        "cli.cmd_info = fails\n"
        "raise SystemExit(cli.main(['info', '--index', 'x']))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    assert done.stderr == "m3-rag: error: We couldn't connect to the hub. Check your internet connection.\n"


@pytest.mark.parametrize("timeout", ["", "nonsense", "0"])
def test_probe_timeout_defaults(timeout: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from m3_rag import checkpoint

    monkeypatch.setenv("HF_HUB_ETAG_TIMEOUT", timeout)
    assert checkpoint._probe_timeout() == checkpoint.PROBE_TIMEOUT
    monkeypatch.setenv("HF_HUB_ETAG_TIMEOUT", "2.5")
    assert checkpoint._probe_timeout() == 2.5
