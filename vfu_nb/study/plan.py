"""What a study trains: the plan file, its runs and their keys, and the tuning that chooses each model's setting.

``PLAN`` (a YAML file such as ``results/plan.yaml``) says what to train. A study runs in four parts:

1. **tuning** -- every model gets the same grid (learning rate x backbone) with one seed; the setting with
   the best **val** score (:func:`selection_score` at the best val epoch) is chosen per model
   (:func:`choose_settings`). A plan with ``tuning.extend`` widens a model's learning-rate grid while its best
   rate lies on an edge (:func:`tuning_lrs`);
2. **seeds** -- each model with its chosen setting and several seeds (paired initialisation: the same seed
   gives the same weights to the parts two models share, see :mod:`vfu_nb.models`), and the negative control
   seed by seed with them;
3. **learning curve** -- the same at fractions of the training split (same val and test images);
4. **dial** -- the same on a benchmark built with another geometry-informativeness setting.

A run is keyed by what varies (``<data>/<model>/<backbone>_lr<lr>_f<fraction>/seed<s>``, :func:`run_key`), so
the tuning run of the chosen setting is also the seed-0 run of the study, and the 100 % point of the learning
curve reuses the study's runs. A run is finished once its export exists (:func:`exported`); :func:`pending` lists
the others in training order: the tuning first, then the seed and control runs seed by seed (of the models whose
tuning is complete), then the learning curve and the dial. :func:`config_differences` compares a run's recorded
``config.json`` with what the plan asks for (drift after an edit, reuse of another study's runs).
"""

from __future__ import annotations

import functools
import itertools
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

from vfu_nb.paths import checkout_of, relative, repo_root
from vfu_nb.training.config import PATH_FIELDS
from vfu_nb.training.runs import converged
from vfu_nb.study import store

REPO = repo_root()
DEFAULT_PLAN = REPO / "results" / "plan.yaml"


@dataclass(frozen=True)
class RunSpec:
    """One training run of the plan: where it goes and the TrainConfig fields that make it."""

    key: str
    part: str            # tuning | seeds | learning_curve | dial
    data: str            # data tag of the plan
    config: dict

    @property
    def model(self) -> str:
        return self.config["model"]

    @property
    def seed(self) -> int:
        return int(self.config["seed"])


def run_key(data: str, model: str, backbone: str, lr: float, fraction: float, seed: int) -> str:
    return f"{data}/{model}/{backbone}_lr{lr:g}_f{fraction:g}/seed{seed}"


