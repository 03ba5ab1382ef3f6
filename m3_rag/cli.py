"""The ``m3-rag`` command: index folders of .txt/.md files, search them, describe an index.

    m3-rag index examples/corpus --index ./m3-index
    m3-rag search "What is hybrid search?" --index ./m3-index -k 3
    m3-rag info --index ./m3-index
    m3-rag index docs/ --index docs --milvus ./m3.db      # Milvus: --index names the collection
    m3-rag index docs/ --index docs --qdrant ./qdrant     # Qdrant (a local folder or http(s)://host:6333)

The model comes from ``--model``, else ``$M3_RAG_MODEL``, else the index's own model, else
``BAAI/bge-m3``. Errors are one line on stderr and a non-zero exit status; output cut short by a
closed pipe (``m3-rag search ... | head -1``) is not an error.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from . import __version__
from .checkpoint import CheckpointUnavailableError
from .cli_index import CliError, collect_files, index_files
from .colbert_codec import check_colbert_dtype
from .encoder import DEFAULT_MODEL, M3Embedder
from .errors import CheckpointError, IndexFormatError, ModelMismatchError
from .index.catalog import Catalog
from .index.folder import IndexFolder
from .index.m3_index import M3Index

__all__ = ["main"]

ENV_MODEL = "M3_RAG_MODEL"
MILVUS_HELP = "store in Milvus instead: a .db file (milvus-lite) or http(s)://host:19530; --index names the collection"
QDRANT_HELP = "store in Qdrant instead: a folder (local mode) or http(s)://host:6333; --index names the collection"


def _model_name(args: argparse.Namespace, recorded: str | None) -> str:
    return str(args.model or os.environ.get(ENV_MODEL) or recorded or DEFAULT_MODEL)


def _say(args: argparse.Namespace, message: str) -> None:
    """A progress message on an interactive terminal (never in pipes, logs or tests)."""
    if not getattr(args, "quiet", False) and sys.stderr.isatty():
        print(f"m3-rag: {message}", file=sys.stderr, flush=True)


def _load_model(args: argparse.Namespace, recorded: str | None) -> M3Embedder:
    name = _model_name(args, recorded)
    _say(args, f"loading model {name}")
    return M3Embedder.from_pretrained(name)


def _open_store(args: argparse.Namespace, *, create: bool) -> Any:
    """The store to use: Milvus / Qdrant (``--milvus`` / ``--qdrant``, ``--index`` names the collection) or a folder."""
    if args.milvus and getattr(args, "qdrant", None):
        raise CliError("give --milvus or --qdrant, not both")
    if getattr(args, "qdrant", None):
        from .index import qdrant

        known = qdrant.recorded_model(args.qdrant, args.index)
        if known is None and not create:
            raise CliError(f"{args.qdrant} has no collection {args.index!r}; create one with `m3-rag index --qdrant`")
        asked = getattr(args, "colbert_dtype", "float16")
        colbert: Any = (None if asked == "none" else asked) if known is None else "auto"
        where: dict[str, Any] = qdrant.qdrant_location(args.qdrant)
        return qdrant.QdrantStore(_load_model(args, known), **where, collection=args.index, colbert_dtype=colbert)
    if args.milvus:
        from .index.milvus import MilvusStore, recorded_model

        recorded = recorded_model(args.milvus, args.index)
        if recorded is None and not create:
            raise CliError(f"{args.milvus} has no collection {args.index!r}; create one with `m3-rag index --milvus`")
        return MilvusStore(_load_model(args, recorded), args.milvus, collection=args.index)
    path = Path(args.index)
    if not IndexFolder.is_index(path):
        if not create:
            raise CliError(f"{path} is not an m3-rag index; create one with `m3-rag index`")
        if path.exists() and (not path.is_dir() or any(path.iterdir())):
            raise CliError(f"{path} exists and is not an m3-rag index; choose an empty or new folder")
    embedder = _load_model(args, IndexFolder.model_name(path) if path.is_dir() else None)
    colbert = getattr(args, "colbert_dtype", "float16")
    dtype = check_colbert_dtype(None if colbert == "none" else colbert, allow_none=True)
    try:
        return M3Index.open(path, embedder, create=create, colbert_dtype=dtype)
    except ModelMismatchError as exc:
        raise CliError(
            f"{exc.where} was built with model {exc.built_with}, not {exc.given}; pass the same --model "
            f"(or unset {ENV_MODEL}), or index into a new folder"
        ) from exc


def cmd_index(args: argparse.Namespace) -> int:
    scan = collect_files(args.paths)
    store = _open_store(args, create=True)
    limit = store.embedder.passage_max_length
    chunk_tokens = args.chunk_tokens or min(512, limit)
    if chunk_tokens > limit:
        raise CliError(f"--chunk-tokens {chunk_tokens} is more than the model takes ({limit})")
    try:
        summary = index_files(
            store,
            scan,
            chunk_tokens=chunk_tokens,
            overlap=args.overlap,
            batch_chunks=args.batch_chunks,
            quiet=args.quiet,
        )
    except KeyboardInterrupt:
        print(
            f"m3-rag: interrupted; every committed batch is kept ({len(store)} chunk(s) in the index)", file=sys.stderr
        )
        return 130
    if args.verbose:
        for note in scan.notes:
            print(f"m3-rag: {note}", file=sys.stderr)
    backend = args.milvus or args.qdrant
    where = f"{backend} collection {args.index}" if backend else args.index
    print(f"{summary}; {where} holds {len(store)} chunk(s)")
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
    from .scoring import normalize_weights

    weights = normalize_weights(_parse_weights(args.weights))
    args.quiet = args.json or args.quiet
    store = _open_store(args, create=False)
    candidates = max(args.candidates, args.k)  # -k beyond the pool widens the pool
    hits = store.search(
        args.query,
        k=args.k,
        candidates=candidates,
        weights=weights,
        cross_encoder=args.cross_encoder,
        cross_encoder_top_n=args.cross_encoder_top_n,
    )
    if len(hits) < args.k:
        print(f"m3-rag: found {len(hits)} hit(s) (asked for {args.k}; the index holds {len(store)})", file=sys.stderr)
    if args.json:
        rows = [
            {
                "rank": rank,
                "id": hit.id,
                "score": hit.score,
                "scores": hit.scores,
                **{key: hit.metadata.get(key) for key in ("source", "chunk", "start", "end")},
                "text": hit.text,
            }
            for rank, hit in enumerate(hits, 1)
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
    if args.milvus or args.qdrant:
        args.quiet = True
        store = _open_store(args, create=False)
        info_milvus = {"uri": args.milvus or args.qdrant, "collection": args.index, "model": store.embedder.name}
        info_milvus["chunks"] = len(store)
        if args.qdrant:
            info_milvus["colbert_storage"] = store.colbert_dtype or "none"
        lines = "\n".join(f"{k:18} {v}" for k, v in info_milvus.items())
        print(json.dumps(info_milvus, indent=2) if args.json else lines)
        return 0
    path = Path(args.index)
    IndexFolder.require(path)
    if not (path / "catalog.sqlite").is_file():
        raise CliError(f"{path} is in the format of m3-rag 0.1: run `m3-rag search` on it once to upgrade it")
    catalog = Catalog(path / "catalog.sqlite")
    try:
        meta, stats = catalog.meta(), catalog.stats()
    finally:
        catalog.close()
    info = {
        "index": str(path),
        "model": meta.get("model"),
        "model_fingerprint": meta.get("model_fingerprint"),
        "format_version": meta.get("version"),
        "chunks": stats["documents"],
        "sources": stats["sources"],
        "segments": stats["segments"],
        "dense_dim": int(meta.get("dim", "0")),
        "colbert_dim": int(meta.get("colbert_dim", "0")),
        "colbert_storage": meta.get("colbert_dtype"),
        "bytes": sum(stats["files"].values()),
        "files": stats["files"],
    }
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    for key, value in info.items():
        if key != "files":
            print(f"{key:18} {value}")
    for name, size in sorted(info["files"].items()):
        print(f"  {name:24} {size / 1e6:10.3f} MB")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="m3-rag", description="Hybrid BGE-M3 search over your own documents.")
    parser.add_argument("--version", action="version", version=f"m3-rag {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    model_help = f"model name or folder (default: ${ENV_MODEL}, else the index's model, else {DEFAULT_MODEL})"

    p = sub.add_parser("index", help="index .txt and .md files (folders are read recursively)")
    p.add_argument("paths", nargs="+", metavar="PATH")
    p.add_argument("--index", required=True, metavar="DIR", help="index folder (created or updated)")
    p.add_argument("--milvus", metavar="URI", help=MILVUS_HELP)
    p.add_argument("--qdrant", metavar="PATH_OR_URL", help=QDRANT_HELP)
    p.add_argument("--model", help=model_help)
    p.add_argument("--chunk-tokens", type=int, default=None, help="max tokens per chunk (default 512)")
    p.add_argument("--overlap", type=int, default=64, help="tokens shared by consecutive chunks (default 64)")
    p.add_argument("--batch-chunks", type=int, default=256, help="chunks encoded and committed together (default 256)")
    p.add_argument(
        "--colbert-dtype",
        choices=["float16", "float32", "int8", "none"],
        default="float16",
        help="how a new index stores ColBERT vectors (none: re-encode candidates at search)",
    )
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    p.add_argument("-v", "--verbose", action="store_true", help="name every skipped file")
    p.set_defaults(func=cmd_index)

    p = sub.add_parser("search", help="search an index")
    p.add_argument("query")
    p.add_argument("--index", required=True, metavar="DIR")
    p.add_argument("--milvus", metavar="URI", help=MILVUS_HELP)
    p.add_argument("--qdrant", metavar="PATH_OR_URL", help=QDRANT_HELP)
    p.add_argument("--model", help=model_help)
    p.add_argument("-k", type=int, default=5, help="number of hits (default 5)")
    p.add_argument("--candidates", type=int, default=100, help="first-stage candidates per mode (default 100)")
    p.add_argument("--weights", default="1,1,1", help="dense,sparse,colbert weights (default 1,1,1)")
    p.add_argument("--cross-encoder", help="cross-encoder for a final stage, e.g. BAAI/bge-reranker-v2-m3")
    p.add_argument(
        "--cross-encoder-top-n", type=int, default=None, help="hybrid hits the cross-encoder sees (default -k)"
    )
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("-q", "--quiet", action="store_true", help="no messages on stderr")
    p.set_defaults(func=cmd_search)

    p = sub.add_parser("info", help="describe an index")
    p.add_argument("--index", required=True, metavar="DIR")
    p.add_argument("--milvus", metavar="URI", help=MILVUS_HELP)
    p.add_argument("--qdrant", metavar="PATH_OR_URL", help=QDRANT_HELP)
    p.add_argument("--model", help="model of a Milvus / Qdrant collection (default: the one it was made with)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_info)
    return parser


def _join_values(argv: list[str]) -> list[str]:
    """``--weights -1,1,1`` -> ``--weights=-1,1,1`` (argparse would take the value for an option)."""
    out: list[str] = []
    it = iter(argv)
    for arg in it:
        if arg == "--weights":
            value = next(it, None)
            out.append(arg if value is None else f"{arg}={value}")
        else:
            out.append(arg)
    return out


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
    args = build_parser().parse_args(_join_values(list(sys.argv[1:] if argv is None else argv)))
    with _log_to_stderr():
        try:
            return int(args.func(args))
        except BrokenPipeError:  # the reader went away (| head): not an error
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            return 0
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
