"""Every training setting in one place: :class:`TrainConfig`, read from the command line, files and mappings by
jsonargparse.

The dataclass is the single source: each field's type, default and docstring become its option, its type check
and its ``--help`` text (:func:`cli_parser`); ``--config FILE`` (YAML or JSON, e.g. a run's ``config.json``) sets
values that later flags override, ``--print_config`` prints the merged settings as YAML. :func:`parse_config`
also takes the dashed spellings (``--image-size``, ``--no-augment``, ``--w-landmark``, ``none``; see
:data:`ALIASES`), and :meth:`TrainConfig.from_dict` checks a mapping with the same parser. Values outside their
range raise :class:`ConfigError` naming the option (:func:`check_ranges`).

The resume rule lives here too: :func:`config_differences` lists what differs between a stored run and a
new request, except :data:`RESUME_SAFE_FIELDS`.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import os
import typing
from dataclasses import dataclass, field
from typing import Literal, Mapping, Optional

from jsonargparse import ActionConfigFile, ArgumentParser, set_parsing_settings
from jsonargparse import Namespace as _Namespace

from vfu_nb.losses import LossWeights
from vfu_nb.models import BACKBONES, MODEL_NAMES

LR_SCHEDULES = ("none", "cosine", "step", "exp")
LOADERS = ("batch", "items")

# The fields' docstrings are their --help texts.
set_parsing_settings(docstring_parse_attribute_docstrings=True)


class ConfigError(ValueError):
    """A setting has a value that is not allowed; the message names the option (and the file it came from)."""


@dataclass
class TrainConfig:
    """Everything a run needs; saved as ``config.json`` in the run directory.

    Defaults follow the thesis (Adam, batch 8, 10 epochs, lr 1e-4, 224 px, full-width VGG-16). ``None`` for a
    device-dependent setting means "pick per device"; the values picked are stored in the ``resolved`` block
    of ``config.json`` (see :func:`vfu_nb.training.runtime.resolve_runtime`).
    """

    # --- run
    model: Literal[MODEL_NAMES] = "mtl"
    """network (vfu_nb.models)"""
    run_dir: str = ""
    """output folder (empty: runs/<model>); a folder that already holds a run is only continued with --resume"""
    resume: bool = False
    """continue the run in --run-dir from checkpoints/last.pt (same settings except the resume-safe ones)"""
    epochs: int = 10
    """number of epochs (thesis: 10)"""
    seed: int = 0
    """seed of model init, data order and augmentation"""

    # --- data
    data_root: str = "data/deepfashion"
    """DeepFashion-C root (Anno/, Eval/, img/) or a synthetic tree"""
    image_size: int = 224
    """input size S (images are cropped to the bbox and resized to S x S)"""
    pad_to_square: bool = False
    """pad the bbox to a square instead of stretching it"""
    augment: bool = False
    """train split only: horizontal flip + scale/shift jitter"""
    max_items: Optional[int] = None
    """per split: a seeded subset of N images (data_seed), for smoke runs"""
    train_fraction: float = 1.0
    """train on a seeded subset (data_seed) of this fraction of the train split, same val/test (learning curves);
    smaller fractions are subsets of larger ones"""
    data_seed: int = 0
    """seed of the max_items / train_fraction subsets (the same for every run seed)"""
    cache_dir: Optional[str] = None
    """folder of the uint8 image cache (default: <data_root>/.vfu_cache)"""
    loader: Literal[LOADERS] = "batch"
    """input path: batch (vfu_nb.data.loader.BatchLoader: one gather per batch from the uint8 cache, a prefetch thread,
    augmentation on the device) | items (per-item DataLoader)"""
    num_workers: Optional[int] = None
    """DataLoader worker processes of --loader items (default: 0 on CPU, up to 8 on CUDA); the batch loader uses
    none. Also --workers"""

    # --- model
    width: float = 1.0
    """channel width factor of the VGG-16 backbone (0.25 -> 128 channels at conv4_3)"""
    backbone: Literal[BACKBONES] = "vgg16"
    """VGG-16 with or without batch norm"""
    pretrained: Optional[str] = None
    """'imagenet' (torchvision's VGG16_Weights / VGG16_BN_Weights: $TORCH_HOME cache, downloaded once with a hash
    check), a PATH to torchvision VGG-16 weights, or 'torchvision' (the cached file only)"""

    # --- optimisation
    batch_size: int = 8
    """images per step and process (global batch = batch size x processes)"""
    lr: float = 1e-4
    """Adam learning rate (one optimiser for the whole run)"""
    weight_decay: float = 0.0
    """Adam weight decay (L2)"""
    lr_schedule: Literal[LR_SCHEDULES] = "none"
    """per-epoch learning-rate schedule"""
    lr_step_size: int = 3
    """step schedule: decay every N epochs"""
    lr_gamma: float = 0.1
    """step / exp schedule factor (Liu & Lu: exp 0.8)"""
    max_batches: Optional[int] = None
    """at most N steps per epoch (smoke runs)"""

    # --- loss
    loss_weights: LossWeights = field(default_factory=LossWeights)
    """weights of the three loss terms (also --w-category, --w-attribute, --w-landmark)"""
    heatmap_sigma: Optional[float] = None
    """Gaussian sigma of the landmark targets in input pixels (default: max(5 * S / 224, 4))"""
    attr_pos_weight: Optional[float] = None
    """pos_weight of the attribute BCE (up-weights the rare positives)"""

    # --- evaluation and model selection
    eval_batch_size: Optional[int] = None
    """images per evaluation batch (default: 4 x batch size on CPU, at least 256 on CUDA)"""
    select_metric: str = "category_top3"
    """val metric that selects the best epoch (higher is better)"""
    patience: Optional[int] = None
    """early stopping: stop after N epochs without val improvement"""
    min_epochs: int = 0
    """early stopping never stops a run before this epoch (a lucky first epoch on a small training split can
    otherwise end it on the prior plateau)"""

    # --- device and speed
    device: str = "auto"
    """auto (CUDA when available) | cpu | cuda | cuda:N"""
    threads: Optional[int] = None
    """CPU threads (torch.set_num_threads); 1 is much faster on a CPU shared with other jobs"""
    bf16: Optional[bool] = None
    """bf16 autocast (default: on for CUDA)"""
    channels_last: Optional[bool] = None
    """channels_last memory format (default: on for CUDA)"""
    deterministic: Optional[bool] = None
    """deterministic algorithms (default: on for CPU); see docs/training.md"""
    compile: bool = False
    """torch.compile the model (the last partial training batch is dropped)"""
    cuda_graphs: bool = False
    """torch.compile with mode='reduce-overhead' (CUDA graphs, for small batches); implies --compile"""
    sync_every: Optional[int] = None
    """read the losses back to the host every N steps (default: 1 on CPU, 25 on CUDA)"""

    # --- logging and checkpoints
    progress: bool = True
    """progress bars"""
    log_every: int = 50
    """write per-step losses to batches.csv (and TensorBoard) at least every N steps"""
    checkpoint_every: Optional[int] = None
    """also save checkpoints/last.pt every N steps, so a killed long epoch resumes from its last step checkpoint"""
    tensorboard: bool = False
    """write TensorBoard events to <run_dir>/tensorboard"""

    def __post_init__(self):
        self.run_dir = self.run_dir or f"runs/{self.model}"
        if isinstance(self.loss_weights, Mapping):
            self.loss_weights = LossWeights(**self.loss_weights)
        check_ranges(self)

    @classmethod
    def from_dict(cls, d: Mapping, source: str = "") -> "TrainConfig":
        """Build from a mapping (e.g. ``config.json``), type-checked by the command line's parser.

        Settings it lacks take their defaults; a ``resolved`` block (what :func:`vfu_nb.training.loop.train` adds to
        ``config.json``) is ignored; an unknown key or a value of the wrong type raises :class:`ConfigError`
        naming the key and ``source``.
        """
        values = {k: _plain(k, v) for k, v in d.items() if k != "resolved"}
        if isinstance(values.get("loss_weights"), LossWeights):
            values["loss_weights"] = dataclasses.asdict(values["loss_weights"])
        try:
            parsed = _dict_parser().parse_object(values)
        except argparse.ArgumentError as exc:
            raise ConfigError(_where(str(exc), source)) from None
        return _build(parsed, source)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def training_setting_names() -> set:
    """The :class:`TrainConfig` fields a notebook or profile may set (``run_dir`` and ``resume`` are
    :func:`vfu_nb.training.runs.ensure_run`'s)."""
    return {f.name for f in dataclasses.fields(TrainConfig)} - {"run_dir", "resume"}


def check_ranges(c: TrainConfig) -> None:
    """Raise :class:`ConfigError` for a value outside its allowed range (naming the option)."""
    def bad(name, allowed):
        return ConfigError(f"--{name.replace('_', '-')} must be {allowed}, got {getattr(c, name)!r}")

    for name, tp in typing.get_type_hints(TrainConfig).items():
        if typing.get_origin(tp) is Literal and getattr(c, name) not in typing.get_args(tp):
            raise bad(name, "one of " + ", ".join(typing.get_args(tp)))
    if c.min_epochs < 0:
        raise bad("min_epochs", ">= 0")
    if not 0.0 < c.train_fraction <= 1.0:
        raise bad("train_fraction", "in (0, 1]")
    for name in ("epochs", "batch_size", "log_every", "image_size"):
        if getattr(c, name) < 1:
            raise bad(name, ">= 1")
    for name in ("max_items", "max_batches", "patience", "eval_batch_size", "sync_every", "threads",
                 "checkpoint_every"):
        if getattr(c, name) is not None and getattr(c, name) < 1:
            raise bad(name, ">= 1 (or none)")
    if c.num_workers is not None and c.num_workers < 0:
        raise bad("num_workers", ">= 0 (or none)")
    if c.lr < 0 or c.weight_decay < 0:
        raise bad("lr" if c.lr < 0 else "weight_decay", ">= 0")


# ----------------------------------------------------------------------------------------------------------
# Reading settings: the command line, files and mappings (jsonargparse)

#: Dashed spellings :func:`parse_config` takes besides jsonargparse's own: ``--image-size`` is ``--image_size``;
#: a bare boolean flag ``--augment`` is ``--augment true`` and ``--no-augment`` is ``--augment false``; ``none``
#: after an optional setting is ``null``; and these names.
ALIASES = {"workers": "num_workers",
           **{f"w_{f.name}": f"loss_weights.{f.name}" for f in dataclasses.fields(LossWeights)}}

EPILOG = ("Every option is a TrainConfig field (vfu_nb/training/config.py; docs/training.md). Dashes work as well "
          "as underscores (--image-size), booleans also as --x / --no-x, optional values also as none; "
          "--w-category, --w-attribute, --w-landmark set --loss_weights.*; --workers is --num_workers.")


@functools.lru_cache(maxsize=1)
def _field_sets() -> tuple[frozenset, frozenset]:
    """(boolean fields, optional fields) of :class:`TrainConfig`."""
    hints = typing.get_type_hints(TrainConfig)
    bools = frozenset(name for name, tp in hints.items() if bool in (tp, *typing.get_args(tp)))
    optional = frozenset(name for name, tp in hints.items() if type(None) in typing.get_args(tp))
    return bools, optional


def _plain(name: str, value):
    """A mapping's value as the parser reads it: paths as strings, ``"none"`` of an optional setting as None."""
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, str) and value.lower() == "none" and name in _field_sets()[1]:
        return None
    return value


