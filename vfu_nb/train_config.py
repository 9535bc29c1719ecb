"""Every training setting in one place: :class:`TrainConfig`, and the command line generated from it.

Each field carries its help text and CLI group; :func:`add_train_args` turns the fields into argparse options
(``--image-size`` for ``image_size``, bools as ``--x/--no-x``, ``none`` for an optional value, the nested
:class:`~vfu_nb.losses.LossWeights` as ``--w-category/--w-attribute/--w-landmark``), so adding a training
setting means adding one field. ``--config FILE`` (YAML or JSON, e.g. a run's ``config.json``) sets values,
flags on the command line override them; :func:`config_to_yaml` writes a config back in that format.

The resume rule lives here too: :func:`config_differences` lists what differs between a stored run and a
new request, except :data:`RESUME_SAFE_FIELDS`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional

from vfu_nb.losses import LossWeights

LR_SCHEDULES = ("none", "cosine", "step", "exp")
LOADERS = ("batch", "items")


class ConfigError(ValueError):
    """A setting has a value that is not allowed; the message names the option (and the file it came from)."""


def setting(default=None, help: str = "", *, group: str, aliases: tuple = (), choices: tuple = (),
            prefix: str = "", factory=None):
    """A dataclass field with its CLI metadata (help text, option group, extra flag names, choices)."""
    meta = {"help": help, "group": group, "aliases": tuple(aliases), "choices": tuple(choices), "prefix": prefix}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class TrainConfig:
    """Everything a run needs; saved as ``config.json`` in the run directory.

    Defaults follow the thesis (Adam, batch 8, 10 epochs, lr 1e-4, 224 px, full-width VGG-16). ``None`` for a
    device-dependent setting means "pick per device"; the values picked are stored in the ``resolved`` block
    of ``config.json`` (see :func:`vfu_nb.train.resolve_runtime`).
    """

    # --- run
    model: str = setting("mtl", "network: mtl | cat | mtl_no_landmarks | mtl_pool | mtl_bi (vfu_nb.models)",
                         group="run")
    run_dir: str = setting("", "output folder (empty: runs/<model>); a folder that already holds a run is only "
                           "continued with --resume", group="run")
    resume: bool = setting(False, "continue the run in --run-dir from checkpoints/last.pt (same settings "
                           "except the resume-safe ones)", group="run")
    epochs: int = setting(10, "number of epochs (thesis: 10)", group="run")
    seed: int = setting(0, "seed of model init, data order and augmentation", group="run")

    # --- data
    data_root: str = setting("data/deepfashion", "DeepFashion-C root (Anno/, Eval/, img/) or a synthetic tree",
                             group="data")
    image_size: int = setting(224, "input size S (images are cropped to the bbox and resized to S x S)",
                              group="data")
    pad_to_square: bool = setting(False, "pad the bbox to a square instead of stretching it", group="data")
    augment: bool = setting(False, "train split only: horizontal flip + scale/shift jitter", group="data")
    max_items: Optional[int] = setting(None, "per split: a seeded subset of N images (data_seed), for smoke "
                                       "runs", group="data")
    train_fraction: float = setting(1.0, "train on a seeded subset (data_seed) of this fraction of the train "
                                    "split, same val/test (learning curves); smaller fractions are subsets of "
                                    "larger ones", group="data")
    data_seed: int = setting(0, "seed of the max_items / train_fraction subsets (the same for every run seed)",
                             group="data")
    cache_dir: Optional[str] = setting(None, "folder of the uint8 image cache (default: <data_root>/.vfu_cache)",
                                       group="data")
    loader: str = setting("batch", "input path: batch (vfu_nb.data.BatchLoader: one gather per batch from the "
                          "uint8 cache, a prefetch thread, augmentation on the device) | items (per-item "
                          "DataLoader)", group="data", choices=LOADERS)
    num_workers: Optional[int] = setting(None, "DataLoader worker processes of --loader items (default: 0 on "
                                         "CPU, up to 8 on CUDA); the batch loader uses none", group="data",
                                         aliases=("--workers",))

    # --- model
    width: float = setting(1.0, "channel width factor of the VGG-16 backbone (0.25 -> 128 channels at "
                           "conv4_3)", group="model")
    backbone: str = setting("vgg16", "vgg16 | vgg16_bn", group="model")
    pretrained: Optional[str] = setting(None, "'imagenet' (torchvision's VGG16_Weights / VGG16_BN_Weights: "
                                        "$TORCH_HOME cache, downloaded once with a hash check), a PATH to "
                                        "torchvision VGG-16 weights, or 'torchvision' (the cached file only)",
                                        group="model")

    # --- optimisation
    batch_size: int = setting(8, "images per step and process (global batch = batch size x processes)",
                              group="optimisation")
    lr: float = setting(1e-4, "Adam learning rate (one optimiser for the whole run)", group="optimisation")
    weight_decay: float = setting(0.0, "Adam weight decay (L2)", group="optimisation")
    lr_schedule: str = setting("none", "per-epoch learning-rate schedule", group="optimisation",
                               choices=LR_SCHEDULES)
    lr_step_size: int = setting(3, "step schedule: decay every N epochs", group="optimisation")
    lr_gamma: float = setting(0.1, "step / exp schedule factor (Liu & Lu: exp 0.8)", group="optimisation")
    max_batches: Optional[int] = setting(None, "at most N steps per epoch (smoke runs)", group="optimisation")

    # --- loss
    loss_weights: LossWeights = setting(help="weights of the three loss terms", group="loss", prefix="w",
                                        factory=LossWeights)
    heatmap_sigma: Optional[float] = setting(None, "Gaussian sigma of the landmark targets in input pixels "
                                             "(default: max(5 * S / 224, 4))", group="loss")
    attr_pos_weight: Optional[float] = setting(None, "pos_weight of the attribute BCE (up-weights the rare "
                                               "positives)", group="loss")

    # --- evaluation and model selection
    eval_batch_size: Optional[int] = setting(None, "images per evaluation batch (default: 4 x batch size on "
                                             "CPU, at least 256 on CUDA)", group="evaluation")
    select_metric: str = setting("category_top3", "val metric that selects the best epoch (higher is better)",
                                 group="evaluation")
    patience: Optional[int] = setting(None, "early stopping: stop after N epochs without val improvement",
                                      group="evaluation")
    min_epochs: int = setting(0, "early stopping never stops a run before this epoch (a lucky first epoch on a "
                              "small training split can otherwise end it on the prior plateau)", group="evaluation")

    # --- device and speed
    device: str = setting("auto", "auto (CUDA when available) | cpu | cuda | cuda:N", group="device")
    threads: Optional[int] = setting(None, "CPU threads (torch.set_num_threads); 1 is much faster on a CPU "
                                     "shared with other jobs", group="device")
    bf16: Optional[bool] = setting(None, "bf16 autocast (default: on for CUDA)", group="device")
    channels_last: Optional[bool] = setting(None, "channels_last memory format (default: on for CUDA)",
                                            group="device")
    deterministic: Optional[bool] = setting(None, "deterministic algorithms (default: on for CPU); see "
                                            "docs/training.md", group="device")
    compile: bool = setting(False, "torch.compile the model (the last partial training batch is dropped)",
                            group="device")
    cuda_graphs: bool = setting(False, "torch.compile with mode='reduce-overhead' (CUDA graphs, for small "
                                "batches); implies --compile", group="device")
    sync_every: Optional[int] = setting(None, "read the losses back to the host every N steps (default: 1 on "
                                        "CPU, 25 on CUDA)", group="device")

    # --- logging and checkpoints
    progress: bool = setting(True, "progress bars", group="logging")
    log_every: int = setting(50, "write per-step losses to batches.csv (and TensorBoard) at least every N "
                             "steps", group="logging")
    checkpoint_every: Optional[int] = setting(None, "also save checkpoints/last.pt every N steps, so a killed "
                                              "long epoch resumes from its last step checkpoint",
                                              group="logging")
    tensorboard: bool = setting(False, "write TensorBoard events to <run_dir>/tensorboard", group="logging")

    def __post_init__(self):
        self.run_dir = self.run_dir or f"runs/{self.model}"
        if isinstance(self.loss_weights, Mapping):
            self.loss_weights = LossWeights(**self.loss_weights)
        check_ranges(self)

    @classmethod
    def from_dict(cls, d: Mapping, source: str = "") -> "TrainConfig":
        """Build from a mapping (e.g. ``config.json``); values are converted to the field types.

        A ``resolved`` block (what :func:`vfu_nb.train.train` adds to ``config.json``) is ignored; any other
        unknown key raises :class:`ConfigError` naming ``source``.
        """
        where = f" in {source}" if source else ""
        d = {k: v for k, v in d.items() if k != "resolved"}
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(d) - set(names))
        if unknown:
            raise ConfigError(f"unknown TrainConfig fields{where}: {unknown} (known: {', '.join(names)})")
        hints = typing.get_type_hints(cls)
        kw = {}
        for name, value in d.items():
            if name == "loss_weights":
                kw[name] = _coerce_weights(value, where)
            else:
                kw[name] = coerce(name, value, hints[name], where)
        try:
            return cls(**kw)
        except ConfigError as exc:
            raise ConfigError(f"{exc}{where}") from None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def check_ranges(c: TrainConfig) -> None:
    """Raise :class:`ConfigError` for a value outside its allowed range (naming the option)."""
    def bad(name, allowed):
        return ConfigError(f"--{name.replace('_', '-')} must be {allowed}, got {getattr(c, name)!r}")

    if c.lr_schedule not in LR_SCHEDULES:
        raise bad("lr_schedule", "one of " + ", ".join(LR_SCHEDULES))
    if c.loader not in LOADERS:
        raise bad("loader", "one of " + ", ".join(LOADERS))
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
# Types


def _base_type(tp):
    """``Optional[X]`` -> (X, True); ``X`` -> (X, False)."""
    args = typing.get_args(tp)
    if typing.get_origin(tp) is typing.Union and type(None) in args:
        (inner,) = [a for a in args if a is not type(None)]
        return inner, True
    return tp, False


def coerce(name: str, value: Any, tp, where: str = "") -> Any:
    """``value`` converted to the field type ``tp`` (numbers from YAML strings such as ``1e-4``)."""
    base, optional = _base_type(tp)
    if value is None or (optional and isinstance(value, str) and value.lower() == "none"):
        if optional:
            return None
        raise ConfigError(f"{name}{where} cannot be none")
    if base is str and isinstance(value, os.PathLike):
        value = os.fspath(value)
    try:
        if base in (bool, str) and not isinstance(value, base):
            raise TypeError
        if base is int and (isinstance(value, bool) or (isinstance(value, float) and not value.is_integer())):
            raise TypeError
        return base(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name}{where} must be {base.__name__}{' or none' if optional else ''}, "
                          f"got {value!r}") from None


def _coerce_weights(value, where: str) -> LossWeights:
    if isinstance(value, LossWeights):
        return value
    if not isinstance(value, Mapping):
        raise ConfigError(f"loss_weights{where} must be a mapping like {{category: 1, attribute: 20, landmark: "
                          f"1000}}, got {value!r}")
    names = {f.name for f in dataclasses.fields(LossWeights)}
    unknown = sorted(set(value) - names)
    if unknown:
        raise ConfigError(f"unknown loss_weights keys{where}: {unknown} (known: {sorted(names)})")
    return LossWeights(**{k: coerce(f"loss_weights.{k}", v, float, where) for k, v in value.items()})


# ----------------------------------------------------------------------------------------------------------
# Command line


@dataclass(frozen=True)
class Option:
    """One command-line option generated from a field (``path`` = field name, or (field, subfield))."""

    dest: str
    flags: tuple
    path: tuple
    type: Any
    optional: bool
    default: Any
    help: str
    group: str
    choices: tuple


def cli_options() -> list:
    """The options of :class:`TrainConfig`, in field order (nested dataclasses flattened with their prefix)."""
    hints = typing.get_type_hints(TrainConfig)
    defaults = TrainConfig()
    options = []
    for f in dataclasses.fields(TrainConfig):
        meta, tp = f.metadata, hints[f.name]
        if dataclasses.is_dataclass(tp):
            sub_hints = typing.get_type_hints(tp)
            for sub in dataclasses.fields(tp):
                dest = f"{meta['prefix']}_{sub.name}"
                options.append(Option(dest, ("--" + dest.replace("_", "-"),), (f.name, sub.name),
                                      sub_hints[sub.name], False, getattr(getattr(defaults, f.name), sub.name),
                                      sub.metadata.get("help", ""), meta["group"], ()))
            continue
        base, optional = _base_type(tp)
        options.append(Option(f.name, ("--" + f.name.replace("_", "-"), *meta["aliases"]), (f.name,), base,
                              optional, getattr(defaults, f.name), meta["help"], meta["group"], meta["choices"]))
    return options


GROUP_TITLES = {"run": "run", "data": "data", "model": "model", "optimisation": "optimisation",
                "loss": "loss", "evaluation": "evaluation and model selection", "device": "device and speed",
                "logging": "logging and checkpoints"}


def _parse_value(option: Option):
    def parse(text: str):
        if option.optional and text.lower() == "none":
            return None
        return option.type(text)
    parse.__name__ = option.type.__name__   # argparse names the type in its error messages
    return parse


def add_train_args(parser: argparse.ArgumentParser, skip: tuple = ()) -> argparse.ArgumentParser:
    """Add ``--config FILE`` and one option per :class:`TrainConfig` field to ``parser``.

    ``skip``: field names left out (e.g. ``("model", "run_dir", "seed", "resume")`` for the study CLI; ``"config"``
    leaves out ``--config``). Options that are not given stay out of the parsed namespace, so
    :func:`config_from_args` can tell them from defaults.
    """
    groups = {}
    if "config" not in skip:
        parser.add_argument("--config", metavar="FILE", default=argparse.SUPPRESS,
                            help="YAML or JSON file of settings (e.g. a run's config.json); flags override it")
    for opt in cli_options():
        if opt.path[0] in skip:
            continue
        if opt.group not in groups:
            groups[opt.group] = parser.add_argument_group(GROUP_TITLES.get(opt.group, opt.group))
        shown = "none (per device)" if opt.default is None and opt.type is bool else \
            ("none" if opt.default is None else opt.default)
        kw = dict(dest=opt.dest, default=argparse.SUPPRESS, help=f"{opt.help} (default: {shown})")
        if opt.type is bool:
            kw["action"] = argparse.BooleanOptionalAction
        else:
            kw["type"] = _parse_value(opt)
            kw["metavar"] = {int: "N", float: "X"}.get(opt.type, "STR") if not opt.choices else None
            if opt.choices:
                kw["choices"] = opt.choices
        groups[opt.group].add_argument(*opt.flags, **kw)
    return parser


def load_config_file(path) -> dict:
    """Settings from a YAML or JSON file (a mapping of TrainConfig fields; ``loss_weights`` nested)."""
    import yaml

    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"--config {path}: cannot read it ({exc.strerror})") from None
    try:
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as exc:
        raise ConfigError(f"--config {path}: not valid {'JSON' if path.suffix == '.json' else 'YAML'} "
                          f"({str(exc).splitlines()[0]})") from None
    if data is None:
        return {}
    if not isinstance(data, Mapping):
        raise ConfigError(f"--config {path}: expected a mapping of settings, got {type(data).__name__}")
    return dict(data)


def config_from_args(args: argparse.Namespace, **overrides) -> TrainConfig:
    """TrainConfig from parsed arguments: defaults, then ``--config FILE``, then the flags, then ``overrides``."""
    given = dict(vars(args))
    values: dict = {}
    if given.get("config"):
        values = TrainConfig.from_dict(load_config_file(given["config"]), source=str(given["config"])).to_dict()
    weights = dict(values.pop("loss_weights", None) or {})
    for opt in cli_options():
        if opt.dest in given:
            if len(opt.path) == 2:
                weights[opt.path[1]] = given[opt.dest]
            else:
                values[opt.dest] = given[opt.dest]
    if weights:
        values["loss_weights"] = weights
    values.update(overrides)
    return TrainConfig.from_dict(values)


def config_to_yaml(config: TrainConfig, comment: str = "") -> str:
    """The config as YAML (loadable with ``--config``), optionally preceded by ``# comment`` lines."""
    import yaml

    head = "".join(f"# {line}\n" for line in comment.splitlines())
    return head + yaml.safe_dump(config.to_dict(), sort_keys=False, default_flow_style=False)


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
