"""vfu_nb.attention_mass: region, lift and pointing on constructed maps (analytic values), saliency of toy models
that look at one cell, and measure / measure_run on tiny built and trained networks against a plain reference."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
import torch.nn as nn

from vfu_nb import attention_mass as am
from vfu_nb.data.crops import normalize_images
from vfu_nb.data.dataset import DeepFashionC
from vfu_nb.training import runs
from vfu_nb.models import build_model

TINY = dict(batch_size=8, image_size=32, width=0.125, max_items=24, seed=0, num_workers=0)


def centre(i, j, h=8, w=8):
    """Crop units (x, y) of the centre of cell (row i, column j)."""
    return ((j + 0.5) / w, (i + 0.5) / h)


def image_landmarks(points, codes):
    """One image's landmarks (1, L, 2) and visibility codes (1, L)."""
    return torch.tensor([points], dtype=torch.float32), torch.tensor([codes])


def peaked(cells, h=8, w=8, weights=None):
    """(1, h, w) map with mass ``weights`` (default 1 each) on ``cells``, zero elsewhere."""
    m = torch.zeros(1, h, w)
    for k, (i, j) in enumerate(cells):
        m[0, i, j] = 1.0 if weights is None else weights[k]
    return m


# ----------------------------------------------------------------------------------------------------------
# Region, lift, pointing on constructed maps


def test_region_is_the_cells_whose_centre_lies_within_the_radius():
    lm, vis = image_landmarks([centre(2, 3)], [0])
    region = am.region_mask(lm, vis, (8, 8))                       # 0.125 to the edge neighbours, 0.177 diagonal
    assert set(map(tuple, region[0].nonzero().tolist())) == {(2, 3), (1, 3), (3, 3), (2, 2), (2, 4)}
    assert am.region_mask(lm, vis, (8, 8), radius=0.1)[0].sum() == 1
    off = image_landmarks([(0.5, 0.5)], [0])                       # a cell corner: its 4 cells (0.088 away)
    assert set(map(tuple, am.region_mask(*off, (8, 8))[0].nonzero().tolist())) == {(3, 3), (3, 4), (4, 3), (4, 4)}
    assert am.RADIUS > 0.5 * 2 ** 0.5 / 8                          # a landmark's own cell is always in at 8 x 8


def test_a_cell_exactly_at_the_radius_is_in_and_each_image_of_a_batch_is_judged_alone():
    lm, vis = image_landmarks([centre(2, 3)], [0])
    assert am.region_mask(lm, vis, (8, 8), radius=0.125)[0].sum() == 5     # edge neighbours at exactly 0.125
    landmarks = torch.tensor([[centre(2, 3)], [centre(5, 5)]], dtype=torch.float32)
    region = am.region_mask(landmarks, torch.tensor([[0], [1]]), (8, 8))    # the second image's one is occluded
    fraction = am.region_fraction(region)
    assert fraction[0].item() == 5 / 64 and torch.isnan(fraction[1])
    maps = torch.cat([peaked([(2, 3)]), peaked([(5, 5)])])
    assert am.lift(maps, region)[0].item() == 12.8 and torch.isnan(am.lift(maps, region)[1])
    assert am.pointing(maps, region)[0].item() == 1.0 and torch.isnan(am.pointing(maps, region)[1])


@pytest.mark.parametrize("size, point, radius", [
    (9, (0.08847743272781372, 0.13203048706054688), 0.319078139686575),
    (10, (0.5902079939842224, 0.17229384183883667), 0.7672912904512998),
    (8, (0.3420608639717102, 0.44908076524734497), 0.6413980793658162)])
def test_the_grid_geometry_is_float64(size, point, radius):
    """A cell centre at (float64) distance exactly ``radius``: float32 cell positions on either axis would put it
    on the other side (cases found by search)."""
    lm, vis = image_landmarks([point], [0])
    x, y = (float(v) for v in lm[0, 0])
    centres = (np.arange(size) + 0.5) / size
    expected = (centres[None, :] - x) ** 2 + (centres[:, None] - y) ** 2 <= radius ** 2
    assert np.array_equal(am.region_mask(lm, vis, (size, size), radius=radius)[0].numpy(), expected)


