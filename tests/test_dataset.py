"""DeepFashionC items: crops, landmark units, augmentation, bad images and the uint8 cache."""

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import vfu_nb.data.dataset
from dftree import FILES, NAMES, pad, write_tree
from vfu_nb.data.annotations import AnnotationError, read_records
from vfu_nb.data.augment import Augmentation, augment_sample
from vfu_nb.data.cache import CACHE_VERSION
from vfu_nb.data.crops import (
    IMAGENET_MEAN, IMAGENET_STD, BadImageError, crop_window, crop_windows, landmarks_in_window, normalize_images,
)
from vfu_nb.data.dataset import DeepFashionC

#: In a mutation run (make mutation) every function of vfu_nb.data.dataset is called through mutmut's wrapper, which
#: adds stack frames: a warning's stacklevel then points into the wrapper, so its location is checked only outside.
UNDER_MUTMUT = hasattr(vfu_nb.data.dataset, "_mutmut_mutated")

SAMPLE = Path(__file__).resolve().parents[2] / "shared" / "deepfashion_sample"


@pytest.fixture
def tree(tmp_path):
    return write_tree(tmp_path)


def test_item_shapes_and_types(tree):
    item = DeepFashionC(tree, "train", image_size=32)[0]
    assert item["image"].shape == (3, 32, 32) and item["image"].dtype == torch.float32
    assert item["category"].dtype == torch.int64 and item["category"].item() == 0
    assert item["attributes"].tolist() == [1, 0, 0, 0, 0]
    assert item["landmarks"].shape == (8, 2) and item["landmark_visibility"].dtype == torch.int64
    assert item["index"].item() == 0


def test_unknown_attributes_are_masked(tree):
    item = DeepFashionC(tree, "val", image_size=16)[0]
    assert item["attributes"].tolist() == [0, 1, 0, 0, 0]
    assert item["attributes_known"].tolist() == [1, 1, 1, 0, 1]


def test_landmarks_in_crop_units(tree):
    # image 0: bbox 0-based (10, 20, 90, 100) -> 80 x 80 window
    item = DeepFashionC(tree, "train", image_size=32)[0]
    lm, vis = item["landmarks"], item["landmark_visibility"]
    assert lm[0].tolist() == pytest.approx([(40 - 10) / 80, (30 - 20) / 80])
    assert lm[3].tolist() == pytest.approx([(85 - 10) / 80, (50 - 20) / 80])
    assert vis.tolist() == [0, 0, 1, 0, -1, -1, 0, 2]
    assert lm[4].tolist() == [0, 0]          # absent slots are zero


def test_landmark_outside_the_crop_becomes_truncated(tmp_path):
    lines = list(FILES["Anno/list_landmarks.txt"])
    lines[3] = pad(NAMES[1]) + "2  0 010 010  0 050 010  0 012 070  0 070 075 "   # x=70 > bbox x2=60
    item = DeepFashionC(write_tree(tmp_path, {"Anno/list_landmarks.txt": lines}), "val", image_size=16)[0]
    assert item["landmark_visibility"].tolist() == [-1, -1, -1, -1, 0, 0, 0, 2]


def test_crop_is_the_box_resized_without_keeping_aspect(tree):
    ds = DeepFashionC(tree, "train", image_size=40, uint8=True)
    raw = np.asarray(Image.open(tree / NAMES[0]).convert("RGB"))
    expected = np.asarray(Image.fromarray(raw).resize((40, 40), Image.BILINEAR, box=(10, 20, 90, 100)))
    np.testing.assert_array_equal(ds[0]["image"].permute(1, 2, 0).numpy(), expected)


def test_normalisation_matches_imagenet_statistics(tree):
    ds8 = DeepFashionC(tree, "train", image_size=24, uint8=True)
    dsf = DeepFashionC(tree, "train", image_size=24)
    x = ds8[0]["image"].float() / 255
    mean, std = torch.tensor(IMAGENET_MEAN).view(3, 1, 1), torch.tensor(IMAGENET_STD).view(3, 1, 1)
    torch.testing.assert_close(dsf[0]["image"], (x - mean) / std)
    torch.testing.assert_close(normalize_images(ds8[0]["image"][None])[0], dsf[0]["image"])


