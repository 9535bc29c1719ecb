"""Saving figures reproducibly: one helper, fixed DPI, no timestamps in the PNG metadata."""

from __future__ import annotations

from pathlib import Path

import matplotlib

PNG_METADATA = {"Software": None}   # matplotlib otherwise records its version string


def save_figure(fig, path, dpi: int = 110) -> Path:
    """Save ``fig`` as PNG at ``path`` (folders created) with deterministic metadata; return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with matplotlib.rc_context({"svg.hashsalt": "vfu_nb"}):
        fig.savefig(path, dpi=dpi, bbox_inches="tight", metadata=PNG_METADATA)
    return path
