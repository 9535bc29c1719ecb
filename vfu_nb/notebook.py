"""The setup every notebook of the series shares: one import and one call after the ``parameters`` cell.

    from vfu_nb.notebook import setup          # first import of the notebook: before anything imports torch
    nb = setup(out_dir, figures_dir, "03")     # inline figures, folders resolved against the repository root
    data_root = nb.path(data_root)             # any other path parameter
    nb.save(fig, "confusion_mtl")              # <figures_dir>/03_confusion_mtl.png, listed in nb.figures
    nb.write_metrics({...})                    # <out_dir>/metrics.json, what the pipeline collects
    nb.markdown(report.reading(result))        # generated prose rendered as Markdown (`code`, **bold**)

Importing this module applies :func:`vfu_nb.threads.shared_cpu_env` (OpenMP threads that sleep soon instead of
spinning, for a small shared CPU); it takes effect only if torch is not imported yet.
"""

from __future__ import annotations

import json
from pathlib import Path

from vfu_nb.threads import shared_cpu_env

shared_cpu_env()

from vfu_nb.paths import resolve  # noqa: E402  (after the thread settings, on purpose)


class Notebook:
    """Folders of one notebook execution and the figures it saved."""

    def __init__(self, out_dir, figures_dir, figure_prefix: str):
        self.out_dir = resolve(out_dir)
        self.figures_dir = resolve(figures_dir)
        self.figure_prefix = figure_prefix
        self.figures: list = []

    @staticmethod
    def path(path) -> Path:
        """A path parameter as an absolute path (relative ones from the repository root)."""
        return resolve(path)

    def figure_path(self, name: str) -> Path:
        return self.figures_dir / f"{self.figure_prefix}_{name}.png"

    def save(self, fig, name: str) -> Path:
        """Save ``fig`` as ``<figures_dir>/<prefix>_<name>.png`` (:func:`vfu_nb.plots.save_figure`)."""
        from vfu_nb.plots import save_figure

        path = save_figure(fig, self.figure_path(name))
        self.figures.append(str(path))
        return path

    @staticmethod
    def markdown(text, bullets: bool = False) -> None:
        """Show generated prose rendered as Markdown (``IPython.display.Markdown``): a string, or a list of
        sentences (one paragraph each; with ``bullets``, one list item each, and a line indented by two spaces an
        item under the one before)."""
        from IPython.display import Markdown, display

        if not isinstance(text, str):
            if bullets:
                text = "\n".join(("    - " if line.startswith("  ") else "- ") + line.strip() for line in text)
            else:
                text = "\n\n".join(text)
        display(Markdown(text))

    def write_metrics(self, result: dict) -> dict:
        """Write ``result`` (plus ``figures``: every figure saved) as strict JSON to ``<out_dir>/metrics.json``."""
        from vfu_nb.metrics import jsonable

        result = jsonable({**result, "figures": sorted(self.figures)})
        self.out_dir.mkdir(parents=True, exist_ok=True)
        (self.out_dir / "metrics.json").write_text(json.dumps(result, indent=2, allow_nan=False))
        return result


def setup(out_dir, figures_dir, figure_prefix: str) -> Notebook:
    """Inline matplotlib figures (in a Jupyter kernel) and the notebook's folders; see the module docstring."""
    try:
        from IPython import get_ipython
    except ImportError:          # plain Python: nothing to configure
        shell = None
    else:
        shell = get_ipython()
    if shell is not None and hasattr(shell, "kernel"):
        shell.run_line_magic("matplotlib", "inline")
    return Notebook(out_dir, figures_dir, figure_prefix)
