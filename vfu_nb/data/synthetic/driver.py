"""Generating a tree: rendering every planned image (in-process or over a process pool), writing the
annotation files and ``synthetic.json``; the command line ``python -m vfu_nb.data.synthetic``.

Workers (a fork pool where available) write their own JPEGs; the parent writes the annotation files in index
order. ``synthetic.json`` is written last; a tree without it (or with ``.synthetic_incomplete``) is an
interrupted run.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import time
from pathlib import Path

import numpy as np

from vfu_nb.data.annotations import ANNOTATION_FILES, SLOTS_BY_CLOTHES_TYPE, Annotations, write_annotations
from vfu_nb.data.synthetic.planning import ImagePlan, plan_images
from vfu_nb.data.synthetic.scene import render_image
from vfu_nb.data.synthetic.settings import (
    DEFAULT_EVIDENCE_PLACEMENT, DEFAULT_GEOMETRY_INFORMATIVENESS, DEFAULT_LANDMARK_NOISE, DEFAULT_VISIBILITY_FLIP,
    EVIDENCE_PLACEMENTS, JPEG_QUALITY, MARKER_BUSY, MARKER_DONE, SETTING_RANGES, VERSION, OptionError,
    _check_placement,
)
from vfu_nb.data.synthetic.specs import DEEPFASHION_CATEGORIES, MIN_IMAGES, RENDERED_CATEGORIES, SYNTHETIC_ATTRIBUTES


# --------------------------------------------------------------------------------------------------
# Annotations of the rendered images (written by vfu_nb.data.annotations.write_annotations)
# --------------------------------------------------------------------------------------------------

def build_annotations(out: Path, plans: list[ImagePlan], records: list[dict]) -> Annotations:
    """The labels of the rendered images as an :class:`Annotations` (rows in index order)."""
    n = len(plans)
    clothes_type = np.array([p.clothes_type for p in plans], dtype=np.int64)
    landmarks = np.zeros((n, 8, 2), dtype=np.float32)
    visibility = np.full((n, 8), -1, dtype=np.int64)
    for i, (plan, record) in enumerate(zip(plans, records)):
        slots = SLOTS_BY_CLOTHES_TYPE[plan.clothes_type]
        triples = np.array(record["landmarks"], dtype=np.int64).reshape(len(slots), 3)
        visibility[i, slots] = triples[:, 0]
        landmarks[i, slots] = triples[:, 1:]
    box = np.array([r["bbox"] for r in records], dtype=np.float32).reshape(n, 4)
    return Annotations(
        root=Path(out),
        image_names=np.array([p.name for p in plans]),
        split=np.array([p.split for p in plans]),
        clothes_type=clothes_type,
        category=np.array([p.label - 1 for p in plans], dtype=np.int64),
        category_names=[name for name, _ in DEEPFASHION_CATEGORIES],
        category_types=np.array([t for _, t in DEEPFASHION_CATEGORIES], dtype=np.int64),
        attributes=np.array([r["attributes"] for r in records], dtype=np.int8).reshape(n, -1),
        attribute_names=[name for name, _ in SYNTHETIC_ATTRIBUTES],
        attribute_types=np.array([t for _, t in SYNTHETIC_ATTRIBUTES], dtype=np.int64),
        bbox=box - np.array([1, 1, 0, 0], dtype=np.float32),   # file boxes are 1-based inclusive
        landmarks=landmarks,
        landmark_visibility=visibility,
    )


# --------------------------------------------------------------------------------------------------
# Generation driver
# --------------------------------------------------------------------------------------------------

def _render_chunk(args: tuple) -> list[dict]:
    """Worker: render and save the JPEGs of a chunk of plans; return their written records."""
    root, seed, settings, plans = args
    records = []
    for plan in plans:
        img, record = render_image(plan, seed, settings)
        path = Path(root) / plan.name
        img.save(path, "JPEG", quality=JPEG_QUALITY)
        for key in ("spec", "true_landmarks", "keypoints"):
            record.pop(key)
        record["nbytes"] = path.stat().st_size
        records.append(record)
    return records


def _chunks(plans: list, size: int) -> list[list]:
    return [plans[i:i + size] for i in range(0, len(plans), size)]


def _process_pool(workers: int):
    """A process pool: 'fork' where available (no re-import of __main__, so it also works from
    notebooks, `python -c` and stdin scripts), else 'spawn'. A dying worker raises BrokenProcessPool
    instead of hanging; a dying parent takes its workers with it."""
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    from vfu_nb import lifeline

    method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
    # the workers die with this process (vfu_nb.lifeline): a killed generator leaves no orphans
    return ProcessPoolExecutor(workers, mp_context=mp.get_context(method), **lifeline.pool_options())


def _render_all(out: Path, seed: int, settings: dict, plans: list[ImagePlan], workers: int,
                progress: bool) -> list[dict]:
    """Render every plan (in-process or over a process pool), records returned in index order."""
    from tqdm.auto import tqdm

    chunk = max(4, min(64, len(plans) // max(1, workers * 8)))
    jobs = [(str(out), seed, settings, c) for c in _chunks(plans, chunk)]
    records: list[dict] = []
    with contextlib.ExitStack() as stack:
        bar = stack.enter_context(tqdm(total=len(plans), desc="synthetic", unit="img", disable=not progress))
        if workers > 1 and len(jobs) > 1:
            results = stack.enter_context(_process_pool(workers)).map(_render_chunk, jobs)
        else:
            results = map(_render_chunk, jobs)
        for res in results:
            records += res
            bar.update(len(res))
    return records


def _write_text(path: Path, text: str) -> None:
    """Write via a temporary file and rename (no half-written annotation file survives a crash)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(text.encode("ascii"))
    os.replace(tmp, path)


