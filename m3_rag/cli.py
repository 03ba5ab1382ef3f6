"""The ``m3-rag`` command: index folders of .txt/.md files, search them, describe an index.

    m3-rag index examples/corpus --index ./m3-index
    m3-rag search "What is hybrid search?" --index ./m3-index -k 3
    m3-rag info --index ./m3-index
    m3-rag index docs/ --index docs --milvus ./m3.db      # Milvus: --index names the collection

The model comes from ``--model``, else ``$M3_RAG_MODEL``, else the index's own model, else
``BAAI/bge-m3``. Errors are one line on stderr and a non-zero exit status.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import logging
import os
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from .checkpoint import CheckpointUnavailableError
from .chunking import chunk_text
from .encoder import DEFAULT_MODEL, M3Embedder
from .errors import CheckpointError, IndexFormatError
from .index import M3Index
from .index.storage import read_manifest

__all__ = ["main"]

SUFFIXES = (".txt", ".md")
ENV_MODEL = "M3_RAG_MODEL"
MILVUS_HELP = "store in Milvus instead: a .db file (milvus-lite) or http(s)://host:19530; --index names the collection"


class CliError(Exception):
    """A user error: printed as one line, exit status 1."""


def _model_name(args: argparse.Namespace, index_dir: Path | None) -> str:
    if args.model:
        return str(args.model)
    if os.environ.get(ENV_MODEL):
        return os.environ[ENV_MODEL]
    if index_dir is not None and (index_dir / "manifest.json").is_file():
        return str(read_manifest(index_dir).get("model") or DEFAULT_MODEL)
    return DEFAULT_MODEL


def _is_index(path: Path) -> bool:
    return (path / "manifest.json").is_file()


def _collect_files(paths: Sequence[str]) -> list[Path]:
    files: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in SUFFIXES)
            files.extend(found)
        elif path.is_file():
            if path.suffix.lower() not in SUFFIXES:
                raise CliError(f"{raw}: only {' and '.join(SUFFIXES)} files are indexed")
            files.append(path)
        else:
            raise CliError(f"{raw}: no such file or folder")
    return list(dict.fromkeys(p.resolve() for p in files))


def _open_index(index_dir: Path, model: str, *, create: bool, colbert: str | None = "float16") -> M3Index:
    if _is_index(index_dir):
        manifest = read_manifest(index_dir)
        embedder = M3Embedder.from_pretrained(model)
        if manifest.get("model_fingerprint") != embedder.fingerprint:
            raise CliError(
                f"{index_dir} was built with model {manifest.get('model')!r}, not {model!r}; "
                "pass the same --model (or unset M3_RAG_MODEL), or index into a new folder"
            )
        return M3Index.load(index_dir, embedder)
    if not create:
        raise CliError(f"{index_dir} is not an m3-rag index (no manifest.json); create one with `m3-rag index`")
    if index_dir.exists() and (not index_dir.is_dir() or any(index_dir.iterdir())):
        raise CliError(f"{index_dir} exists and is not an m3-rag index; choose an empty or new folder")
    return M3Index(M3Embedder.from_pretrained(model), colbert=None if colbert == "none" else colbert)  # type: ignore[arg-type]


def _open_milvus(args: argparse.Namespace) -> Any:
    from .index.milvus import MilvusStore

    model = _model_name(args, None)
    return MilvusStore(M3Embedder.from_pretrained(model), args.milvus, collection=args.index)


def _open(args: argparse.Namespace, *, create: bool) -> Any:
    """The store to use: Milvus (``--milvus URI``, ``--index`` names the collection) or a folder."""
    if args.milvus:
        return _open_milvus(args)
    index_dir = Path(args.index)
    if not create and not _is_index(index_dir):
        raise CliError(f"{index_dir} is not an m3-rag index (no manifest.json); create one with `m3-rag index`")
    return _open_index(index_dir, _model_name(args, index_dir), create=create, colbert=getattr(args, "colbert", None))


def _stored_chunks(store: Any, prefix: str) -> list[Any]:
    """The stored chunks of one file: ids are ``<path>#0``, ``<path>#1``... without gaps."""
    found: list[Any] = []
    page = 256
    while True:
        got = store.get([f"{prefix}{n}" for n in range(len(found), len(found) + page)])
        found.extend(got)
        if len(got) < page:
            return found