def test_pad_to_square_keeps_aspect(tree):
    # image 2: bbox (20, 10, 80, 120): 60 x 110 -> square of side 110 centred at x=50
    item = DeepFashionC(tree, "test", image_size=22, pad_to_square=True)[0]
    lm = item["landmarks"]
    assert lm[0].tolist() == pytest.approx([(40 - (50 - 55)) / 110, (20 - 10) / 110])
    img = DeepFashionC(tree, "test", image_size=88, pad_to_square=True, uint8=True)[0]["image"]
    fill = torch.tensor([round(255 * m) for m in IMAGENET_MEAN])
    assert (img[:, 44, 0].int() - fill).abs().max() <= 2          # padding at the left edge


def test_normalisation_builds_its_constants_once_per_device(monkeypatch):
    images = torch.randint(0, 256, (2, 3, 4, 4), dtype=torch.uint8)
    first = normalize_images(images)
    calls = []
    monkeypatch.setattr(torch, "tensor", lambda *a, **k: calls.append(a))
    torch.testing.assert_close(normalize_images(images), first)
    assert calls == []                     # nothing built (on CUDA: nothing copied to the device) per call


def test_windows_and_landmarks_vectorised_equal_one_by_one():
    rng = np.random.default_rng(0)
    boxes = np.concatenate([rng.uniform(-20, 60, (50, 2)), rng.uniform(70, 260, (50, 2))], 1).astype(np.float32)
    sizes = rng.integers(150, 240, (50, 2))
    landmarks = rng.uniform(-30, 280, (50, 8, 2)).astype(np.float32)
    vis = rng.integers(-1, 2, (50, 8))
    for pad_to_square in (False, True):
        windows = crop_windows(boxes, sizes, pad_to_square)
        units, v = landmarks_in_window(landmarks, vis, windows)
        for k in range(50):
            window = crop_window(boxes[k], tuple(sizes[k]), pad_to_square)
            assert windows[k].tolist() == list(window)
            one, one_vis = landmarks_in_window(landmarks[k], vis[k], window)
            assert np.array_equal(units[k], one) and np.array_equal(v[k], one_vis)   # bit for bit
        assert ((v == 2) == ((vis >= 0) & ((units < 0) | (units > 1)).any(-1))).all()
    with pytest.raises(ValueError, match=r"bounding box \(5.0, 5.0, 5.5, 50.0\) is empty inside an image of 40x60"):
        crop_windows([[0, 0, 30, 30], [5, 5, 5.5, 50]], [(40, 60), (40, 60)], False)


def _dot_tree(tmp_path):
    """Tree whose train image is black with one white dot at the left sleeve landmark."""
    root = write_tree(tmp_path)
    img = np.zeros((120, 100, 3), np.uint8)
    img[48:53, 13:18] = 255             # around (15, 50): left sleeve of image 0
    Image.fromarray(img).save(root / NAMES[0], quality=100)
    lines = list(FILES["Anno/list_landmarks.txt"])
    lines[2] = pad(NAMES[0]) + "1  0 040 030  0 060 030  0 015 050  0 085 050  0 030 095  0 070 099 "
    return write_tree(tmp_path, {"Anno/list_landmarks.txt": lines}, images=False)


def test_flip_mirrors_x_and_swaps_left_and_right(tmp_path):
    ds = DeepFashionC(_dot_tree(tmp_path), "train", image_size=64, uint8=True)
    plain = ds[0]
    image, lm, vis = augment_sample(plain["image"], plain["landmarks"], plain["landmark_visibility"],
                                    Augmentation(flip=[True], scale=[1.0], shift=[[0.0, 0.0]]))
    torch.testing.assert_close(image, plain["image"].flip(-1))
    # left sleeve (slot 2) of the flipped image is the mirrored right sleeve (slot 3)
    assert lm[2].tolist() == pytest.approx([1 - plain["landmarks"][3, 0].item(), plain["landmarks"][3, 1].item()])
    assert lm[3].tolist() == pytest.approx([1 - plain["landmarks"][2, 0].item(), plain["landmarks"][2, 1].item()])
    assert vis.tolist() == plain["landmark_visibility"][[1, 0, 3, 2, 5, 4, 7, 6]].tolist()
    assert lm[4:6].abs().sum() == 0                 # absent slots (no waistline on a tee) stay at (0, 0)