def jsonargparse_argv(argv: list) -> list:
    """``argv`` with the spellings of :data:`ALIASES` rewritten to jsonargparse's."""
    bools, optional = _field_sets()
    out, last = [], None
    for i, arg in enumerate(argv):
        if not (arg.startswith("--") and len(arg) > 2):
            out.append("null" if last in optional and arg.lower() == "none" else arg)
            last = None
            continue
        name, eq, value = arg[2:].partition("=")
        name = ALIASES.get(name.replace("-", "_"), name.replace("-", "_"))
        following = argv[i + 1].lower() if i + 1 < len(argv) else ""
        if not eq and name in bools and following not in ("true", "false", "null"):
            arg = f"--{name}=true"
        elif not eq and name.startswith("no_") and name[3:] in bools:
            arg = f"--{name[3:]}=false"
        else:
            arg = f"--{name}{eq}{'null' if eq and name in optional and value.lower() == 'none' else value}"
        out.append(arg)
        last = None if eq else name
    return out


def cli_parser(prog: str = "python -m vfu_nb.training", description: Optional[str] = None) -> ArgumentParser:
    """The parser of every :class:`TrainConfig` field, ``--config FILE`` and ``--print_config``."""
    parser = ArgumentParser(prog=prog, description=description, epilog=EPILOG, exit_on_error=False,
                            print_config="--print_config")
    parser.add_argument("--config", action=ActionConfigFile,
                        help="YAML or JSON file of settings (e.g. a run's config.json); later flags override it")
    # the "resolved" block of a run's config.json: what that run picked per device, ignored here
    parser.add_argument("--resolved", type=Optional[dict], default=None, help=argparse.SUPPRESS)
    parser.add_class_arguments(TrainConfig)
    return parser


