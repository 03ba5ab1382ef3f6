"""Rewrite the results table of ``benchmarks/README.md`` from ``benchmarks/results/*.json``.

Every number in the table comes from a result file written by a benchmark run::

    python benchmarks/report.py
"""

from __future__ import annotations

import json
import re
import statistics
from typing import Any

from _common import HERE, RESULTS

README = HERE / "README.md"
BEGIN, END = "<!-- results:begin -->", "<!-- results:end -->"


def _load(name: str) -> dict[str, Any] | None:
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def _machine(result: dict[str, Any]) -> str:
    m = result["machine"]
    gpu = f", {m['gpu']}" if m.get("gpu") else ""
    return f"{m['cpu']}, {m['cores']} cores{gpu}"


def _met(value: bool | None) -> str:
    return "" if value is None else (" ✅" if value else " ❌")


def _encode_rows(result: dict[str, Any], label: str, command: str) -> list[str]:
    rows = []
    names = {"passages/all": "passages, all three", "passages/dense": "passages, dense only",
             "documents/all": "documents, all three", "documents/dense": "documents, dense only"}  # fmt: skip
    load = [r["load_before"][0] for r in result["runs"]] or [float("nan")]
    for key, row in result["summary"].items():
        if "ratio_tokens_per_s" not in row:
            continue
        cells = []
        for lib in ("m3_rag", "flagembedding"):
            r = row[lib]
            mem = f"GPU {r['gpu_peak_allocated_mb_max']:.0f} MB" if r.get("gpu_peak_allocated_mb_max") else (
                f"peak RSS {r['peak_rss_mb_median']:.0f} MB")  # fmt: skip
            cells.append(f"{r['tokens_per_s_median']:,.0f} tok/s, {r['docs_per_s_median']:.2f} docs/s, {mem} "
                         f"(n={r['runs']})")  # fmt: skip
        target = f" (target ≥ {row['target_ratio']}x){_met(row['target_met'])}" if row.get("target_ratio") else ""
        corpus = result["setup"]["corpora"][key.split("/")[0]]
        figure = f"{label}: {names.get(key, key)} ({corpus['texts']} texts, {corpus['tokens']:,} tokens)"
        rows.append(f"| {figure} | {_machine(result)}, load {min(load):.1f}-{max(load):.1f} | {result['date'][:10]} "
                    f"| {cells[0]} | {cells[1]} | **{row['ratio_tokens_per_s']:.2f}x**{target} | `{command}` |")  # fmt: skip
    return rows


def _index_rows(result: dict[str, Any]) -> list[str]:
    command = "python benchmarks/index_search.py"
    where = f"{_machine(result)}, load {result['load_before'][0]:.1f}→{result['load_after'][0]:.1f}"
    date = result["date"][:10]
    setup = result["setup"]
    rows = []
    for mode, timings in result["search_ms"].items():
        hot, cold = timings["hot"], timings["cold"]
        ok = hot["p50_ms"] <= 100
        rows.append(
            f"| search k={setup['k']}, {setup['candidates_per_mode']} candidates/mode, first stage {mode} "
            f"({setup['documents']:,} docs; {hot['candidates_reranked_mean']:.0f} reranked) | {where} | {date} "
            f"| p50 {hot['p50_ms']:.0f} ms, p95 {hot['p95_ms']:.0f} ms hot; p50 {cold['p50_ms']:.0f} ms, "
            f"p95 {cold['p95_ms']:.0f} ms cold | — | (target p50 ≤ 100 ms){_met(ok)} | `{command}` |"
        )
    mem = result["memory"]
    rows.append(
        f"| index memory per document | {where} | {date} | RAM (dense + sparse + inverted index) "
        f"{mem['total_bytes_per_doc']:,.0f} B (RSS growth {mem['rss_growth_per_doc_bytes']:,.0f} B); ColBERT on disk "
        f"{mem['colbert_disk_bytes_per_doc']:,.0f} B ({mem['colbert_disk_gb_at_docs']} GB at {setup['documents']:,}) "
        f"| — | — | `{command}` |"
    )
    rr = result["rerank_100_candidates_ms"]
    store, memory, flag, flag1 = (rr[k] for k in ("m3_rag_from_store", "m3_rag_in_memory_float32", "flagembedding",
                                                  "flagembedding_1_thread"))  # fmt: skip
    rows.append(
        f"| hybrid rerank of {rr['candidates']} candidates (median ms, {store['n']} samples) | {where} | {date} "
        f"| {store['median']:.1f} ms from the index (float16 mmap); {memory['median']:.1f} ms on in-memory float32 "
        f"| {flag['median']:.1f} ms ({rr['flagembedding_torch_threads']} torch threads); {flag1['median']:.1f} ms "
        f"(1 thread) | **{rr['ratio_median']:.2f}x** from the index, {rr['ratio_median_in_memory']:.2f}x in memory "
        f"(target ≥ 20x){_met(rr['ratio_median'] >= 20)} | `{command}` |"
    )
    if (roof := rr.get("roofline")) is not None:
        rows.append(
            f"| floor of any exact rerank of {rr['candidates']} candidates: the token-score product alone "
            f"({roof['colbert_rows']:,} ColBERT rows, {roof['flops'] / 1e9:.2f} GFLOP) | {where} | {date} "
            f"| {roof['skinny_product_min_ms']:.1f} ms at best in memory ({roof['skinny_product_gflops']:.0f} GFLOP/s); "
            f"{roof['floor_ms_at_peak']:.1f} ms at the sgemm peak ({roof['square_sgemm_peak_gflops']:.0f} GFLOP/s) "
            f"| {flag['median']:.1f} ms | at most {roof['max_ratio_vs_flag_at_skinny_product']:.1f}x "
            f"({roof['max_ratio_vs_flag_at_peak']:.1f}x at peak) | `{command}` |"
        )
    rows += _commit_rows(result, where, date, command)
    return rows


