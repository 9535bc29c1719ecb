"""Benchmarks that print numbers: ``python -m vfu_nb.bench parse|data|train``.

- ``parse``: writes a full-size (289,222 rows x 1,000 attributes) annotation set and times load_annotations.
- ``data``: images/s of the decode path (JPEG decode + crop + resize per item) and of the uint8 cache path.
- ``train``: training images/s, FLOPs and fraction of peak (see :mod:`vfu_nb.bench_train`).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from vfu_nb.annotations import SLOTS_BY_CLOTHES_TYPE, Annotations, load_annotations, write_annotations

FULL_ROWS = 289_222


def random_annotations(n: int = FULL_ROWS, num_attributes: int = 1000, seed: int = 0) -> Annotations:
    """A random but valid Annotations of DeepFashion-C's full size (no images), for parser benchmarks."""
    rng = np.random.default_rng(seed)
    category_types = np.repeat([1, 2, 3], [20, 16, 14])
    category = rng.integers(0, 50, n)
    clothes_type = category_types[category]
    visibility = np.full((n, 8), -1, dtype=np.int64)
    for t, slots in SLOTS_BY_CLOTHES_TYPE.items():
        rows = np.flatnonzero(clothes_type == t)
        visibility[np.ix_(rows, slots)] = rng.integers(0, 3, (len(rows), len(slots)))
    x1y1 = rng.integers(0, 100, (n, 2))
    bbox = np.concatenate([x1y1, x1y1 + rng.integers(50, 200, (n, 2))], axis=1).astype(np.float32)
    return Annotations(
        root=Path("."),
        image_names=np.array([f"img/Item_{i // 50:06d}/img_{i % 50 + 1:08d}.jpg" for i in range(n)]),
        split=rng.choice(["train", "val", "test"], n, p=[0.72, 0.14, 0.14]),
        clothes_type=clothes_type, category=category,
        category_names=[f"Category{c}" for c in range(50)], category_types=category_types,
        attributes=np.where(rng.random((n, num_attributes)) < 0.0033, 1, -1).astype(np.int8),
        attribute_names=[f"attribute {a}" for a in range(num_attributes)],
        attribute_types=rng.integers(1, 6, num_attributes),
        bbox=bbox, landmarks=rng.integers(0, 300, (n, 8, 2)).astype(np.float32),
        landmark_visibility=visibility,
    )


def bench_parse(rows: int, keep: str | None) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(keep or tmp)
        t0 = time.perf_counter()
        write_annotations(root, random_annotations(rows))
        written = time.perf_counter() - t0
        size = sum(p.stat().st_size for p in root.rglob("*.txt"))
        t0 = time.perf_counter()
        ann = load_annotations(root)
        parsed = time.perf_counter() - t0
    result = {"rows": len(ann), "attributes": len(ann.attribute_names), "bytes": size,
              "write_s": round(written, 2), "parse_s": round(parsed, 2)}
    print(f"load_annotations: {result['rows']:,} rows x {result['attributes']} attributes "
          f"({size / 2**20:.0f} MiB of text) parsed in {parsed:.2f} s (writing took {written:.1f} s)")
    return result


def _iterate(ds, items: int) -> float:
    """Images/s reading ``items`` items of ``ds`` in order (wrapping around)."""
    t0 = time.perf_counter()
    for k in range(items):
        ds[k % len(ds)]
    return items / (time.perf_counter() - t0)


def bench_data(root: str, split: str, image_size: int, items: int, workers: int | None) -> dict:
    from vfu_nb.data import DeepFashionC, load_annotations as load

    ann = load(root)
    with tempfile.TemporaryDirectory() as cache_dir:
        decode = DeepFashionC(root, split, image_size, annotations=ann, uint8=True)
        decode_rate = _iterate(decode, min(items, len(decode)))
        t0 = time.perf_counter()
        cached = DeepFashionC(root, split, image_size, annotations=ann, uint8=True, cache=True,
                              cache_dir=cache_dir, workers=workers)
        build_s = time.perf_counter() - t0
        cache_rate = _iterate(cached, items)
        idx = np.random.default_rng(0).integers(0, len(cached), (max(1, items // 64), 64))
        t0 = time.perf_counter()
        for batch in idx:
            np.asarray(cached._cache[np.sort(batch)])
        gather_rate = idx.size / (time.perf_counter() - t0)
    result = {"split": split, "images": len(cached), "image_size": image_size,
              "decode_img_s": round(decode_rate, 1), "cache_build_s": round(build_s, 2),
              "cache_build_img_s": round(len(cached) / build_s, 1),
              "cache_item_img_s": round(cache_rate, 1), "cache_batch_gather_img_s": round(gather_rate, 1)}
    print(f"data path on {root} ({split}, {len(cached)} images, {image_size} px):")
    print(f"  decode path (JPEG decode + crop + resize per item) : {decode_rate:10.1f} img/s")
    print(f"  cache build (once, all cores)                       : {result['cache_build_img_s']:10.1f} img/s")
    print(f"  cache path (Dataset item from the uint8 memmap)      : {cache_rate:10.1f} img/s")
    print(f"  cache path (batch gather of 64 uint8 crops)          : {gather_rate:10.1f} img/s")
    return result


def main(argv=None) -> dict:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "train":
        from vfu_nb import bench_train
        return bench_train.main(argv[1:])
    parser = argparse.ArgumentParser(prog="python -m vfu_nb.bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("parse", help="time load_annotations on a generated full-size annotation set")
    p.add_argument("--rows", type=int, default=FULL_ROWS)
    p.add_argument("--keep", help="write the annotation set here instead of a temporary folder")
    d = sub.add_parser("data", help="images/s of the decode path and of the uint8 cache path")
    d.add_argument("--root", required=True)
    d.add_argument("--split", default="train")
    d.add_argument("--image-size", type=int, default=224)
    d.add_argument("--items", type=int, default=1000)
    d.add_argument("--workers", type=int, default=None)
    for q in (p, d):
        q.add_argument("--json", help="also write the numbers to this JSON file")
    sub.add_parser("train", help="training throughput (see python -m vfu_nb.bench train --help)")
    args = parser.parse_args(argv)
    if args.command == "parse":
        result = bench_parse(args.rows, args.keep)
    else:
        result = bench_data(args.root, args.split, args.image_size, args.items, args.workers)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