def _prepare_out(out: Path) -> None:
    """Clear a previous synthetic tree (complete or interrupted); refuse to touch anything else."""
    if out.exists() and any(out.iterdir()):
        if not ((out / MARKER_DONE).exists() or (out / MARKER_BUSY).exists()):
            raise FileExistsError(f"{out} is not empty and is not a synthetic DeepFashion tree")
        for sub in ("img", "Anno", "Eval", MARKER_DONE):
            target = out / sub
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER_BUSY).write_text("generation in progress\n")


def check_options(n, seed, settings: dict, workers=None) -> None:
    """Raise :class:`OptionError` naming the first option outside its allowed range."""
    if not isinstance(n, (int, np.integer)) or isinstance(n, bool) or n < MIN_IMAGES:
        raise OptionError("n", f"must be an integer >= {MIN_IMAGES} ({len(RENDERED_CATEGORIES)} rendered "
                               f"categories x 3 splits), got {n!r}")
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0:
        raise OptionError("seed", f"must be an integer >= 0, got {seed!r}")
    if workers is not None and (not isinstance(workers, (int, np.integer)) or workers < 1):
        raise OptionError("workers", f"must be an integer >= 1 (or None for all cores), got {workers!r}")
    for name, (lo, hi) in SETTING_RANGES.items():
        value = settings[name]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not lo <= value <= hi:
            raise OptionError(name, f"must be a number in [{lo:g}, {hi:g}], got {value!r}")
    _check_placement(settings.get("evidence_placement", DEFAULT_EVIDENCE_PLACEMENT))


def _cached_summary(out: Path, n: int, seed: int, settings: dict) -> dict | None:
    """The stored summary of a complete tree generated with the same arguments, else None."""
    done = out / MARKER_DONE
    if not done.exists() or (out / MARKER_BUSY).exists():
        return None
    try:
        meta = json.loads(done.read_text())
    except ValueError:
        return None
    if (meta.get("version"), meta.get("n"), meta.get("seed"), meta.get("settings")) != (VERSION, n, seed, settings):
        return None
    return meta


