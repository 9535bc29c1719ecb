"""Figures for the notebooks, one module per chapter of the series, and the one way to save them.

These modules draw; the numbers, tables and sentences beside the figures come from the modules that compute them
(:mod:`vfu_nb.history`, :mod:`vfu_nb.comparison`, :mod:`vfu_nb.class_metrics`, :mod:`vfu_nb.maps`,
:mod:`vfu_nb.data.summary`, :mod:`vfu_nb.baselines`).

=========================  ========================================================================
module                     notebook
=========================  ========================================================================
``plots.explore``          01_explore_data: categories, attributes, landmark visibility, samples
``plots.curves``           02_train: training curves of one run (thesis 3.2.1, 3.2.2)
``plots.compare``          03_compare_mtl_cat: MTL versus CAT, Table 3.2 (thesis 3.3, 3.5)
``plots.attention``        04_attention_maps: heat maps and attention over test images
``plots.study``            05_controls_and_seeds: the seeds x models study
=========================  ========================================================================

Maps use perceptually uniform colour maps (viridis, magma); signed maps (attention) a diverging one centred on 0.
"""

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
