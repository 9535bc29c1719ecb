"""The generator's fixed format (version, image size, JPEG quality, split blocks, marker files) and its
settings: defaults, allowed ranges, and the error that names a bad option."""

from __future__ import annotations


VERSION = 2
MAX_SIDE = 300
JPEG_QUALITY = 85
SPLIT_BLOCK = ("train",) * 14 + ("val",) * 3 + ("test",) * 3  # 70/15/15 in every 20 consecutive rows
MARKER_DONE = "synthetic.json"
MARKER_BUSY = ".synthetic_incomplete"

#: Default of the geometry dial (see the package docstring and docs/synthetic.md for how it was chosen).
DEFAULT_GEOMETRY_INFORMATIVENESS = 0.35
#: Default annotation noise: jitter sd of written landmarks (fraction of the box width/height) and rate
#: of swapped visible/occluded flags. State-of-the-art landmark detectors reach a normalised error of
#: about 0.04 on DeepFashion-C (Lee et al., ICCV Workshops 2019: 0.039; Liu & Lu, ECCV Workshops 2018:
#: 0.047); annotators are more precise than that: sd 0.02 per axis is a mean error of 0.025.
DEFAULT_LANDMARK_NOISE = 0.02
DEFAULT_VISIBILITY_FLIP = 0.03
#: Allowed ranges of the settings (inclusive).
SETTING_RANGES = {"geometry_informativeness": (0.0, 1.0), "landmark_noise": (0.0, 0.2),
                  "visibility_flip": (0.0, 0.5)}


#: Where the local parts are drawn: at their functional points (the benchmark) or at random body points.
EVIDENCE_PLACEMENTS = ("functional", "displaced")
DEFAULT_EVIDENCE_PLACEMENT = "functional"


def default_settings() -> dict:
    """The benchmark settings of the default tree (those recorded in synthetic.json). The evidence
    placement is recorded only when it is not the default, so trees written before it existed stay
    current."""
    return dict(geometry_informativeness=DEFAULT_GEOMETRY_INFORMATIVENESS,
                landmark_noise=DEFAULT_LANDMARK_NOISE, visibility_flip=DEFAULT_VISIBILITY_FLIP)


class OptionError(ValueError):
    """A bad generator option; ``option`` is its Python name, ``detail`` what is allowed."""

    def __init__(self, option: str, detail: str):
        self.option, self.detail = option, detail
        super().__init__(f"{option}: {detail}")


def _check_placement(value) -> None:
    """Raise :class:`OptionError` unless `value` is one of EVIDENCE_PLACEMENTS."""
    if not isinstance(value, str) or value not in EVIDENCE_PLACEMENTS:
        raise OptionError("evidence_placement", f"must be one of {', '.join(EVIDENCE_PLACEMENTS)}, got {value!r}")
