"""Copying and pickling adapters: the model and the store are shared, never copied.

A loaded model (2.2 GB for BGE-M3) and a store (a database) are process resources, so:

- ``copy.deepcopy(adapter)`` copies the adapter's settings and keeps the *same* model and store;
- ``pickle`` writes the model as a reference (its name, device, dtype and length limits) and, in
  the new process, shares it by name again (:meth:`M3Embedder.shared`; in the same process, the
  very model that was pickled). A store is written as a reference too, when it can be reopened
  from where its data lives: an :class:`~m3_rag.M3Index` opened with :meth:`M3Index.open` (every
  change is committed to its folder) is reopened there. Any other store refuses to be pickled
  with a :class:`TypeError` that says what to do: an in-memory ``M3Index`` (or one read with
  ``load``, whose changes only ``save()`` commits) would silently lose documents, and a
  ``MilvusStore`` holds a connection whose credentials it does not keep -- build those in the
  new process.

Nothing here imports LangChain.

>>> import copy, pickle
>>> from m3_rag import M3Embedder
>>> model = M3Embedder.shared("tests/data/tiny-m3", device="cpu")
>>> ref = EmbedderRef.of(model)
>>> ref.restore() is model, copy.deepcopy(ref) == ref, pickle.loads(pickle.dumps(ref)).restore() is model
(True, True, True)
"""

from __future__ import annotations

import threading
import weakref
from dataclasses import dataclass, field
from typing import Any

from m3_rag.encoder import M3Embedder
from m3_rag.index import M3Index
from m3_rag.retrieval import HybridStore

__all__ = ["EmbedderRef", "SharedResources", "StoreRef", "pickle_refs", "restore_refs", "shared_memo"]

_LIVE: weakref.WeakValueDictionary[tuple[str, str, str], M3Embedder] = weakref.WeakValueDictionary()
_LIVE_LOCK = threading.RLock()
_STORE_REFS: weakref.WeakKeyDictionary[HybridStore, StoreRef] = weakref.WeakKeyDictionary()


@dataclass(frozen=True)
class EmbedderRef:
    """A model by reference: what is pickled in its place."""

    name: str
    device: str
    dtype: str
    options: tuple[tuple[str, Any], ...] = field(default=())

    @classmethod
    def of(cls, embedder: M3Embedder) -> EmbedderRef:
        ref = cls(
            embedder.name,
            str(embedder.device),
            str(embedder.dtype).removeprefix("torch."),
            (
                ("query_max_length", embedder.query_max_length),
                ("passage_max_length", embedder.passage_max_length),
                ("max_batch_tokens", embedder.max_batch_tokens),
                ("batch_size", embedder.batch_size),
            ),
        )
        with _LIVE_LOCK:  # unpickled in this process: the same model again
            _LIVE[(ref.name, ref.device, ref.dtype)] = embedder
        return ref

    def restore(self) -> M3Embedder:
        with _LIVE_LOCK:
            live = _LIVE.get((self.name, self.device, self.dtype))
        if live is not None:
            return live
        return M3Embedder.shared(self.name, device=self.device, dtype=self.dtype, **dict(self.options))


@dataclass(frozen=True)
class StoreRef:
    """A store by reference: an :class:`M3Index` folder opened with :meth:`M3Index.open`.

    One store gives one reference object, so adapters pickled together that share a store share
    it again after loading (the folder is opened once).
    """

    path: str
    embedder: EmbedderRef

    @classmethod
    def of(cls, store: HybridStore) -> StoreRef:
        if isinstance(store, M3Index):
            # an index opened with M3Index.open commits every change, so its folder is the whole truth
            if store.path is not None and getattr(store, "_persistent", False):
                with _LIVE_LOCK:
                    ref = _STORE_REFS.get(store)
                    if ref is None or ref.path != str(store.path):
                        ref = _STORE_REFS[store] = cls(str(store.path), EmbedderRef.of(store.embedder))
                return ref
            where = "in memory" if store.path is None else f"read from {str(store.path)!r} with load()"
            raise TypeError(
                f"cannot pickle an adapter over an M3Index {where}: its documents would not reach the new "
                "process. Open the index with M3Index.open(path, embedder) (every change is committed to the "
                "folder, and the unpickled adapter reopens it), or pickle the settings and rebuild the index there"
            )
        raise TypeError(
            f"cannot pickle an adapter over a {type(store).__name__}: a store is pickled only as an M3Index "
            "folder opened with M3Index.open(path); connect to the store in the new process instead "
            "(a MilvusStore's connection and credentials are not kept)"
        )

    def restore(self) -> M3Index:
        with _LIVE_LOCK:
            opened = self.__dict__.get("_opened")
        if opened is None:
            mine = M3Index.open(self.path, self.embedder.restore(), create=False)
            with _LIVE_LOCK:
                opened = self.__dict__.setdefault("_opened", mine)
            if opened is not mine:  # another thread restored it first
                mine.close()
        return opened

    def __reduce__(self) -> tuple[Any, ...]:
        return (StoreRef, (self.path, self.embedder))  # the fields only, never an opened index


def _ref(value: Any) -> Any:
    if isinstance(value, M3Embedder):
        return EmbedderRef.of(value)
    if isinstance(value, HybridStore):
        return StoreRef.of(value)
    return value


def pickle_refs(values: dict[str, Any]) -> dict[str, Any]:
    """``values`` with every model and store replaced by its reference (TypeError for a store that cannot be)."""
    return {key: _ref(value) for key, value in values.items()}


def restore_refs(values: dict[str, Any]) -> dict[str, Any]:
    """The inverse of :func:`pickle_refs`: models shared by name, stores reopened."""
    return {
        key: value.restore() if isinstance(value, (EmbedderRef, StoreRef)) else value for key, value in values.items()
    }


def shared_memo(values: Any, memo: dict[int, Any] | None, also: tuple[Any, ...] = ()) -> dict[int, Any]:
    """A ``deepcopy`` memo in which the models, stores and ``also`` among ``values`` map to themselves."""
    memo = {} if memo is None else memo
    for value in values:
        if isinstance(value, (M3Embedder, HybridStore)):
            memo[id(value)] = value
    for value in also:
        memo[id(value)] = value
    return memo


class SharedResources:
    """Mixin for the pydantic adapters: deepcopy shares the model and store, pickle writes references.

    Fields declared with ``exclude=True`` (the model, a cross-encoder) are shared on deepcopy too.
    """

    def __getstate__(self) -> dict[Any, Any]:
        state: dict[Any, Any] = super().__getstate__()  # type: ignore[misc]
        return {**state, "__dict__": pickle_refs(state["__dict__"])}

    def __setstate__(self, state: dict[Any, Any]) -> None:
        super().__setstate__({**state, "__dict__": restore_refs(state["__dict__"])})  # type: ignore[misc]

    def __deepcopy__(self, memo: dict[int, Any] | None = None) -> Any:
        fields = type(self).model_fields  # type: ignore[attr-defined]
        values = self.__dict__
        excluded = tuple(values[name] for name, info in fields.items() if info.exclude and values.get(name) is not None)
        return super().__deepcopy__(shared_memo(values.values(), memo, excluded))  # type: ignore[misc]
