"""BatchLoader (whole batches from the uint8 cache) and batch augmentation on the device."""

import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from dftree import write_tree
from vfu_nb.data.augment import MAX_SHIFT, SCALE_RANGE, Augmentation, augment_batch, augment_sample, invert_affine
from vfu_nb.data.crops import normalize_images
from vfu_nb.data.dataset import DeepFashionC
from vfu_nb.data.loader import BatchLoader

SIZE = 16


@pytest.fixture
def synth(synth_root):
    return synth_root          # the session's tree; caches go under tmp_path


#: One cache folder per tree for the whole module (the first test's): the caches are read-only once built.
_CACHE_DIRS: dict = {}


def cached(root, tmp_path, **kw):
    cache_dir = _CACHE_DIRS.setdefault(str(root), tmp_path / "cache")
    return DeepFashionC(root, "train", image_size=SIZE, cache=True, uint8=True, cache_dir=cache_dir, progress=False,
                        **kw)


def shuffled_batches(n, batch_size, seed=0):
    order = np.random.default_rng(seed).permutation(n).tolist()
    return [order[i:i + batch_size] for i in range(0, n, batch_size)]   # the last one is short


def assert_same_batches(expected, actual):
    assert len(expected) == len(actual)
    for want, got in zip(expected, actual):
        assert want.keys() == got.keys()
        for key in want:
            assert got[key].dtype == want[key].dtype and got[key].shape == want[key].shape, key
            assert torch.equal(got[key], want[key]), key


@pytest.mark.parametrize("prefetch", [0, 2])
def test_batches_equal_dataloader_collation(synth, tmp_path, prefetch):
    ds = cached(synth, tmp_path)
    batches = shuffled_batches(len(ds), 6)
    expected = list(DataLoader(ds, batch_sampler=batches))
    loader = BatchLoader(ds, batches, "cpu", prefetch=prefetch)
    assert len(loader) == len(batches) and not loader.augment
    assert_same_batches(expected, list(loader))
    assert_same_batches(expected, list(loader))               # a second epoch reads the same


def test_skipped_images_keep_items_and_cache_rows_aligned(synth_root, tmp_path):
    import shutil

    root = shutil.copytree(synth_root, tmp_path / "tree")     # a copy: this test breaks one of its images
    first = DeepFashionC(root, "train", image_size=SIZE, progress=False)
    (root / first.annotations.image_names[first.rows[1]]).write_bytes(b"broken")
    with pytest.warns(UserWarning, match="skipped 1 bad image"):
        ds = cached(root, tmp_path, on_bad_image="skip")
    assert len(ds) == len(first) - 1 and ds._keep[1] == 2       # item 1 is cache row 2
    batches = shuffled_batches(len(ds), 4, seed=1)
    assert_same_batches(list(DataLoader(ds, batch_sampler=batches)), list(BatchLoader(ds, batches)))


def test_per_rank_index_lists_gather_only_their_items(synth, tmp_path):
    ds = cached(synth, tmp_path)
    global_batches = shuffled_batches(len(ds), 8, seed=2)
    for rank in range(2):
        mine = [b[rank::2] for b in global_batches]
        got = list(BatchLoader(ds, mine))
        assert [b["index"].tolist() for b in got] == [ds.rows[m].tolist() for m in mine]
        assert_same_batches(list(DataLoader(ds, batch_sampler=mine)), got)


def test_augmented_batches_repeat_for_the_same_generator_state(synth, tmp_path):
    ds = cached(synth, tmp_path)
    batches = shuffled_batches(len(ds), 5)
    gen = torch.Generator()

    def epoch(seed):
        gen.manual_seed(seed)
        return list(BatchLoader(ds, batches, augment=True, generator=gen))

    first = epoch(7)
    assert_same_batches(first, epoch(7))
    other = epoch(8)
    assert not torch.equal(first[0]["image"], other[0]["image"])
    plain = list(BatchLoader(ds, batches))
    assert not torch.equal(first[0]["image"], plain[0]["image"])
    for a, p in zip(first, plain):   # augmentation leaves labels alone
        for key in ("category", "attributes", "attributes_known", "index"):
            assert torch.equal(a[key], p[key])


def test_stopping_early_and_errors_in_the_thread(synth, tmp_path):
    ds = cached(synth, tmp_path)
    loader = BatchLoader(ds, shuffled_batches(len(ds), 2), prefetch=1)
    it = iter(loader)
    next(it)
    it.close()                                              # stops and joins the prefetch thread
    assert len(list(loader)) == len(loader)
    with pytest.raises(IndexError):
        list(BatchLoader(ds, [[0, 1], [0, len(ds) + 5]], prefetch=2))


