"""``python -m m3_rag`` runs the ``m3-rag`` command."""

from __future__ import annotations

from .cli import main

raise SystemExit(main())