@dataclass
class Plan:
    """The parsed plan file (YAML); paths are relative to the repository root unless absolute."""

    data: dict                      # tag -> {"root", "n", "seed", generator options...}
    base: dict                      # TrainConfig fields shared by every run (``recipe: FILE`` expanded)
    tuning: dict                    # {"data", "models", "grid": {"lr": [...], "backbone": [...]}, "seed"}
    seeds: dict                     # {"data", "models": {model: n_seeds}, "pairs": [[a, b], ...]}
    learning_curve: dict = field(default_factory=dict)   # {"data", "models", "fractions", "seeds"}
    dial: dict = field(default_factory=dict)             # {"data", "models", "seeds"}
    control: dict = field(default_factory=dict)          # {"data", "models", "seeds", "first", "pairs"}
    preregistration: dict = field(default_factory=dict)  # hypotheses, family, decision rule, margins (study 2)
    changelog: list = field(default_factory=list)        # changes after the first run, with the verdicts they changed
    reuse: list = field(default_factory=list)            # results folders whose matching runs are imported
    results: str = "results"
    runs: str = "runs/study"
    figures: str = "figures"
    bootstrap: int = 1000
    readme: bool = False           # the report rewrites the README's results block (the committed study only)
    slurm: dict = field(default_factory=dict)   # --executor slurm: vfu_nb.study.slurm.SlurmSettings (partition, ...)
    path: Optional[Path] = None

    @classmethod
    def load(cls, source) -> "Plan":
        """A Plan from a YAML/JSON file or a dict (unknown top-level keys are refused)."""
        if isinstance(source, Plan):
            return source
        path = None
        if not isinstance(source, dict):
            import yaml

            path = Path(source)
            source = yaml.safe_load(path.read_text())
            _warn_other_checkout(path)
        known = set(cls.__dataclass_fields__) - {"path"}
        unknown = set(source) - known
        if unknown:
            raise ValueError(f"{path or 'plan'}: unknown keys {sorted(unknown)}; allowed: {sorted(known)}")
        if "recipe" in (source.get("base") or {}):
            from vfu_nb.training.config import with_recipe

            source = {**source, "base": with_recipe(source["base"], f"{path or 'plan'}: base")}
        return cls(**source, path=path)

    def resolve(self, p) -> Path:
        p = Path(p)
        return p if p.is_absolute() else REPO / p

    @property
    def results_dir(self) -> Path:
        return self.resolve(self.results)

    @property
    def runs_dir(self) -> Path:
        return self.resolve(self.runs)

    def data_root(self, tag: str) -> Path:
        return self.resolve(self.data[tag]["root"])

    def run_dir(self, key: str) -> Path:
        """Where run ``key`` trains (checkpoints, logs): ``<runs>/<key>``."""
        return self.runs_dir / key

    def export_dir(self, key: str) -> Path:
        """Where run ``key``'s export lives: ``<results>/runs/<key>`` (:func:`vfu_nb.study.store.export_dir`)."""
        return store.export_dir(self.results_dir, key)

    def labels_path(self, tag: str) -> Path:
        """The test labels of data tree ``tag``, shared by its runs' exports (:func:`vfu_nb.study.store.labels_path`)."""
        return store.labels_path(self.results_dir, tag)

    def spec(self, part: str, data: str, model: str, setting: dict, seed: int, fraction: float = 1.0) -> RunSpec:
        config = {**self.base, **setting, "model": model, "seed": int(seed), "train_fraction": float(fraction),
                  "data_root": str(self.data_root(data))}
        key = run_key(data, model, config.get("backbone", "vgg16"), float(config["lr"]), fraction, seed)
        return RunSpec(key, part, data, config)

    def tuning_specs(self, lrs: Optional[dict] = None) -> list[RunSpec]:
        """The tuning runs: every model on the grid, at the tuning seed. ``lrs`` (model -> learning rates) replaces
        the grid's learning rates for a model (the grid extended by :func:`tuning_lrs`)."""
        grid = self.tuning["grid"]
        names = sorted(grid)
        specs = []
        for model in self.tuning["models"]:
            values = {**grid, **({"lr": lrs[model]} if lrs and model in lrs else {})}
            specs += [self.spec("tuning", self.tuning["data"], model, dict(zip(names, combo)), self.tuning_seed)
                      for combo in itertools.product(*(values[n] for n in names))]
        return specs

    @property
    def tuning_seed(self) -> int:
        return int(self.tuning.get("seed", 0))

    def seed_range(self, part: dict, n=None) -> range:
        """The seeds of a part: ``first`` (default 0) .. ``first + n - 1`` with ``n`` its ``seeds`` count."""
        first = int(part.get("first", 0))
        return range(first, first + int(part["seeds"] if n is None else n))

    def later_specs(self, chosen: dict) -> list[RunSpec]:
        """Seed, control, learning-curve and dial runs of the models in ``chosen`` (model -> chosen setting).
        Seed and control runs go seed by seed, so that pairs and the control complete together."""
        counts = {m: int(n) for m, n in self.seeds["models"].items() if m in chosen}
        ctl = self.control
        ctl_seeds = self.seed_range(ctl) if ctl else range(0)
        specs = []
        for s in sorted({*(s for n in counts.values() for s in self.seed_range(self.seeds, n)), *ctl_seeds}):
            specs += [self.spec("seeds", self.seeds["data"], m, chosen[m], s)
                      for m, n in counts.items() if s in self.seed_range(self.seeds, n)]
            if s in ctl_seeds:
                specs += [self.spec("control", ctl["data"], m, chosen[m], s) for m in ctl["models"] if m in chosen]
        lc = self.learning_curve
        specs += [self.spec("learning_curve", lc["data"], m, chosen[m], s, f)
                  for f in lc.get("fractions", ()) for m in lc["models"] if m in chosen
                  for s in self.seed_range(lc)]
        dial = self.dial
        specs += [self.spec("dial", dial["data"], m, chosen[m], s)
                  for m in dial.get("models", ()) if m in chosen for s in self.seed_range(dial)]
        return _unique(specs)

    def data_tags(self) -> list[str]:
        """The data trees the plan trains on."""
        parts = (self.tuning, self.seeds, self.learning_curve, self.dial, self.control)
        return sorted({part["data"] for part in parts if part})

    def all_specs(self, chosen: dict, lrs: Optional[dict] = None) -> list[RunSpec]:
        """Every run of the plan given the ``chosen`` settings (and the tuning grids ``lrs`` extended by
        :func:`tuning_lrs`), once per key: tuning, then the later runs."""
        return _unique([*self.tuning_specs(lrs), *self.later_specs(chosen)])


