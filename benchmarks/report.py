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
        if row.get("target_tokens_per_s"):
            target = f" (target ≥ {row['target_tokens_per_s']:,.0f} tok/s){_met(row['target_met'])}"
        if (inline := row.get("m3_rag_inline")) is not None:  # the same without the input thread
            cells[0] += f"; input thread off: {inline['tokens_per_s_median']:,.0f} tok/s"
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


def _rerank_store_rows(result: dict[str, Any], *, disk: bool = True) -> list[str]:
    date, setup = result["date"][:10], result["setup"]
    threads = setup["torch_threads"]
    command = "python benchmarks/rerank_store.py" + (
        "" if threads == 1 else f" --threads {threads} --name rerank_store_2threads"
    )
    where = f"{_machine(result)}, {threads} torch thread{'s' * (threads > 1)}, load {result['load_before'][0]:.1f}→{result['load_after'][0]:.1f}"
    rows = []
    for n, by_mode in result["rerank_s"].items():
        store = ", ".join(f"{mode.split()[1]} {r['median'] * 1e3:.0f} ms ({r['ratio_vs_re_encode']:.0f}x)"
                          for mode, r in by_mode.items() if mode.startswith("store"))  # fmt: skip
        f16 = by_mode["store float16"]["ratio_vs_re_encode"]
        rows.append(
            f"| rerank {n} candidates of ~{setup['candidate_tokens_mean']:.0f} tokens (mid-size checkpoint; median of "
            f"{setup['rounds']}, alternated) | {where} | {date} | from the encoding store: {store} | (m3-rag) re-encoding them: "
            f"{by_mode['re-encode']['median']:.2f} s | **{f16:.0f}x** float16 (target ≥ {setup['target_ratio']}x)"
            f"{_met(f16 >= setup['target_ratio'])} | `{command}` |"
        )
    if not disk:
        return rows
    cells = "; ".join(f"{d} {v['file_bytes_per_doc'] / 1e3:,.0f} kB ({v['colbert_bytes_per_token']} B/token)"
                      for d, v in result["disk"].items())  # fmt: skip
    at_1024 = "; ".join(f"{d} {v['bge_m3_entry_bytes_per_doc'] / 1e3:,.0f} kB" for d, v in result["disk"].items())
    rows.append(
        f"| encoding store on disk per document (~{setup['candidate_tokens_mean']:.0f} tokens) | {where} | {date} "
        f"| 384-d, measured (SQLite file / docs): {cells} | at BGE-M3's 1024-d (entry bytes): {at_1024} | — "
        f"| `{command}` |"
    )
    return rows


def _fidelity_rows(result: dict[str, Any]) -> list[str]:
    command = "python benchmarks/encoding_fidelity.py"
    setup, fig = result["setup"], result["figures"]
    where = f"{_machine(result)}, load {result['load_before'][0]:.1f}→{result['load_after'][0]:.1f}"
    rows = []
    for dtype in ("float16", "int8"):
        f = fig[dtype]
        ok = f["colbert_error_max"] <= 5e-3 and f["same_top10"] >= 0.99
        rows.append(
            f"| {dtype} ColBERT storage vs float32 ({setup['passages']:,} passages, {setup['queries']} queries, "
            f"exhaustive hybrid top-10; {setup['colbert_dim']}-d) | {where} | {result['date'][:10]} | largest ColBERT "
            f"error {f['colbert_error_max']:.1e} (mean {f['colbert_error_mean']:.1e}), hybrid {f['hybrid_error_max']:.1e}; "
            f"top-10 identical {f['same_top10']:.1%} (as a set {f['same_top10_set']:.1%}); swapped passages were "
            f"≤ {f['largest_gap_swapped']:.1e} apart in float32 | — | (target error ≤ 5e-3, top-10 ≥ 99%){_met(ok)} "
            f"| `{command}` |"
        )
    return rows