def cmd_index(args: argparse.Namespace) -> int:
    files = _collect_files(args.paths)
    index = _open(args, create=True)
    max_tokens = args.chunk_tokens or min(512, index.embedder.passage_max_length)
    if max_tokens > index.embedder.passage_max_length:
        raise CliError(
            f"--chunk-tokens {max_tokens} is more than the model takes ({index.embedder.passage_max_length})"
        )
    texts: list[str] = []
    ids: list[str] = []
    metas: list[dict[str, Any]] = []
    stale: list[str] = []
    skipped = 0
    for path in files:
        try:
            content = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            raise CliError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from exc
        digest = hashlib.sha256(content.encode("utf-8")).hexdigest()
        prefix = f"{path}#"
        old = _stored_chunks(index, prefix)
        if old and all(r.metadata.get("sha256") == digest for r in old):
            skipped += 1
            continue
        stale.extend(r.id for r in old)
        for n, chunk in enumerate(
            chunk_text(
                content, index.embedder.tokenizer, max_tokens=max_tokens, overlap=min(args.overlap, max_tokens - 3)
            )
        ):
            texts.append(chunk.text)
            ids.append(f"{prefix}{n}")
            metas.append({"source": str(path), "chunk": n, "start": chunk.start, "end": chunk.end, "sha256": digest})
    if texts:
        index.add(texts, ids=ids, metadatas=metas, show_progress=not args.quiet)
    kept = set(ids)
    removed = index.delete([i for i in stale if i not in kept])
    if isinstance(index, M3Index):
        index.save(Path(args.index))
    changed = len({m["source"] for m in metas})
    where = f"{args.milvus} collection {args.index}" if args.milvus else args.index
    print(
        f"indexed {changed} file(s) into {len(texts)} chunk(s), {skipped} unchanged, {removed} old chunk(s) removed; "
        f"{where} holds {len(index)} chunk(s)"
    )
    return 0


def _parse_weights(text: str) -> tuple[float, float, float]:
    try:
        values = tuple(float(x) for x in text.split(","))
    except ValueError as exc:
        raise CliError(f"--weights must be three numbers like 1,1,1 (dense,sparse,colbert), got {text!r}") from exc
    if len(values) != 3:
        raise CliError(f"--weights must be three numbers like 1,1,1 (dense,sparse,colbert), got {text!r}")
    return values[0], values[1], values[2]


def _snippet(text: str, width: int = 160) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= width else flat[: width - 1] + "…"