def test_a_full_region_is_undefined_for_its_own_image_only():
    region = torch.zeros(2, 8, 8, dtype=torch.bool)
    region[0] = True                                                         # covers the whole grid: nothing to compare
    region[1, 2, 3] = True
    fraction = am.region_fraction(region)
    assert torch.isnan(fraction[0]) and fraction[1].item() == 1 / 64
    maps = torch.cat([peaked([(2, 3)]), peaked([(2, 3)])])
    assert torch.isnan(am.lift(maps, region)[0]) and am.lift(maps, region)[1].item() == 64


def test_lift_has_its_analytic_value_and_a_uniform_map_gives_exactly_one():
    lm, vis = image_landmarks([centre(2, 3)], [0])
    region = am.region_mask(lm, vis, (8, 8))
    fraction = 5 / 64
    assert am.region_fraction(region).item() == fraction
    assert am.lift(peaked([(2, 3)]), region).item() == 1 / fraction == 12.8          # all mass in one region cell
    assert am.lift(7 * peaked([(1, 3)]), region).item() == 12.8                       # scale does not matter
    assert am.lift(peaked([(2, 3), (6, 6)]), region).item() == 0.5 / fraction         # half inside
    assert am.lift(peaked([(6, 6)]), region).item() == 0                              # all outside
    assert am.lift(torch.full((1, 8, 8), 0.3), region).item() == 1.0
    assert am.lift(torch.rand(1, 8, 8) + 1, region).item() > 0
    # lift is a ratio of masses: a random map's value equals the direct formula
    m = torch.rand(1, 8, 8)
    assert am.lift(m, region).item() == pytest.approx((m[region].sum() / m.sum()).item() / fraction, rel=1e-6)


def test_invisible_landmarks_are_ignored_and_images_without_visible_ones_are_nan():
    visible = image_landmarks([centre(2, 3)], [0])
    others = image_landmarks([centre(2, 3), centre(6, 6), centre(6, 0), centre(0, 7)], [0, 1, 2, -1])
    assert torch.equal(am.region_mask(*visible, (8, 8)), am.region_mask(*others, (8, 8)))
    region = am.region_mask(*others, (8, 8))
    at_occluded = peaked([(6, 6)])
    assert am.lift(at_occluded, region).item() == 0 and am.pointing(at_occluded, region).item() == 0
    none = am.region_mask(*image_landmarks([centre(2, 3), centre(6, 6)], [1, 2]), (8, 8))
    assert not none.any()
    for value in (am.lift(peaked([(2, 3)]), none), am.pointing(peaked([(2, 3)]), none), am.region_fraction(none)):
        assert torch.isnan(value).all()


def test_undefined_cases_are_nan_full_region_and_empty_or_bad_maps():
    lm, vis = image_landmarks([centre(2, 3)], [0])
    full = am.region_mask(lm, vis, (8, 8), radius=2.0)
    assert full.all() and torch.isnan(am.lift(peaked([(0, 0)]), full)).all()
    assert torch.isnan(am.pointing(peaked([(0, 0)]), full)).all() and torch.isnan(am.region_fraction(full)).all()
    region = am.region_mask(lm, vis, (8, 8))
    nan_map = peaked([(2, 3)])
    nan_map[0, 0, 0] = float("nan")
    for m in (torch.zeros(1, 8, 8), nan_map):
        assert torch.isnan(am.lift(m, region)).all() and torch.isnan(am.pointing(m, region)).all()


