"""Where the attention falls, measured: one declared measure per test image, for every model.

On the conv4_3 grid (h x w = S/8 x S/8) the *region* of an image is the set of cells whose centre
((j + 0.5) / w, (i + 0.5) / h), in crop units, lies within :data:`RADIUS` of one of its visible ground-truth
landmarks (visibility code 0, :mod:`vfu_nb.data`). A non-negative map m over the grid, normalised to a
distribution p = m / sum(m), is scored by

* **lift** = p(region) / (cells in region / cells): its mass in the region over the mass a uniform map puts there.
  1 = no preference, > 1 = concentrated at the landmarks, at most 1 / region_fraction;
* **pointing** = 1 when the map's arg-max cell (the first on ties) is in the region, else 0: the pointing game of
  Zhang et al. (ECCV 2016, "Top-down Neural Attention by Excitation Backprop"), with the radius as its tolerance.
  Its uniform expectation is the region fraction, reported beside it as ``region_fraction``.

Two maps per image:

* **attention** (models whose ``attention`` output has the shape of the conv4_3 features: mtl, mtl_no_landmarks,
  mtl_bi): m = mean over channels of (1 + A), the effective gain on the features (tanh keeps it in (0, 2)).
  mtl_pool's ``attention`` is a display map of its pooling windows, not a gain, so it gets no attention keys;
* **saliency** (every model): |d logit of the true category / d input| summed over the colour channels, averaged
  over each 8 x 8 pixel block of the grid cell (gradient saliency of Simonyan, Vedaldi & Zisserman, ICLR
  Workshops 2014, "Deep Inside Convolutional Networks"). The input is the ImageNet-normalised image the model sees.

Undefined values are nan: images without a visible landmark, a region that is empty or covers the whole grid
(nothing to compare), and maps with zero or non-finite total mass. Everything runs in eval mode in fp32.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
import torch.nn.functional as F

RADIUS = 0.15
"""Region radius in crop units (the width of the crop is 1).

About one cell of the study's grid (64 px crops -> 8 x 8 cells of 0.125): an arg-max on that grid cannot localise
better than a cell. It exceeds half a cell's diagonal (0.088), so the cell holding a visible landmark is always in
the region at 64 px and above, and it sits between the edge neighbours (0.125) and diagonal neighbours (0.177) of a
landmark at a cell centre, so no cell centre lies on the circle there. On the synthetic benchmark (400 images, 4.7
visible landmarks each) the region covers 21 % of the 8 x 8 grid on average (max 44 %, never empty), so the lift
can reach about 5; at 224 px (28 x 28 cells) it covers 22 %: the measure means the same at both sizes. It is
2.4 heat-map sigmas (4 px = 0.0625 at 64 px, :func:`vfu_nb.losses.default_heatmap_sigma`).
"""

ATTENTION_KEYS = ("attention_lift", "attention_pointing")
SALIENCY_KEYS = ("saliency_lift", "saliency_pointing")


def region_mask(landmarks: torch.Tensor, visibility: torch.Tensor, size, radius: float = RADIUS) -> torch.Tensor:
    """(B, h, w) bool: cells whose centre lies within ``radius`` of a visible landmark (code 0).

    ``landmarks`` (B, L, 2) as (x, y) crop units, ``visibility`` (B, L), ``size`` = (h, w) of the grid.
    """
    h, w = size
    landmarks = landmarks.double()
    ys = (torch.arange(h, dtype=torch.float64, device=landmarks.device) + 0.5) / h
    xs = (torch.arange(w, dtype=torch.float64, device=landmarks.device) + 0.5) / w
    dx = xs[None, None, None, :] - landmarks[:, :, 0, None, None]              # (B, L, 1, w)
    dy = ys[None, None, :, None] - landmarks[:, :, 1, None, None]              # (B, L, h, 1)
    near = dx ** 2 + dy ** 2 <= radius ** 2                                    # (B, L, h, w)
    visible = (visibility == 0).to(landmarks.device)[:, :, None, None]
    return (near & visible).any(dim=1)


def _valid(maps: torch.Tensor, region: torch.Tensor):
    """Mass per image (float64) and whether lift and pointing are defined there."""
    mass = maps.double().flatten(1).sum(1)
    cells = region.flatten(1)
    ok = cells.any(1) & ~cells.all(1) & torch.isfinite(mass) & (mass > 0)
    return mass, ok


def lift(maps: torch.Tensor, region: torch.Tensor) -> torch.Tensor:
    """(B,) float64: share of the map's mass in ``region`` over the region's share of the cells; nan if undefined.

    ``maps`` (B, h, w) non-negative, ``region`` (B, h, w) bool (:func:`region_mask`).
    """
    mass, ok = _valid(maps, region)
    inside = (maps.double() * region).flatten(1).sum(1) / mass
    fraction = region.flatten(1).double().mean(1)
    return torch.where(ok, inside / fraction, torch.full_like(inside, float("nan")))


def pointing(maps: torch.Tensor, region: torch.Tensor) -> torch.Tensor:
    """(B,) float64: 1 when the map's arg-max cell (first on ties) is in ``region``, else 0; nan if undefined."""
    _, ok = _valid(maps, region)
    top = maps.flatten(1).argmax(1, keepdim=True)
    hit = region.flatten(1).gather(1, top)[:, 0].double()
    return torch.where(ok, hit, torch.full_like(hit, float("nan")))