def _unique(specs: list[RunSpec]) -> list[RunSpec]:
    """The first spec of each key, in order (a key shared by two parts is one run)."""
    first = {}
    for spec in specs:
        first.setdefault(spec.key, spec)
    return list(first.values())


@functools.lru_cache(maxsize=None)
def _warn_other_checkout(path: Path) -> None:
    """Warn (once per plan file) when the plan lies in another checkout than this package's (a second git
    worktree, say): its relative paths are read against this package's checkout, not the plan's."""
    other = checkout_of(path)
    if other is not None and other != REPO:
        warnings.warn(f"{path} lies in the checkout {other}, but this vfu_nb is {REPO}'s: the plan's relative paths "
                      f"(runs, results, data) are read against {REPO}. Run that checkout's own code instead "
                      f"(cd {other} && python -m vfu_nb.study ...).", stacklevel=3)


def portable_config(config: dict) -> dict:
    """A run's config.json with the paths inside the repository made relative to it (results/ is shared)."""
    return {k: relative(v, REPO) if k in ("run_dir", *PATH_FIELDS) and isinstance(v, str) else v
            for k, v in config.items()}


def exported(plan: Plan, key: str) -> Optional[dict]:
    """The exported metrics.json of run ``key``, or None when it has not finished yet."""
    return store.read_metrics(plan.results_dir, key)      # a damaged file: one line naming it and the way out


def selection_score(metrics: dict, score: Optional[Sequence[str]] = None) -> float:
    """The val score a setting is chosen by, at the run's best val epoch: the mean of the ``score`` metrics (the
    plan's ``tuning.score``), or the run's own selection metric when the plan names none; nan when missing."""
    val = metrics.get("val") or {}
    values = [val.get(name) for name in (score or [metrics.get("select_metric", "category_top3")])]
    return float("nan") if any(v is None for v in values) else sum(float(v) for v in values) / len(values)


def _tuning_table(plan: Plan, specs: Sequence[RunSpec], partial: bool) -> tuple[dict, list, set]:
    """Over the tuning runs ``specs``: per model the best (setting, score), one row per finished run, and the
    models with an unfinished run (RuntimeError on the first one unless ``partial``). Ties go to the first
    setting in grid order."""
    best, rows, unfinished = {}, [], set()
    for spec in specs:
        m = exported(plan, spec.key)
        if m is None:
            if not partial:
                raise RuntimeError(f"tuning run {spec.key} has not finished")
            unfinished.add(spec.model)
            continue
        setting = {k: spec.config[k] for k in plan.tuning["grid"]}
        score = selection_score(m, plan.tuning.get("score"))
        rows.append({"model": spec.model, **setting, "val_score": score, "best_epoch": m.get("best_epoch"),
                     "epochs_run": m.get("epochs_run"), "converged": converged(m), "failed": m.get("failed")})
        if spec.model not in best or (math.isfinite(score) and not score <= best[spec.model][1]):
            best[spec.model] = (setting, score)
    return best, rows, unfinished


def tuning_lrs(plan: Plan) -> dict:
    """Per model, the learning rates to tune when the plan declares ``tuning.extend: {factor, max}``: the grid's,
    extended while the model's tuning has finished and its best setting has the smallest (largest) rate, by that
    rate divided (multiplied) by ``factor``, at most ``max`` times. {} without ``extend`` (the plan's grid)."""
    extend = plan.tuning.get("extend")
    if not extend:
        return {}
    out = {}
    for model in plan.tuning["models"]:
        lrs = sorted(float(v) for v in plan.tuning["grid"]["lr"])
        for _ in range(int(extend["max"])):
            specs = [s for s in plan.tuning_specs({model: lrs}) if s.model == model]
            best, _, unfinished = _tuning_table(plan, specs, partial=True)
            if unfinished or model not in best:
                break
            lr = best[model][0]["lr"]
            if lr == lrs[-1]:
                lrs.append(lr * float(extend["factor"]))
            elif lr == lrs[0]:
                lrs.insert(0, lr / float(extend["factor"]))
            else:
                break
        out[model] = lrs
    return out


