"""A model's maps of one image reduced to one grid each, for drawing over the image (notebook 04, widgets).

The MTL network predicts 8 landmark heat maps at input resolution, average-pools them to the conv4_3 grid,
and turns them, together with the conv4_3 features F, into an attention tensor A (tanh, one value per channel
and cell); the categorization branch sees (1 + A) * F.

* :func:`heatmap_strength` -- the 8 raw heat maps, clipped to [0, 1] (targets peak at 1), max over landmarks;
* :func:`attention_strength` -- mean of A over channels (positive: features amplified, negative: damped); for
  ``mtl_pool``, whose ``attention`` is a display map of its 8 pooling windows, the max over the windows;
* :func:`feature_energy` -- mean |F| over channels, for models without attention (CAT), so the same images can be
  compared.

How much of a map falls near the landmarks is measured in :mod:`vfu_nb.attention_mass`; the figures are in
:mod:`vfu_nb.plots.attention`.
"""

from __future__ import annotations

import numpy as np

def heatmap_strength(heatmaps: np.ndarray) -> np.ndarray:
    """(8, S, S) raw heat maps -> (S, S): max over landmarks of the maps clipped to [0, 1]."""
    return np.clip(np.asarray(heatmaps, dtype=float), 0, 1).max(axis=0)


def attention_strength(attention: np.ndarray, num_landmarks: int = 8) -> np.ndarray:
    """(C, h, w) attention -> (h, w): the channel mean of A; max over channels for an 8-window map (mtl_pool)."""
    a = np.asarray(attention, dtype=float)
    return a.max(axis=0) if a.shape[0] == num_landmarks else a.mean(axis=0)


def feature_energy(features: np.ndarray) -> np.ndarray:
    """(C, h, w) conv4_3 features -> (h, w) mean |F| over channels, scaled to [0, 1]."""
    e = np.abs(np.asarray(features, dtype=float)).mean(axis=0)
    return e / e.max() if e.max() > 0 else e