def region_fraction(region: torch.Tensor) -> torch.Tensor:
    """(B,) float64: share of the grid in ``region`` (the uniform expectation of pointing); nan if empty or full."""
    cells = region.flatten(1)
    fraction = cells.double().mean(1)
    return torch.where(cells.any(1) & ~cells.all(1), fraction, torch.full_like(fraction, float("nan")))


def attention_map(attention: torch.Tensor) -> torch.Tensor:
    """(B, C, h, w) attention A -> (B, h, w) mean over channels of 1 + A (the gain on the features)."""
    return (1 + attention.detach().float()).mean(dim=1)


def has_gain_attention(out: dict) -> bool:
    """True when a forward output carries a residual attention A with the conv4_3 features' shape."""
    return "attention" in out and tuple(out["attention"].shape) == tuple(out["features"].shape)


def saliency_and_outputs(model: torch.nn.Module, images: torch.Tensor, category: torch.Tensor):
    """One forward and backward pass: ((B, h, w) saliency on the conv4_3 grid, the forward outputs).

    Saliency = |d logit[true category] / d image| summed over colour channels, average-pooled to the grid of
    ``features``. The images of a batch do not interact in eval mode, so one backward of the summed true-class
    logits gives every image its own gradient. Parameter gradients are neither computed into ``.grad`` nor kept.
    """
    images = images.detach().float().requires_grad_(True)
    with torch.enable_grad(), torch.autocast(device_type=images.device.type, enabled=False):
        out = model(images)
        logits = out["category_logits"].float()
        score = logits.gather(1, category.to(logits.device).long()[:, None]).sum()
        (grad,) = torch.autograd.grad(score, images)
    h, w = out["features"].shape[-2:]
    pixels = grad.abs().sum(dim=1, keepdim=True)
    return F.avg_pool2d(pixels, kernel_size=(pixels.shape[-2] // h, pixels.shape[-1] // w))[:, 0], out


def measure(model: torch.nn.Module, dataset, radius: float = RADIUS, batch_size: int = 32, device="cpu") -> dict:
    """Per-image measures of ``model`` over ``dataset`` (in its order), as float32 numpy arrays.

    Keys: ``saliency_lift``, ``saliency_pointing``, ``region_fraction`` and, for models with a gain attention
    (:func:`has_gain_attention`), ``attention_lift`` and ``attention_pointing``. ``dataset`` items need ``image``
    (uint8 0..255 or already normalised float), ``category``, ``landmarks`` and ``landmark_visibility``.
    The model runs in eval mode on ``device``; its mode and device are restored afterwards.
    """
    from vfu_nb.data.crops import normalize_images

    device = torch.device(device)
    first = next(model.parameters(), None)
    home = first.device if first is not None else device
    was_training = model.training
    parts: dict = {}
    model.to(device).eval()
    try:
        loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=0)
        for batch in loader:
            images = batch["image"].to(device)
            images = normalize_images(images) if images.dtype == torch.uint8 else images.float()
            saliency, out = saliency_and_outputs(model, images, batch["category"].to(device))
            region = region_mask(batch["landmarks"].to(device), batch["landmark_visibility"].to(device),
                                 saliency.shape[-2:], radius)
            values = {"saliency_lift": lift(saliency, region), "saliency_pointing": pointing(saliency, region),
                      "region_fraction": region_fraction(region)}
            if has_gain_attention(out):
                gain = attention_map(out["attention"])
                values.update(attention_lift=lift(gain, region), attention_pointing=pointing(gain, region))
            for key, v in values.items():
                parts.setdefault(key, []).append(v.cpu().numpy().astype(np.float32))
    finally:
        model.to(home).train(was_training)
    if not parts:
        raise ValueError("measure: the dataset is empty")
    keys = ATTENTION_KEYS + SALIENCY_KEYS + ("region_fraction",)
    return {k: np.concatenate(parts[k]) for k in keys if k in parts}


def measure_run(run_dir, split: str = "test", which: str = "best", radius: float = RADIUS, batch_size: int = 32,
                device="cpu") -> dict:
    """:func:`measure` for the ``which`` checkpoint of a run over its ``split``
    (:func:`vfu_nb.training.runs.dataset_for`)."""
    from vfu_nb.training import runs

    model = runs.load_model(run_dir, which, device)
    dataset = runs.dataset_for(run_dir, split)
    runs.check_vocabulary(model, dataset.annotations, run_dir, dataset.root)
    return measure(model, dataset, radius, batch_size, next(model.parameters()).device)   # device may be "auto"


def summarize(per_image: dict) -> dict:
    """Mean of each per-image array over the images where it is defined (nan where it never is)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)                       # all-nan (or empty) arrays
        return {k: float(np.nanmean(np.asarray(v, np.float64))) if len(v) else float("nan")
                for k, v in per_image.items()}


__all__ = ["RADIUS", "region_mask", "lift", "pointing", "region_fraction", "attention_map", "has_gain_attention",
           "saliency_and_outputs", "measure", "measure_run", "summarize"]