def choose_settings(plan: Plan, partial: bool = False) -> tuple[dict, list]:
    """Per model, the tuning setting with the best val score (:func:`selection_score`, over the grid extended by
    :func:`tuning_lrs`); also the tuning table (one row per finished run).

    Raises RuntimeError while a tuning run is unfinished; with ``partial``, models whose tuning is unfinished
    are left out of the choice instead. Ties go to the first setting in grid order.
    """
    best, rows, unfinished = _tuning_table(plan, plan.tuning_specs(tuning_lrs(plan)), partial)
    return {m: s for m, (s, _) in best.items() if m not in unfinished}, rows


PART_ORDER = ("tuning", "seeds", "learning_curve", "dial")   # the order in which pending runs are trained


def _part_rank(spec: RunSpec) -> int:
    """Control runs go with the seed runs (seed by seed, as :meth:`Plan.later_specs` lists them)."""
    return PART_ORDER.index("seeds" if spec.part == "control" else spec.part)


def pending(plan: Plan) -> list[RunSpec]:
    """The runs still to train, in training order: the tuning first (a contrast needs the chosen setting of each of
    its models, so seeds of one tuned model alone pair with nothing), then seed (and control) runs of the models
    whose tuning is complete, seed by seed, then the learning curve and the dial."""
    chosen, _ = choose_settings(plan, partial=True)
    specs = [s for s in plan.all_specs(chosen, tuning_lrs(plan)) if exported(plan, s.key) is None]
    return sorted(specs, key=_part_rank)


def planned_runs(plan: Plan) -> int:
    """How many runs the whole plan trains: the tuning grid as extended so far (:func:`tuning_lrs`), and the later
    runs (whose count does not depend on which settings tuning chooses)."""
    any_setting = {m: {k: v[0] for k, v in plan.tuning["grid"].items()} for m in
                   {*plan.tuning["models"], *plan.seeds["models"], *plan.learning_curve.get("models", ()),
                    *plan.dial.get("models", ()), *plan.control.get("models", ())}}
    return len({s.key for s in [*plan.tuning_specs(tuning_lrs(plan)), *plan.later_specs(any_setting)]})


def config_differences(recorded: dict, spec: RunSpec) -> list[tuple]:
    """``(setting, recorded value, planned value)`` for each setting ``spec`` plans that the run config
    ``recorded`` (a ``config.json``) holds otherwise. Settings ``recorded`` lacks count as their
    :class:`~vfu_nb.training.config.TrainConfig` defaults; paths inside the repository compare relative to it."""
    from vfu_nb.training.config import TrainConfig

    full = portable_config({**TrainConfig().to_dict(), **recorded})
    return [(k, full.get(k), v) for k, v in portable_config(spec.config).items() if full.get(k) != v]


def drifted_runs(plan: Plan, chosen: Optional[dict] = None) -> list:
    """``"<key>: <field> <recorded> -> <planned>"`` for each exported run whose ``config.json`` differs from what
    the plan asks for now (:func:`config_differences`; a plan edited after its runs finished). The report warns;
    retraining such runs is the user's call."""
    if chosen is None:
        chosen, _ = choose_settings(plan, partial=True)
    out = []
    for spec in plan.all_specs(chosen, tuning_lrs(plan)):
        if not (plan.export_dir(spec.key) / "config.json").exists():
            continue
        recorded = store.read_run_json(plan.results_dir, spec.key, "config.json")
        out += [f"{spec.key}: {k} {old!r} -> {new!r}" for k, old, new in config_differences(recorded, spec)]
    return out


def smoke_plan(out, data_root="data/synthetic") -> dict:
    """A plan of seconds per run (32 px, width 0.125, 32 images per split, 1 epoch) that exercises every part."""
    out = Path(out)
    return {"data": {"default": {"root": str(data_root), "synthetic": False}},
            "base": {"image_size": 32, "width": 0.125, "batch_size": 8, "epochs": 1, "max_items": 32,
                     "device": "cpu"},
            "tuning": {"data": "default", "models": ["mtl", "cat"], "grid": {"lr": [1e-3], "backbone": ["vgg16_bn"]}},
            "seeds": {"data": "default", "models": {"mtl": 2, "cat": 2}, "pairs": [["mtl", "cat"]]},
            "learning_curve": {"data": "default", "models": ["mtl", "cat"], "fractions": [0.5, 1.0], "seeds": 2,
                               "pairs": [["mtl", "cat"]]},
            "results": str(out / "results"), "runs": str(out / "runs"), "figures": str(out / "figures"),
            "bootstrap": 100}

