"""The uint8 cache: processes that open the same uncached split at once build it once and all read it."""

import multiprocessing as mp

import numpy as np
import pytest


def _open(root, cache_dir, queue):
    import time

    from vfu_nb.data import dataset

    scan = dataset.scan_images
    dataset.scan_images = lambda *a, **k: (time.sleep(2), scan(*a, **k))[1]   # a slow build: the openers overlap
    ds = dataset.DeepFashionC(root, "train", 32, cache=True, uint8=True, cache_dir=cache_dir, progress=False)
    queue.put(np.asarray(ds._cache[:4]).sum())


@pytest.mark.slow
def test_concurrent_builders_share_one_cache(synth_root, tmp_path):
    ctx = mp.get_context("fork")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_open, args=(synth_root, tmp_path, queue)) for _ in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0, 0, 0]
    sums = [queue.get(timeout=5) for _ in procs]
    assert len(set(sums)) == 1 and sums[0] > 0
    assert sorted(f.name for f in tmp_path.iterdir() if "partial" in f.name) == []      # nothing half-written
    assert len(list(tmp_path.glob("train-32-*.u8"))) == 1
