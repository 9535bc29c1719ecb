"""Losses of the multi-task model: category CE, attribute BCE, landmark heatmap MSE.

Heatmap targets are built on the device from crop-unit coordinates (no heatmaps travel through the
DataLoader). Pixel convention (vfu_nb.conventions): crop-unit ``u`` is the continuous pixel position ``u*S``;
pixel ``i`` covers ``[i, i+1)``, so the Gaussian centre in pixel-index space is ``u*S - 0.5``.

All reductions run in fp32 (``.float()``), so the losses are safe under bf16 autocast. Nothing here copies from
the host to the device or reads a value back (constants are built with ``torch.full``/``arange`` on the
device), and off the CPU every operation, forward and backward, has a deterministic CUDA implementation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping, Optional

import torch
import torch.nn.functional as F

#: Heatmap sigma in pixels at 224x224 input; other sizes scale it (see :func:`default_heatmap_sigma`).
SIGMA_AT_224 = 5.0
#: Floor of the default sigma in input pixels: half a conv4_3 cell (the landmark branch decodes from stride 8).
MIN_HEATMAP_SIGMA = 4.0


def default_heatmap_sigma(image_size: int) -> float:
    """Default Gaussian sigma in pixels at input resolution: ``max(5 * S / 224, 4)``.

    5 px at 224 (thesis setting, unchanged for every S >= 180), scaled with the image size, but never below
    4 px = half a cell of the stride-8 conv4_3 grid the landmark branch decodes from. Without the floor,
    64 px would give sigma 1.43 px (0.18 of a feature cell instead of 0.6 at 224): a target of ~6 pixels out
    of 4096 that an all-zero map already nearly fits, and the branch does not learn. Measured on the 2k-image
    synthetic tree (64 px, width 0.25, full-width landmark branch, landmark loss only, 2 epochs, batch 8;
    val NE, mean-position baseline 0.167): sigma 1.43 px -> 0.37 (lr 1e-4) / 0.21 (lr 1e-3); 2 px -> 0.35 /
    0.19; 3 px -> 0.20 / 0.14; 4 px -> 0.18 / 0.14. Keeps the argmax decoding unchanged (peak at the
    landmark). Note the initial landmark term grows as sigma^2 (see :class:`LossWeights`).
    """
    return max(SIGMA_AT_224 * image_size / 224.0, MIN_HEATMAP_SIGMA)


@dataclass
class LossWeights:
    """Weights of the three loss terms: ``total = category*CE + attribute*BCE + landmark*MSE``.

    Liu & Lu (ECCVW 2018) use 1 / 20 / 10, but for a different formulation: a 2-way softmax per attribute
    with class weights 0.1/1, and an un-normalised heavy-tailed target ``exp(-d/16)`` whose MSE is averaged
    over *all* maps. Our terms are normalised differently, so the defaults are chosen for our scales:

    * ``category = 1``: 48-way CE starts at ln 48 ~= 3.9 and ends around 1; the reference scale.
    * ``attribute = 20``: the BCE is a mean over ~1000 sparse binary attributes (~3.3 positives per image).
      It starts at ln 2 ~= 0.69 but within a few hundred steps falls to the entropy of the label prior,
      ~0.02-0.03 nats; x20 keeps it at ~0.5, the same order as the category term (Liu & Lu's weight too).
      Set ``attr_pos_weight`` in the trainer to up-weight the rare positives if wanted.
    * ``landmark = 1000``: our heatmap loss is the mean over the pixels of the *visible* maps. Once the
      network outputs ~0 background (the first few dozen steps), the loss is ``sum(target^2)/(H*W) =
      pi*sigma^2/(H*W)``; with the default sigma (5 px at 224, scaled with the size) that is
      pi*25/224^2 ~= 1.6e-3 at every image size >= 180 px. x1000 gives ~1.6, the same order as the
      category term, and it falls as the peaks are learned. Below 180 px the 4 px sigma floor of
      :func:`default_heatmap_sigma` makes it larger (pi*16/64^2 ~= 1.2e-2 at 64 px, x1000 ~= 12); the
      weight is kept at 1000 there: on the 2k synthetic tree (64 px, width 0.25, lr 1e-4, 3 epochs, one
      seed, 300 val images) landmark 1000 vs 128 (= initial term ~1.6) gave val NE 0.175 vs 0.184 and
      category top-3 0.46 vs 0.49, within run-to-run noise. If you change sigma,
      scale this weight by (5*S/224 / sigma)^2 to keep the initial term at ~1.6.

    ``landmark`` must be 0 for models without landmark supervision (``mtl_no_landmarks``, ``cat``).
    """

    category: float = 1.0
    """weight of the category cross-entropy"""
    attribute: float = 20.0
    """weight of the attribute BCE"""
    landmark: float = 1000.0
    """weight of the landmark heatmap MSE (0 for models without landmark supervision)"""


def gaussian_heatmaps(coords: torch.Tensor, height: int, width: int, sigma: float,
                      dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Gaussian target maps, peak 1, shape (B, L, H, W), built on ``coords.device``.

    Args:
        coords: (B, L, 2) crop-unit (x, y) coordinates.
        height, width: map size in pixels.
        sigma: standard deviation in pixels *of this map*.
    """
    c = coords.to(dtype)
    cx = c[..., 0] * width - 0.5   # (B, L) pixel-index space
    cy = c[..., 1] * height - 0.5
    xs = torch.arange(width, device=c.device, dtype=dtype)
    ys = torch.arange(height, device=c.device, dtype=dtype)
    inv = 1.0 / (2.0 * float(sigma) ** 2)
    gx = torch.exp(-((xs - cx[..., None]) ** 2) * inv)  # (B, L, W)
    gy = torch.exp(-((ys - cy[..., None]) ** 2) * inv)  # (B, L, H)
    return gy[..., :, None] * gx[..., None, :]


def _heatmap_sum_count(heatmaps: torch.Tensor, landmarks: torch.Tensor, visibility: torch.Tensor,
                       sigma: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of squared errors over visible maps, number of pixels in visible maps), both fp32."""
    pred = heatmaps.float()
    b, l, h, w = pred.shape
    target = gaussian_heatmaps(landmarks.to(pred.device), h, w, sigma)
    mask = (visibility.to(pred.device) == 0)  # (B, L): visible and inside the crop
    sq = ((pred - target) ** 2).sum(dim=(2, 3))  # (B, L)
    total = (sq * mask.to(sq.dtype)).sum()
    count = mask.sum().to(torch.float32) * (h * w)
    return total, count


def heatmap_loss(heatmaps: torch.Tensor, landmarks: torch.Tensor, visibility: torch.Tensor,
                 sigma: float) -> torch.Tensor:
    """Masked heatmap MSE: mean over the pixels of the maps of visible landmarks (visibility == 0).

    Invisible / truncated / absent landmarks contribute nothing; with no visible landmark in the batch
    the loss is 0 (and still connected to the graph). ``sigma`` is in pixels of the heatmap.
    """
    total, count = _heatmap_sum_count(heatmaps, landmarks, visibility, sigma)
    return total / count.clamp_min(1.0)


def attribute_loss(logits: torch.Tensor, targets: torch.Tensor, known: Optional[torch.Tensor] = None,
                   pos_weight: Optional[torch.Tensor | float] = None) -> torch.Tensor:
    """BCE-with-logits averaged over the known labels (``known`` = 1 where the label is +1/-1)."""
    total, count = _attribute_sum_count(logits, targets, known, pos_weight)
    return total / count.clamp_min(1.0)


def _attribute_sum_count(logits, targets, known=None, pos_weight=None):
    x = logits.float()
    y = targets.to(x.device, torch.float32)
    m = torch.ones_like(y) if known is None else known.to(x.device, torch.float32)
    if pos_weight is not None and not isinstance(pos_weight, torch.Tensor):
        pos_weight = torch.full((), float(pos_weight), device=x.device)
    elif pos_weight is not None:
        pos_weight = pos_weight.to(x.device, torch.float32)
    per = F.binary_cross_entropy_with_logits(x, y, pos_weight=pos_weight, reduction="none")
    return (per * m).sum(), m.sum()


def _category_sum(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Cross-entropy summed over the batch: ``F.cross_entropy`` on the CPU, :func:`masked_cross_entropy_sum`
    elsewhere (CUDA's ``nll_loss`` is on the list of nondeterministic operations of
    ``torch.use_deterministic_algorithms``)."""
    if logits.device.type == "cpu":
        return F.cross_entropy(logits, target, reduction="sum")
    return masked_cross_entropy_sum(logits, target)


def masked_cross_entropy_sum(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Summed cross-entropy as the log-softmax picked by a one-hot mask: elementwise operations and one full
    reduction, forward and backward, so deterministic on every device (equal to ``F.cross_entropy`` up to the
    order of the sum)."""
    picked = target[:, None] == torch.arange(logits.shape[1], device=logits.device)
    return -torch.where(picked, torch.log_softmax(logits, dim=1), 0.0).sum()


def multitask_loss(outputs: Mapping[str, torch.Tensor], batch: Mapping[str, torch.Tensor],
                   weights: Optional[LossWeights] = None, heatmap_sigma: Optional[float] = None,
                   attr_pos_weight: Optional[torch.Tensor | float] = None,
                   reduce_counts: Optional[Callable[[torch.Tensor], torch.Tensor]] = None) -> dict:
    """The weighted multi-task loss.

    Args:
        outputs: model outputs (``category_logits``, ``attribute_logits``, optional ``landmark_heatmaps``).
        batch: collated dataset items (``image``, ``category``, ``attributes``, ``attributes_known``,
            ``landmarks``, ``landmark_visibility``), already on the outputs' device or not.
        weights: :class:`LossWeights` (defaults if None).
        heatmap_sigma: Gaussian sigma in pixels at *input* resolution (``batch["image"]`` size); scaled
            to the heatmap size if that differs. Default :func:`default_heatmap_sigma`.
        attr_pos_weight: optional ``pos_weight`` of the attribute BCE (scalar or (A,)).
        reduce_counts: for DistributedDataParallel. Each term is ``sum / count``; this callable maps the
            local counts (a 1-D fp32 tensor [category, attribute, landmark]) to the denominators to use.
            Passing ``all_reduce(counts) / world_size`` makes every rank's loss ``world * local_sum /
            global_count``, so DDP's gradient averaging yields exactly the gradient of the global-batch
            loss, even when ranks hold different numbers of known labels or visible landmarks.

    Returns:
        dict of 0-dim fp32 tensors ``category``, ``attribute``, ``landmark`` (0 when the model has no
        heatmaps or ``weights.landmark == 0``) and ``total``.
    """
    w = weights or LossWeights()
    cat_logits = outputs["category_logits"].float()
    device = cat_logits.device
    target = batch["category"].to(device)
    cat_sum = _category_sum(cat_logits, target)
    cat_count = torch.full((), float(target.shape[0]), device=device)

    attr_sum, attr_count = _attribute_sum_count(outputs["attribute_logits"], batch["attributes"],
                                                batch.get("attributes_known"), attr_pos_weight)

    heat = outputs.get("landmark_heatmaps")
    use_lm = heat is not None and w.landmark != 0
    if use_lm:
        size = batch["image"].shape[-1] if "image" in batch else heat.shape[-1]
        sigma_in = default_heatmap_sigma(size) if heatmap_sigma is None else float(heatmap_sigma)
        sigma_map = sigma_in * heat.shape[-1] / size
        lm_sum, lm_count = _heatmap_sum_count(heat, batch["landmarks"], batch["landmark_visibility"], sigma_map)
    else:
        lm_sum = torch.zeros((), device=device)
        lm_count = torch.zeros((), device=device)

    counts = torch.stack([cat_count, attr_count.to(device), lm_count.to(device)])
    if reduce_counts is not None:
        counts = reduce_counts(counts.detach())
    counts = counts.clamp_min(1e-12)
    # a term with no data (count 0) gives 0: sum is 0 too, and 0 / tiny = 0
    cat = cat_sum / counts[0]
    attr = attr_sum / counts[1]
    lm = lm_sum / counts[2] if use_lm else lm_sum
    total = w.category * cat + w.attribute * attr
    if use_lm:
        total = total + w.landmark * lm
    return {"category": cat, "attribute": attr, "landmark": lm, "total": total}
