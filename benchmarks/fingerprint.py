"""What the model fingerprint costs at BGE-M3's size: load time with and without it.

BGE-M3 (``BAAI/bge-m3``) ships 2.27 GB of float32 weights (568M parameters, 391 tensors), a
1024 x 1024 ColBERT head and a 17 MB ``tokenizer.json``. This script makes a random checkpoint of
exactly that architecture (``assets.checkpoint("gpu")``, saved in float16) and a float32 copy of
it (the size and dtype of the real files, ``model.safetensors`` and ``pytorch_model.bin``), then
times, each in a fresh process and alternating:

- ``load``: ``m3_rag.model.load_model`` as ``M3Embedder.from_pretrained`` calls it (float32, CPU);
- ``load-nofp``: the same with the fingerprint replaced by a constant;
- ``fingerprint``: ``StoredTensors`` + ``checkpoint_fingerprint`` alone, with a breakdown
  (tensor samples, tokenizer.json's SHA-256, heads), and for comparison the SHA-256 of the whole
  weight file (what an exact hash of every value would cost).

"warm": the files are in the page cache (the normal case after a first load); "cold": every file
of the checkpoint is evicted first (``fsync`` + ``posix_fadvise(DONTNEED)``), so the samples
are read from disk.

    python benchmarks/fingerprint.py            # writes results/fingerprint.json
    python benchmarks/fingerprint.py --runs 2

Result (results/fingerprint.json: 2 shared CPU cores, load average 6-8, so whole loads vary by
+-2 s between processes and ``load`` minus ``load-nofp`` is noise; ``fingerprint_in_load_s``
times the fingerprint inside the same load): warm, 0.33-0.49 s within a 8.5-10 s load (~5%);
cold, 1.4 s within the load, 3.1-4.3 s alone (the spread samples touch nearly every page, read
from disk). The hashing itself is ~60 ms (samples, tokenizer.json, heads); the rest is page
faults. An exact SHA-256 of every weight byte: 3.3-4.5 s warm.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from _common import CACHE, loadavg, run_json, summary, write_result

HERE = Path(__file__).resolve().parent


def fp32_checkpoint(fmt: str) -> Path:
    """A float32 copy of the bge-m3-architecture checkpoint, in ``fmt`` ("safetensors" or "bin")."""
    import assets

    folder = CACHE / f"m3-large-h1024-l24-fp32-{fmt}"
    if (folder / "DONE").is_file():
        return folder
    import torch
    from safetensors.torch import load_file, save_file

    source = assets.checkpoint("gpu", device="cpu")
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(source / name, folder / name)
    state = {k: v.float().contiguous() for k, v in load_file(source / "model.safetensors").items()}
    if fmt == "safetensors":
        save_file(state, folder / "model.safetensors", metadata={"format": "pt"})
    else:
        torch.save(state, folder / "pytorch_model.bin")
    del state
    for head in ("colbert_linear.pt", "sparse_linear.pt"):
        state = torch.load(source / head, weights_only=True)
        torch.save({k: v.float() for k, v in state.items()}, folder / head)
    (folder / "DONE").write_text("float32 copy of " + source.name + "\n")
    return folder


def evict(folder: Path) -> None:
    """Drop the folder's files from the page cache (only they: other processes are unaffected)."""
    for path in folder.iterdir():
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def worker(folder: Path, mode: str, cold: bool) -> dict[str, Any]:
    import torch

    import m3_rag.model as model_module
    from m3_rag.fingerprint import StoredTensors, checkpoint_fingerprint, file_sha256
    from m3_rag.tokenizer import read_special_tokens

    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    weights = next(p for p in folder.iterdir() if p.name in ("model.safetensors", "pytorch_model.bin"))
    if cold:
        evict(folder)
    out: dict[str, Any] = {"mode": mode, "cold": cold, "weights": weights.name, "bytes": weights.stat().st_size}
    if mode in ("load", "load-nofp"):
        inner = model_module.checkpoint_fingerprint
        spent: list[float] = []

        def timed(*a: Any, **k: Any) -> str:
            t = time.perf_counter()
            value = inner(*a, **k) if mode == "load" else ""
            spent.append(time.perf_counter() - t)
            return value

        model_module.checkpoint_fingerprint = timed  # type: ignore[assignment]
        start = time.perf_counter()
        model = model_module.load_model(folder, device=torch.device("cpu"), dtype=torch.float32)
        out["seconds"] = time.perf_counter() - start
        out["fingerprint_in_load_s"] = spent[0]
        out["fingerprint"] = model.fingerprint
        out["parameters"] = sum(p.numel() for p in model.parameters())
    else:
        config = json.loads((folder / "config.json").read_text())
        heads = []
        for head in ("sparse_linear.pt", "colbert_linear.pt"):
            state = torch.load(folder / head, weights_only=True)
            heads += [(f"{head}:weight", state["weight"]), (f"{head}:bias", state["bias"])]
        specials = read_special_tokens(folder)
        start = time.perf_counter()
        stored = StoredTensors(folder)
        opened = time.perf_counter()
        fingerprint = checkpoint_fingerprint(folder, config=config, heads=heads, special_tokens=specials, stored=stored)
        out["seconds"] = time.perf_counter() - start
        out["open_s"] = opened - start
        out["fingerprint"] = fingerprint
        out["tensors"] = len(stored.floating())
        # the parts, again (warm now): samples, tokenizer hash, heads
        t0 = time.perf_counter()
        for name in stored.floating():
            stored.sample(name)
        t1 = time.perf_counter()
        file_sha256(folder / "tokenizer.json")
        t2 = time.perf_counter()
        for _, tensor in heads:
            hashlib.sha256(tensor.float().numpy().tobytes())
        t3 = time.perf_counter()
        out["parts_warm_s"] = {"samples": t1 - t0, "tokenizer_sha256": t2 - t1, "heads": t3 - t2}
        if not cold:
            t4 = time.perf_counter()
            file_sha256(weights)
            out["whole_file_sha256_s"] = time.perf_counter() - t4
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3, help="runs per (mode, cache state)")
    parser.add_argument("--worker", nargs=3, metavar=("FOLDER", "MODE", "COLD"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        folder, mode, cold = args.worker
        print(json.dumps(worker(Path(folder), mode, cold == "cold")))
        return

    folders = {fmt: fp32_checkpoint(fmt) for fmt in ("safetensors", "bin")}
    before = loadavg()
    runs: list[dict[str, Any]] = []
    plan = [("safetensors", m, c) for c in ("warm", "cold") for m in ("load", "load-nofp", "fingerprint")]
    plan += [("bin", "fingerprint", c) for c in ("warm", "cold")]
    for i in range(args.runs):
        for fmt, mode, cache in plan if i % 2 == 0 else plan[::-1]:
            if cache == "warm":  # read the files once so that they are in the page cache
                for path in folders[fmt].iterdir():
                    with open(path, "rb") as f:
                        while f.read(1 << 24):
                            pass
            result = run_json(
                [sys.executable, str(HERE / "fingerprint.py"), "--worker", str(folders[fmt]), mode, cache]
            )
            result["format"] = fmt
            runs.append(result)
            print(f"{fmt:11s} {mode:11s} {cache}: {result['seconds']:.3f} s", flush=True)
    fingerprints = {r["fingerprint"] for r in runs if r["mode"] != "load-nofp"}
    assert len(fingerprints) == 1, f"the fingerprint differs between runs or formats: {fingerprints}"

    def times(fmt: str, mode: str, cache: str) -> list[float]:
        return [r["seconds"] for r in runs if (r["format"], r["mode"], r["cold"]) == (fmt, mode, cache == "cold")]

    result: dict[str, Any] = {"setup": {"checkpoint": str(folders["safetensors"].name), "runs": args.runs}}
    result["summary"] = {}
    for cache in ("warm", "cold"):
        load, nofp = times("safetensors", "load", cache), times("safetensors", "load-nofp", cache)
        result["summary"][cache] = {
            "load_s": summary(load),
            "load_without_fingerprint_s": summary(nofp),
            "fingerprint_alone_safetensors_s": summary(times("safetensors", "fingerprint", cache)),
            "fingerprint_alone_bin_s": summary(times("bin", "fingerprint", cache)),
            "load_overhead_s": statistics.median(load) - statistics.median(nofp),
            "fingerprint_in_load_s": summary(
                [r["fingerprint_in_load_s"] for r in runs if (r["mode"], r["cold"]) == ("load", cache == "cold")]
            ),
        }
    warm_fp = [r for r in runs if r["mode"] == "fingerprint" and not r["cold"] and r["format"] == "safetensors"]
    result["summary"]["parts_warm_s"] = {
        k: statistics.median(r["parts_warm_s"][k] for r in warm_fp) for k in warm_fp[0]["parts_warm_s"]
    }
    result["summary"]["whole_file_sha256_warm_s"] = statistics.median(r["whole_file_sha256_s"] for r in warm_fp)
    result["summary"]["weights_bytes"] = warm_fp[0]["bytes"]
    result["summary"]["tensors"] = warm_fp[0]["tensors"]
    result["fingerprint"] = fingerprints.pop()
    result["load_before"], result["load_after"] = before, loadavg()
    result["runs"] = runs
    path = write_result("fingerprint", result)
    print(json.dumps(result["summary"], indent=2))
    print(path)


if __name__ == "__main__":
    main()