def test_pointing_game_uses_the_arg_max_cell_only():
    lm, vis = image_landmarks([centre(2, 3), centre(6, 6)], [0, 0])
    region = am.region_mask(lm, vis, (8, 8))
    assert am.pointing(peaked([(2, 4)]), region).item() == 1                          # neighbour cell: a hit
    assert am.pointing(peaked([(4, 4)]), region).item() == 0
    # most of the mass in the region, but the peak outside: lift > 1 and a miss
    spread = peaked([(2, 3), (1, 3), (3, 3), (0, 0)], weights=[1, 1, 1, 1.5])
    assert am.lift(spread, region).item() > 1 and am.pointing(spread, region).item() == 0
    assert am.pointing(peaked([(6, 6)]), region).item() == 1                          # any visible landmark counts
    # ties go to the first cell in row-major order
    tie = peaked([(0, 0), (2, 3)])
    assert am.pointing(tie, region).item() == 0 and am.pointing(peaked([(2, 3), (5, 0)]), region).item() == 1
    # a batch: each image against its own region
    both = torch.cat([peaked([(2, 3)]), peaked([(2, 3)])])
    regions = torch.cat([region, am.region_mask(*image_landmarks([centre(7, 0)], [0]), (8, 8))])
    assert am.pointing(both, regions).tolist() == [1.0, 0.0]


def test_attention_map_is_the_channel_mean_of_one_plus_a():
    a = torch.tanh(torch.randn(2, 5, 4, 4))
    assert torch.allclose(am.attention_map(a), (1 + a).mean(1))
    assert (am.attention_map(a) >= 0).all()
    feats = torch.zeros(2, 5, 4, 4)
    assert am.has_gain_attention({"attention": a, "features": feats})
    assert not am.has_gain_attention({"attention": a[:, :3], "features": feats})      # mtl_pool's window map
    assert not am.has_gain_attention({"features": feats})


# ----------------------------------------------------------------------------------------------------------
# Saliency of toy models through measure


class OneCellModel(nn.Module):
    """Category logits from the pixels of one cell (row i, column j) of the 4 x 4 grid of a 32 px image only.

    ``attention="gain"``: an attention output of the features' shape whose 1 + A is 2 on that cell and 0 elsewhere;
    ``attention="windows"``: a map with fewer channels than the features (like mtl_pool's), which is not scored.
    """

    def __init__(self, i, j, attention=None, classes=3):
        super().__init__()
        self.i, self.j, self.kind = i, j, attention
        self.linear = nn.Linear(3 * 8 * 8, classes)
        self.dropout = nn.Dropout(0.5)                     # eval mode must switch it off
        with torch.no_grad():
            self.linear.weight.copy_(torch.linspace(0.5, 1.5, self.linear.weight.numel()).view_as(self.linear.weight))

    def forward(self, x):
        self.ran_in_training_mode = self.training
        block = x[:, :, 8 * self.i:8 * self.i + 8, 8 * self.j:8 * self.j + 8]
        out = {"category_logits": self.linear(self.dropout(block.flatten(1))), "features": x.new_zeros(len(x), 4, 4, 4)}
        if self.kind is not None:
            a = -torch.ones_like(out["features"])
            a[:, :, self.i, self.j] = 1.0
            out["attention"] = a if self.kind == "gain" else a[:, :2]
        return out


def toy_dataset(cells, n_landmarks=8):
    """Images with one visible landmark at the centre of each cell of ``cells`` (4 x 4 grid), the rest absent."""
    g = torch.Generator().manual_seed(0)
    items = []
    for k, (i, j) in enumerate(cells):
        lm = torch.zeros(n_landmarks, 2)
        lm[0] = torch.tensor(centre(i, j, 4, 4))
        vis = torch.full((n_landmarks,), -1)
        vis[0] = 0
        items.append({"image": torch.randint(0, 256, (3, 32, 32), generator=g, dtype=torch.uint8),
                      "category": torch.tensor(k % 3), "landmarks": lm, "landmark_visibility": vis})
    return items


