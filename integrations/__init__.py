"""Framework adapters, installed as ``m3_rag.integrations``.

Each module imports its framework only when it is imported itself; a missing framework gives
an ImportError that names the extra to install.
"""

from __future__ import annotations

__all__: list[str] = []