def test_shift_moves_points_out_of_the_crop(tmp_path):
    ds = DeepFashionC(_dot_tree(tmp_path), "train", image_size=64, uint8=True)
    plain = ds[0]   # left sleeve (slot 2) at x = (15 - 10) / 80 = 0.0625
    _, lm, vis = augment_sample(plain["image"], plain["landmarks"], plain["landmark_visibility"],
                                Augmentation(flip=[False], scale=[1.0], shift=[[-0.07, 0.0]]))
    assert lm[2, 0].item() == pytest.approx(0.0625 - 0.07) and vis[2] == 2
    assert vis.tolist() == [0, 0, 2, 0, -1, -1, 0, 0]


def test_jitter_moves_image_and_landmarks_together(tmp_path):
    ds = DeepFashionC(_dot_tree(tmp_path), "train", image_size=64, uint8=True, augment=True)
    for seed in range(8):
        torch.manual_seed(seed)
        item = ds[0]
        img = item["image"].float().mean(0)
        ys, xs = torch.nonzero(img > 100, as_tuple=True)
        bright = torch.stack([xs.float().mean(), ys.float().mean()])
        # the dot is the left sleeve (slot 2), or after a flip the right sleeve (slot 3), on the right side
        slot = 2 if bright[0] < 32 else 3
        assert torch.allclose((bright + 0.5) / 64, item["landmarks"][slot], atol=1.5 / 64)


def test_missing_image_raises_with_its_path(tree):
    os.remove(tree / NAMES[0])
    ds = DeepFashionC(tree, "train", image_size=16)
    with pytest.raises(BadImageError, match=r"Striped_Knit_Tee/img_00000001\.jpg: image file not found"):
        ds[0]
    with pytest.raises(BadImageError, match=r"img_00000001\.jpg: image file not found"):
        DeepFashionC(tree, "train", image_size=16, cache=True, progress=False)


def test_bad_images_are_skipped_and_listed(tree):
    (tree / NAMES[0]).write_bytes(b"not a jpeg at all")
    with pytest.warns(UserWarning, match="skipped 1 bad image") as record:
        ds = DeepFashionC(tree, "train", image_size=16, on_bad_image="skip", progress=False)
    assert record[0].filename == __file__ or UNDER_MUTMUT     # the warning points at the caller's line
    assert len(ds) == 0 and ds.skipped[0][0] == NAMES[0]
    assert ds.skipped[0][1].startswith(f"{tree / NAMES[0]}: cannot decode image (UnidentifiedImageError: ")
    with pytest.warns(UserWarning, match="skipped 1 bad image") as record:
        cached = DeepFashionC(tree, "train", image_size=16, on_bad_image="skip", cache=True, progress=False)
    assert record[0].filename == __file__ or UNDER_MUTMUT
    assert len(cached) == 0 and cached.skipped == ds.skipped


def test_cache_equals_decode_path_and_survives_reopen(tree):
    plain = DeepFashionC(tree, "test", image_size=24)
    cached = DeepFashionC(tree, "test", image_size=24, cache=True, progress=False)
    for key in ("image", "landmarks", "landmark_visibility", "attributes"):
        torch.testing.assert_close(cached[0][key], plain[0][key])
    stamp = cached.cache_file.stat().st_mtime_ns
    again = DeepFashionC(tree, "test", image_size=24, cache=True, progress=False)
    assert again.cache_file.stat().st_mtime_ns == stamp         # reused, not rebuilt


def test_cache_is_rebuilt_when_annotations_change(tree):
    first = DeepFashionC(tree, "train", image_size=16, cache=True, progress=False)
    key = first.cache_key()
    lines = list(FILES["Anno/list_bbox.txt"])
    lines[2] = pad(NAMES[0]) + "001 001 050 050"
    write_tree(tree, {"Anno/list_bbox.txt": lines}, images=False)
    from vfu_nb.data.annotations import load_annotations
    second = DeepFashionC(tree, "train", image_size=16, cache=True, progress=False,
                          annotations=load_annotations(tree))
    assert second.cache_key() != key
    plain = DeepFashionC(tree, "train", image_size=16, annotations=load_annotations(tree))
    torch.testing.assert_close(second[0]["image"], plain[0]["image"])


def test_max_items_takes_a_seeded_subset(synth_root):
    root = synth_root
    a = DeepFashionC(root, "train", image_size=16, max_items=5)
    b = DeepFashionC(root, "train", image_size=16, max_items=5)
    assert len(a) == 5 and a.rows.tolist() == b.rows.tolist()
    assert set(a.rows) <= set(DeepFashionC(root, "train", image_size=16).rows)


