"""Where things are: the repository root, and paths that notebooks, profiles and the pipeline give relative to it.

Relative paths in notebook parameters and profiles (``data/synthetic``, ``runs/smoke/...``, ``figures``) mean the
same folder wherever a notebook runs: JupyterLab starts kernels in the notebook's own folder, papermill in the
caller's working directory, the pipeline in the executed notebook's folder under ``runs/``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional


def _is_root(folder: Path) -> bool:
    return (folder / "pyproject.toml").is_file() and (folder / "vfu_nb").is_dir() and (folder / "notebooks").is_dir()


def checkout_of(path) -> Optional[Path]:
    """The checkout (a folder holding ``pyproject.toml``, ``vfu_nb/`` and ``notebooks/``) that ``path`` lies in,
    or None."""
    start = Path(path).resolve()
    return next((folder for folder in (start, *start.parents) if _is_root(folder)), None)


def repo_root() -> Path:
    """The checkout this package was imported from; else the first checkout above the working directory.

    Without one (the package installed into site-packages and used elsewhere) the working directory is the root.
    """
    return checkout_of(Path(__file__).parent) or checkout_of(Path.cwd()) or Path.cwd().resolve()


def resolve(path) -> Path:
    """``path`` as an absolute path: relative paths are taken from :func:`repo_root`, ``~`` is expanded."""
    path = Path(path).expanduser()
    return path if path.is_absolute() else repo_root() / path


def relative(path, base=None, follow_links: bool = False) -> str:
    """``path`` relative to ``base`` (default: :func:`repo_root`) when it lies inside it, else as given: for
    messages, commands and the paths stored with results. ``follow_links`` resolves symlinks (and a relative
    ``path`` against the working directory) first; without it a relative ``path`` is returned as given."""
    base = Path(base) if base is not None else repo_root()
    p = Path(path).resolve() if follow_links else Path(path)
    return str(p.relative_to(base)) if p.is_absolute() and p.is_relative_to(base) else str(path)
