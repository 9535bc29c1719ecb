"""DeepFashion-C as a torch Dataset: bbox crop, resize, landmarks in crop units, optional uint8 cache.

The annotation files are parsed by :mod:`vfu_nb.annotations` (re-exported here). Images are cropped to
their bounding box and resized to ``S x S`` without keeping aspect, as the published systems do, or
padded to a square first (``pad_to_square=True``). Decoding JPEGs every epoch is slow, so ``cache=True``
decodes, crops and resizes each image once into a uint8 memory-mapped array (one per root, split, size
and crop mode), rebuilt when the annotation files change; that first pass is also where bad images are
found.

Training reads the cache a batch at a time: :class:`BatchLoader` gathers each index batch of a batch sampler
from the memmap in one pass (a background thread prefetches the next one), copies it to the device and
there applies the flip and scale/shift jitter to the whole batch (:func:`augment_batch`). The per-item path
(``dataset[k]`` with ``augment=True``, :func:`augment_sample`) stays for uncached use and the widgets.
"""

from __future__ import annotations

import fcntl
import hashlib
import io
import json
import os
import queue
import threading
import warnings
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from functools import lru_cache
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import Dataset
from torchvision import tv_tensors
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from vfu_nb import lifeline
from vfu_nb.annotations import (  # noqa: F401  (re-exported API)
    ATTRIBUTE_TYPE_NAMES, CLOTHES_TYPE_NAMES, FLIP_PAIRS, LANDMARK_NAMES, SLOTS_BY_CLOTHES_TYPE, SPLITS,
    AnnotationError, Annotations, annotation_paths, image_root, load_annotations, read_partition,
    read_records, read_vocabulary,
)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
PAD_FILL = tuple(round(255 * m) for m in IMAGENET_MEAN)   # normalises to zero
CACHE_VERSION = 1
_FLIP_ORDER = [j for pair in FLIP_PAIRS for j in reversed(pair)]   # slot i <- slot _FLIP_ORDER[i]


class BadImageError(OSError):
    """An image file that is missing or cannot be decoded; the message names its path."""


_DEVICE_CONSTANTS: dict = {}   # (name, device) -> tensor, made once per device


def _device_constant(name: str, device: torch.device, values, dtype=torch.float32) -> torch.Tensor:
    """A small constant tensor on ``device``, copied there once: no host->device copy (a sync) per step."""
    key = (name, device)
    if key not in _DEVICE_CONSTANTS:
        _DEVICE_CONSTANTS[key] = torch.tensor(values, dtype=dtype, device=device)
    return _DEVICE_CONSTANTS[key]


def normalize_images(images: torch.Tensor) -> torch.Tensor:
    """uint8 (..., 3, H, W) in 0..255 -> float32 ImageNet-normalised, on the tensor's device.

    The mean and std tensors are made once per device, so a training step copies nothing to the device.
    """
    mean = _device_constant("imagenet_mean", images.device, IMAGENET_MEAN).view(3, 1, 1)
    std = _device_constant("imagenet_std", images.device, IMAGENET_STD).view(3, 1, 1)
    return (images.float() / 255.0 - mean) / std


def crop_windows(boxes, image_sizes, pad_to_square: bool) -> np.ndarray:
    """The windows (N, 4) x1, y1, x2, y2 cut from N images: each bbox clamped to its image (width, height), or
    the square around it. Raises ValueError naming the first box that is empty inside its image."""
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    sizes = np.asarray(image_sizes, np.float64).reshape(-1, 2)
    x1, y1 = np.maximum(0.0, boxes[:, 0]), np.maximum(0.0, boxes[:, 1])
    x2, y2 = np.minimum(sizes[:, 0], boxes[:, 2]), np.minimum(sizes[:, 1], boxes[:, 3])
    empty = (x2 - x1 < 1) | (y2 - y1 < 1)
    if empty.any():
        k = int(np.argmax(empty))
        raise ValueError(f"bounding box {tuple(boxes[k].tolist())} is empty inside an image of "
                         f"{int(sizes[k, 0])}x{int(sizes[k, 1])}")
    if pad_to_square:
        side = np.maximum(x2 - x1, y2 - y1)
        cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
        x1, y1, x2, y2 = cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2
    return np.stack([x1, y1, x2, y2], axis=1)