@pytest.mark.skipif(not SAMPLE.is_dir(), reason="../shared/deepfashion_sample is absent")
def test_real_images_and_boxes(tmp_path):
    """The reader on the nine real JPEGs with their real category and bbox rows (read from ../shared)."""
    box = read_records(SAMPLE / "Anno/list_bbox.excerpt.txt", strict_count=False)
    cat = read_records(SAMPLE / "Anno/list_category_img.excerpt.txt", strict_count=False)
    names = list(box.names)
    real_landmark = "1  0 146 102  0 173 095  0 094 242  0 205 255  0 136 229  0 177 232 "
    upper = "1" + "  0 100 100" * 6 + " "
    with open(Path(__file__).resolve().parents[2] / "shared/deepfashion_meta/list_category_cloth.txt") as f:
        category_cloth = f.read().splitlines()
    files = {
        "Anno/list_category_cloth.txt": category_cloth,
        "Anno/list_category_img.txt": ["9", "image_name  category_label"]
        + [pad(n) + str(c) for n, c in zip(names, cat.table(1).ravel())],
        "Anno/list_bbox.txt": ["9", "image_name  x_1  y_1  x_2  y_2"]
        + [pad(n) + " ".join(f"{v:03d}" for v in b) for n, b in zip(names, box.table(4))],
        "Anno/list_landmarks.txt": ["9", "header"]
        + [pad(n) + (real_landmark if i == 0 else upper) for i, n in enumerate(names)],
        "Anno/list_attr_img.txt": ["9", "header"] + [pad(n) + " 1 -1 -1 -1 -1" for n in names],
        "Eval/list_eval_partition.txt": ["9", "header"] + [pad(n) + "train" for n in names],
    }
    root = write_tree(tmp_path / "real", files, images=False)
    (root / "img").symlink_to(SAMPLE / "img")
    ds = DeepFashionC(root, "train", image_size=64)
    assert len(ds) == 9
    item = ds[0]
    # real bbox 072 079 232 273 -> window (71, 78, 232, 273); real left collar (146, 102)
    assert item["landmarks"][0].tolist() == pytest.approx([(146 - 71) / 161, (102 - 78) / 195])
    assert item["category"].item() == 2                      # Blouse
    assert (item["landmarks"][ds[0]["landmark_visibility"] == 0] <= 1).all()
    cached = DeepFashionC(root, "train", image_size=64, cache=True, progress=False,
                          cache_dir=tmp_path / "cache")
    for k in range(9):   # every real JPEG decodes; the 200x200 one has a full-frame box
        torch.testing.assert_close(cached[k]["image"], ds[k]["image"])
    assert ds.annotations.bbox[4].tolist() == [0, 0, 200, 200]


@pytest.fixture
def synth(synth_root):
    return synth_root          # the session's tree; caches go under tmp_path


@pytest.mark.parametrize("pad", [False, True])
def test_every_cached_item_equals_its_decoded_item(synth, tmp_path, pad):
    plain = DeepFashionC(synth, "train", image_size=16, pad_to_square=pad)
    cached = DeepFashionC(synth, "train", image_size=16, pad_to_square=pad, cache=True, cache_dir=tmp_path,
                          workers=2, progress=False)
    assert len(cached) == len(plain) > 16                    # more rows than one decoding job
    for k in range(len(plain)):
        got, want = cached[k], plain[k]
        for key in ("image", "landmarks", "landmark_visibility"):
            torch.testing.assert_close(got[key], want[key], msg=f"item {k} {key}")


def test_scan_images_reports_sizes_and_failures(tree):
    from vfu_nb.data.cache import _Window, scan_images
    paths = [str(tree / NAMES[0]), str(tree / "img/missing.jpg"), str(tree / NAMES[2])]
    windows = [_Window((0, 0, 10, 10), False)] * 3
    sizes, failures = scan_images(paths, windows, 8, progress=False)
    assert sizes.tolist() == [[100, 120], [-1, -1], [100, 130]]
    assert [row for row, _ in failures] == [1] and "image file not found" in failures[0][1]


# ----- windows and crops: every border ---------------------------------------------------------------