def test_saliency_of_a_model_that_looks_at_one_cell_is_all_there():
    model = OneCellModel(1, 2, attention="gain").train()
    data = toy_dataset([(1, 2), (3, 0), (1, 2)])
    out = am.measure(model, data, batch_size=2)
    assert not model.ran_in_training_mode and model.training and all(p.grad is None for p in model.parameters())
    assert set(out) == {"attention_lift", "attention_pointing", "saliency_lift", "saliency_pointing",
                        "region_fraction"}
    assert all(v.dtype == np.float32 and v.shape == (3,) for v in out.values())
    # At 4 x 4 the region of a landmark at a cell centre is that cell alone (neighbours 0.25 away): fraction 1/16.
    assert out["region_fraction"].tolist() == [1 / 16] * 3
    assert out["saliency_lift"].tolist() == [16.0, 0.0, 16.0]
    assert out["saliency_pointing"].tolist() == [1.0, 0.0, 1.0]
    assert out["attention_lift"].tolist() == [16.0, 0.0, 16.0]
    assert out["attention_pointing"].tolist() == [1.0, 0.0, 1.0]
    windows = am.measure(OneCellModel(1, 2, attention="windows"), data)
    assert set(windows) == {"saliency_lift", "saliency_pointing", "region_fraction"}


def test_summarize_takes_nan_means_quietly():
    per_image = {"a": np.array([1, np.nan, 3], np.float32), "b": np.array([np.nan, np.nan], np.float32)}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        s = am.summarize(per_image)
    assert s["a"] == 2.0 and np.isnan(s["b"])
    with pytest.raises(ValueError, match="empty"):
        am.measure(OneCellModel(0, 0), [])


# ----------------------------------------------------------------------------------------------------------
# Built networks at 32 px against a plain reference


def reference_lift(m, landmarks, visibility, radius):
    """Lift and pointing of one (h, w) map by loops over the cells (numpy, float64)."""
    h, w = m.shape
    region = np.zeros((h, w), bool)
    for i in range(h):
        for j in range(w):
            for (x, y), v in zip(landmarks, visibility):
                if v == 0 and np.hypot((j + 0.5) / w - x, (i + 0.5) / h - y) <= radius:
                    region[i, j] = True
    if not region.any() or region.all():
        return np.nan, np.nan
    m = np.asarray(m, np.float64)
    return (m[region].sum() / m.sum()) / region.mean(), float(region.flat[int(np.argmax(m))])


@pytest.fixture(scope="module")
def test_split(synth_root):
    return DeepFashionC(synth_root, "test", image_size=32, uint8=True, progress=False)


@pytest.fixture(scope="module")
def tiny_models(test_split):
    ann = test_split.annotations
    torch.manual_seed(0)
    return {name: build_model(name, len(ann.category_names), len(ann.attribute_names), image_size=32, width=0.125)
            for name in ("mtl", "cat", "mtl_pool", "mtl_bi")}


def test_keys_shapes_and_values_for_built_networks(tiny_models, test_split):
    n = len(test_split)
    results = {name: am.measure(model, test_split, batch_size=16) for name, model in tiny_models.items()}
    for name, out in results.items():
        attention = name in ("mtl", "mtl_bi")
        assert set(out) == set(am.SALIENCY_KEYS + ("region_fraction",) + (am.ATTENTION_KEYS if attention else ()))
        assert all(v.dtype == np.float32 and v.shape == (n,) for v in out.values())
        assert np.array_equal(np.isnan(out["region_fraction"]), np.isnan(results["cat"]["region_fraction"]))
        for kind in ("saliency",) + (("attention",) if attention else ()):
            lift, point = out[f"{kind}_lift"], out[f"{kind}_pointing"]
            ok = np.isfinite(lift)
            assert ok.sum() >= n - 3
            assert (lift[ok] >= 0).all() and (lift[ok] <= 1 / out["region_fraction"][ok] * (1 + 1e-5)).all()
            assert set(np.unique(point[ok])) <= {0.0, 1.0}
    assert all(m.training and all(p.grad is None for p in m.parameters()) for m in tiny_models.values())