def test_bad_arguments(synth, tmp_path):
    with pytest.raises(ValueError, match=r"cache=True, uint8=True"):
        BatchLoader(DeepFashionC(synth, "train", image_size=SIZE, uint8=True), [[0]])
    with pytest.raises(ValueError, match=r"cache=True, uint8=True"):
        BatchLoader(DeepFashionC(synth, "train", image_size=SIZE, cache=True, cache_dir=tmp_path, progress=False),
                    [[0]])
    with pytest.raises(ValueError, match="prefetch must be >= 0"):
        BatchLoader(cached(synth, tmp_path), [[0]], prefetch=-1)
    with pytest.raises(ValueError, match="one row per image"):
        Augmentation([True, False], [1.0], [[0, 0], [0, 0]])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_batches_match_the_cpu_ones_without_host_syncs(synth, tmp_path):
    ds = cached(synth, tmp_path)
    batches = shuffled_batches(len(ds), 6)
    loader = BatchLoader(ds, batches, "cuda")
    assert loader.pin_memory and loader.gather(batches[0])["category"].is_pinned()
    for want, got in zip(BatchLoader(ds, batches), loader):
        assert all(v.is_cuda for v in got.values())
        assert_same_batches([want], [{k: v.cpu() for k, v in got.items()}])
    gen = torch.Generator()
    on_cpu = list(BatchLoader(ds, batches, augment=True, generator=gen.manual_seed(1)))
    on_gpu = list(BatchLoader(ds, batches, "cuda", augment=True, generator=gen.manual_seed(1)))
    for a, b in zip(on_cpu, on_gpu):
        assert (a["image"].int() - b["image"].cpu().int()).abs().max() <= 1
        torch.testing.assert_close(a["landmarks"], b["landmarks"].cpu(), atol=1e-5, rtol=0)
    normalize_images(on_gpu[0]["image"])                     # device constants exist from here on
    torch.cuda.set_sync_debug_mode("error")                  # any host sync below raises
    try:
        for batch in BatchLoader(ds, batches, "cuda", augment=True, generator=gen.manual_seed(2)):
            normalize_images(batch["image"])
    finally:
        torch.cuda.set_sync_debug_mode("default")


# ----- augmentation ---------------------------------------------------------------------------


def random_items(n, size=SIZE, seed=0):
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=g)
    landmarks = torch.rand(n, 8, 2, generator=g) * 0.9 + 0.05
    vis = torch.randint(-1, 2, (n, 8), generator=g)
    return images, landmarks.masked_fill((vis < 0)[..., None], 0.0), vis


def per_item(images, landmarks, vis, aug):
    rows = [augment_sample(images[k], landmarks[k], vis[k], Augmentation(aug.flip[k], aug.scale[k], aug.shift[k]))
            for k in range(len(images))]
    return tuple(torch.stack(parts) for parts in zip(*rows))


def assert_agree(batch, item):
    (bi, bl, bv), (ii, il, iv) = batch, item
    assert bi.dtype == ii.dtype == torch.uint8
    diff = (bi.int() - ii.int()).abs()
    assert diff.max() <= 1 and (diff > 0).float().mean() < 0.01      # bilinear rounding only
    torch.testing.assert_close(bl, il, atol=1e-4, rtol=0)
    assert torch.equal(bv, iv)


def test_batch_and_per_item_augmentation_agree():
    images, landmarks, vis = random_items(24, size=20)
    aug = Augmentation.draw(24, torch.Generator().manual_seed(4))
    assert aug.flip.any() and not aug.flip.all()
    assert_agree(augment_batch(images, landmarks, vis, aug), per_item(images, landmarks, vis, aug))


def test_flip_mirrors_pixels_and_swaps_left_right_slots():
    images, landmarks, vis = random_items(1)
    aug = Augmentation([True], [1.0], [[0.0, 0.0]])
    image, lm, v = augment_batch(images, landmarks, vis, aug)
    assert torch.equal(image, images.flip(-1))                            # exact: pixel centres map to centres
    swap = [1, 0, 3, 2, 5, 4, 7, 6]
    want = torch.stack([1 - landmarks[0, swap, 0], landmarks[0, swap, 1]], dim=-1)
    want[vis[0, swap] < 0] = 0
    torch.testing.assert_close(lm[0], want, atol=1e-6, rtol=0)
    assert v[0].tolist() == vis[0, swap].tolist()
    assert_agree((image, lm, v), per_item(images, landmarks, vis, aug))


