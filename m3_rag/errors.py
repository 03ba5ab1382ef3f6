"""Exceptions that m3-rag raises on top of the built-in ones."""

from __future__ import annotations

__all__ = ["CheckpointError", "IndexFormatError", "MissingHeadError"]


class CheckpointError(ValueError):
    """A folder or hub repository is not a usable BGE-M3 checkpoint."""


class MissingHeadError(CheckpointError):
    """A mode was asked for whose head (``sparse_linear.pt`` / ``colbert_linear.pt``) the checkpoint lacks."""


class IndexFormatError(ValueError):
    """A saved index folder is missing, damaged, of another format version or of another model."""
