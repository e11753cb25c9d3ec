"""Terminal columns for names in any script."""

from __future__ import annotations

import unicodedata


def pad(text: str, width: int) -> str:
    """``text`` padded to ``width`` terminal columns: CJK characters take two (str.ljust counts them as one)."""
    cols = sum(2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in text)
    return text + " " * max(0, width - cols)