def test_points_leaving_on_any_side_become_truncated():
    images, _, _ = random_items(4)
    landmarks = torch.tensor([[0.02, 0.5], [0.98, 0.5], [0.5, 0.03], [0.5, 0.97],
                              [0.5, 0.5], [0.3, 0.3], [0.0, 0.0], [0.7, 0.6]]).repeat(4, 1, 1)
    vis = torch.tensor([0, 1, 0, 0, 0, 1, -1, 0]).repeat(4, 1)
    aug = Augmentation(flip=[False, False, True, False], scale=[1.0, 1.0, 1.0, 1.1],
                       shift=[[-0.05, 0.0], [0.0, -0.05], [0.04, 0.0], [0.0, 0.0]])
    out_image, lm, v = augment_batch(images, landmarks, vis, aug)
    # 0: shifted left: the point at x=0.02 leaves on the left; 1: shifted up: y=0.03 leaves at the top
    assert v[0].tolist() == [2, 1, 0, 0, 0, 1, -1, 0] and lm[0, 0, 0] < 0
    assert v[1].tolist() == [0, 1, 2, 0, 0, 1, -1, 0] and lm[1, 2, 1] < 0
    # 2: flipped, then shifted right: the point at x=0.02 lands in slot 1 at x=1.02, right of the crop
    assert v[2].tolist() == [1, 2, 0, 0, 1, 0, 0, -1] and lm[2, 1, 0] > 1
    # 3: zoomed in about the centre: points near all four edges leave
    assert v[3].tolist() == [2, 2, 2, 2, 0, 1, -1, 0]
    assert lm[[0, 1, 3], 6].abs().sum() == 0 and lm[2, 7].abs().sum() == 0   # absent slots stay at (0, 0)
    assert_agree((out_image, lm, v), per_item(images, landmarks, vis, aug))


def test_a_bright_dot_moves_with_its_landmark():
    size = 64
    images = torch.zeros(6, 3, size, size, dtype=torch.uint8)
    images[:, :, 18:23, 10:15] = 255                                         # dot centred at (12.5, 20.5) px
    landmarks = torch.zeros(6, 8, 2)
    landmarks[:, 2] = torch.tensor([12.5, 20.5]) / size
    vis = torch.full((6, 8), -1)
    vis[:, 2] = 0
    aug = Augmentation.draw(6, torch.Generator().manual_seed(11))
    out, lm, v = augment_batch(images, landmarks, vis, aug)
    for k in range(6):
        ys, xs = torch.nonzero(out[k].float().mean(0) > 100, as_tuple=True)
        centre = (torch.stack([xs.float().mean(), ys.float().mean()]) + 0.5) / size
        slot = 3 if aug.flip[k] else 2
        assert v[k, slot] == 0 and v[k].tolist().count(-1) == 7
        torch.testing.assert_close(lm[k, slot], centre, atol=1.0 / size, rtol=0)


def test_float_batches_stay_float_and_parameters_are_in_range():
    images, landmarks, vis = random_items(3)
    aug = Augmentation.draw(3, torch.Generator().manual_seed(0))
    out, _, _ = augment_batch(images.float() / 255, landmarks, vis, aug)
    assert out.dtype == torch.float32
    ref, _, _ = augment_batch(images, landmarks, vis, aug)
    assert (out * 255 - ref.float()).abs().max() <= 0.5 + 1e-3
    many = Augmentation.draw(2000, torch.Generator().manual_seed(1))
    assert 0.45 < many.flip.float().mean() < 0.55
    low, high = SCALE_RANGE
    assert low <= many.scale.min() < low + 0.01 and high - 0.01 < many.scale.max() <= high
    assert many.shift.abs().max() <= MAX_SHIFT
    assert (many.shift.amin(0) < -0.95 * MAX_SHIFT).all() and (many.shift.amax(0) > 0.95 * MAX_SHIFT).all()
    assert torch.equal(Augmentation.draw(5, torch.Generator().manual_seed(2)).scale,
                       Augmentation.draw(5, torch.Generator().manual_seed(2)).scale)
    m = many.matrices()[:4]
    identity = torch.cat([torch.eye(2), torch.zeros(2, 1)], dim=1)
    both = invert_affine(m)
    composed = both[:, :, :2] @ m[:, :, :2], both[:, :, :2] @ m[:, :, 2:] + both[:, :, 2:]
    torch.testing.assert_close(torch.cat(composed, dim=2), identity.expand(4, 2, 3), atol=1e-6, rtol=0)