def crop_window(box, image_size: tuple[int, int], pad_to_square: bool) -> tuple[float, float, float, float]:
    """The window (x1, y1, x2, y2) cut from one image: the bbox clamped to the image, or its enclosing square."""
    return tuple(crop_windows([box], [image_size], pad_to_square)[0].tolist())


def crop_and_resize(image: Image.Image, window, size: int) -> np.ndarray:
    """Cut ``window`` (may extend past the image; filled with the ImageNet mean) and resize to size x size."""
    x1, y1, x2, y2 = window
    if x1 < 0 or y1 < 0 or x2 > image.width or y2 > image.height:
        canvas = Image.new("RGB", (round(x2 - x1), round(y2 - y1)), PAD_FILL)
        canvas.paste(image, (round(-x1), round(-y1)))
        image, x1, y1, x2, y2 = canvas, 0, 0, canvas.width, canvas.height
    crop = image.resize((size, size), Image.BILINEAR, box=(x1, y1, x2, y2))
    return np.array(crop, dtype=np.uint8)


def landmarks_in_window(landmarks: np.ndarray, visibility: np.ndarray, window):
    """Pixel landmarks (..., 8, 2) -> units of their crop ``window`` (..., 4); visibility becomes 2 (truncated)
    for points outside the window, and absent slots (visibility -1) get (0, 0)."""
    window = np.asarray(window, np.float64)
    origin = window[..., None, :2].astype(np.float32)
    extent = (window[..., None, 2:] - window[..., None, :2]).astype(np.float32)
    units = (landmarks - origin) / extent
    vis = visibility.copy()
    outside = (units < 0).any(-1) | (units > 1).any(-1)
    vis[(vis >= 0) & outside] = 2
    units[vis < 0] = 0.0   # slots this clothes type does not have
    return units.astype(np.float32), vis


def load_rgb(path: Path) -> Image.Image:
    """Decode an image to RGB, raising :class:`BadImageError` that names the path."""
    try:
        with Image.open(path) as im:
            return im.convert("RGB")
    except FileNotFoundError:
        raise BadImageError(f"{path}: image file not found") from None
    except Exception as exc:  # PIL raises many types for corrupt data
        raise BadImageError(f"{path}: cannot decode image ({type(exc).__name__}: {exc})") from None


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


def _files_fingerprint(paths: dict) -> str:
    """Size and modification time of each annotation file (None where missing), as one string."""
    stats = [(k, os.stat(p).st_size, os.stat(p).st_mtime_ns) if os.path.exists(p) else (k, None)
             for k, p in sorted(paths.items())]
    return json.dumps(stats)


@lru_cache(maxsize=4)
def _load_cached(root: str, fingerprint: str) -> Annotations:
    return load_annotations(root)


def cached_annotations(root) -> Annotations:
    """load_annotations, memoised per root while its files are unchanged."""
    return _load_cached(str(Path(root).resolve()), _files_fingerprint(annotation_paths(root)))


