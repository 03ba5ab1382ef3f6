"""The encode-throughput benchmark shared by ``encode_cpu.py`` and ``encode_gpu.py``.

m3-rag (this environment) and FlagEmbedding 1.4.2 (the reference environment, see
``ref_env.py``) encode the same texts with the same random checkpoint, in separate processes,
alternating which library goes first; every run is recorded, the summary holds medians and the
ratio m3-rag / FlagEmbedding of the median tokens/s.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from _common import CACHE, HERE, RESULTS, ROOT, loadavg, run_json, write_result
from assets import ARCHS, CORPORA, checkpoint, corpus_file
from ref_env import ref_python, ref_versions

__all__ = ["TARGETS", "run_benchmark"]

#: what each run's ``lib`` names: (worker library, its extra arguments, the label in the summary)
LIBS: dict[str, tuple[str, list[str], str]] = {
    "m3": ("m3", [], "m3_rag"),
    "flag": ("flag", [], "flagembedding"),
    "m3_inline": ("m3", ["--prefetch", "0"], "m3_rag_inline"),  # m3-rag with its input thread off
}
#: the issue's targets for the ratio of tokens/s, m3-rag over FlagEmbedding (all three outputs)
TARGETS: dict[tuple[str, str], dict[str, float]] = {
    ("passages", "all"): {"ratio": 1.6},
    ("documents", "all"): {"ratio": 2.0},
}


def _commit() -> str:
    proc = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=False
    )
    return proc.stdout.strip() or "unknown"


def _env_m3() -> dict[str, str]:
    return {"PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}


def _cmd(
    python: Path | str, lib: str, ckpt: Path, device: str, fp16: bool, extra: list[str] | None = None
) -> list[str]:
    worker, args, _ = LIBS[lib]
    cmd = [str(python), str(HERE / "_encode_worker.py"), "--lib", worker, "--checkpoint", str(ckpt), "--device", device,
           *args, *(extra or [])]  # fmt: skip
    return [*cmd, "--fp16"] if fp16 else cmd


class _Server:
    """A worker that keeps its model loaded and answers one encode request per line."""

    def __init__(self, cmd: list[str], env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(
            [*cmd, "--serve"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1,
            env={**os.environ, **env},
        )  # fmt: skip
        self.ready = self._read()

    def _read(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.startswith("{"):
                return json.loads(line)
        raise RuntimeError(f"encode worker stopped (exit {self.proc.wait()})")

    def request(self, **kwargs: Any) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(kwargs) + "\n")
        return self._read()

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        self.proc.wait(timeout=120)


def _summarise(
    runs: list[dict[str, Any]],
    corpora: list[str],
    modes: list[str],
    targets: dict[tuple[str, str], dict[str, float]] | None = None,
) -> dict[str, Any]:
    """Medians per (corpus, mode) over every run in the file: those of this invocation first, then
    the rest, so continuing with ``--corpus passages`` keeps the documents rows."""
    out: dict[str, Any] = {}
    recorded = [(r["corpus"], r["modes"]) for r in runs]
    for name, mode in dict.fromkeys([(c, m) for c in corpora for m in modes] + recorded):
        key = f"{name}/{mode}"
        row: dict[str, Any] = {}
        for lib, (_, _, label) in LIBS.items():
            mine = [r for r in runs if r["corpus"] == name and r["modes"] == mode and r["lib"] == lib]
            if not mine:
                continue
            row[label] = {
                "tokens_per_s_median": float(np.median([r["tokens_per_s"] for r in mine])),
                "docs_per_s_median": float(np.median([r["docs_per_s"] for r in mine])),
                "seconds_median": float(np.median([r["seconds"] for r in mine])),
                "peak_rss_mb_median": float(np.median([r["peak_rss_mb"] for r in mine])),
                "peak_rss_mb_max": float(max(r["peak_rss_mb"] for r in mine)),
                "gpu_peak_allocated_mb_max": max((r.get("gpu_peak_allocated_mb") or 0) for r in mine) or None,
                "runs": len(mine),
            }
        if "m3_rag" in row and "m3_rag_inline" in row:  # what the input thread pays
            inline = row["m3_rag_inline"]["tokens_per_s_median"]
            row["ratio_input_thread"] = row["m3_rag"]["tokens_per_s_median"] / inline
        if "m3_rag" in row and "flagembedding" in row:
            tokens_per_s = row["m3_rag"]["tokens_per_s_median"]
            ratio = tokens_per_s / row["flagembedding"]["tokens_per_s_median"]
            row["ratio_tokens_per_s"] = ratio
            target = (TARGETS if targets is None else targets).get((name, mode), {})
            row["target_ratio"] = target.get("ratio")
            row["target_tokens_per_s"] = target.get("tokens_per_s")
            met = [ratio >= target["ratio"]] if "ratio" in target else []
            met += [tokens_per_s >= target["tokens_per_s"]] if "tokens_per_s" in target else []
            row["target_met"] = all(met) if met else None
        out[key] = row
    return out


def run_benchmark(
    *,
    result_name: str,
    kind: str,
    device: str,
    fp16: bool,
    corpora: list[str],
    modes: list[str],
    reps: int,
    fresh: bool,
    serve: bool,
    max_minutes: float,
    profile: bool = False,
    counts: dict[str, int] | None = None,
    libs: tuple[str, ...] = ("m3", "flag"),
    m3_args: list[str] | None = None,
    targets: dict[tuple[str, str], dict[str, float]] | None = None,
) -> Path:
    """Run (or continue) the benchmark and write ``results/<result_name>.json``.

    ``libs`` are keys of :data:`LIBS` (alternated run by run); ``m3_args`` are extra worker
    arguments of the ``"m3"`` runs; ``targets`` replace :data:`TARGETS`.
    """
    started = time.perf_counter()
    ckpt = checkpoint(kind, device=device)
    files = {name: corpus_file(name, ckpt, count=(counts or {}).get(name)) for name in corpora}
    flag_python = ref_python()
    pythons = {lib: flag_python if LIBS[lib][0] == "flag" else Path(sys.executable) for lib in libs}
    envs = {lib: {} if LIBS[lib][0] == "flag" else _env_m3() for lib in libs}
    extras = {lib: list(m3_args or []) if lib == "m3" else [] for lib in libs}
    previous = RESULTS / f"{result_name}.json"
    runs: list[dict[str, Any]] = []
    checks: dict[str, Any] = {}
    old_setup: dict[str, Any] = {}
    if previous.is_file() and not fresh:
        old = json.loads(previous.read_text(encoding="utf-8"))
        runs, checks, old_setup = old.get("runs", []), old.get("checks", {}), old.get("setup", {})
    commit = _commit()
    servers = (
        {lib: _Server(_cmd(pythons[lib], lib, ckpt, device, fp16, extras[lib]), envs[lib]) for lib in libs}
        if serve
        else {}
    )
    settings = {LIBS[lib][2]: servers[lib].ready.get("settings") for lib in servers}

    def payload() -> dict[str, Any]:
        setup = {
            "checkpoint": {"path": str(ckpt.relative_to(ROOT)), **ARCHS[kind].__dict__, "vocab_size": 250_002},
            "device": device,
            "dtype": "float16" if fp16 else "float32",
            "corpora": {**old_setup.get("corpora", {}), **{name: _describe(files[name], name) for name in corpora}},
            "m3_rag_settings": "M3Embedder.from_pretrained(ckpt, device, dtype) defaults; encode(texts) "
            "(dense-only: sparse=False, colbert=False); max_length default = the model's 8192",
            "flagembedding_settings": f"BGEM3FlagModel(ckpt, use_fp16={fp16}, devices={device!r}) default batch_size "
            "256; encode(texts, max_length=8192, return_dense=True, return_sparse/return_colbert_vecs=True or False)",
            "flagembedding_env": ref_versions(flag_python),
            "tokens_counted": "tokenizer ids per text with <s> and </s>, no padding (the same for both libraries)",
            "process": "serve: one process per library, model loaded once" if serve else "one fresh process per run",
            "libraries": {lib: LIBS[lib][2] for lib in libs},
            "library_settings": settings,
        }
        summary = _summarise(runs, corpora, modes, targets)
        return {"setup": setup, "summary": summary, "checks": checks, "runs": runs}

    try:
        for _ in range(reps):
            for name in corpora:
                for mode in modes:
                    if (time.perf_counter() - started) / 60 > max_minutes:
                        print(f"stopping: --max-minutes {max_minutes} reached", file=sys.stderr)
                        return write_result(result_name, payload())
                    key = f"{name}/{mode}"
                    done = sum(1 for r in runs if r["corpus"] == name and r["modes"] == mode and r["lib"] == "m3")
                    order = libs[done % len(libs) :] + libs[: done % len(libs)]  # who goes first rotates
                    for lib in order:
                        wanted = key not in checks and lib in ("m3", "flag")
                        save = CACHE / f"dense-{result_name}-{name}-{mode}-{lib}.npy" if wanted else None
                        before = loadavg()
                        if serve:
                            res = servers[lib].request(corpus=str(files[name]), modes=mode,
                                                       save_dense=str(save) if save else None)  # fmt: skip
                        else:
                            cmd = [*_cmd(pythons[lib], lib, ckpt, device, fp16, extras[lib]), "--corpus", str(files[name]),
                                   "--modes", mode] + (["--save-dense", str(save)] if save else [])  # fmt: skip
                            res = run_json(cmd, env=envs[lib], timeout=3600)
                        res.update(corpus=name, lib=lib, rep=done, commit=commit, load_before=before,
                                   load_after=loadavg(), at=time.strftime("%Y-%m-%dT%H:%M:%S"))  # fmt: skip
                        runs.append(res)
                        print(f"{key} {lib}: {res['tokens_per_s']:.0f} tokens/s, peak RSS {res['peak_rss_mb']:.0f} MB "
                              f"(load {before[0]:.1f})", file=sys.stderr)  # fmt: skip
                        write_result(result_name, payload())
                    if key not in checks and {"m3", "flag"} <= set(libs):
                        checks[key] = _check(result_name, name, mode, runs)
    finally:
        for server in servers.values():
            server.close()
    if profile:
        for name in corpora:
            target = RESULTS / f"{result_name}_profile_{name}.txt"
            cmd = [*_cmd(pythons["m3"], "m3", ckpt, device, fp16, extras["m3"]), "--corpus", str(files[name]), "--modes", "all",
                   "--profile", str(target)]  # fmt: skip
            res = run_json(cmd, env=envs["m3"], timeout=3600)
            print(f"profile of m3-rag on {name} (under cProfile: {res['tokens_per_s']:.0f} tokens/s): {target}",
                  file=sys.stderr)  # fmt: skip
    return write_result(result_name, payload())


def _describe(path: Path, name: str) -> dict[str, Any]:
    tokens = json.loads(path.read_text(encoding="utf-8"))["tokens"]
    _, low, high = CORPORA[name]
    return {"texts": len(tokens), "tokens": sum(tokens), "min_tokens": min(tokens), "max_tokens": max(tokens),
            "spec": f"{len(tokens)} texts of {low}-{high} tokens, lengths uniform"}  # fmt: skip


def _check(result_name: str, name: str, mode: str, runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The two libraries' outputs agree: dense vectors, number of sparse entries and ColBERT rows."""
    a = np.load(CACHE / f"dense-{result_name}-{name}-{mode}-m3.npy")
    b = np.load(CACHE / f"dense-{result_name}-{name}-{mode}-flag.npy")
    mine = {r["lib"]: r for r in runs if r["corpus"] == name and r["modes"] == mode}
    return {
        "max_abs_diff_dense": float(np.abs(a - b).max()),
        "same_sparse_entries": mine["m3"]["sparse_entries"] == mine["flag"]["sparse_entries"],
        "same_colbert_rows": mine["m3"]["colbert_rows"] == mine["flag"]["colbert_rows"],
    }