def test_dataset_items_use_the_same_augmentation(tmp_path):
    """dataset[k] with augment=True draws from torch's global RNG and gives what augment_sample gives."""
    root = write_tree(tmp_path)
    ds = DeepFashionC(root, "train", image_size=SIZE, uint8=True, augment=True)
    plain = DeepFashionC(root, "train", image_size=SIZE, uint8=True)[0]
    torch.manual_seed(3)
    item = ds[0]
    torch.manual_seed(3)
    image, lm, v = augment_sample(plain["image"], plain["landmarks"], plain["landmark_visibility"])
    assert torch.equal(item["image"], image) and torch.equal(item["landmarks"], lm)
    assert torch.equal(item["landmark_visibility"], v)


# ----- visibility rules: boundaries, one side at a time, both paths ------------------------------------


def _both_paths(images, landmarks, vis, aug):
    batch = augment_batch(images, landmarks, vis, aug)
    item = per_item(images, landmarks, vis, aug)
    assert_agree(batch, item)
    return batch


def test_points_on_the_crop_border_stay_visible():
    images, _, _ = random_items(1)
    landmarks = torch.tensor([[[0.0, 0.5], [1.0, 0.5], [0.5, 0.0], [0.5, 1.0], [0.0, 0.0], [1.0, 1.0],
                               [0.5, 0.5], [0.25, 0.75]]])
    vis = torch.tensor([[0, 1, 0, 1, 0, 0, 1, 0]])
    _, lm, v = _both_paths(images, landmarks, vis, Augmentation([False], [1.0], [[0.0, 0.0]]))
    assert v.tolist() == vis.tolist()
    torch.testing.assert_close(lm, landmarks, atol=1e-6, rtol=0)


@pytest.mark.parametrize("side, shift, slot", [("left", [-0.06, 0.0], 0), ("right", [0.06, 0.0], 1),
                                               ("top", [0.0, -0.06], 2), ("bottom", [0.0, 0.06], 3)])
@pytest.mark.parametrize("code", [0, 1])
def test_a_point_leaving_on_one_side_becomes_truncated(side, shift, slot, code):
    images, _, _ = random_items(1)
    landmarks = torch.tensor([[[0.03, 0.4], [0.97, 0.6], [0.4, 0.03], [0.6, 0.97], [0.5, 0.5], [0.3, 0.3],
                               [0.0, 0.0], [0.7, 0.6]]])
    vis = torch.tensor([[code, code, code, code, 0, 1, -1, 2]])
    _, lm, v = _both_paths(images, landmarks, vis, Augmentation([False], [1.0], [shift]))
    want = vis.clone()
    want[0, slot] = 2                                   # visible or occluded: now outside the crop
    assert v.tolist() == want.tolist(), side
    assert lm[0, 6].tolist() == [0.0, 0.0]              # the absent slot stays absent, at (0, 0)


def test_a_flip_swaps_visibility_between_left_and_right_slots():
    images, landmarks, _ = random_items(2)
    vis = torch.tensor([[0, 1, 2, -1, 1, 0, -1, 2], [1, 0, 0, 2, -1, -1, 2, 1]])
    landmarks = landmarks.masked_fill((vis < 0)[..., None], 0.0)
    _, lm, v = _both_paths(images, landmarks, vis, Augmentation([True, False], [1.0, 1.0], [[0, 0], [0, 0]]))
    assert v.tolist() == [[1, 0, -1, 2, 0, 1, 2, -1], [1, 0, 0, 2, -1, -1, 2, 1]]
    torch.testing.assert_close(lm[0, 0], torch.stack([1 - landmarks[0, 1, 0], landmarks[0, 1, 1]]))
    torch.testing.assert_close(lm[1], landmarks[1])