def _layout_rows(result: dict[str, Any]) -> list[str]:
    setup, lay = result["setup"], result["layouts"]
    sql, seg = lay["sqlite_page_4096_mmap"], lay["segments_plus_catalog"]
    return [
        f"| encoding store layout ({setup['entries']:,} entries of {setup['tokens']} x {setup['dim']} float16) "
        f"| {_machine(result)}, load {result['load_before'][0]:.1f} | {result['date'][:10]} | SQLite blobs (chosen): "
        f"read 20 / 100 entries {sql['read_20_ms_median']:.1f} / {sql['read_100_ms_median']:.1f} ms, write "
        f"{sql['write_entries_per_s']:,.0f}/s, evict 10% {sql['evict_10pct_s'] * 1e3:.0f} ms | (the alternative) segments + catalog: "
        f"{seg['read_20_ms_median']:.1f} / {seg['read_100_ms_median']:.1f} ms, {seg['write_entries_per_s']:,.0f}/s, "
        f"{seg['evict_10pct_s'] * 1e3:.0f} ms (rewrites live entries) | — | `python benchmarks/encoding_store_layout.py` |"
    ]


def _qdrant_rows(result: dict[str, Any]) -> list[str]:
    where = f"{_machine(result)}, load {result['load_before'][0]:.1f}→{result['load_after'][0]:.1f}"
    date, cmd = result["date"][:10], "`python benchmarks/qdrant_store.py`"
    rows = []
    if (size := result.get("engine_bytes_per_document_bge_m3")) is not None:
        kb = {k: f"{v / 1000:,.0f} KB" for k, v in size.items()}
        rows.append(
            f"| QdrantStore bytes per document in the engine (qdrant-edge; BGE-M3 sizes: 200 ColBERT vectors "
            f"of 1024-d, 1 KB text) | {where} | {date} | float32 {kb['float32']}; float16 {kb['float16']}; int8 "
            f"{kb['int8']} (float16 originals + int8 copy in RAM); no ColBERT {kb['None']} | — | — | {cmd} |"
        )
    for checkpoint, options in (result.get("engine_fidelity") or {}).items():
        figures = "; ".join(
            f"{k}: largest ColBERT error {v['max_abs_colbert_error']:.1e}, top-10 identical {v['top10_identical']:.1%}"
            for k, v in options.items()
            if k != "float32"
        )
        rows.append(f"| QdrantStore ColBERT fidelity vs exact float32 (engine, {checkpoint}, 200 queries) | {where} "
                    f"| {date} | {figures} | — | — | {cmd} |")  # fmt: skip
    local = result["local_mode"]
    ms, by = local["search_ms"], local["candidates_ms_by_scoring"]
    choice = "; ".join(f"{n} docs: client {v['client']:.0f} ms, engine {v['engine']:.0f} ms" for n, v in by.items())
    step = local["colbert_step_1024d_s"]
    rows += [
        f"| QdrantStore search in **local mode** (qdrant-client in-process, pure Python: not a server figure), "
        f"{local['documents']} docs, tiny checkpoint, k=10, 100 candidates/mode | {where} | {date} | "
        f"{ms['qdrant_auto']:.0f} ms per query, scoring=auto (M3Index {ms['m3index']:.0f} ms) | — | — | {cmd} |",
        f"| **local mode**: first stage + candidate scores per query by `scoring` (32-d, 50 vectors per doc) | "
        f"{where} | {date} | {choice} | — | — | {cmd} |",
        f"| **local mode**: the ColBERT step alone at 1024-d (300 points of 100 vectors, 100 candidates) | {where} "
        f"| {date} | restricted MAX_SIM query {step['engine_restricted_query']:.2f} s; fetch + score "
        f"{step['client_fetch_and_score']:.2f} s | — | — | {cmd} |",
    ]
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
    if (rerank := _load("rerank_store")) is not None:
        lines += _rerank_store_rows(rerank)
    if (rerank2 := _load("rerank_store_2threads")) is not None:
        lines += _rerank_store_rows(rerank2, disk=False)
    if (fidelity := _load("encoding_fidelity")) is not None:
        lines += _fidelity_rows(fidelity)
    if (layout := _load("encoding_store_layout")) is not None:
        lines += _layout_rows(layout)
    if (qdrant := _load("qdrant_store")) is not None:
        lines += _qdrant_rows(qdrant)
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