class DeepFashionC(Dataset):
    """One split of DeepFashion-C (or the synthetic benchmark in the same format).

    Items are dicts: ``image`` (float 3xSxS ImageNet-normalised, or uint8 with ``uint8=True``),
    ``category`` (int64), ``attributes`` (float 0/1 over A), ``attributes_known``, ``landmarks``
    (float 8x2 crop units), ``landmark_visibility`` (int64 8: 0 visible, 1 occluded, 2 truncated or
    outside the crop, -1 absent) and ``index`` (row in the annotations).

    ``augment=True`` adds a horizontal flip (x mirrored, left/right slots swapped) and a small scale and
    shift jitter applied to image and landmarks together (:func:`augment_sample`, from torch's global RNG).
    Cached datasets are best read through :class:`BatchLoader`. ``on_bad_image="skip"`` leaves out missing or
    undecodable images (listed in ``self.skipped``) instead of raising.
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
        h.update(_files_fingerprint(self.annotations.files).encode())
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


# ----- augmentation ---------------------------------------------------------------------------
FLIP_PROBABILITY = 0.5
SCALE_RANGE = (0.9, 1.1)
MAX_SHIFT = 0.05   # crop units, per axis


@dataclass
class Augmentation:
    """Flip and scale/shift parameters of n images: ``flip`` (n,) bool, ``scale`` (n,), ``shift`` (n, 2) x, y.

    A point at crop units u moves to ``0.5 + scale * (m(u) - 0.5) + shift``, where m mirrors x (``1 - x``)
    when flipped; a flip also swaps the left/right landmark slots. Lists and numbers are accepted.
    """

    flip: torch.Tensor
    scale: torch.Tensor
    shift: torch.Tensor

    def __post_init__(self):
        self.flip = torch.as_tensor(self.flip, dtype=torch.bool).reshape(-1)
        self.scale = torch.as_tensor(self.scale, dtype=torch.float32).reshape(-1)
        self.shift = torch.as_tensor(self.shift, dtype=torch.float32).reshape(-1, 2)
        if not len(self.flip) == len(self.scale) == len(self.shift):
            raise ValueError(f"Augmentation: flip, scale and shift need one row per image, got "
                             f"{len(self.flip)}, {len(self.scale)} and {len(self.shift)}")

    @classmethod
    def draw(cls, n: int, generator: torch.Generator | None = None) -> "Augmentation":
        """Random parameters for n images: flip with probability 1/2, scale in SCALE_RANGE, shift within
        +-MAX_SHIFT per axis (uniform), from ``generator`` (torch's global RNG if None)."""
        u = torch.rand(n, 4, generator=generator)
        low, high = SCALE_RANGE
        return cls(u[:, 0] < FLIP_PROBABILITY, low + (high - low) * u[:, 1], (2 * u[:, 2:] - 1) * MAX_SHIFT)

    def to(self, device, non_blocking: bool = False) -> "Augmentation":
        return Augmentation(*(t.to(device, non_blocking=non_blocking) for t in (self.flip, self.scale, self.shift)))

    def pin_memory(self) -> "Augmentation":
        return Augmentation(self.flip.pin_memory(), self.scale.pin_memory(), self.shift.pin_memory())

    def matrices(self) -> torch.Tensor:
        """(n, 2, 3) forward affine maps in grid coordinates (-1..1 across the crop), the mirror included."""
        zero = torch.zeros_like(self.scale)
        sx = torch.where(self.flip, -self.scale, self.scale)
        return torch.stack([torch.stack([sx, zero, 2 * self.shift[:, 0]], dim=-1),
                            torch.stack([zero, self.scale, 2 * self.shift[:, 1]], dim=-1)], dim=1)


def invert_affine(matrices: torch.Tensor) -> torch.Tensor:
    """Inverses of (n, 2, 3) affine maps [A | t] -> [A^-1 | -A^-1 t], without a host sync."""
    a, b, c, d = matrices[:, 0, 0], matrices[:, 0, 1], matrices[:, 1, 0], matrices[:, 1, 1]
    inverse = torch.stack([torch.stack([d, -b], dim=-1), torch.stack([-c, a], dim=-1)], dim=1)
    inverse = inverse / (a * d - b * c)[:, None, None]
    return torch.cat([inverse, -inverse @ matrices[:, :, 2:]], dim=2)


def affine_grid(theta: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """``F.affine_grid(theta, (n, C, height, width), align_corners=False)`` by broadcasting: the same sampling
    grid (n, height, width, 2), built ~10x faster on the CPU, where F.affine_grid runs a batched matmul."""
    xs = (torch.arange(width, dtype=theta.dtype, device=theta.device) * 2 + 1) / width - 1
    ys = (torch.arange(height, dtype=theta.dtype, device=theta.device) * 2 + 1) / height - 1
    t = theta[:, :, :, None, None]
    return (t[:, :, 0] * xs + t[:, :, 1] * ys[:, None] + t[:, :, 2]).permute(0, 2, 3, 1)


def _truncate_outside(landmarks: torch.Tensor, vis: torch.Tensor):
    """Visibility 2 for present points that left the crop (any side); absent slots (-1) back to (0, 0)."""
    outside = ((landmarks < 0) | (landmarks > 1)).any(dim=-1)
    vis = torch.where((vis >= 0) & outside, torch.full_like(vis, 2), vis)
    return landmarks.masked_fill((vis < 0).unsqueeze(-1), 0.0), vis


def augment_sample(image: torch.Tensor, landmarks: torch.Tensor, vis: torch.Tensor,
                   augmentation: Augmentation | None = None):
    """Flip and scale/shift one item with torchvision v2 (bilinear, zero fill): image (C, H, W), landmarks
    (8, 2) in crop units, visibility (8,). ``augmentation`` holds one row; None draws it from torch's RNG."""
    aug = Augmentation.draw(1) if augmentation is None else augmentation
    if len(aug.flip) != 1:
        raise ValueError(f"augment_sample takes one row of Augmentation, got {len(aug.flip)}")
    height, width = image.shape[-2:]
    if bool(aug.flip[0]):
        image = TF.horizontal_flip(image)
        landmarks = torch.stack([1 - landmarks[:, 0], landmarks[:, 1]], dim=1)[_FLIP_ORDER]
        vis = vis[_FLIP_ORDER]
    size = torch.tensor([width, height], dtype=torch.float32)
    dx, dy = aug.shift[0].tolist()
    params = dict(angle=0.0, translate=[dx * width, dy * height], scale=float(aug.scale[0]), shear=[0.0, 0.0])
    image = TF.affine(image, **params, interpolation=InterpolationMode.BILINEAR, fill=None)
    points = TF.affine(tv_tensors.KeyPoints(landmarks * size, canvas_size=(height, width)), **params)
    landmarks, vis = _truncate_outside(points.as_subclass(torch.Tensor) / size, vis)
    return image, landmarks.float(), vis


def augment_batch(images: torch.Tensor, landmarks: torch.Tensor, vis: torch.Tensor, augmentation: Augmentation):
    """Flip and scale/shift a batch on its device: images (B, C, H, W) uint8 or float, landmarks (B, 8, 2),
    visibility (B, 8). One affine grid per image (bilinear, zero fill; uint8 stays uint8, rounded), and the
    landmarks go through the same matrices. Agrees with :func:`augment_sample` row by row."""
    aug = augmentation.to(images.device, non_blocking=True)
    forward = aug.matrices()
    grid = affine_grid(invert_affine(forward), *images.shape[-2:])
    out = F.grid_sample(images.float(), grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    if not images.is_floating_point():
        out = out.round_().clamp_(0, 255).to(images.dtype)
    flip, order = aug.flip.view(-1, 1), _device_constant("flip_order", vis.device, _FLIP_ORDER, torch.int64)
    vis = torch.where(flip, vis.index_select(1, order), vis)
    landmarks = torch.where(flip.unsqueeze(-1), landmarks.index_select(1, order), landmarks)
    points = (2 * landmarks - 1) @ forward[:, :, :2].transpose(1, 2) + forward[:, None, :, 2]
    landmarks, vis = _truncate_outside((points + 1) / 2, vis)
    return out, landmarks, vis


# ----- batch loader ---------------------------------------------------------------------------
class BatchLoader:
    """Whole batches of a cached :class:`DeepFashionC`, for training without DataLoader workers.

    Each index list from ``batch_sampler`` (any batch sampler, e.g. a per-rank one under DDP) becomes one
    batch with the keys, dtypes and values of ``DataLoader`` collation of ``dataset[k]`` without
    augmentation: the rows are read from the uint8 memmap in file order and written straight to their
    places in the batch (pinned memory when ``pin_memory``, default on for CUDA), labels and landmarks are
    indexed from arrays built once. ``image`` is uint8 (B, 3, S, S) laid out channels-last (a view of the
    NHWC rows); normalise it on the device with :func:`normalize_images`. A background thread prepares up to
    ``prefetch`` batches ahead (0: none); the copy to ``device`` is ``non_blocking``.

    ``augment`` (default: the dataset's flag) applies :func:`augment_batch` on the device. Its parameters
    come from a private generator seeded, when iteration starts, by one draw from ``generator`` (torch's
    global RNG if None), as ``DataLoader`` draws its base seed: the same sampler state and generator state
    give the same batches, so a resumed run repeats them exactly.
    """

    def __init__(self, dataset: DeepFashionC, batch_sampler, device="cpu", *, augment: bool | None = None,
                 generator: torch.Generator | None = None, pin_memory: bool | None = None, prefetch: int = 2):
        if getattr(dataset, "_cache", None) is None or not getattr(dataset, "uint8", False):
            raise ValueError("BatchLoader needs DeepFashionC(..., cache=True, uint8=True)")
        if prefetch < 0:
            raise ValueError(f"BatchLoader: prefetch must be >= 0, got {prefetch}")
        self.dataset, self.batch_sampler, self.device = dataset, batch_sampler, torch.device(device)
        self.augment = dataset.augment if augment is None else bool(augment)
        self.generator, self.prefetch = generator, prefetch
        want_pin = self.device.type == "cuda" if pin_memory is None else pin_memory
        self.pin_memory = bool(want_pin) and torch.cuda.is_available()
        self._arrays = dataset.item_arrays()
        self._images = dataset._cache.view(np.ndarray)   # the memmap as a plain array: cheaper to index

    def __len__(self) -> int:
        return len(self.batch_sampler)

    def __iter__(self):
        seed = int(torch.empty((), dtype=torch.int64).random_(generator=self.generator))
        rng = torch.Generator().manual_seed(seed)
        batches = (self.gather(indices, rng) for indices in self.batch_sampler)
        if self.prefetch:
            batches = _in_background(batches, self.prefetch)
        for batch in batches:
            yield self.to_device(batch)

    def gather(self, indices, generator: torch.Generator | None = None) -> dict:
        """The batch of items ``indices`` in host memory; with augmentation also its ``Augmentation`` drawn
        from ``generator``, under the key ``augmentation``."""
        idx = np.asarray(indices, dtype=np.int64)
        arrays, ds, pin = self._arrays, self.dataset, self.pin_memory
        size = ds.image_size
        images = torch.empty((len(idx), size, size, 3), dtype=torch.uint8, pin_memory=pin)
        pixels, rows = images.numpy(), arrays["cache_row"][idx]
        for k in np.argsort(rows, kind="stable"):    # file order; each row goes straight to its place
            pixels[k] = self._images[rows[k]]
        attrs = torch.from_numpy(ds.annotations.attributes[arrays["index"][idx]])
        batch = {
            "image": images.permute(0, 3, 1, 2),
            "category": torch.from_numpy(arrays["category"][idx]),
            "attributes": (attrs == 1).float(),
            "attributes_known": (attrs != 0).float(),
            "landmarks": torch.from_numpy(arrays["landmarks"][idx]),
            "landmark_visibility": torch.from_numpy(arrays["landmark_visibility"][idx]),
            "index": torch.from_numpy(arrays["index"][idx]),
        }
        if pin:
            batch = {k: v if k == "image" else v.pin_memory() for k, v in batch.items()}
        if self.augment:
            aug = Augmentation.draw(len(idx), generator)
            batch["augmentation"] = aug.pin_memory() if pin else aug
        return batch

    def to_device(self, batch: dict) -> dict:
        """Copy a :meth:`gather` batch to the device (non_blocking) and augment it there."""
        batch = dict(batch)
        aug = batch.pop("augmentation", None)
        batch = {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}
        if aug is not None:
            batch["image"], batch["landmarks"], batch["landmark_visibility"] = augment_batch(
                batch["image"], batch["landmarks"], batch["landmark_visibility"], aug)
        return batch


def _in_background(items, depth: int):
    """Iterate ``items`` in a daemon thread that keeps up to ``depth`` of them ready; errors are re-raised
    here, and the thread stops when this generator is closed."""
    ready: queue.Queue = queue.Queue(depth)
    stop = threading.Event()
    end = object()

    def put(entry) -> bool:
        while not stop.is_set():
            try:
                ready.put(entry, timeout=0.05)
                return True
            except queue.Full:
                pass
        return False

    def work():
        try:
            for item in items:
                if not put((item, None)):
                    return
            put((end, None))
        except BaseException as exc:  # handed to the consumer
            put((end, exc))

    thread = threading.Thread(target=work, name="BatchLoader prefetch", daemon=True)
    thread.start()
    try:
        while True:
            item, exc = ready.get()
            if exc is not None:
                raise exc
            if item is end:
                return
            yield item
    finally:
        stop.set()
        thread.join()
