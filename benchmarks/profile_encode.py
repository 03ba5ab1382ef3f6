"""Where the CPU encode time goes: the network's floor for each library's batching, and a cProfile.

For each corpus of ``encode_cpu.py`` (same checkpoint, same texts):

1. the plain forward passes of the backbone (no heads, no post-processing) over the batches
   m3-rag forms and over the batches FlagEmbedding forms (and its first batch alone, which it
   runs twice), each in its own environment, alternated, medians over ``--reps``;
2. one m3-rag encode (all three outputs) under cProfile -> ``results/encode_cpu_profile_<corpus>.txt``.

With the medians of ``results/encode_cpu.json`` this gives each library's time outside the
network and the best ratio m3-rag could reach with its batching (FlagEmbedding's encode time
over m3-rag's forward floor). Writes ``results/encode_cpu_profile.json``::

    python benchmarks/profile_encode.py            # ~15 minutes on 2 busy cores
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

from _common import HERE, RESULTS, loadavg, run_json, write_result
from _encode_bench import _cmd, _env_m3
from assets import checkpoint, corpus_file
from ref_env import ref_python


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", nargs="+", choices=["passages", "documents"], default=["passages", "documents"])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--no-cprofile", action="store_true")
    args = parser.parse_args()
    ckpt = checkpoint("cpu")
    pythons = {"m3": Path(sys.executable), "flag": ref_python()}
    envs = {"m3": _env_m3(), "flag": {}}
    encode = json.loads((RESULTS / "encode_cpu.json").read_text()) if (RESULTS / "encode_cpu.json").is_file() else None
    out: dict[str, Any] = {"load_before": loadavg()}
    for name in args.corpus:
        corpus = corpus_file(name, ckpt)
        floors: dict[str, list[dict[str, Any]]] = {"m3": [], "flag": []}
        for rep in range(args.reps):
            for lib in ("m3", "flag") if rep % 2 == 0 else ("flag", "m3"):
                cmd = [str(pythons[lib]), str(HERE / "_forward_worker.py"), "--checkpoint", str(ckpt),
                       "--corpus", str(corpus), "--plan", lib]  # fmt: skip
                floors[lib].append(run_json(cmd, env=envs[lib]))
                print(
                    f"{name} forward floor, {lib} batches: {floors[lib][-1]['forward_seconds']:.1f} s", file=sys.stderr
                )
        row: dict[str, Any] = {}
        for lib, runs in floors.items():
            row[f"{lib}_forward"] = {
                "seconds_median": statistics.median(r["forward_seconds"] for r in runs),
                "first_batch_seconds_median": statistics.median(r["first_batch_seconds"] for r in runs),
                "batches": runs[0]["batches"],
                "tokens": runs[0]["tokens"],
                "padded_tokens": runs[0]["padded_tokens"],
                "transformers": runs[0]["transformers"],
                "attn_implementation": runs[0]["attn_implementation"],
                "values": [r["forward_seconds"] for r in runs],
            }
        flag_probe = row["flag_forward"]["first_batch_seconds_median"]
        row["flag_forward_with_probe_seconds"] = row["flag_forward"]["seconds_median"] + flag_probe
        summary = (encode or {}).get("summary", {}).get(f"{name}/all")
        if summary and "m3_rag" in summary and "flagembedding" in summary:
            m3_s = summary["m3_rag"]["seconds_median"]
            flag_s = summary["flagembedding"]["seconds_median"]
            m3_floor = row["m3_forward"]["seconds_median"]
            row["from_encode_cpu_json"] = {
                "m3_rag_encode_seconds_median": m3_s,
                "flagembedding_encode_seconds_median": flag_s,
                "m3_rag_outside_network_share": 1 - m3_floor / m3_s,
                "flagembedding_outside_network_share": 1 - row["flag_forward_with_probe_seconds"] / flag_s,
                "best_ratio_with_m3_batching": flag_s / m3_floor,
                "note": "medians of different runs on a shared machine: shares are approximate",
            }
        if not args.no_cprofile:
            target = RESULTS / f"encode_cpu_profile_{name}.txt"
            cmd = [*_cmd(pythons["m3"], "m3", ckpt, "cpu", False), "--corpus", str(corpus), "--modes", "all",
                   "--profile", str(target)]  # fmt: skip
            res = run_json(cmd, env=envs["m3"], timeout=3600)
            row["cprofile"] = {
                "file": str(target.relative_to(HERE)),
                "tokens_per_s_under_cprofile": res["tokens_per_s"],
            }
        out[name] = row
    out["load_after"] = loadavg()
    print(write_result("encode_cpu_profile", out))


if __name__ == "__main__":
    main()