def cmd_search(args: argparse.Namespace) -> int:
    weights = _parse_weights(args.weights)
    index = _open(args, create=False)
    hits = index.search(
        args.query,
        k=args.k,
        candidates=args.candidates,
        weights=weights,
        rerank_with=args.rerank_model,
        rerank_top_n=args.rerank_top_n,
    )
    if args.json:
        rows = [
            {
                "rank": r,
                "id": h.id,
                "score": h.score,
                "scores": h.scores,
                "source": h.metadata.get("source"),
                "chunk": h.metadata.get("chunk"),
                "text": h.text,
            }
            for r, h in enumerate(hits, 1)
        ]
        print(json.dumps(rows, ensure_ascii=False, indent=2))
        return 0
    if not hits:
        print("no results")
    for rank, hit in enumerate(hits, 1):
        s = hit.scores
        where = f"{hit.metadata.get('source', hit.id)}#{hit.metadata.get('chunk', '')}".rstrip("#")
        extra = f"  hybrid {s['hybrid']:.4f}" if "hybrid" in s else ""
        print(
            f"{rank}. {hit.score:.4f}  (dense {s['dense']:.4f}  sparse {s['sparse']:.4f}  "
            f"colbert {s['colbert']:.4f}{extra})"
        )
        print(f"   {where}")
        print(f"   {_snippet(hit.text)}")
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    if args.milvus:
        store = _open_milvus(args)
        info_milvus = {"uri": args.milvus, "collection": args.index, "model": store.embedder.name, "chunks": len(store)}
        print(
            json.dumps(info_milvus, indent=2) if args.json else "\n".join(f"{k:18} {v}" for k, v in info_milvus.items())
        )
        return 0
    index_dir = Path(args.index)
    manifest = read_manifest(index_dir)
    data = index_dir / str(manifest["data"])
    sources: set[str] = set()
    with open(data / "documents.jsonl", encoding="utf-8") as f:
        for line in f:
            sources.add(str(json.loads(line).get("metadata", {}).get("source", "")))
    sizes = {name: entry.get("bytes", 0) for name, entry in manifest["files"].items()}
    info = {
        "index": str(index_dir),
        "model": manifest.get("model"),
        "model_fingerprint": manifest.get("model_fingerprint"),
        "format_version": manifest.get("version"),
        "chunks": manifest.get("count"),
        "sources": len(sources - {""}),
        "dense_dim": manifest.get("dim"),
        "colbert_dim": manifest.get("colbert_dim"),
        "colbert_storage": manifest.get("colbert"),
        "bytes": sum(sizes.values()),
        "files": sizes,
    }
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    for key, value in info.items():
        if key != "files":
            print(f"{key:18} {value}")
    for name, size in sorted(sizes.items()):
        print(f"  {name:24} {size / 1e6:10.3f} MB")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="m3-rag", description="Hybrid BGE-M3 search over your own documents.")
    sub = parser.add_subparsers(dest="command", required=True)
    model_help = f"model name or folder (default: ${ENV_MODEL}, else the index's model, else {DEFAULT_MODEL})"

    p = sub.add_parser("index", help="index .txt and .md files (folders are read recursively)")
    p.add_argument("paths", nargs="+", metavar="PATH")
    p.add_argument("--index", required=True, metavar="DIR", help="index folder (created or updated)")
    p.add_argument("--milvus", metavar="URI", help=MILVUS_HELP)
    p.add_argument("--model", help=model_help)
    p.add_argument("--chunk-tokens", type=int, default=None, help="max tokens per chunk (default 512)")
    p.add_argument("--overlap", type=int, default=64, help="tokens shared by consecutive chunks (default 64)")
    p.add_argument(
        "--colbert",
        choices=["float16", "float32", "none"],
        default="float16",
        help="how a new index stores ColBERT vectors (none: re-encode candidates at search)",
    )
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_index)

    p = sub.add_parser("search", help="search an index")
    p.add_argument("query")
    p.add_argument("--index", required=True, metavar="DIR")
    p.add_argument("--milvus", metavar="URI", help=MILVUS_HELP)
    p.add_argument("--model", help=model_help)
    p.add_argument("-k", type=int, default=5, help="number of hits (default 5)")
    p.add_argument("--candidates", type=int, default=100, help="first-stage candidates per mode (default 100)")
    p.add_argument("--weights", default="1,1,1", help="dense,sparse,colbert weights (default 1,1,1)")
    p.add_argument("--rerank-model", help="cross-encoder for a final stage, e.g. BAAI/bge-reranker-v2-m3")
    p.add_argument("--rerank-top-n", type=int, default=None, help="hybrid hits the cross-encoder sees (default: -k)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_search)

    p = sub.add_parser("info", help="describe an index")
    p.add_argument("--index", required=True, metavar="DIR")
    p.add_argument("--milvus", metavar="URI", help=MILVUS_HELP)
    p.add_argument("--model", help="model of a Milvus collection (default: $M3_RAG_MODEL, else BAAI/bge-m3)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_info)
    return parser


#: The last words of a failed model download: every way to run without the hub.
MODEL_HINT = (
    f"pass a local checkpoint folder with --model PATH or {ENV_MODEL}=PATH, or download the model once with "
    "network access and set HF_HUB_OFFLINE=1 to read it from the cache without asking the hub"
)


@contextlib.contextmanager
def _log_to_stderr() -> Iterator[None]:
    """m3-rag's own log records (warnings and up) as ``m3-rag: ...`` lines on stderr, each once.

    Only the ``m3_rag`` logger gets a handler (and does not propagate meanwhile); the root logger is
    left alone, because huggingface_hub and transformers print through handlers of their own and a
    root handler would print each of their messages a second time. The handler is removed on
    return, so that calling :func:`main` repeatedly in one process adds nothing up.
    """
    log = logging.getLogger("m3_rag")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("m3-rag: %(message)s"))
    propagate = log.propagate
    log.addHandler(handler)
    log.propagate = False
    try:
        yield
    finally:
        log.removeHandler(handler)
        log.propagate = propagate


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``m3-rag`` console script."""
    args = build_parser().parse_args(argv)
    with _log_to_stderr():
        try:
            return int(args.func(args))
        except CheckpointUnavailableError as exc:  # no network and no cached copy: say how to go on
            print(f"m3-rag: error: {exc.problem}; {MODEL_HINT}", file=sys.stderr)
            return 1
        except (
            CliError,
            CheckpointError,
            IndexFormatError,
            FileExistsError,
            ImportError,
            ValueError,
            TypeError,
            OSError,
        ) as exc:  # one line, whatever the library wrote (transformers' OSErrors span two)
            print(f"m3-rag: error: {' '.join(str(exc).split()) or type(exc).__name__}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            print("m3-rag: interrupted", file=sys.stderr)
            return 130


if __name__ == "__main__":
    raise SystemExit(main())