def test_windows_clamp_each_side_to_its_own_image_extent():
    # a 100 x 60 image (width x height): x is clamped by the width, y by the height
    assert crop_window((-5, -3, 90, 80), (100, 60), False) == (0.0, 0.0, 90.0, 60.0)
    assert crop_window((0, 0, 120, 50), (100, 60), False) == (0.0, 0.0, 100.0, 50.0)
    assert crop_window((10, 20, 11, 21), (100, 60), False) == (10.0, 20.0, 11.0, 21.0)    # one pixel is enough
    # padded: the square of the longer side around the box centre
    assert crop_window((10, 20, 50, 30), (100, 60), True) == (10.0, 5.0, 50.0, 45.0)
    assert crop_window((30, 0, 40, 40), (100, 60), True) == (15.0, 0.0, 55.0, 40.0)
    for box in ((10, 20, 10.5, 40), (10, 20, 30, 20.5), (10, 20, 30, 10)):
        with pytest.raises(ValueError, match=r"^bounding box .* is empty inside an image of 100x60$"):
            crop_window(box, (100, 60), False)


def _grid_image(w=20, h=16):
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8))


@pytest.mark.parametrize("window, rows, cols", [
    ((-5, 0, 11, 16), slice(None), slice(5, 16)),        # past the left edge
    ((5, 0, 21, 16), slice(None), slice(0, 11)),         # past the right edge
    ((0, -4, 16, 12), slice(4, 16), slice(None)),        # past the top
    ((0, 4, 16, 20), slice(0, 12), slice(None)),         # past the bottom
])
def test_a_window_past_one_edge_is_filled_with_the_mean(window, rows, cols):
    from vfu_nb.data.crops import PAD_FILL, crop_and_resize
    image = _grid_image(16, 16)
    out = crop_and_resize(image, window, 16)             # 16 px window to 16 px: a plain copy
    pixels = np.asarray(image)
    x1, y1 = window[0], window[1]
    inside = np.zeros((16, 16), bool)
    inside[rows, cols] = True
    ys, xs = np.nonzero(inside)
    np.testing.assert_array_equal(out[ys, xs], pixels[ys + y1, xs + x1])
    assert (out[~inside] == PAD_FILL).all() and out.dtype == np.uint8


@pytest.mark.parametrize("window", [(0, 2.5, 12, 14.5), (3.5, 0, 15.5, 12), (8, 1.5, 20, 13.5), (4.5, 4, 16.5, 16),
                                    (0.5, 1.25, 12.5, 13.25)])
def test_a_window_touching_the_image_border_is_cut_without_padding(window):
    from vfu_nb.data.crops import crop_and_resize
    image = _grid_image()
    want = np.asarray(image.resize((6, 6), Image.BILINEAR, box=window))
    np.testing.assert_array_equal(crop_and_resize(image, window, 6), want)


def test_landmarks_on_the_window_border_stay_visible():
    window = (10.0, 20.0, 90.0, 100.0)
    points = np.array([[10, 50], [90, 50], [50, 20], [50, 100], [9.5, 50], [50, 100.5], [0, 0], [40, 40]], np.float32)
    vis = np.array([0, 1, 0, 0, 0, 1, -1, 2])
    units, v = landmarks_in_window(points, vis, window)
    assert v.tolist() == [0, 1, 0, 0, 2, 2, -1, 2]
    assert units[:4].tolist() == [[0.0, 0.375], [1.0, 0.375], [0.5, 0.0], [0.5, 1.0]] and units[6].tolist() == [0, 0]


def test_images_of_any_mode_become_rgb(tree):
    from vfu_nb.data.crops import load_rgb
    for mode in ("L", "RGBA", "P"):
        path = tree / f"img/{mode}.png"
        _grid_image().convert(mode).save(path)
        image = load_rgb(path)
        assert image.mode == "RGB" and np.asarray(image).shape == (16, 20, 3)


def test_item_arrays_need_the_cache(tree):
    with pytest.raises(ValueError, match=r"^DeepFashionC\(train\)\.item_arrays needs cache=True$"):
        DeepFashionC(tree, "train", image_size=16).item_arrays()


# ----- dataset options, the cache's files and life cycle ------------------------------------------------


