"""DeepFashion-C as a torch Dataset: bbox crop, resize, landmarks in crop units, optional uint8 cache.

The annotation files are parsed by :mod:`vfu_nb.data.annotations`, the crops made by :mod:`vfu_nb.data.crops`.
``cache=True`` decodes, crops and resizes each image once into a uint8 memory-mapped array (one per root,
split, size and crop mode, :mod:`vfu_nb.data.cache`), rebuilt when the annotation files change. Training reads
the cache a batch at a time through :class:`vfu_nb.data.loader.BatchLoader`; the per-item path (``dataset[k]``
with ``augment=True``, :func:`vfu_nb.data.augment.augment_sample`) serves uncached use and the widgets.
"""

from __future__ import annotations

import fcntl
import hashlib
import io
import json
import os
import warnings
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from vfu_nb.data.annotations import Annotations, image_root
from vfu_nb.data.augment import augment_sample
from vfu_nb.data.cache import CACHE_VERSION, _Window, cached_annotations, files_fingerprint, scan_images
from vfu_nb.data.crops import (
    BadImageError, crop_and_resize, crop_window, crop_windows, landmarks_in_window, load_rgb, normalize_images,
)


class DeepFashionC(Dataset):
    """One split of DeepFashion-C (or the synthetic benchmark in the same format).

    Items are dicts: ``image`` (float 3xSxS ImageNet-normalised, or uint8 with ``uint8=True``),
    ``category`` (int64), ``attributes`` (float 0/1 over A), ``attributes_known``, ``landmarks``
    (float 8x2 crop units), ``landmark_visibility`` (int64 8: 0 visible, 1 occluded, 2 truncated or
    outside the crop, -1 absent) and ``index`` (row in the annotations).

    ``augment=True`` adds a horizontal flip (x mirrored, left/right slots swapped) and a small scale and
    shift jitter applied to image and landmarks together (:func:`vfu_nb.data.augment.augment_sample`, from
    torch's global RNG). Cached datasets are best read through :class:`vfu_nb.data.loader.BatchLoader`.
    ``on_bad_image="skip"`` leaves out missing or undecodable images (listed in ``self.skipped``) instead of
    raising.
    """

    def __init__(self, root, split, image_size=224, augment=False, on_bad_image="raise", *,
                 annotations: Annotations | None = None, cache=False, cache_dir=None, uint8=False,
                 pad_to_square=False, max_items=None, subset_seed=0, workers=None, progress=True):
        if on_bad_image not in ("raise", "skip"):
            raise ValueError(f"on_bad_image must be 'raise' or 'skip', got {on_bad_image!r}")
        self.root = Path(root)
        self.annotations = annotations if annotations is not None else cached_annotations(root)
        self.split, self.image_size, self.augment = split, int(image_size), augment
        self.uint8, self.pad_to_square, self.on_bad_image = uint8, pad_to_square, on_bad_image
        rows = self.annotations.indices(split)
        if max_items is not None and max_items < len(rows):
            rows = np.sort(np.random.default_rng(subset_seed).permutation(rows)[:max_items])
        self.rows = rows
        self.skipped: list[tuple[str, str]] = []
        self._cache = None
        if cache:
            self._open_cache(Path(cache_dir) if cache_dir else self.root / ".vfu_cache", workers, progress)
        elif on_bad_image == "skip":
            sizes, failures = scan_images(self._paths(), self._windows(), self.image_size, None, workers,
                                          progress, desc=f"checking {split} images")
            self._drop(failures)

    # ----- geometry -------------------------------------------------------------------------
    def _paths(self) -> list[str]:
        base = image_root(self.root)
        return [str(base / self.annotations.image_names[i]) for i in self.rows]

    def _windows(self) -> list[_Window]:
        return [_Window(self.annotations.bbox[i], self.pad_to_square) for i in self.rows]

    # ----- bad images -----------------------------------------------------------------------
    def _drop(self, failures, stacklevel: int = 3) -> None:
        """Raise for bad images, or (skip mode) leave them out of ``rows`` and list them in ``skipped``; the
        warning points ``stacklevel`` frames up, at the line that built the dataset."""
        self._keep = np.arange(len(self.rows))
        if not failures:
            return
        if self.on_bad_image == "raise":
            raise BadImageError(failures[0][1] + (f" (and {len(failures) - 1} more bad images)"
                                                   if len(failures) > 1 else ""))
        bad = {k for k, _ in failures}
        self.skipped = [(str(self.annotations.image_names[self.rows[k]]), reason) for k, reason in failures]
        self._keep = np.array([k for k in range(len(self.rows)) if k not in bad], dtype=np.int64)
        self.rows = self.rows[self._keep]
        warnings.warn(f"DeepFashionC({self.split}): skipped {len(failures)} bad image(s); see .skipped",
                      stacklevel=stacklevel)

    # ----- cache ----------------------------------------------------------------------------
    def cache_key(self) -> str:
        h = hashlib.sha1()
        h.update(files_fingerprint(self.annotations.files).encode())
        h.update(np.ascontiguousarray(self.rows).tobytes())
        h.update(f"{CACHE_VERSION}:{self.image_size}:{self.pad_to_square}".encode())
        return h.hexdigest()[:16]

    def _open_cache(self, cache_dir: Path, workers, progress) -> None:
        cache_dir.mkdir(parents=True, exist_ok=True)
        mode = "pad" if self.pad_to_square else "stretch"
        stem = cache_dir / f"{self.split}-{self.image_size}-{mode}-{len(self.rows)}"
        data_file, meta_file = stem.with_suffix(".u8"), stem.with_suffix(".json")
        sizes_file = stem.with_suffix(".sizes.npy")
        key = self.cache_key()
        shape = (len(self.rows), self.image_size, self.image_size, 3)
        # One builder at a time (two training runs started together share the cache): the others wait on the lock,
        # then find the finished cache. Every file is written under a temporary name and renamed into place.
        with open(stem.with_suffix(".lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            meta = json.loads(meta_file.read_text()) if meta_file.exists() else {}
            if meta.get("key") != key or not data_file.exists() or not sizes_file.exists():
                meta = self._build_cache(stem, key, shape, workers, progress)
        self.cache_file = data_file
        self._cache = np.memmap(data_file, np.uint8, "r", shape=shape)
        self._sizes = np.load(sizes_file)
        self._drop([tuple(f) for f in meta["failures"]], stacklevel=4)     # called from __init__ via here

    def _build_cache(self, stem: Path, key: str, shape: tuple, workers, progress) -> dict:
        """Decode every image into ``<stem>.u8`` (under the caller's lock); returns the cache's meta data.

        The estimated size is compared with the free space first, and the file is allocated in full before any
        image is decoded, so a full disk refuses in one line (:class:`vfu_nb.diskspace.DiskFullError`, with both
        numbers) instead of failing half-way; on any failure the partial files are removed.
        """
        from vfu_nb import diskspace

        data_file, meta_file, sizes_file = stem.with_suffix(".u8"), stem.with_suffix(".json"), stem.with_suffix(
            ".sizes.npy")
        nbytes = int(np.prod(shape))
        way_out = (f"free space under {stem.parent}, or put the cache on a larger disk with --cache-dir DIR "
                   f"(cache_dir=)")
        what = f"the image cache {data_file} ({shape[0]:,} images of {self.image_size} px)"
        for stale in stem.parent.glob(f"{stem.name}.u8.partial*"):    # left by a killed builder (we hold the lock)
            stale.unlink(missing_ok=True)
        diskspace.check_room(data_file, nbytes + 16 * shape[0] + 4096, what, way_out)
        partial = stem.with_suffix(f".u8.partial{os.getpid()}")
        try:
            with open(partial, "wb") as f:
                diskspace.reserve(f, nbytes)
        except OSError as exc:
            partial.unlink(missing_ok=True)
            if diskspace.is_no_space(exc):
                raise diskspace.DiskFullError(data_file, diskspace.free_bytes(data_file), nbytes, way_out) from None
            raise
        try:
            sizes, failures = scan_images(self._paths(), self._windows(), self.image_size, str(partial),
                                          workers, progress, desc=f"caching {self.split} {self.image_size}px")
            if failures and self.on_bad_image == "raise":
                self._drop(failures)
            buf = io.BytesIO()
            np.save(buf, sizes)
            diskspace.atomic_write(sizes_file, buf.getvalue(), way_out)
            os.replace(partial, data_file)
            meta = {"key": key, "shape": list(shape), "failures": failures, "version": CACHE_VERSION}
            diskspace.atomic_write(meta_file, json.dumps(meta), way_out)
        finally:
            partial.unlink(missing_ok=True)
        return meta

    # ----- items ----------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.rows)

    def _pixels_and_window(self, k: int):
        """The S x S x 3 uint8 crop of item k and the window it was cut from."""
        i = self.rows[k]
        if self._cache is not None:
            cached = self._keep[k]
            window = crop_window(self.annotations.bbox[i], tuple(self._sizes[cached]), self.pad_to_square)
            return np.array(self._cache[cached]), window
        image = load_rgb(self.annotations.image_path(i))
        window = crop_window(self.annotations.bbox[i], image.size, self.pad_to_square)
        return crop_and_resize(image, window, self.image_size), window

    def __getitem__(self, k: int) -> dict:
        i = int(self.rows[k])
        ann = self.annotations
        pixels, window = self._pixels_and_window(k)
        landmarks, vis = landmarks_in_window(ann.landmarks[i], ann.landmark_visibility[i], window)
        image = torch.from_numpy(pixels).permute(2, 0, 1).contiguous()
        landmarks, vis = torch.from_numpy(landmarks), torch.from_numpy(vis)
        if self.augment:
            image, landmarks, vis = augment_sample(image, landmarks, vis)
        attrs = ann.attributes[i]
        return {
            "image": image if self.uint8 else normalize_images(image),
            "category": torch.tensor(ann.category[i], dtype=torch.int64),
            "attributes": torch.from_numpy((attrs == 1).astype(np.float32)),
            "attributes_known": torch.from_numpy((attrs != 0).astype(np.float32)),
            "landmarks": landmarks,
            "landmark_visibility": vis,
            "index": torch.tensor(i, dtype=torch.int64),
        }

    def item_arrays(self) -> dict:
        """Every item's ``category``, ``landmarks``, ``landmark_visibility`` and ``index`` (as ``dataset[k]``
        gives them, without augmentation) and its ``cache_row``, as numpy arrays; cached datasets only."""
        if self._cache is None:
            raise ValueError(f"DeepFashionC({self.split}).item_arrays needs cache=True")
        ann, rows = self.annotations, self.rows
        windows = crop_windows(ann.bbox[rows], self._sizes[self._keep], self.pad_to_square)
        landmarks, vis = landmarks_in_window(ann.landmarks[rows], ann.landmark_visibility[rows], windows)
        return {"category": ann.category[rows].astype(np.int64), "landmarks": landmarks,
                "landmark_visibility": vis, "index": rows.astype(np.int64), "cache_row": self._keep}