def test_measure_matches_a_per_image_reference_and_does_not_depend_on_the_batch(tiny_models, test_split):
    model = tiny_models["mtl"]
    out = am.measure(model, test_split, batch_size=32)
    again = am.measure(model, test_split, batch_size=7)
    for k in out:
        np.testing.assert_allclose(out[k], again[k], rtol=1e-5, equal_nan=True)
    model.eval()
    for pos in range(4):
        item = test_split[pos]
        image = normalize_images(item["image"])[None].requires_grad_(True)
        result = model(image)
        result["category_logits"][0, int(item["category"])].backward()
        saliency = image.grad.abs().sum(1)[0].reshape(4, 8, 4, 8).mean(axis=(1, 3))
        gain = (1 + result["attention"][0].detach()).mean(0)
        lm, vis = item["landmarks"].numpy(), item["landmark_visibility"].numpy()
        for kind, m in (("saliency", saliency), ("attention", gain)):
            lift, point = reference_lift(m.numpy(), lm, vis, am.RADIUS)
            np.testing.assert_allclose(out[f"{kind}_lift"][pos], lift, rtol=1e-4, equal_nan=True)
            np.testing.assert_array_equal(out[f"{kind}_pointing"][pos], np.float32(point))
    model.zero_grad(set_to_none=True)
    model.train()


# ----------------------------------------------------------------------------------------------------------
# A trained run


def test_measure_run_on_a_one_epoch_run(synth_root, tmp_path, monkeypatch):
    run_dir = tmp_path / "mtl"
    runs.ensure_run(run_dir, "mtl", data_root=str(synth_root), epochs=1, **TINY)
    out = am.measure_run(run_dir, "test")
    expected = am.measure(runs.load_model(run_dir), runs.dataset_for(run_dir, "test"))
    assert set(out) == set(expected) == set(am.ATTENTION_KEYS + am.SALIENCY_KEYS + ("region_fraction",))
    assert all(len(v) == TINY["max_items"] for v in out.values())
    for k in out:
        np.testing.assert_array_equal(out[k], expected[k])
    summary = am.summarize(out)
    assert set(summary) == set(out) and all(np.isfinite(v) for v in summary.values())
    default = am.measure_run(run_dir)                                       # the test split by default
    assert all(np.array_equal(default[k], out[k], equal_nan=True) for k in out)
    val = am.measure_run(run_dir, "val")
    assert not np.array_equal(val["saliency_lift"], out["saliency_lift"], equal_nan=True)
    # a run whose heads no longer fit its tree (regenerated with another vocabulary): one error naming both
    monkeypatch.setattr(runs, "load_model", lambda *a, **k: build_model("mtl", 3, 5, image_size=32, width=0.125))
    with pytest.raises(ValueError, match=rf"^{run_dir} was trained for 3 categories and 5 attributes, but "
                                         rf"{synth_root} now has"):
        am.measure_run(run_dir)


def test_measure_reads_the_radius_float_images_and_refuses_an_empty_dataset(tiny_models, test_split, synth_root):
    model = tiny_models["cat"]
    wide = am.measure(model, test_split, radius=0.3)
    narrow = am.measure(model, test_split)
    assert (wide["region_fraction"] > narrow["region_fraction"])[np.isfinite(narrow["region_fraction"])].all()
    floats = DeepFashionC(synth_root, "test", image_size=32, uint8=False, progress=False)   # already normalised
    as_floats = am.measure(model, floats)
    for k in narrow:
        np.testing.assert_allclose(as_floats[k], narrow[k], rtol=1e-4, atol=1e-6, equal_nan=True)
    with pytest.raises(ValueError, match="^measure: the dataset is empty$"):
        am.measure(model, torch.utils.data.Subset(test_split, []))
    model.train()


def test_summarize_means_in_float64_and_gives_nan_for_an_empty_array():
    values = np.array([0.1, 0.2, 0.7, 0.3], np.float32)
    summary = am.summarize({"lift": values, "none": np.array([], np.float32)})
    assert summary["lift"] == float(np.mean(values.astype(np.float64))) and np.isnan(summary["none"])
