"""Networks for the MTL-vs-CAT study (thesis section 3.2), in one readable file.

Everything starts from ``build_model(name, ...)`` (or ``build_model(name, config=ModelConfig(...))``). Six
networks share the same parts:

    images (B,3,S,S)
      -> VGGBackbone           VGG-16 conv1_1 ... conv4_3 (+ReLU)          -> features F (B,C4,S/8,S/8)
      -> LandmarkBranch        4 convs + 3 transposed convs + 1x1 (fp32)   -> heatmaps H (B,8,S,S)
      -> LandmarkAttention     [F, avgpool8(H)] -> conv-relu-conv-tanh     -> A (B,C4,S/8,S/8)
      -> CategorizationBranch  max-pool, conv5_1..5_3, max-pool, flatten,
                               category head and attribute head (fp32)     -> logits

    "mtl"               thesis 3.2.1: F' = (1 + A) * F goes to the categorization branch.
    "cat"               thesis 3.2.2: no landmark branch, no attention; F goes straight to categorization.
    "mtl_no_landmarks"  the "mtl" network unchanged (same class, same parameters); only
                        ``model.landmark_supervised`` is False, so the trainer sets the landmark loss weight
                        to 0. This separates "extra parameters + attention" from "landmark knowledge".
    "mtl_no_attention"  the "mtl" network with the landmark loss but without the attention: the categorization
                        branch sees F, not (1 + A) * F (same class, same parameters, same initial weights); with
                        "mtl", "mtl_no_landmarks" and "cat" it completes the 2x2 factorial landmark loss x attention.
    "mtl_pool"          FashionNet-style sharing (Liu et al., CVPR 2016): conv4_3 features max-pooled around each
                        predicted landmark, gated by the heatmap peak, joined with the CAT path's features.
    "mtl_bi"            "mtl" plus a feedback path from the categorization branch back into the landmark
                        branch (the thesis' proposed next step), see MTLBiNet.

``width`` scales every channel count (0.25 -> 128 channels at conv4_3) so the same topology runs on a
2-core CPU, except the landmark branch, which stays at full width (0.35M parameters; scaled to 0.25 it did not
learn, see LandmarkBranch); ``backbone="vgg16_bn"`` adds BatchNorm after every backbone conv and in the conv5 block.

Shapes at 224 px, width 1: features 512x28x28, heatmaps 8x224x224, flattened 512x7x7 = 25,088 (as in Liu & Lu,
ECCV Workshops 2018). Heatmaps are raw (no sigmoid). ``decode_landmarks`` turns them into crop units
u = (i + 0.5) / S, the convention of the landmark targets.

Paired initialisation: ``build_model`` draws one base seed from the global torch generator and initialises every
layer from its own generator seeded by (base seed, the layer's qualified name), see ``init_weights``. At the same
``torch.manual_seed`` all six networks therefore start from the same backbone, conv5 block, heads (where their
shapes agree), landmark branch and attention, and leave the global generator in the same state.

Precision: the last heatmap conv and the last layer of both heads run in fp32 under autocast (FP32Conv1x1,
FP32Linear). Determinism on CUDA: of the ops used here only ``grid_sample`` (mtl_pool's LandmarkPooling) has no
deterministic CUDA backward, so mtl_pool runs are not bitwise reproducible on CUDA even with ``--deterministic``.
Reference page with shapes, parameter counts and the differences from the papers: docs/models.md.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

BACKBONES = ("vgg16", "vgg16_bn")

# VGG-16 configuration up to conv4_3 and the conv5 block ("M" = 2x2 max-pool), as in torchvision.
VGG16_TO_CONV4_3 = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512]
VGG16_CONV5 = [512, 512, 512]

# torchvision checkpoints (file name in torch.hub's checkpoints folder, download URL).
TORCHVISION_VGG_WEIGHTS = {
    "vgg16": ("vgg16-397923af.pth", "https://download.pytorch.org/models/vgg16-397923af.pth"),
    "vgg16_bn": ("vgg16_bn-6c64b313.pth", "https://download.pytorch.org/models/vgg16_bn-6c64b313.pth"),
}


#: The landmark branch is never narrower than this width (see LandmarkBranch for the measurements).
LANDMARK_BRANCH_MIN_WIDTH = 1.0


@dataclass(frozen=True)
class ModelConfig:
    """Everything that fixes a network's shapes (the model name is passed separately)."""

    num_categories: int           # category classes (DeepFashion-C's list_category_cloth.txt: 50)
    num_attributes: int           # binary attributes (DeepFashion-C: 1,000)
    num_landmarks: int = 8        # landmark heatmaps (DeepFashion-C: 8)
    image_size: int = 224         # input side S in pixels; a multiple of 32 (features S/8, conv5 output S/32)
    width: float = 1.0            # channel multiplier for backbone, conv5, attention, heads (landmark branch >= 1)
    backbone: str = "vgg16"       # "vgg16" or "vgg16_bn" (BatchNorm after every backbone and conv5 conv)
    pool_window: int = 3          # mtl_pool: odd side of the window max-pooled around each landmark, in feature cells

    def __post_init__(self):
        for field in ("num_categories", "num_attributes", "num_landmarks"):
            if int(getattr(self, field)) < 1:
                raise ValueError(f"ModelConfig.{field} must be >= 1, got {getattr(self, field)}")
        if self.image_size % 32 != 0 or self.image_size < 32:
            raise ValueError(f"ModelConfig.image_size must be a multiple of 32 (>= 32), got {self.image_size}")
        if self.width <= 0:
            raise ValueError(f"ModelConfig.width must be > 0, got {self.width}")
        if self.backbone not in BACKBONES:
            raise ValueError(f"ModelConfig.backbone must be one of {BACKBONES}, got {self.backbone!r}")
        if self.pool_window < 1 or self.pool_window % 2 == 0:
            raise ValueError(f"ModelConfig.pool_window must be an odd number >= 1, got {self.pool_window}")