def test_defaults_and_given_annotations(tree):
    ds = DeepFashionC(tree, "train")
    assert ds.image_size == 224 and ds[0]["image"].shape == (3, 224, 224) and ds.skipped == []
    from vfu_nb.data.annotations import load_annotations
    ann = load_annotations(tree)
    ann.category[:] = 3                                      # the given table, not the files, is used
    assert DeepFashionC(tree, "train", image_size=16, annotations=ann)[0]["category"].item() == 3
    with pytest.raises(ValueError, match=r"^on_bad_image must be 'raise' or 'skip', got 'ignore'$"):
        DeepFashionC(tree, "train", on_bad_image="ignore")


def test_the_default_subset_seed_is_zero(synth):
    a = DeepFashionC(synth, "train", image_size=16, max_items=6)
    b = DeepFashionC(synth, "train", image_size=16, max_items=6, subset_seed=0)
    c = DeepFashionC(synth, "train", image_size=16, max_items=6, subset_seed=1)
    assert a.rows.tolist() == b.rows.tolist() != c.rows.tolist()


def test_annotations_are_memoised_until_a_file_changes(tree):
    from vfu_nb.data.cache import cached_annotations
    first = cached_annotations(tree)
    assert cached_annotations(str(tree)) is first
    lines = list(FILES["Anno/list_bbox.txt"])
    lines[2] = pad(NAMES[0]) + "001 001 050 050"
    write_tree(tree, {"Anno/list_bbox.txt": lines}, images=False)
    assert cached_annotations(tree).bbox[0].tolist() == [0, 0, 50, 50] and first.bbox[0].tolist() == [10, 20, 90, 100]
    os.remove(tree / "Anno/list_bbox.txt")
    with pytest.raises(AnnotationError, match=r"list_bbox\.txt: annotation file not found$"):
        DeepFashionC(tree, "train")


def test_cache_files_live_where_asked_and_are_named_by_split_size_and_mode(tree, tmp_path):
    nested = tmp_path / "a" / "b"
    for pad_mode, mode in ((False, "stretch"), (True, "pad")):
        ds = DeepFashionC(tree, "val", image_size=16, cache=True, cache_dir=nested, pad_to_square=pad_mode,
                          progress=False)
        assert ds.cache_file == nested / f"val-16-{mode}-1.u8" and not ds._cache.flags.writeable
    assert sorted(p.name for p in nested.iterdir()) == ["val-16-pad-1.json", "val-16-pad-1.lock",
                                                        "val-16-pad-1.sizes.npy", "val-16-pad-1.u8",
                                                        "val-16-stretch-1.json", "val-16-stretch-1.lock",
                                                        "val-16-stretch-1.sizes.npy", "val-16-stretch-1.u8"]
    default = DeepFashionC(tree, "val", image_size=16, cache=True, progress=False)
    assert default.cache_file.parent == tree / ".vfu_cache"


def test_a_cache_missing_its_sizes_is_rebuilt(tree, tmp_path):
    first = DeepFashionC(tree, "test", image_size=16, cache=True, cache_dir=tmp_path, progress=False)
    first.cache_file.with_suffix(".sizes.npy").unlink()
    again = DeepFashionC(tree, "test", image_size=16, cache=True, cache_dir=tmp_path, progress=False)
    torch.testing.assert_close(again[0]["image"], DeepFashionC(tree, "test", image_size=16)[0]["image"])


def test_subsets_of_one_size_do_not_share_a_cache(synth, tmp_path):
    kw = dict(image_size=16, max_items=5, cache=True, cache_dir=tmp_path, progress=False)
    a = DeepFashionC(synth, "train", subset_seed=0, **kw)
    b = DeepFashionC(synth, "train", subset_seed=1, **kw)
    assert a.cache_key() != b.cache_key()
    plain = DeepFashionC(synth, "train", image_size=16, max_items=5, subset_seed=1)
    for k in range(5):
        torch.testing.assert_close(b[k]["image"], plain[k]["image"])


def test_a_failed_cache_build_leaves_nothing_behind(tree, tmp_path):
    good = (tree / NAMES[2]).read_bytes()
    os.remove(tree / NAMES[2])
    cache = tmp_path / "cache"
    with pytest.raises(BadImageError, match=r"img_00000001\.jpg: image file not found$"):
        DeepFashionC(tree, "test", image_size=16, cache=True, cache_dir=cache, progress=False)
    assert [p.name for p in cache.iterdir()] == ["test-16-stretch-1.lock"]     # the builders' lock, no data
    (tree / NAMES[2]).write_bytes(good)                      # the image is back: the cache builds
    assert len(DeepFashionC(tree, "test", image_size=16, cache=True, cache_dir=cache, progress=False)) == 1