def _mb(n: float) -> str:
    return f"{n / 1e6:,.2f} MB" if abs(n) < 1e8 else f"{n / 1e6:,.0f} MB"


def _commit_rows(result: dict[str, Any], where: str, date: str, command: str) -> list[str]:
    """Bytes written, folder growth, peak memory and time of one commit (absent from older results)."""
    commit = result.get("commit")
    if commit is None:
        return []
    n, index_bytes = commit["documents"], commit["index_bytes_if_every_doc_had_its_own_colbert"]
    loads = [r for c in commit["cases"].values() if c["mode"] == "load" for r in c["runs"]]
    fresh = statistics.median(r["load_s"] for r in loads)
    if all("load_peak_rss_mb" in r for r in loads):
        fresh_rss = f", peak RSS {statistics.median(r['load_peak_rss_mb'] for r in loads):,.0f} MB"
    else:
        fresh_rss = ""
    rows = [
        f"| load of the index folder ({n:,} docs, {result['setup']['index_folder']['segments']} segments) | {where} "
        f"| {date} | `M3Index.load` {result['setup']['load_s']:.1f} s; first search (builds the inverted indexes) "
        f"{result['setup']['first_search_s']:.1f} s; in a fresh process (median of the commit runs) {fresh:.1f} s"
        f"{fresh_rss} "
        f"| — | — | `{command}` |"
    ]
    by_size: dict[int, dict[str, Any]] = {}
    for case in commit["cases"].values():
        by_size.setdefault(case["added"], {})[case["mode"]] = case
    for added, cases in sorted(by_size.items()):
        what = f"{added:,} documents" if added else "no change"
        cells = []
        for mode, case in cases.items():
            med = case["median"]
            steps = f"`{mode}` → `add_encoded` → `save()`" if mode == "load" else "`open` → `add_encoded`"
            if not added:
                steps = f"`{mode}` → `save()`"
            sign = "+" if med["folder_bytes_change"] >= 0 else ""
            own = (
                f"{med['write_bytes'] / (added * commit['index_bytes_per_doc']):.2f}x the documents' own bytes, "
                if added
                else ""
            )
            cells.append(
                f"{steps}: wrote {_mb(med['write_bytes'])} ({own}"
                f"{med['write_bytes'] / index_bytes:.3%} of the index; "
                f"{_mb(med['wchar'])} through write calls), folder {sign}{_mb(med['folder_bytes_change'])}, "
                f"peak RSS +{med['peak_over_loaded_mb']:,.0f} MB over the loaded index "
                f"(+{med['peak_over_ready_mb']:,.0f} MB beyond the input encodings), {med['commit_s']:.2f} s"
            )
        runs = min(len(c["runs"]) for c in cases.values())
        rows.append(
            f"| commit of {what} into the {n:,}-doc folder ({index_bytes / 1e9:,.1f} GB; median of {runs}, "
            f"each in a fresh process) | {where} | {date} | {'<br>'.join(cells)} | — | — | `{command}` |"
        )
    return rows


def table() -> str:
    lines = [
        "| figure | machine | date | m3-rag | FlagEmbedding 1.4.2 | ratio | reproduce |",
        "|---|---|---|---|---|---|---|",
    ]
    if (cpu := _load("encode_cpu")) is not None:
        lines += _encode_rows(cpu, "CPU encode", "python benchmarks/encode_cpu.py")
    if (gpu := _load("encode_gpu")) is not None:
        lines += _encode_rows(gpu, "GPU encode", "python benchmarks/encode_gpu.py")
    else:
        lines.append("| GPU encode (bge-m3 architecture, fp16) | — | not run yet | | | | "
                     "`python benchmarks/encode_gpu.py` |")  # fmt: skip
    if (index := _load("index_search")) is not None:
        lines += _index_rows(index)
    return "\n".join(lines)


def main() -> None:
    text = README.read_text(encoding="utf-8")
    pattern = re.compile(re.escape(BEGIN) + ".*?" + re.escape(END), re.DOTALL)
    if not pattern.search(text):
        raise SystemExit(f"{README} has no {BEGIN} ... {END} section")
    README.write_text(pattern.sub(lambda _: f"{BEGIN}\n{table()}\n{END}", text), encoding="utf-8")
    print(table())


if __name__ == "__main__":
    main()