def scaled(channels: int, width: float, minimum: int = 8) -> int:
    """Channel count ``channels * width``, rounded, never below ``minimum``."""
    return max(minimum, int(round(channels * width)))


def make_vgg_layers(cfg, in_channels: int, width: float, batch_norm: bool) -> nn.Sequential:
    """torchvision's ``vgg.make_layers``: conv3x3 [+BN] + ReLU per number, MaxPool2d(2) per "M".

    The layer indices match torchvision's ``vgg16(_bn).features`` exactly, which is what makes loading an
    ImageNet checkpoint a plain renaming of keys.
    """
    layers: list[nn.Module] = []
    for v in cfg:
        if v == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            continue
        out = scaled(v, width)
        layers.append(nn.Conv2d(in_channels, out, kernel_size=3, padding=1))
        if batch_norm:
            layers.append(nn.BatchNorm2d(out))
        layers.append(nn.ReLU(inplace=True))
        in_channels = out
    return nn.Sequential(*layers)


# ----------------------------------------------------------------------------------------------------------
# Building blocks


class VGGBackbone(nn.Module):
    """The "large VGG-16": conv1_1 ... conv4_3 with its ReLU (no pool4). Output (B, 512*width, S/8, S/8).

    ``self.features`` has the same indices as ``torchvision.models.vgg16(_bn)().features[:23]`` (``[:33]``
    with BatchNorm). Liu & Lu ran the whole VGG including an unused conv5/pool5; we stop at conv4_3.
    """

    def __init__(self, width: float = 1.0, batch_norm: bool = False):
        super().__init__()
        self.features = make_vgg_layers(VGG16_TO_CONV4_3, 3, width, batch_norm)
        self.out_channels = scaled(512, width)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.features(images)


class FP32Conv1x1(nn.Module):
    """A 1x1 convolution that always runs in fp32, even under bf16/fp16 autocast.

    Used for the last heatmap layer: the heatmap MSE and the arg-max decoding are sensitive to bf16 rounding
    (8 bits of mantissa flatten the peak and create ties); the layer is 16 -> 8 channels, so fp32 costs nothing.
    """

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type=x.device.type, enabled=False):
            return self.conv(x.float())