_dict_parser = functools.lru_cache(maxsize=1)(cli_parser)


def _where(message: str, source: str) -> str:
    message = " ".join(message.split())
    return f"{message} (settings from {source})" if source else message


def _build(parsed: _Namespace, source: str = "") -> TrainConfig:
    values = parsed.as_dict()
    try:
        return TrainConfig(**{f.name: values[f.name] for f in dataclasses.fields(TrainConfig)})
    except ConfigError as exc:
        raise ConfigError(_where(str(exc), source)) from None


def parse_config(argv: Optional[list] = None, parser: Optional[ArgumentParser] = None) -> TrainConfig:
    """:class:`TrainConfig` from command-line arguments: the defaults, then ``--config`` files and flags in order.

    Raises :class:`ConfigError` naming the option (and the files read) for an unknown option or a bad value;
    ``--help`` and ``--print_config`` print and exit.
    """
    import sys

    argv = jsonargparse_argv(list(sys.argv[1:] if argv is None else argv))
    files = ", ".join(argv[i + 1] for i, arg in enumerate(argv[:-1]) if arg == "--config")
    parser = parser or cli_parser()
    try:
        parsed = parser.parse_args(argv)
    except argparse.ArgumentError as exc:
        raise ConfigError(_where(str(exc), files)) from None
    return _build(parsed, files)


