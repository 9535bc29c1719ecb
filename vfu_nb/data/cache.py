"""Decoding every image once: the parallel scan that fills the uint8 cache, and memoised annotations.

Decoding JPEGs every epoch is slow, so a cached :class:`vfu_nb.data.dataset.DeepFashionC` decodes, crops and
resizes each image once (:func:`scan_images`, over a process pool) into a uint8 memory-mapped array; that first
pass is also where bad images are found. :func:`cached_annotations` reads a root's annotation files once while
they are unchanged.
"""

from __future__ import annotations

import json
import os
from concurrent.futures import ProcessPoolExecutor
from functools import lru_cache
from multiprocessing import get_context
from pathlib import Path

import numpy as np

from vfu_nb import lifeline
from vfu_nb.data.annotations import Annotations, annotation_paths, load_annotations
from vfu_nb.data.crops import BadImageError, crop_and_resize, crop_window, load_rgb


CACHE_VERSION = 1


def _decode_rows(job):
    """Worker: decode, crop and resize rows, writing them into the memmap (if given).

    Returns ``(sizes, failures)``: each image's (width, height), -1 where it failed, and (row, reason) pairs.
    """
    paths, windows, size, cache_file, offset, total = job
    out = None if cache_file is None else np.memmap(cache_file, np.uint8, "r+", shape=(total, size, size, 3))
    sizes = np.full((len(paths), 2), -1, dtype=np.int64)
    failures = []
    for k, (path, window) in enumerate(zip(paths, windows)):
        try:
            image = load_rgb(Path(path))
            if out is not None:
                out[offset + k] = crop_and_resize(image, window(image.size), size)
            sizes[k] = image.size
        except (BadImageError, ValueError) as exc:
            failures.append((offset + k, str(exc)))
    if out is not None:
        out.flush()
    return sizes, failures


class _Window:
    """Picklable ``image_size -> crop window`` for one bbox."""

    def __init__(self, box, pad_to_square):
        self.box, self.pad = tuple(float(v) for v in box), pad_to_square

    def __call__(self, image_size):
        return crop_window(self.box, image_size, self.pad)


def scan_images(paths, windows, size, cache_file=None, workers=None, progress=True, desc="images"):
    """Decode every image once (in parallel), optionally filling a uint8 memmap.

    Returns ``(sizes, failures)`` as :func:`_decode_rows` does, for all rows.
    """
    from tqdm.auto import tqdm

    total = len(paths)
    workers = workers or min(16, os.cpu_count() or 1)
    step = max(16, min(512, total // (4 * workers) + 1))
    jobs = [(paths[s:s + step], windows[s:s + step], size, cache_file, s, total) for s in range(0, total, step)]
    sizes, failures = [np.zeros((0, 2), np.int64)], []
    bar = tqdm(total=total, desc=desc, unit="img", disable=not progress)
    # the workers die with this process (vfu_nb.lifeline): a killed trainer or notebook leaves no orphans
    pool = None if workers == 1 or len(jobs) == 1 else ProcessPoolExecutor(workers, mp_context=get_context("fork"),
                                                                            **lifeline.pool_options())
    try:
        for job, (job_sizes, job_failures) in zip(jobs, (pool.map if pool else map)(_decode_rows, jobs)):
            sizes.append(job_sizes)
            failures += job_failures
            bar.update(len(job[0]))
    finally:
        bar.close()
        if pool:
            pool.shutdown()
    return np.concatenate(sizes), sorted(failures)


def files_fingerprint(paths: dict) -> str:
    """Size and modification time of each file of ``paths`` (name -> path; None where missing), as one string: a
    cheap "unchanged since" key (the annotation files; :mod:`vfu_nb.data.identity` adds ``synthetic.json``)."""
    stats = [(k, os.stat(p).st_size, os.stat(p).st_mtime_ns) if os.path.exists(p) else (k, None)
             for k, p in sorted(paths.items())]
    return json.dumps(stats)


@lru_cache(maxsize=4)
def _load_cached(root: str, fingerprint: str) -> Annotations:
    return load_annotations(root)


def cached_annotations(root) -> Annotations:
    """load_annotations, memoised per root while its files are unchanged."""
    return _load_cached(str(Path(root).resolve()), files_fingerprint(annotation_paths(root)))