class FP32Linear(nn.Linear):
    """A linear layer that always runs in fp32, even under bf16/fp16 autocast (used for the logits).

    bf16 logits tie and swap top-k ranks among 1,000 attribute scores; the last layer is a small part of the
    head's cost (1024 x 1,000 against 25,088 x 1024 for the first layer). Same parameters as nn.Linear.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type=x.device.type, enabled=False):
            return super().forward(x.float())


class LandmarkBranch(nn.Module):
    """Localisation branch: conv4_3 features -> 8 raw heatmaps at input resolution.

    Thesis 3.2.1 counts "four convolutional layers and three transposed convolutional layers"; we keep
    exactly that count, with Liu & Lu's ``LandmarkBranchUpsample`` channel plan, plus one final 1x1 conv that
    maps to the 8 heatmaps (run in fp32):

        encode:  1x1 512->64, 3x3 64->64, 3x3 64->64, 3x3 64->128     (ReLU after each), at S/8
        decode:  ConvT(4,2,1) 128->64 (S/4), ConvT 64->32 (S/2), ConvT 32->16 (S)  (ReLU after each)
                 1x1 16->8 in fp32, no activation, no sigmoid

    Liu & Lu put two 3x3 convs between the transposed convs (11 convs in all); we leave them out to match the
    thesis' count.

    Width: unlike the rest of the network, the branch is *not* scaled below full width
    (``LANDMARK_BRANCH_MIN_WIDTH = 1``; ``width > 1`` still widens it). Scaled to width 0.25 it became
    16/16/16/32 -> 16/8/8 channels and did not learn at the CPU defaults: on the 2k-image synthetic tree
    (64 px, landmark loss only, 2 epochs, batch 8) val NE was 0.48 (lr 1e-4) / 0.53 (lr 1e-3), worse than
    predicting the mean position (0.167); at full width with the 4 px sigma floor of
    ``losses.default_heatmap_sigma`` it reached 0.18 / 0.14 (width 0.5 with a 3 px sigma: 0.33 at lr 1e-4);
    the full-width branch with the unfloored 1.43 px sigma: 0.37 / 0.21. Both are needed. The branch is
    small anyway: 0.35M parameters at width 1 (0.33M on a width-0.25 backbone, vs 0.02M scaled). Only the input
    1x1 conv follows the backbone's width. At 224 px / width 1 nothing changes.
    """

    def __init__(self, in_channels: int, num_landmarks: int = 8, width: float = 1.0):
        super().__init__()
        w = max(float(width), LANDMARK_BRANCH_MIN_WIDTH)
        c16, c32, c64, c128 = (scaled(c, w) for c in (16, 32, 64, 128))
        self.encoder = nn.Sequential(
            nn.Conv2d(in_channels, c64, kernel_size=1), nn.ReLU(inplace=True),
            nn.Conv2d(c64, c64, kernel_size=3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(c64, c64, kernel_size=3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(c64, c128, kernel_size=3, padding=1), nn.ReLU(inplace=True),
        )
        self.decoder = nn.Sequential(
            nn.ConvTranspose2d(c128, c64, kernel_size=4, stride=2, padding=1), nn.ReLU(inplace=True),
            nn.ConvTranspose2d(c64, c32, kernel_size=4, stride=2, padding=1), nn.ReLU(inplace=True),
            nn.ConvTranspose2d(c32, c16, kernel_size=4, stride=2, padding=1), nn.ReLU(inplace=True),
        )
        self.head = FP32Conv1x1(c16, num_landmarks)
        self.mid_channels = c128

    def encode(self, features: torch.Tensor) -> torch.Tensor:
        """Mid-level landmark maps (B, mid_channels, S/8, S/8); mid_channels = 128 * max(width, 1)."""
        return self.encoder(features)

    def decode(self, mid: torch.Tensor) -> torch.Tensor:
        """Mid-level maps -> raw fp32 heatmaps (B, L, S, S)."""
        return self.head(self.decoder(mid))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(features))


class LandmarkAttention(nn.Module):
    """The single, small landmark-driven attention module (thesis: "only one attention module").

    The 8 heatmaps are average-pooled to the feature grid (S -> S/8, an exact 8x8 area mean: no aliasing, unlike
    an 8x bilinear resize, and every heatmap pixel gets a gradient), concatenated with the conv4_3 features,
    and mapped by conv3x3 -> ReLU -> conv3x3 -> tanh to an attention tensor A with as many channels as the
    features. The caller applies it as residual attention (1 + A) * F, like Liu & Lu.

    All 8 maps are kept (not their channel max, as Liu & Lu do) so the module can tell landmarks apart.
    Liu & Lu used a 2-level U-Net (~0.6M parameters); this module has about the same size (~0.6M at width 1).
    """

    def __init__(self, feature_channels: int, num_landmarks: int = 8, width: float = 1.0):
        super().__init__()
        hidden = scaled(64, width)
        self.net = nn.Sequential(
            nn.Conv2d(feature_channels + num_landmarks, hidden, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, feature_channels, kernel_size=3, padding=1),
            nn.Tanh(),
        )

    @staticmethod
    def downsample(heatmaps: torch.Tensor, size) -> torch.Tensor:
        """Heatmaps (B,L,S,S) -> (B,L,h,w), the mean of each (S/h x S/w) block; S must be a multiple of h and w.

        ``avg_pool2d`` with kernel = stride = S/h: the same values as ``adaptive_avg_pool2d`` for such sizes, but
        with a deterministic CUDA backward (adaptive_avg_pool2d's backward is not).
        """
        (big_h, big_w), (h, w) = heatmaps.shape[-2:], size
        if big_h % h or big_w % w:
            raise ValueError(f"heatmaps {big_h}x{big_w} are not a whole multiple of the feature grid {h}x{w}")
        return F.avg_pool2d(heatmaps, kernel_size=(big_h // h, big_w // w))

    def forward(self, features: torch.Tensor, heatmaps: torch.Tensor) -> torch.Tensor:
        small = self.downsample(heatmaps, features.shape[-2:]).to(features.dtype)
        return self.net(torch.cat([features, small], dim=1))


class MLPHead(nn.Sequential):
    """Linear -> ReLU -> Linear (thesis: two dense layers per task, ReLU after the first); logits in fp32."""

    def __init__(self, in_features: int, hidden: int, out_features: int):
        super().__init__(nn.Linear(in_features, hidden), nn.ReLU(inplace=True), FP32Linear(hidden, out_features))


class CategorizationBranch(nn.Module):
    """max-pool -> "small VGG-16" (conv5_1..conv5_3) -> max-pool -> flatten -> category and attribute heads.

    Hidden size 1024 * width (at least 64). ``extra`` (B, extra_dim) is concatenated to the flattened features
    before the heads (used by mtl_pool). Returns (category_logits, attribute_logits, conv5_output).
    """

    def __init__(self, in_channels: int, config: ModelConfig, extra_dim: int = 0):
        super().__init__()
        self.pool4 = nn.MaxPool2d(kernel_size=2, stride=2)
        self.block = make_vgg_layers(VGG16_CONV5, in_channels, config.width, config.backbone == "vgg16_bn")
        self.pool5 = nn.MaxPool2d(kernel_size=2, stride=2)
        self.out_channels = scaled(512, config.width)
        grid = config.image_size // 32
        self.flat_dim = self.out_channels * grid * grid
        self.hidden = scaled(1024, config.width, minimum=64)
        self.category_head = MLPHead(self.flat_dim + extra_dim, self.hidden, config.num_categories)
        self.attribute_head = MLPHead(self.flat_dim + extra_dim, self.hidden, config.num_attributes)

    def forward(self, x: torch.Tensor, extra: torch.Tensor | None = None):
        conv5 = self.block(self.pool4(x))
        flat = torch.flatten(self.pool5(conv5), 1)
        if extra is not None:
            flat = torch.cat([flat, extra.to(flat.dtype)], dim=1)
        return self.category_head(flat), self.attribute_head(flat), conv5


class LandmarkPooling(nn.Module):
    """FashionNet-style landmark pooling on the conv4_3 grid (Liu et al., CVPR 2016).

    For each landmark (decoded by argmax, so the *position* carries no gradient) we sample the features
    bilinearly on a ``window x window`` grid of points one feature cell apart, centred on the landmark
    (``grid_sample``, align_corners=False, which matches u = (i + 0.5) / S), and max-pool them: (B, L, C).
    Gradients reach the features. ``grid_sample``'s CUDA backward is nondeterministic (atomic adds).

    Visibility gating: FashionNet had a visibility classifier; our loss has no visibility term, so the gate is
    the heatmap peak through a sigmoid, ``g = sigmoid(a_l * (max H_l - b_l))`` with learnable per-landmark
    a_l (init 4) and b_l (init 0.5). Heatmap targets peak at 1 for a visible landmark, so a confident peak opens
    the gate (~0.88) and a flat map closes it (~0.12). The peak is differentiable, so category and attribute
    losses also reach the landmark branch through the gate.
    """

    def __init__(self, num_landmarks: int = 8, window: int = 3):
        super().__init__()
        self.window = window
        offsets = torch.arange(window, dtype=torch.float32) - (window - 1) / 2
        oy, ox = torch.meshgrid(offsets, offsets, indexing="ij")
        self.register_buffer("offsets", torch.stack([ox.reshape(-1), oy.reshape(-1)], -1), persistent=False)
        self.gate_scale = nn.Parameter(torch.empty(num_landmarks))
        self.gate_shift = nn.Parameter(torch.empty(num_landmarks))
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        self.gate_scale.fill_(4.0)
        self.gate_shift.fill_(0.5)

    def forward(self, features: torch.Tensor, heatmaps: torch.Tensor, coords: torch.Tensor):
        """features (B,C,h,w), heatmaps (B,L,S,S), coords (B,L,2) crop units -> pooled (B,L,C), gate (B,L)."""
        h, w = features.shape[-2:]
        centre = coords.float() * 2 - 1                                       # (B,L,2) in [-1, 1]
        step = torch.stack([self.offsets[:, 0] * (2.0 / w), self.offsets[:, 1] * (2.0 / h)], dim=-1)
        grid = centre[:, :, None, :] + step[None, None]                       # (B,L,k*k,2)
        samples = F.grid_sample(features, grid.to(features.dtype), mode="bilinear",
                                padding_mode="zeros", align_corners=False)   # (B,C,L,k*k)
        pooled = samples.amax(dim=3).transpose(1, 2)                          # (B,L,C)
        peak = heatmaps.float().flatten(2).amax(dim=2)                        # (B,L)
        gate = torch.sigmoid(self.gate_scale * (peak - self.gate_shift))
        return pooled * gate[..., None].to(pooled.dtype), gate

    @torch.no_grad()
    def window_map(self, coords: torch.Tensor, gate: torch.Tensor, size) -> torch.Tensor:
        """(B,L,h,w) map holding each landmark's gate on the cells of its pooling window (for display only)."""
        h, w = size
        r = (self.window - 1) / 2
        cx = (coords[..., 0].float() * w).floor()
        cy = (coords[..., 1].float() * h).floor()
        xs = torch.arange(w, device=coords.device, dtype=torch.float32)
        ys = torch.arange(h, device=coords.device, dtype=torch.float32)
        mx = (xs[None, None, :] - cx[..., None]).abs() <= r                  # (B,L,w)
        my = (ys[None, None, :] - cy[..., None]).abs() <= r                  # (B,L,h)
        return gate.float()[..., None, None] * (my[..., :, None] & mx[..., None, :]).float()


# ----------------------------------------------------------------------------------------------------------
# The networks


class _Net(nn.Module):
    """Common bookkeeping: name, flags, config, input-size check. Every network is built as ``Net(name, config)``."""

    names: tuple[str, ...] = ()           # the model names this class implements
    has_landmark_branch = True

    def __init__(self, name: str, config: ModelConfig):
        super().__init__()
        if name not in self.names:
            raise ValueError(f"{type(self).__name__} implements {self.names}, not {name!r}")
        if not isinstance(config, ModelConfig):
            raise TypeError(f"config must be a ModelConfig, got {type(config).__name__}")
        self.name, self.config = name, config
        self.landmark_supervised = self.has_landmark_branch and name != "mtl_no_landmarks"
        self.backbone = VGGBackbone(config.width, batch_norm=config.backbone == "vgg16_bn")

    @property
    def image_size(self) -> int:
        return self.config.image_size

    def _check(self, images: torch.Tensor) -> None:
        if images.dim() != 4 or images.shape[1] != 3 or tuple(images.shape[-2:]) != (self.image_size,) * 2:
            raise ValueError(f"{self.name}: expected images (B,3,{self.image_size},{self.image_size}), "
                             f"got {tuple(images.shape)}")


class CATNet(_Net):
    """Thesis 3.2.2 (CAT): conv4_3 -> max-pool -> conv5 block -> max-pool -> category/attribute heads."""

    names = ("cat",)
    has_landmark_branch = False

    def __init__(self, name: str, config: ModelConfig):
        super().__init__(name, config)
        self.categorization = CategorizationBranch(self.backbone.out_channels, config)

    def forward(self, images: torch.Tensor) -> dict:
        self._check(images)
        features = self.backbone(images)
        category, attributes, _ = self.categorization(features)
        return {"category_logits": category, "attribute_logits": attributes, "features": features}


class MTLNet(_Net):
    """Thesis 3.2.1 (MTL), also used for "mtl_no_landmarks" (no landmark loss) and "mtl_no_attention".

        F = backbone(x);  H = landmarks(F)  (heatmaps NOT detached: category loss reaches the landmark branch)
        A = attention(F, H);  logits = categorization((1 + A) * F)

    "mtl_no_attention" keeps every parameter (the attention module is built and initialised, so the other layers
    start from the same weights) but skips it: logits = categorization(F). The landmark loss then reaches the
    categorization only through the shared backbone, as in plain multi-task learning.
    """

    names = ("mtl", "mtl_no_landmarks", "mtl_no_attention")

    def __init__(self, name: str, config: ModelConfig):
        super().__init__(name, config)
        c4 = self.backbone.out_channels
        self.landmarks = LandmarkBranch(c4, config.num_landmarks, config.width)
        self.attention = LandmarkAttention(c4, config.num_landmarks, config.width)
        self.categorization = CategorizationBranch(c4, config)

    def forward(self, images: torch.Tensor) -> dict:
        self._check(images)
        features = self.backbone(images)
        heatmaps = self.landmarks(features)
        out = {"features": features, "landmark_heatmaps": heatmaps}
        if self.name == "mtl_no_attention":
            category, attributes, _ = self.categorization(features)
        else:
            out["attention"] = self.attention(features, heatmaps)
            category, attributes, _ = self.categorization((1 + out["attention"]) * features)
        return {"category_logits": category, "attribute_logits": attributes, **out}


class MTLPoolNet(_Net):
    """FashionNet-style sharing: the CAT path plus landmark-pooled local features.

        F = backbone(x);  H = landmarks(F);  P = landmark positions = argmax(H)   (no gradient through P)
        local = ReLU(Linear(flatten(gate * maxpool_kxk(F around P))))            (8*C4 -> 1024*width), k = pool_window
        logits = heads([flatten(pool5(conv5(pool4(F)))), local])

    No attention module. The ``attention`` output is a display-only (B,8,S/8,S/8) map of the gated pooling
    windows; ``landmark_gate`` (B,8) is the gate itself.
    """

    names = ("mtl_pool",)

    def __init__(self, name: str, config: ModelConfig):
        super().__init__(name, config)
        c4 = self.backbone.out_channels
        hidden = scaled(1024, config.width, minimum=64)
        self.landmarks = LandmarkBranch(c4, config.num_landmarks, config.width)
        self.pooling = LandmarkPooling(config.num_landmarks, config.pool_window)
        self.local = nn.Sequential(nn.Linear(config.num_landmarks * c4, hidden), nn.ReLU(inplace=True))
        self.categorization = CategorizationBranch(c4, config, extra_dim=hidden)

    def forward(self, images: torch.Tensor) -> dict:
        self._check(images)
        features = self.backbone(images)
        heatmaps = self.landmarks(features)
        coords = decode_landmarks(heatmaps)
        pooled, gate = self.pooling(features, heatmaps, coords)
        local = self.local(torch.flatten(pooled, 1))
        category, attributes, _ = self.categorization(features, extra=local)
        return {"category_logits": category, "attribute_logits": attributes, "features": features,
                "landmark_heatmaps": heatmaps, "landmark_gate": gate,
                "attention": self.pooling.window_map(coords, gate, features.shape[-2:])}


class MTLBiNet(MTLNet):
    """MTL with a feedback path from categorization back to localisation (one round each way).

        F = backbone(x);  M = landmarks.encode(F)                  mid-level landmark maps (B,128,S/8,S/8)
        H1 = landmarks.decode(M)                                   first-pass heatmaps
        A = attention(F, H1);  C5 = conv5 block((1 + A) * F)       categorization, exactly as in "mtl"
        logits = heads(C5)
        f = Linear(global_avg_pool(C5))                            (B,128), zero-initialised
        H = landmarks.decode(M + f broadcast over the grid)        second-pass heatmaps (shared decoder)

    ``landmark_heatmaps`` is H (the supervised output); ``landmark_heatmaps_first`` is H1. Because the decoder is
    shared and the feedback projection starts at zero, H1 == H at initialisation and H1 stays a landmark map
    while the landmark loss on H trains the shared layers; the category path therefore still receives landmark
    knowledge through A, and the landmark loss sends gradient back into the conv5 block through f. Extra cost:
    one more decoder pass (about 0.45 GMAC at 224 px, width 1) and a Linear(512, 128).
    """

    names = ("mtl_bi",)

    def __init__(self, name: str, config: ModelConfig):
        super().__init__(name, config)
        self.feedback = nn.Linear(self.categorization.out_channels, self.landmarks.mid_channels)

    def forward(self, images: torch.Tensor) -> dict:
        self._check(images)
        features = self.backbone(images)
        mid = self.landmarks.encode(features)
        first = self.landmarks.decode(mid)
        attention = self.attention(features, first)
        category, attributes, conv5 = self.categorization((1 + attention) * features)
        feedback = self.feedback(conv5.mean(dim=(2, 3)))
        heatmaps = self.landmarks.decode(mid + feedback[:, :, None, None].to(mid.dtype))
        return {"category_logits": category, "attribute_logits": attributes, "features": features,
                "landmark_heatmaps": heatmaps, "landmark_heatmaps_first": first, "attention": attention}


#: The registry: model name -> network class. A new variant is its class and one line here.
NETWORKS = {"mtl": MTLNet, "cat": CATNet, "mtl_no_landmarks": MTLNet, "mtl_no_attention": MTLNet, "mtl_pool": MTLPoolNet,
            "mtl_bi": MTLBiNet}
MODEL_NAMES = tuple(NETWORKS)


# ----------------------------------------------------------------------------------------------------------
# Initialisation, pretrained weights, helpers


def part_generator(seed: int, part: str) -> torch.Generator:
    """A CPU generator seeded from (``seed``, ``part``) alone: the same part name gets the same stream anywhere."""
    digest = hashlib.sha256(f"{int(seed)}/{part}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little"))