# ----------------------------------------------------------------------------------------------------------
# Resume rule

#: Settings that may change when a run is resumed. They choose where and how fast the run executes, how it is
#: logged, and how long it goes on; none of them changes what is trained (data, model, loss, optimiser,
#: selection), so a resumed run is the same experiment. Numerics may differ at float precision (threads,
#: device, layout, kernels), never in kind; with augmentation, another ``loader`` or worker count draws other
#: (equally random) augmentations for the rest of the run. ``epochs`` is not safe with the cosine schedule,
#: whose length is the number of epochs (see :func:`config_differences`).
RESUME_SAFE_FIELDS = frozenset({
    "resume", "run_dir",                          # how the run is addressed
    "epochs", "patience", "min_epochs",           # how long it goes on (re-applied on resume)
    "progress", "log_every", "tensorboard", "checkpoint_every",      # logging
    "device", "threads", "loader", "num_workers", "sync_every", "eval_batch_size",  # where and how fast
    "compile", "cuda_graphs", "channels_last", "deterministic",      # kernels and memory layout
    "cache_dir",                                  # where the (identical) image cache lives
})
PATH_FIELDS = ("data_root", "cache_dir")


def _flat(d: Mapping, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, Mapping):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def config_differences(stored: Mapping, config, ignore=()) -> list:
    """``"field: old -> new"`` for each setting in which ``config`` differs from the ``stored`` run config.

    ``stored`` is a run's ``config.json`` (settings it lacks count as their defaults; its ``resolved`` block
    is not compared); ``config`` a :class:`TrainConfig` or mapping. :data:`RESUME_SAFE_FIELDS` and ``ignore``
    are not compared; ``epochs`` is compared under the cosine schedule. Paths are compared as absolute paths.
    """
    new = config if isinstance(config, TrainConfig) else TrainConfig.from_dict(config)
    old = TrainConfig.from_dict({k: v for k, v in stored.items() if k in {f.name for f in dataclasses.fields(
        TrainConfig)}}, source="the stored config.json")
    skip = set(RESUME_SAFE_FIELDS) | set(ignore)
    if "cosine" in (old.lr_schedule, new.lr_schedule):
        skip.discard("epochs")
    a, b = _flat(old.to_dict()), _flat(new.to_dict())
    for k in PATH_FIELDS:
        a[k], b[k] = (None if v is None else os.path.abspath(v) for v in (a[k], b[k]))
    return [f"{k}: {a[k]!r} -> {b[k]!r}" for k in a if k.split(".")[0] not in skip and a[k] != b[k]]
