"""Exceptions that m3-rag raises on top of the built-in ones."""

from __future__ import annotations

__all__ = [
    "CheckpointError",
    "CheckpointUnavailableError",
    "IndexFormatError",
    "MissingHeadError",
    "ModelMismatchError",
]


class CheckpointError(ValueError):
    """A folder or hub repository is not a usable BGE-M3 checkpoint."""


class CheckpointUnavailableError(CheckpointError):
    """A hub checkpoint is not in the local cache, and the hub did not answer (or offline mode is on).

    ``problem`` says what failed (endpoint, network error, cache folder) without advice, so that a
    caller such as the ``m3-rag`` command can add its own hint; ``str(error)`` holds both.
    """

    def __init__(self, problem: str, hint: str) -> None:
        super().__init__(f"{problem}. {hint}.")
        self.problem = problem
        self.hint = hint


class MissingHeadError(CheckpointError):
    """A mode was asked for whose head (``sparse_linear.pt`` / ``colbert_linear.pt``) the checkpoint lacks."""


class IndexFormatError(ValueError):
    """A saved index folder is missing, damaged, of another format version or of another model."""


class ModelMismatchError(IndexFormatError):
    """An index or collection was built with another model than the one given to open it."""

    def __init__(self, where: str, built_with: str, given: str) -> None:
        self.where, self.built_with, self.given = where, built_with, given
        super().__init__(
            f"{where} was built with model {built_with!r}, but the embedder is {given!r}, a model with other "
            "weights or dimensions; open it with the same model, or re-index"
        )