@torch.no_grad()
def init_weights(model: nn.Module, seed: int) -> None:
    """torchvision VGG initialisation: Kaiming-normal (fan_out, ReLU) convs, N(0, 0.01) linears, zero biases.

    Exceptions: the final heatmap 1x1 conv gets N(0, 0.01) so initial heatmaps are near 0 (targets are mostly 0);
    the mtl_bi feedback projection is zero so the second landmark pass starts identical to the first.

    Each layer draws from ``part_generator(seed, its qualified name)`` (on the CPU, then copied to the layer's
    device), so a layer's values depend on the seed, its name and its shape only: never on which other layers
    the network has, on construction order, or on the global generator, which is not touched. Every parameter
    and BatchNorm statistic is overwritten, so the values PyTorch drew while building the modules do not matter.
    """
    heatmap_convs = {id(m.conv) for m in model.modules() if isinstance(m, FP32Conv1x1)}
    for name, m in model.named_modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            weight = torch.empty(m.weight.shape)
            generator = part_generator(seed, name)
            if isinstance(m, nn.Linear) or id(m) in heatmap_convs:
                nn.init.normal_(weight, 0, 0.01, generator=generator)
            else:
                nn.init.kaiming_normal_(weight, mode="fan_out", nonlinearity="relu", generator=generator)
            m.weight.copy_(weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            m.reset_parameters()                                            # weight 1, bias 0, running stats reset
        elif isinstance(m, LandmarkPooling):
            m.reset_parameters()
    if isinstance(model, MTLBiNet):
        nn.init.zeros_(model.feedback.weight)
        nn.init.zeros_(model.feedback.bias)


def pretrained_path(pretrained: str | os.PathLike, backbone: str = "vgg16") -> Path:
    """Resolve ``pretrained`` to a checkpoint file; raise FileNotFoundError (never download) when it is absent.

    ``"torchvision"`` means torchvision's cache file ``<torch.hub.get_dir()>/checkpoints/vgg16-397923af.pth``
    (``vgg16_bn-6c64b313.pth`` for vgg16_bn); anything else is a path.
    """
    filename, url = TORCHVISION_VGG_WEIGHTS[backbone]
    if str(pretrained) == "torchvision":
        path = Path(torch.hub.get_dir()) / "checkpoints" / filename
    else:
        path = Path(pretrained).expanduser()
    if not path.is_file():
        raise FileNotFoundError(
            f"pretrained VGG weights not found: {path}\n"
            f"This code never downloads. Put torchvision's {filename} at that path (for pretrained='torchvision' "
            f"the folder is {Path(torch.hub.get_dir()) / 'checkpoints'}, set by $TORCH_HOME), or pass the file's "
            f"path as pretrained=. On a machine with internet access, download it from {url}")
    return path


def read_vgg_checkpoint(path: Path, backbone: str = "vgg16") -> dict:
    """``torch.load`` a VGG state dict; a truncated or corrupt file raises one RuntimeError line saying what to do."""
    filename, url = TORCHVISION_VGG_WEIGHTS[backbone]
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:                   # zip errors (RuntimeError), EOFError, unpickling errors, ...
        first = (str(err).split(". ")[0].splitlines() or [""])[0]
        reason = f"{type(err).__name__}: {first}" if first else type(err).__name__
        raise RuntimeError(
            f"pretrained VGG weights {path} are truncated or corrupt ({reason}); delete the file and download "
            f"torchvision's {filename} again from {url} (e.g. on a machine with internet access), then put it at "
            f"{path}") from None
    if isinstance(state, dict) and "state_dict" in state and not any(k.startswith("features.") for k in state):
        state = state["state_dict"]
    return state


def load_pretrained_vgg(model: _Net, pretrained: str | os.PathLike) -> list[str]:
    """Copy an ImageNet VGG-16 checkpoint (torchvision key layout ``features.N.*``) into ``model``.

    ``features.0 ... features.22`` (``... .32`` with BN) go to ``model.backbone.features`` under the same
    indices. VGG's conv5_1..conv5_3 (``features.24..28``, or ``features.34..42`` with BN) are also copied into
    the small conv5 block of the categorization branch, as Liu & Lu do. The classifier is ignored. Only valid
    at width 1. Returns the list of model keys that were filled.
    """
    backbone = model.config.backbone
    if model.config.width != 1.0:
        raise ValueError(f"pretrained VGG weights need width=1.0, got width={model.config.width}")
    if str(pretrained) == "imagenet":              # torchvision's weights API: cache, else download (hash-checked)
        from vfu_nb.weights import cache_path, imagenet_state_dict

        path, state = cache_path(backbone), imagenet_state_dict(backbone)
    else:
        path = pretrained_path(pretrained, backbone)
        state = read_vgg_checkpoint(path, backbone)
    n_backbone = len(model.backbone.features)
    targets = {f"backbone.features.{k}": v for k, v in model.backbone.features.state_dict().items()}
    block_offset = n_backbone + 1                                    # skip pool4
    targets.update({f"categorization.block.{k}": v for k, v in model.categorization.block.state_dict().items()})

    def source_key(target: str) -> str:
        prefix, rest = ("backbone.features.", 0) if target.startswith("backbone.") else ("categorization.block.",
                                                                                        block_offset)
        index, suffix = target[len(prefix):].split(".", 1)
        return f"features.{int(index) + rest}.{suffix}"

    missing = [source_key(t) for t in targets if source_key(t) not in state]
    if missing:
        raise KeyError(f"{path} lacks {len(missing)} VGG keys, e.g. {missing[:4]}; is it a torchvision "
                       f"{backbone} checkpoint?")
    loaded = []
    with torch.no_grad():
        for target, dest in targets.items():
            src = state[source_key(target)]
            if tuple(src.shape) != tuple(dest.shape):
                raise ValueError(f"shape mismatch for {target} <- {source_key(target)}: "
                                 f"{tuple(dest.shape)} vs {tuple(src.shape)}")
            dest.copy_(src)
            loaded.append(target)
    return loaded


def build_model(name: str, num_categories: int | None = None, num_attributes: int | None = None,
                num_landmarks: int | None = None, image_size: int | None = None, width: float | None = None,
                backbone: str | None = None, pretrained: str | os.PathLike | None = None, *,
                config: ModelConfig | None = None) -> nn.Module:
    """Build one of MODEL_NAMES (see the module docstring); the model keeps its ModelConfig as ``model.config``.

    Either the shape arguments (``num_categories``, ``num_attributes`` required; ``num_landmarks=8,
    image_size=224, width=1.0, backbone="vgg16"`` by default, as in ModelConfig) or ``config=``, not both.
    pretrained: None (random init); "imagenet" (torchvision's VGG16_Weights / VGG16_BN_Weights per backbone: torch.hub's
    cache, downloaded there once with its hash checked; :mod:`vfu_nb.weights`); a path to a torchvision VGG-16
    state dict; or "torchvision" (the cached file only, never downloaded). A missing file raises FileNotFoundError.

    Initialisation takes exactly one draw from the global torch generator (the base seed, kept as
    ``model.init_seed``), whatever the model, so paired runs at one seed start from the same shared weights and
    continue with the same global random stream.
    """
    if name not in NETWORKS:
        raise ValueError(f"unknown model {name!r}; choose from {MODEL_NAMES}")
    shape_args = dict(num_categories=num_categories, num_attributes=num_attributes, num_landmarks=num_landmarks,
                      image_size=image_size, width=width, backbone=backbone)
    given = {k: v for k, v in shape_args.items() if v is not None}
    if config is None:
        if num_categories is None or num_attributes is None:
            raise TypeError("build_model needs num_categories and num_attributes, or config=ModelConfig(...)")
        config = ModelConfig(**given)
    elif given:
        raise TypeError(f"build_model got config= and also {sorted(given)}; put them into the ModelConfig")
    seed = int(torch.randint(0, 2**62, ()).item())
    with torch.random.fork_rng(devices=[]):       # PyTorch's default reset_parameters draws stay in here
        model = NETWORKS[name](name, config)
    init_weights(model, seed)
    model.init_seed = seed
    if pretrained is not None:
        load_pretrained_vgg(model, pretrained)
    return model


@torch.no_grad()
def decode_landmarks(heatmaps: torch.Tensor) -> torch.Tensor:
    """Heatmaps (B,L,H,W) -> landmark positions (B,L,2) as (x, y) crop units, fp32.

    Arg-max per map; pixel index i decodes to u = (i + 0.5) / W for x and (j + 0.5) / H for y (the same
    divisor as the ground truth: crop unit u sits at continuous pixel position u * S). Ties go to the first
    (top-left) index, as torch.argmax does.
    """
    b, l, h, w = heatmaps.shape
    index = heatmaps.detach().float().reshape(b, l, h * w).argmax(dim=2)
    x = (index % w).float().add_(0.5).div_(w)
    y = torch.div(index, w, rounding_mode="floor").float().add_(0.5).div_(h)
    return torch.stack([x, y], dim=-1)


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (all, or only those with requires_grad)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def parameter_summary(model: nn.Module) -> dict[str, int]:
    """Parameters per top-level part, e.g. {"backbone": 7635264, "landmarks": ..., "total": ...}."""
    out = {name: count_parameters(child) for name, child in model.named_children()}
    own = sum(p.numel() for p in model.parameters(recurse=False))
    if own:
        out["(own)"] = own
    out["total"] = count_parameters(model)
    return out


def describe(model: nn.Module) -> str:
    """One line per top-level part with its parameter count (millions), for printing in notebooks."""
    rows = parameter_summary(model)
    width = max(len(k) for k in rows)
    return "\n".join(f"{k:<{width}}  {v / 1e6:8.3f} M" for k, v in rows.items())


__all__ = ["MODEL_NAMES", "BACKBONES", "ModelConfig", "build_model", "decode_landmarks", "count_parameters",
           "parameter_summary", "describe", "load_pretrained_vgg", "read_vgg_checkpoint", "pretrained_path",
           "CATNet", "MTLNet", "MTLPoolNet", "MTLBiNet", "VGGBackbone", "LandmarkBranch", "LandmarkAttention",
           "CategorizationBranch", "LandmarkPooling", "FP32Conv1x1", "FP32Linear", "init_weights",
           "part_generator"]