def generate(out, n: int, seed: int = 0, workers: int | None = None, progress: bool = True, *,
             geometry_informativeness: float = DEFAULT_GEOMETRY_INFORMATIVENESS,
             landmark_noise: float = DEFAULT_LANDMARK_NOISE,
             visibility_flip: float = DEFAULT_VISIBILITY_FLIP,
             evidence_placement: str = DEFAULT_EVIDENCE_PLACEMENT) -> dict:
    """Write a synthetic DeepFashion-C tree of `n` images under `out`; return a summary dict.

    Settings (see the module docstring): geometry_informativeness in [0, 1], landmark_noise (jitter sd
    as a fraction of the box) in [0, 0.2], visibility_flip (rate of swapped flags) in [0, 0.5],
    evidence_placement "functional" or "displaced" (the negative control, see :func:`displace_parts`).
    Bad options raise :class:`OptionError` (a ValueError) naming the option and its allowed range.

    Summary keys: out, n, seed, version, settings, splits {train, val, test}, categories {name: count},
    bytes (total size of the written files), seconds, cached (True if an identical complete tree
    was already there and nothing was written).
    """
    start = time.perf_counter()
    settings = dict(geometry_informativeness=geometry_informativeness, landmark_noise=landmark_noise,
                    visibility_flip=visibility_flip)
    check_options(n, seed, dict(settings, evidence_placement=evidence_placement), workers)
    settings = {k: float(v) for k, v in settings.items()}
    if evidence_placement != DEFAULT_EVIDENCE_PLACEMENT:
        settings["evidence_placement"] = evidence_placement
    n, seed = int(n), int(seed)
    out = Path(out)
    cached = _cached_summary(out, n, seed, settings)
    if cached is not None:
        return dict(cached, out=str(out), seconds=time.perf_counter() - start, cached=True)
    workers = (os.cpu_count() or 1) if workers is None else int(workers)
    _prepare_out(out)
    plans = plan_images(n, seed)
    for folder in sorted({p.name.rsplit("/", 1)[0] for p in plans}):
        (out / folder).mkdir(parents=True, exist_ok=True)
    records = _render_all(out, seed, settings, plans, workers, progress)
    write_annotations(out, build_annotations(out, plans, records))
    text_bytes = sum((out / rel).stat().st_size for rel in ANNOTATION_FILES.values())
    summary = dict(
        n=n, seed=seed, version=VERSION, settings=settings,
        splits={s: sum(p.split == s for p in plans) for s in ("train", "val", "test")},
        categories={c: sum(p.category == c for p in plans) for c in RENDERED_CATEGORIES},
        bytes=sum(r["nbytes"] for r in records) + text_bytes)
    _write_text(out / MARKER_DONE, json.dumps(summary, indent=1, sort_keys=True) + "\n")
    (out / MARKER_BUSY).unlink()
    return dict(summary, out=str(out), seconds=time.perf_counter() - start, cached=False)


def main(argv: list[str] | None = None) -> dict:
    """CLI: python -m vfu_nb.data.synthetic --out DIR --n N [--seed S] [--workers W] [--quiet]
    [--geometry-informativeness G] [--landmark-noise SD] [--visibility-flip P]
    [--evidence-placement {functional,displaced}]."""
    parser = argparse.ArgumentParser(prog="python -m vfu_nb.data.synthetic",
                                     description=f"Synthetic DeepFashion-C benchmark generator (version {VERSION}).")
    parser.add_argument("--out", required=True, help="output directory (created)")
    parser.add_argument("--n", type=int, required=True, help=f"number of images (at least {MIN_IMAGES})")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument("--geometry-informativeness", type=float, default=DEFAULT_GEOMETRY_INFORMATIVENESS,
                        metavar="G", help="0: silhouette independent of the category within a clothes type; "
                        f"1: silhouette from the category (default {DEFAULT_GEOMETRY_INFORMATIVENESS})")
    parser.add_argument("--landmark-noise", type=float, default=DEFAULT_LANDMARK_NOISE, metavar="SD",
                        help="jitter sd of the written landmarks, fraction of the box (0: none; default "
                        f"{DEFAULT_LANDMARK_NOISE})")
    parser.add_argument("--visibility-flip", type=float, default=DEFAULT_VISIBILITY_FLIP, metavar="P",
                        help=f"rate of swapped visible/occluded flags (default {DEFAULT_VISIBILITY_FLIP})")
    parser.add_argument("--evidence-placement", choices=EVIDENCE_PLACEMENTS, default=DEFAULT_EVIDENCE_PLACEMENT,
                        help="where the local parts are drawn: at the functional points (default) or, for the "
                        "negative control, at random points of the body (labels, boxes, landmarks unchanged)")
    args = parser.parse_args(argv)
    options = dict(geometry_informativeness=args.geometry_informativeness,
                   landmark_noise=args.landmark_noise, visibility_flip=args.visibility_flip,
                   evidence_placement=args.evidence_placement)
    try:
        check_options(args.n, args.seed, options, args.workers)
    except OptionError as err:
        parser.error(f"argument --{err.option.replace('_', '-')}: {err.detail}")
    summary = generate(args.out, args.n, args.seed, args.workers, progress=not args.quiet, **options)
    print(json.dumps(summary, indent=1))
    return summary


if __name__ == "__main__":
    main()