def test_several_bad_images_are_counted(tree):
    for name in NAMES[1:]:
        os.remove(tree / name)
    from vfu_nb.data.annotations import load_annotations
    ann = load_annotations(tree)
    ann.split[:] = "train"
    with pytest.raises(BadImageError, match=r"img_00000001\.jpg: image file not found \(and 1 more bad images\)$"):
        DeepFashionC(tree, "train", annotations=ann, cache=True, progress=False)
    with pytest.warns(UserWarning, match=r"^DeepFashionC\(train\): skipped 2 bad image\(s\); see \.skipped$"):
        DeepFashionC(tree, "train", annotations=ann, on_bad_image="skip", progress=False)


def test_scan_images_over_many_jobs(tree):
    from vfu_nb.data.cache import _Window, scan_images
    paths = [str(tree / NAMES[k % 3]) for k in range(150)]
    paths[3] = paths[140] = str(tree / "img/missing.jpg")
    sizes, failures = scan_images(paths, [_Window((0, 0, 10, 10), False)] * 150, 8, workers=2, progress=False)
    assert sizes.dtype == np.int64 and sizes.shape == (150, 2)
    assert [row for row, _ in failures] == [3, 140] and sizes[3].tolist() == sizes[140].tolist() == [-1, -1]
    assert sizes[[0, 1, 2, 148]].tolist() == [[100, 120], [64, 90], [100, 130], [64, 90]]


def test_a_scan_window_pads_to_square_when_asked():
    from vfu_nb.data.cache import _Window
    box, size = (10, 20, 50, 40), (100, 80)                  # 40 x 20: its enclosing square is 40 x 40
    assert _Window(box, True)(size) == crop_window(box, size, True) == (10.0, 10.0, 50.0, 50.0)
    assert _Window(box, False)(size) == (10.0, 20.0, 50.0, 40.0)


def test_windows_are_computed_in_float64_and_landmark_units_in_float32():
    boxes = np.array([[0.1, 0.2, 10.3, 20.7], [5.3, 1.1, 7.9, 30.3]], dtype=np.float32)
    sizes = [(40, 60), (40, 60)]
    for pad_mode in (False, True):
        windows = crop_windows(boxes, sizes, pad_mode)
        assert windows.dtype == np.float64
        np.testing.assert_array_equal(windows, crop_windows(boxes.astype(np.float64), sizes, pad_mode))
    rng = np.random.default_rng(0)
    landmarks = (rng.random((2, 8, 2)) * 40).astype(np.float32)
    windows = crop_windows(boxes, sizes, True)
    units, _ = landmarks_in_window(landmarks, np.zeros((2, 8), np.int64), windows)
    origin = windows[:, None, :2].astype(np.float32)
    extent = (windows[:, None, 2:] - windows[:, None, :2]).astype(np.float32)
    np.testing.assert_array_equal(units, (landmarks - origin) / extent)          # bit for bit, float32 throughout


def test_the_cache_key_is_16_hex_digits_of_a_sha1(tree):
    import re
    key = DeepFashionC(tree, "val", image_size=16).cache_key()
    assert re.fullmatch(r"[0-9a-f]{16}", key)


def test_the_cache_metadata_file_names_key_shape_failures_and_version(tree, tmp_path):
    import json
    ds = DeepFashionC(tree, "val", image_size=16, cache=True, cache_dir=tmp_path, progress=False)
    meta = json.loads(ds.cache_file.with_suffix(".json").read_text())
    assert meta == {"key": ds.cache_key(), "shape": [len(ds), 16, 16, 3], "failures": [],
                    "version": CACHE_VERSION}


def test_checking_images_shows_a_progress_bar_unless_told(tree, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("TQDM_DISABLE", raising=False)        # tqdm's switch for all bars (make mutation sets it)
    DeepFashionC(tree, "val", image_size=16, on_bad_image="skip")
    assert "checking val images" in capsys.readouterr().err
    DeepFashionC(tree, "val", image_size=16, on_bad_image="skip", progress=False)
    assert capsys.readouterr().err == ""
    DeepFashionC(tree, "val", image_size=16, cache=True, cache_dir=tmp_path)
    assert "caching val 16px" in capsys.readouterr().err
