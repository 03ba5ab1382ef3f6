"""Exceptions that m3-rag raises on top of the built-in ones."""

from __future__ import annotations

__all__ = ["CheckpointError", "IndexFormatError", "MissingHeadError", "ModelMismatchError"]


class CheckpointError(ValueError):
    """A folder or hub repository is not a usable BGE-M3 checkpoint."""


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
