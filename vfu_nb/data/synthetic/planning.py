"""Planning a tree: folders (product titles), file names, categories and splits of every image, cheap and
without rendering; a plan of ``n`` images is a prefix of any larger plan with the same seed."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from vfu_nb.data.synthetic.settings import SPLIT_BLOCK
from vfu_nb.data.synthetic.specs import (
    _CATEGORY_ID, _CATEGORY_TYPE, _CATEGORY_WEIGHTS, _TABLES, RENDERED_CATEGORIES, _choice, _part_distribution,
)


_NEUTRAL_WORDS: list[str] = _TABLES["neutral_words"]
_FOLDER_SIZE = (10, 50)  # images per folder, uniform inclusive


@dataclass(frozen=True)
class ImagePlan:
    """Everything about image `index` that is fixed before rendering."""

    index: int
    name: str  # img/<Item_Folder>/img_XXXXXXXX.jpg
    category: str
    forced: tuple = ()  # ((slot, value), ...) shared by every image of the folder (product title)
    split: str = "train"

    @property
    def label(self) -> int:
        """1-based category label of the real vocabulary."""
        return _CATEGORY_ID[self.category]

    @property
    def clothes_type(self) -> int:
        return _CATEGORY_TYPE[self.category]


def _title_word(value: str) -> str:
    """'polka dot' -> 'Polka_Dot'."""
    return "_".join(w.capitalize() for w in value.split())


def _product(category: str, rng: np.random.Generator, used: set) -> tuple[str, tuple]:
    """A unique product-title folder name ending in the category word, and its forced slots."""
    forced = {}
    if rng.random() < 0.45:
        forced["texture"] = _choice(rng, _part_distribution(category, "texture"))
    fabric = _choice(rng, _part_distribution(category, "fabric"))
    if fabric is not None and rng.random() < 0.5:
        forced["fabric"] = fabric
    words = [_title_word(v) for v in forced.values()] + [category]
    n_neutral = int(rng.integers(0 if forced else 1, 3))
    for _ in range(n_neutral):
        words.insert(0, _NEUTRAL_WORDS[int(rng.integers(len(_NEUTRAL_WORDS)))])
    name = "_".join(words)  # at most 46 characters, so image names stay shorter than column 71
    while name in used:
        extra = _NEUTRAL_WORDS[int(rng.integers(len(_NEUTRAL_WORDS)))]
        name = f"{extra}_{name}" if len(name) < 38 else f"{extra}_{len(used)}_{category}"
    used.add(name)
    return name, tuple(sorted(forced.items()))


def _next_category(counts: dict, total: int, size: int, rng: np.random.Generator) -> str:
    """Category of the next folder: the largest deficit against the long-tailed target, jittered."""
    weights = _CATEGORY_WEIGHTS
    deficit = {c: weights[c] * (total + size) - counts[c] + rng.random() * 0.4 * size
               for c in RENDERED_CATEGORIES}
    return max(RENDERED_CATEGORIES, key=lambda c: deficit[c])


def plan_split(n: int, seed: int) -> list[str]:
    """train/val/test per row: every block of 20 consecutive rows is a permutation of 14/3/3."""
    out = []
    for block in range(0, n, len(SPLIT_BLOCK)):
        rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(2, block)))
        out.extend(SPLIT_BLOCK[i] for i in rng.permutation(len(SPLIT_BLOCK)))
    return out[:n]


def plan_images(n: int, seed: int = 0) -> list[ImagePlan]:
    """Names, categories, product slots and splits of `n` images (a prefix of any larger plan)."""
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(0,)))
    splits = plan_split(n, seed)
    counts = {c: 0 for c in RENDERED_CATEGORIES}
    used: set = set()
    plans: list[ImagePlan] = []
    while len(plans) < n:
        size = int(rng.integers(_FOLDER_SIZE[0], _FOLDER_SIZE[1] + 1))
        category = _next_category(counts, len(plans), size, rng)
        folder, forced = _product(category, rng, used)
        size = min(size, n - len(plans))
        counts[category] += size
        for k in range(size):
            i = len(plans)
            plans.append(ImagePlan(i, f"img/{folder}/img_{k + 1:08d}.jpg", category, forced, splits[i]))
    return plans
