"""The progress bar class of m3-rag: tqdm's notebook widget where Jupyter can show it, text elsewhere.

``tqdm.auto`` picks the widget in Jupyter even when ``ipywidgets`` is missing, and then warns
("IProgress not found") on every bar; this picks the text bar in that case.

>>> tqdm(total=1, disable=True).total
1
"""

from __future__ import annotations

import importlib.util

if importlib.util.find_spec("ipywidgets") is not None:
    from tqdm.auto import tqdm
else:  # pragma: no cover - depends on the environment
    from tqdm import tqdm

__all__ = ["tqdm"]