def test_augment_batch_warns_about_nothing():
    images, landmarks, vis = random_items(3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        augment_batch(images, landmarks, vis, Augmentation.draw(3, torch.Generator().manual_seed(5)))


def test_invert_affine_inverts_any_affine_map():
    g = torch.Generator().manual_seed(0)
    m = torch.randn(6, 2, 3, generator=g, dtype=torch.float64)
    inverse = invert_affine(m)
    composed = torch.cat([inverse[:, :, :2] @ m[:, :, :2], inverse[:, :, :2] @ m[:, :, 2:] + inverse[:, :, 2:]], 2)
    identity = torch.cat([torch.eye(2, dtype=torch.float64), torch.zeros(2, 1, dtype=torch.float64)], 1)
    torch.testing.assert_close(composed, identity.expand(6, 2, 3), atol=1e-9, rtol=0)


def test_affine_grid_equals_torch_in_the_matrices_dtype():
    from vfu_nb.data.augment import affine_grid
    theta = Augmentation.draw(3, torch.Generator().manual_seed(1)).matrices().double()
    for h, w in ((5, 7), (8, 8)):
        want = F.affine_grid(theta, (3, 1, h, w), align_corners=False)
        got = affine_grid(theta, h, w)
        assert got.dtype == torch.float64
        torch.testing.assert_close(got, want, atol=1e-12, rtol=0)


def test_augmentation_parameters_are_drawn_independently():
    many = Augmentation.draw(4000, torch.Generator().manual_seed(3))
    assert abs(many.scale[many.flip].mean() - many.scale[~many.flip].mean()) < 0.01
    scale, shift = many.scale - many.scale.mean(), many.shift - many.shift.mean(0)
    for axis in (0, 1):
        assert abs((scale * shift[:, axis]).mean() / (scale.std() * shift[:, axis].std())) < 0.1


def test_augment_sample_takes_one_row():
    images, landmarks, vis = random_items(2)
    with pytest.raises(ValueError, match=r"^augment_sample takes one row of Augmentation, got 2$"):
        augment_sample(images[0], landmarks[0], vis[0], Augmentation.draw(2))


# ----- the loader's edges: other objects, defaults, empty index lists, the augmented keys, the prefetch thread


def test_anything_but_a_cached_uint8_dataset_is_refused(synth, tmp_path):
    import types
    for other in (object(), types.SimpleNamespace(_cache=np.zeros(1)), [1, 2, 3]):
        with pytest.raises(ValueError, match=r"^BatchLoader needs DeepFashionC\(\.\.\., cache=True, uint8=True\)$"):
            BatchLoader(other, [[0]])


def test_the_dataset_flag_is_the_default_augmentation(synth, tmp_path):
    assert BatchLoader(cached(synth, tmp_path, augment=True), [[0]]).augment
    assert not BatchLoader(cached(synth, tmp_path, augment=True), [[0]], augment=False).augment
    assert BatchLoader(cached(synth, tmp_path), [[0]], augment=True).augment


def test_an_empty_index_list_gives_an_empty_batch(synth, tmp_path):
    loader = BatchLoader(cached(synth, tmp_path), [[]])
    batch = loader.gather([])
    full = loader.gather([0])
    assert batch.keys() == full.keys()
    for key in batch:
        assert batch[key].shape == (0,) + full[key].shape[1:] and batch[key].dtype == full[key].dtype, key


def test_augmented_batches_move_image_landmarks_and_visibility_together(synth, tmp_path):
    loader = BatchLoader(cached(synth, tmp_path), [[0, 3, 5]], augment=True)
    host = loader.gather([0, 3, 5], torch.Generator().manual_seed(4))
    aug = host["augmentation"]
    assert aug.flip.any() or aug.scale.sub(1).abs().max() > 0.01
    got = loader.to_device(host)
    want = augment_batch(host["image"], host["landmarks"], host["landmark_visibility"], aug)
    assert set(got) == {"image", "category", "attributes", "attributes_known", "landmarks", "landmark_visibility",
                        "index"}
    for key, value in zip(("image", "landmarks", "landmark_visibility"), want):
        assert torch.equal(got[key], value), key
    assert not torch.equal(got["landmarks"], host["landmarks"])


def test_padded_crops_through_the_loader(synth, tmp_path):
    ds = cached(synth, tmp_path, pad_to_square=True)
    batches = shuffled_batches(len(ds), 7)
    assert_same_batches(list(DataLoader(ds, batch_sampler=batches)), list(BatchLoader(ds, batches)))


def test_prefetch_thread_passes_every_item_and_stops_when_closed():
    import itertools
    import threading

    from vfu_nb.data.loader import _in_background
    assert list(_in_background(iter([1, None, 0, "", 2]), 2)) == [1, None, 0, "", 2]

    stopped = threading.Event()
    items = _in_background(itertools.count(), 1)          # endless: the producer is soon blocked on a full queue
    assert next(items) == 0
    prefetch = [t for t in threading.enumerate() if t.name == "BatchLoader prefetch"]
    assert len(prefetch) == 1 and prefetch[0].daemon        # never keeps the interpreter alive
    threading.Event().wait(0.2)

    def close():
        items.close()
        stopped.set()

    threading.Thread(target=close, daemon=True).start()
    assert stopped.wait(10), "closing the iterator did not stop the prefetch thread"
    assert not prefetch[0].is_alive()


# ---------------------------------------------------------------------------------------------------------
# Augmentation parameters: lists and numbers, the draw's boundaries


def test_augmentation_from_lists_and_numbers_gets_tensor_types():
    aug = Augmentation([1, 0], [1, 2], [[0, 0], [1, 0]])            # Python ints everywhere
    assert (aug.flip.dtype, aug.scale.dtype, aug.shift.dtype) == (torch.bool, torch.float32, torch.float32)
    assert aug.flip.tolist() == [True, False] and aug.shift.shape == (2, 2)
    torch.testing.assert_close(aug.matrices(), torch.tensor([[[-1.0, 0.0, 0.0], [0.0, 1.0, 0.0]],
                                                             [[2.0, 0.0, 2.0], [0.0, 2.0, 0.0]]]))
    one = Augmentation(0, 1, [0, 0])                                  # one image from plain numbers
    assert (one.flip.dtype, one.scale.dtype, one.shift.dtype) == (torch.bool, torch.float32, torch.float32)
    images = torch.arange(2 * 3 * 4 * 4, dtype=torch.uint8).reshape(2, 3, 4, 4)
    out, _, _ = augment_batch(images, torch.full((2, 8, 2), 0.5), torch.zeros(2, 8, dtype=torch.int64), aug)
    assert torch.equal(out[0], images[0].flip(-1))                    # a pure mirror, from int parameters


def test_draw_maps_uniform_numbers_to_flip_scale_and_shift(monkeypatch):
    u = torch.tensor([[0.5, 0.0, 0.0, 1.0], [0.25, 0.5, 0.5, 0.75]])
    monkeypatch.setattr(torch, "rand", lambda *size, generator=None: u[:size[0]].clone())
    aug = Augmentation.draw(2)
    assert aug.flip.tolist() == [False, True]                         # flip when u < 1/2: u = 1/2 keeps the image
    torch.testing.assert_close(aug.scale, torch.tensor([SCALE_RANGE[0], sum(SCALE_RANGE) / 2]))
    torch.testing.assert_close(aug.shift, torch.tensor([[-MAX_SHIFT, MAX_SHIFT], [0.0, MAX_SHIFT / 2]]))


def test_pinned_augmentation_keeps_every_field_in_place(monkeypatch):
    # pinning needs a CUDA driver; a clone stands in for the pinned copy, so the fields' routing is checked here
    pinned = []
    monkeypatch.setattr(torch.Tensor, "pin_memory", lambda self: pinned.append(self) or self.clone())
    aug = Augmentation([True, False], [0.9, 1.1], [[0.01, -0.02], [0.0, 0.03]])
    out = aug.pin_memory()
    assert len(pinned) == 3
    for field in ("flip", "scale", "shift"):
        assert torch.equal(getattr(out, field), getattr(aug, field)), field


def test_each_epoch_draws_a_64_bit_seed_for_its_augmentations(synth, tmp_path):
    ds = cached(synth, tmp_path)
    batches = shuffled_batches(len(ds), 7)[:2]
    loader = BatchLoader(ds, batches, augment=True, generator=torch.Generator().manual_seed(3), prefetch=0)
    seed = int(torch.empty((), dtype=torch.int64).random_(generator=torch.Generator().manual_seed(3)))
    assert seed >= 2 ** 24                                   # beyond what a float32 draw could give
    rng = torch.Generator().manual_seed(seed)
    assert_same_batches([loader.to_device(loader.gather(b, rng)) for b in batches], list(loader))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only fallback")
def test_pinning_asked_for_without_cuda_is_left_out(synth, tmp_path):
    ds = cached(synth, tmp_path)
    loader = BatchLoader(ds, [[0, 1]], pin_memory=True, augment=True, prefetch=0)
    assert loader.pin_memory is False                        # pinning needs a CUDA driver
    assert_same_batches(list(BatchLoader(ds, [[0, 1]], augment=True, prefetch=0,
                                         generator=torch.Generator().manual_seed(0))),
                        list(BatchLoader(ds, [[0, 1]], pin_memory=True, augment=True, prefetch=0,
                                         generator=torch.Generator().manual_seed(0))))
