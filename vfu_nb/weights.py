"""ImageNet VGG-16 weights the way torchvision users get them: ``pretrained="imagenet"`` (``--pretrained imagenet``).

The weights come through torchvision's weights API, ``VGG16_Weights.IMAGENET1K_V1`` for the ``vgg16`` backbone and
``VGG16_BN_Weights.IMAGENET1K_V1`` for ``vgg16_bn``: ``get_state_dict`` reads torch.hub's cache,
``$TORCH_HOME/hub/checkpoints/<file>`` (``~/.cache/torch/hub/checkpoints`` without ``$TORCH_HOME``), and downloads
the file there once when it is missing, checking it against the hash in its name (torchvision's ``check_hash``
applies to downloads only). Every later run reads the cache.

Failures are one line (:class:`WeightsUnavailableError`, a FileNotFoundError): offline with no cached file, the
exact path to put torchvision's file at and where to get it; a download that fails the hash check; a cached file
that is truncated or corrupt (delete it, the next run downloads it again).

``pretrained`` keeps its other values: a path to a torchvision VGG-16 state dict, and ``"torchvision"`` (the cached
file only, never downloaded; :func:`vfu_nb.models.pretrained_path`).
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlparse

import torch

IMAGENET = "imagenet"


class WeightsUnavailableError(FileNotFoundError):
    """The ImageNet weights are neither cached nor downloadable (or failed their check); ``str()`` is one line."""

    def __str__(self) -> str:
        return self.args[0] if self.args else ""


def imagenet_weights(backbone: str = "vgg16"):
    """torchvision's weights enum member for ``backbone``: ``VGG16_Weights.IMAGENET1K_V1`` or
    ``VGG16_BN_Weights.IMAGENET1K_V1``."""
    from torchvision.models import VGG16_BN_Weights, VGG16_Weights

    table = {"vgg16": VGG16_Weights.IMAGENET1K_V1, "vgg16_bn": VGG16_BN_Weights.IMAGENET1K_V1}
    if backbone not in table:
        raise ValueError(f"no ImageNet weights for backbone {backbone!r}; choose from {sorted(table)}")
    return table[backbone]


def cache_path(backbone: str = "vgg16") -> Path:
    """Where torch.hub keeps the file: ``<torch.hub.get_dir()>/checkpoints/<file name of the weights' URL>``."""
    url = imagenet_weights(backbone).url
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(url).path)


def _name(backbone: str) -> str:
    weights = imagenet_weights(backbone)
    return f"torchvision's {type(weights).__name__}.{weights.name}"


def imagenet_state_dict(backbone: str = "vgg16", progress: bool = False) -> dict:
    """The ImageNet state dict of ``backbone`` (torchvision key layout ``features.N.*``): from the cache, or
    downloaded into it first with its hash checked. :class:`WeightsUnavailableError` in one line otherwise."""
    weights = imagenet_weights(backbone)
    path = cache_path(backbone)
    cached = path.is_file()
    try:
        return weights.get_state_dict(progress=progress, check_hash=True, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001  (urllib, socket, hash and unpickling errors all end here)
        first = (str(exc).splitlines() or [""])[0][:160]
        reason = f"{type(exc).__name__}: {first}" if first else type(exc).__name__
        if cached:
            raise WeightsUnavailableError(
                f"{path} ({_name(backbone)}) is truncated or corrupt ({reason}); delete it, and the next run downloads "
                f"it again (hash-checked), or put torchvision's {path.name} from {weights.url} there") from None
        if "invalid hash value" in str(exc):
            raise WeightsUnavailableError(
                f"the download of {weights.url} ({_name(backbone)}) failed its hash check ({first}); nothing was "
                f"kept: run again, or put torchvision's {path.name} from another source at {path}") from None
        raise WeightsUnavailableError(
            f"ImageNet weights for {backbone} ({_name(backbone)}) are not cached and could not be downloaded "
            f"({reason}): put {path.name} (from {weights.url}) at {path}") from None
