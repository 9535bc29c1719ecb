"""What makes two data roots the same data tree, whatever path reaches them.

A run records its ``data_root`` as an absolute path. Moving the tree, reaching it through a symlink or from
another git worktree changes that path but not the data, and resuming such a run should work; two trees with
identical annotation files but different images (the synthetic default and ``displaced`` trees) must not
count as the same. :func:`tree_digest` therefore hashes the annotation files, the generator's
``synthetic.json`` where there is one, and the name and size of every image the annotations list (a stat per
image, not a read: seconds for the 289,222 images of DeepFashion-C).
"""

from __future__ import annotations

import hashlib
import os
from functools import lru_cache
from pathlib import Path
from typing import Mapping, Optional

from vfu_nb.data.annotations import AnnotationError, annotation_paths, image_root
from vfu_nb.data.cache import files_fingerprint, cached_annotations
from vfu_nb.data.synthetic.settings import MARKER_DONE

_BLOCK = 1 << 20


def _update_with_file(h, path: Path) -> None:
    with open(path, "rb") as f:
        while block := f.read(_BLOCK):
            h.update(block)


def annotations_digest(root) -> str:
    """SHA-256 over the annotation files of a tree (a missing file counts as empty): what the baselines are
    computed from (:func:`vfu_nb.study.store.tree_baselines`), and the first part of :func:`tree_digest`."""
    h = hashlib.sha256()
    for name, path in sorted(annotation_paths(root).items()):
        h.update(name.encode() + b"\0")
        if path.exists():
            _update_with_file(h, path)
        h.update(b"\0")
    return h.hexdigest()


@lru_cache(maxsize=8)
def _digest(root: str, fingerprint: str) -> str:
    h = hashlib.sha256(annotations_digest(root).encode())
    marker = Path(root) / MARKER_DONE
    if marker.exists():
        h.update(b"\0synthetic.json\0")
        _update_with_file(h, marker)
    images = image_root(root)
    h.update(b"\0images\0")
    for name in cached_annotations(root).image_names:
        try:
            size = (images / name).stat().st_size
        except OSError:                                # missing or unreadable: part of what identifies the tree
            size = -1
        h.update(f"{name}\0{size}\n".encode())
    return h.hexdigest()


def tree_digest(root) -> Optional[str]:
    """SHA-256 of what identifies the data tree at ``root`` (see the module docstring); None when ``root`` holds
    no complete set of annotation files. Memoised per process while the annotation files and ``synthetic.json``
    are unchanged (images changed alone are seen by the next process)."""
    files = annotation_paths(root)
    if not all(p.is_file() for p in files.values()):
        return None
    real = os.path.realpath(root)
    marker = Path(real) / MARKER_DONE
    fingerprint = files_fingerprint({**files, "marker": marker})
    return _digest(real, fingerprint)


def same_tree(stored: Mapping, data_root) -> bool:
    """Whether ``data_root`` holds the data tree a run trained on (``stored``: its ``config.json``).

    True for the same real path, or for a tree whose :func:`tree_digest` equals the one the run recorded in its
    ``resolved`` block; a run from before digests were recorded is compared with its recorded root, where that
    still exists.
    """
    old = stored.get("data_root")
    if old is None or data_root is None:
        return old == data_root
    if os.path.realpath(old) == os.path.realpath(data_root):
        return True
    recorded = (stored.get("resolved") or {}).get("data_digest")
    if recorded is None and Path(old).is_dir():
        try:
            recorded = tree_digest(old)
        except (AnnotationError, OSError):            # the old tree changed since: unreadable counts as other
            return False
    return recorded is not None and recorded == tree_digest(data_root)
