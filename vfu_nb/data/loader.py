"""Whole batches of a cached DeepFashion-C split, for training without DataLoader workers.

:class:`BatchLoader` gathers each index batch of a batch sampler from the uint8 memmap in one pass (a background
thread prefetches the next one), copies it to the device and there applies the flip and scale/shift jitter to
the whole batch (:func:`vfu_nb.data.augment.augment_batch`).
"""

from __future__ import annotations

import queue
import threading

import numpy as np
import torch

from vfu_nb.data.augment import Augmentation, augment_batch
from vfu_nb.data.dataset import DeepFashionC


class BatchLoader:
    """Whole batches of a cached :class:`DeepFashionC`, for training without DataLoader workers.

    Each index list from ``batch_sampler`` (any batch sampler, e.g. a per-rank one under DDP) becomes one
    batch with the keys, dtypes and values of ``DataLoader`` collation of ``dataset[k]`` without
    augmentation: the rows are read from the uint8 memmap in file order and written straight to their
    places in the batch (pinned memory when ``pin_memory``, default on for CUDA), labels and landmarks are
    indexed from arrays built once. ``image`` is uint8 (B, 3, S, S) laid out channels-last (a view of the
    NHWC rows); normalise it on the device with :func:`vfu_nb.data.crops.normalize_images`. A background
    thread prepares up to ``prefetch`` batches ahead (0: none); the copy to ``device`` is ``non_blocking``.

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
