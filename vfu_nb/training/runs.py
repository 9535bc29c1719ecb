"""Using run directories: train or resume them, find them, load their models and predict with them.

A run directory is what :func:`vfu_nb.training.loop.train` writes; :class:`vfu_nb.training.rundir.RunDir` names
and reads its files (``config.json``, ``history.json``, ``metrics.json``, ``checkpoints/{last,best}.pt``).
Notebooks, widgets and the study use this module:

* :func:`ensure_run` -- train a run, resume it from ``checkpoints/last.pt`` (a killed kernel or a restarted
  pipeline continues where it stopped; a finished run is read back in seconds), refuse a folder that holds a run
  with another configuration; :func:`train_settings` picks the training settings out of a notebook's variables;
* :func:`locate_runs` -- the runs a notebook shows: the ones it is given, else the pipeline's ``make run`` runs,
  else small smoke runs (trained on the spot), saying which in one line;
* :func:`load_run`, :func:`load_model`, :func:`find_runs` -- config, history and metrics; the network of
  ``best.pt`` (the best **val** epoch); the run directories under a folder;
* :func:`predict` -- outputs over a split with the ground truth beside them, at the precision the run trained
  with; :func:`metrics_tolerance` -- how closely they reproduce ``metrics.json``;
* :func:`predict_one` -- one image through a model (widgets), :func:`landmark_errors` -- per-image landmark error.
* :func:`select_cases` -- the best and worst images of a split by category confidence or landmark error.

Relative paths are taken from the repository root (:func:`vfu_nb.paths.resolve`). The data set of a run is
rebuilt from its ``config.json`` (``data_root``, ``image_size``, ``max_items``, ``data_seed``), so predictions
cover exactly the images the run was evaluated on.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from vfu_nb.paths import resolve
from vfu_nb.training.rundir import RunDir, RunMismatchError, load_checkpoint, precision

#: Where the pipeline's training notebook puts the run of ``model`` (relative to the repository root).
PIPELINE_RUN = "runs/{profile}/02_train_{model}/run"


# ----------------------------------------------------------------------------------------------------------
# Training


def train_settings(namespace: Mapping) -> dict:
    """The training settings among the names of ``namespace`` (a notebook's ``globals()``), then those of its
    ``settings`` mapping (which win).

    The training notebook passes its parameters through this, so a new TrainConfig field needs no notebook edit:
    ``-p NAME VALUE`` (the pipeline puts it in ``settings``) or ``-y 'settings: {NAME: VALUE}'`` (papermill)
    reaches the trainer. A name in ``settings`` that is not a TrainConfig field is refused.
    """
    from vfu_nb.training.config import training_setting_names

    names = training_setting_names()
    extra = dict(namespace.get("settings") or {})
    unknown = sorted(set(extra) - set(names))
    if unknown:
        raise ValueError(f"settings: {unknown} are not TrainConfig fields (vfu_nb.training.config; "
                         f"python -m vfu_nb.training --help lists them)")
    found = {name: namespace[name] for name in sorted(names) if name in namespace}
    return {**found, **extra}


def ensure_run(run_dir, model: str = "mtl", *, data_root="data/synthetic", progress: bool = False, **config) -> dict:
    """Train ``model`` into ``run_dir``, resuming a partial run; return its metrics.json content.

    ``config`` holds any :class:`vfu_nb.training.config.TrainConfig` field (``epochs``, ``batch_size``, ``lr``,
    ``image_size``, ``width``, ``max_items``, ``seed``, ``device`` ...). ``data_root`` is stored as an absolute
    path so the run can be reloaded from anywhere. A run directory whose ``config.json`` differs in anything but
    :data:`vfu_nb.training.config.RESUME_SAFE_FIELDS` raises :class:`RunMismatchError` (the trainer's own rule,
    :meth:`RunDir.check_resume`); raising ``epochs`` continues a finished run.
    """
    from vfu_nb.training.config import TrainConfig
    from vfu_nb.training.loop import train

    run = RunDir(resolve(run_dir))
    cfg = TrainConfig.from_dict({**config, "model": model, "data_root": str(resolve(data_root)),
                                 "run_dir": str(run.path), "resume": True, "progress": progress})
    if run.has_config():
        run.check_resume(cfg)
        check_compatible(run.path)
        if run.is_finished(cfg.epochs) and run.checkpoint("best").exists():
            metrics = run.metrics()
            print(f"{run}: finished run found ({metrics['epochs_run']} epochs), not retrained", flush=True)
            return metrics
    return train(cfg)


def check_compatible(run_dir) -> None:
    """Raise :class:`RunMismatchError` when the run's checkpoint does not fit the current model code (its tensors'
    names or shapes differ from what :mod:`vfu_nb.models` builds for its settings): such a run cannot be resumed or
    evaluated."""
    run_dir = resolve(run_dir)
    path = RunDir(run_dir).checkpoint("last")
    if not path.exists():
        return
    ck = load_checkpoint(path)
    model = _build(run_dir, ck)
    want = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    have = {k: tuple(v.shape) for k, v in ck["model"].items()}
    if want != have:
        diff = sorted(k for k in set(want) | set(have) if want.get(k) != have.get(k))
        raise RunMismatchError(f"{run_dir} was trained with another version of the model code ({len(diff)} tensors "
                               f"differ, e.g. {diff[0]}); delete that folder (make clean-runs) to retrain it")


# ----------------------------------------------------------------------------------------------------------
# Finding runs


def locate_runs(given: Mapping[str, str], profile: str = "default") -> dict:
    """The run directory to show for each model of ``given`` (``{"mtl": mtl_run, "cat": cat_run}``).

    A non-empty entry is used as it is (it must hold a finished run). An empty one means: the pipeline's run of
    that model under ``runs/<profile>/`` (what ``make run`` trains) when it is finished and fits the current
    model code; else a smoke run under ``runs/smoke/``, trained here in seconds with the smoke profile's
    settings when missing. One line printed first says which runs these are, so a notebook showing smoke runs
    says so before anything else. Returns ``{model: run directory}``.
    """
    chosen, fallback, notes = {}, [], []
    for model, run_dir in given.items():
        if run_dir:
            chosen[model] = _finished(run_dir)
            notes.append(f"{model.upper()} {chosen[model]}")
            continue
        candidate = resolve(PIPELINE_RUN.format(profile=profile, model=model))
        problem = "no finished run" if not RunDir(candidate).is_finished() else _incompatibility(candidate)
        if problem is None:
            chosen[model] = candidate
            notes.append(f"{model.upper()} {candidate} (`make run`)")
        else:
            fallback.append((model, problem))
    if fallback:
        names = " and ".join(m.upper() for m, _ in fallback)
        reasons = "; ".join(f"{m.upper()}: {why}" for m, why in fallback)
        print(f"SMOKE RUNS: no `make run` run of {names} to show (runs/{profile}/: {reasons}), so tiny smoke runs "
              f"from runs/smoke/ are shown; their numbers say nothing about the thesis' question. Run `make run` "
              f"first, or pass the run directories." + (f" Given: {'; '.join(notes)}." if notes else ""), flush=True)
        for model, _ in fallback:
            chosen[model] = smoke_run(model)
    else:
        print("Runs: " + "; ".join(notes), flush=True)
    return {model: chosen[model] for model in given}


def _finished(run_dir) -> Path:
    run_dir = resolve(run_dir)
    if not RunDir(run_dir).is_finished():
        raise FileNotFoundError(f"{run_dir} has no finished run (no metrics.json); run its training notebook first "
                                "or leave the parameter empty")
    check_compatible(run_dir)
    return run_dir


def _incompatibility(run_dir: Path) -> Optional[str]:
    try:
        check_compatible(run_dir)
    except RunMismatchError:
        return "a run trained with another version of the model code (make clean-runs)"
    return None


def smoke_run(model: str) -> Path:
    """``runs/smoke/02_train_<model>/run``, trained first when missing, exactly as the smoke profile trains it."""
    from vfu_nb import pipeline

    params = pipeline.parameters("smoke", f"02_train_{model}", defaults=True)
    run_dir = resolve(params["out_dir"]) / "run"
    ensure_run(run_dir, **train_settings(params))
    return run_dir


def find_runs(root) -> dict:
    """Run directories under ``root`` (itself included) that hold ``config.json`` and a checkpoint.

    Returns ``{model name: run dir}``, the first run (in sorted path order) of each model name.
    """
    root = resolve(root)
    found: dict = {}
    for path in [root] + sorted(p.parent for p in root.rglob(RunDir(root).config_file.name)):
        run = RunDir(path)
        if not run.has_config() or not (run.checkpoint("best").exists() or run.checkpoint("last").exists()):
            continue
        try:
            name = run.read_config().get("model")
        except (OSError, ValueError):
            continue
        if name and name not in found:
            found[name] = path
    return found


# ----------------------------------------------------------------------------------------------------------
# Reading runs


@dataclass
class Run:
    """A finished run directory, read back."""

    run_dir: Path
    config: dict
    history: dict
    metrics: dict

    @property
    def model(self) -> str:
        return self.config["model"]

    @property
    def best_epoch(self) -> Optional[int]:
        return self.metrics.get("best_epoch")


def converged(metrics: Mapping) -> bool:
    """False when a run's best val epoch is its last epoch and no early stop ended it (it was still improving)."""
    return bool(metrics.get("early_stopped")) or metrics.get("best_epoch") != metrics.get("epochs_run")


def selection_note(metrics: Mapping) -> str:
    """"best val epoch 7 of 11", with ", not converged" when :func:`converged` is False (a run's metrics.json)."""
    note = f"best val epoch {metrics.get('best_epoch')} of {metrics.get('epochs_run')}"
    return note if converged(metrics) else note + ", not converged"


def load_run(run_dir) -> Run:
    """Config, history and metrics of the finished run in ``run_dir``."""
    run = RunDir(resolve(run_dir))
    return Run(run.path, run.read_config(), run.history(), run.metrics())


def dataset_for(run_dir, split: str = "test", uint8: bool = True):
    """The ``split`` data set of the run (same root, image size, ``max_items`` subset and cache)."""
    from vfu_nb.training.builders import make_dataset

    return make_dataset(RunDir(resolve(run_dir)).train_config()[0], split, uint8=uint8)


def _build(run_dir: Path, checkpoint: dict) -> torch.nn.Module:
    """The run's network for the checkpoint's vocabulary, with initial weights (the checkpoint's go over them)."""
    from vfu_nb.training.builders import make_model

    return make_model(RunDir(run_dir).train_config()[0], int(checkpoint["num_categories"]),
                      int(checkpoint["num_attributes"]), pretrained=False)


def load_model(run_dir, which: str = "best", device: str = "cpu") -> torch.nn.Module:
    """The network of ``run_dir`` with ``checkpoints/<which>.pt`` loaded, in eval mode on ``device``.

    ``which="best"``: the best val epoch (``last.pt`` when a run has no ``best.pt``). ``device``: "cpu",
    "cuda", "auto" (CUDA when available) ... The checkpoint's epoch is in ``model.checkpoint_epoch``.
    """
    from vfu_nb.training.runtime import resolve_device

    run_dir = resolve(run_dir)
    path = RunDir(run_dir).model_checkpoint(which)
    device = resolve_device(str(device))
    ck = load_checkpoint(path, map_location=device)
    model = _build(run_dir, ck)
    model.load_state_dict(ck["model"])
    model.checkpoint_epoch = int(ck["epoch"])
    return model.to(device).eval()


# ----------------------------------------------------------------------------------------------------------
# Predictions over a split


def landmark_errors(predicted, landmarks, visibility) -> np.ndarray:
    """Landmark error of every image alone: :func:`vfu_nb.metrics.landmark_normalized_error` over one image.

    That is the mean distance in crop units over the image's visible landmarks (visibility code 0); nan for an
    image without one, and for every image when ``predicted`` is None (a model without landmark branch).
    Shapes: (N, 8, 2), (N, 8, 2), (N, 8); returns (N,).
    """
    from vfu_nb.metrics import landmark_normalized_error

    visible = np.asarray(visibility) == 0
    if predicted is None:
        return np.full(len(visible), np.nan)
    predicted, landmarks = np.asarray(predicted, np.float64), np.asarray(landmarks, np.float64)
    return np.array([landmark_normalized_error(predicted[i:i + 1], landmarks[i:i + 1], visible[i:i + 1])["mean"]
                     for i in range(len(visible))], dtype=np.float64)


@dataclass
class Predictions:
    """Outputs of one model over one split, as numpy arrays (N = images, in data-set order)."""

    model: str
    split: str
    epoch: int
    index: np.ndarray               # (N,) row in the annotations
    category: np.ndarray            # (N,) true category
    category_logits: np.ndarray     # (N, C)
    attributes: np.ndarray          # (N, A) 0/1 targets
    attribute_scores: np.ndarray    # (N, A) logits
    attribute_types: np.ndarray     # (A,) 1..5
    landmarks: np.ndarray           # (N, 8, 2) ground truth, crop units
    visibility: np.ndarray          # (N, 8) codes (0 visible)
    landmarks_pred: Optional[np.ndarray] = None    # (N, 8, 2) decoded, None for "cat"
    maps: dict = field(default_factory=dict)       # dataset position -> {"heatmaps", "attention", "features"}
    attributes_known: Optional[np.ndarray] = None  # (N, A) False where the label is unknown (file value 0)

    @property
    def category_prob(self) -> np.ndarray:
        """Softmax probability of the true category, per image."""
        z = self.category_logits - self.category_logits.max(axis=1, keepdims=True)
        p = np.exp(z)
        p /= p.sum(axis=1, keepdims=True)
        return p[np.arange(len(p)), self.category]

    @property
    def landmark_error(self) -> np.ndarray:
        """Per-image landmark error (:func:`landmark_errors`); all nan for a model without landmark branch."""
        return landmark_errors(self.landmarks_pred, self.landmarks, self.visibility)

    def metrics(self) -> dict:
        """The metrics of :class:`vfu_nb.metrics.EvalAccumulator` recomputed from these predictions."""
        from vfu_nb.metrics import EvalAccumulator

        acc = EvalAccumulator(self.attribute_types)
        with_landmarks = self.landmarks_pred is not None
        acc.update(self.category_logits, self.category, self.attribute_scores, self.attributes,
                   self.landmarks_pred, self.landmarks if with_landmarks else None,
                   self.visibility if with_landmarks else None, attributes_known=self.attributes_known)
        return acc.compute()


def check_vocabulary(model: torch.nn.Module, annotations, run_dir, data_root) -> None:
    """Raise a ValueError naming both when the run's heads do not match the tree's vocabulary (a regenerated tree)."""
    heads = {"categories": model.config.num_categories, "attributes": model.config.num_attributes}
    tree = {"categories": len(annotations.category_names), "attributes": len(annotations.attribute_names)}
    if heads != tree:
        raise ValueError(f"{run_dir} was trained for {heads['categories']} categories and {heads['attributes']} "
                         f"attributes, but {data_root} now has {tree['categories']} and {tree['attributes']}: the "
                         f"tree changed since this run (regenerated?); retrain, or move the run away")


@torch.no_grad()
def predict(run_dir, split: str = "test", which: str = "best", device: str = "cpu", batch_size: Optional[int] = None,
            keep_maps: Sequence[int] = (), model: Optional[torch.nn.Module] = None) -> Predictions:
    """Run the ``which`` checkpoint of ``run_dir`` over ``split``; keep the maps of dataset positions ``keep_maps``.

    As the trainer evaluated: bf16 autocast and channels_last when the run's ``config.json`` records them
    (:meth:`RunDir.precision`); batches of ``batch_size``, else the run's own ``eval_batch_size`` setting, else
    4 x its training batch (not the trainer's per-device pick, which on a GPU can be too large for a CPU; batch size
    does not change eval-mode outputs beyond float rounding). Maps kept per
    image: ``heatmaps`` (8, S, S) raw, ``attention`` (channels, S/8, S/8) and ``features`` (channels, S/8, S/8)
    as float32 numpy arrays (missing keys for models without them).
    """
    from vfu_nb.models import decode_landmarks
    from vfu_nb.training.loop import forward_batches
    from vfu_nb.training.runtime import resolve_device

    run_dir = resolve(run_dir)
    config = RunDir(run_dir).read_config()
    mode = precision(config)
    device = resolve_device(str(device))
    model = model if model is not None else load_model(run_dir, which, device)
    if mode["channels_last"]:
        model = model.to(memory_format=torch.channels_last)
    batch_size = batch_size or config.get("eval_batch_size") or 4 * int(config.get("batch_size", 8))
    ds = dataset_for(run_dir, split)
    check_vocabulary(model, ds.annotations, run_dir, config["data_root"])
    keep = set(int(k) for k in keep_maps)
    parts: dict = {k: [] for k in ("index", "category", "category_logits", "attributes", "attributes_known",
                                   "attribute_scores", "landmarks", "visibility", "landmarks_pred")}
    maps: dict = {}
    loader = torch.utils.data.DataLoader(ds, batch_size=batch_size, shuffle=False, num_workers=0)
    pos = 0
    for batch, out in forward_batches(model, loader, device, **mode):
        heat = out.get("landmark_heatmaps")
        parts["index"].append(batch["index"].numpy())
        parts["category"].append(batch["category"].numpy())
        parts["category_logits"].append(out["category_logits"].float().cpu().numpy())
        parts["attributes"].append(batch["attributes"].numpy())
        parts["attributes_known"].append(batch["attributes_known"].numpy())
        parts["attribute_scores"].append(out["attribute_logits"].float().cpu().numpy())
        parts["landmarks"].append(batch["landmarks"].numpy())
        parts["visibility"].append(batch["landmark_visibility"].numpy())
        if heat is not None:
            parts["landmarks_pred"].append(decode_landmarks(heat).cpu().numpy())
        n = len(batch["category"])
        for j in range(n):
            if pos + j in keep:
                kept = {k: out[k][j].float().cpu().numpy() for k in ("landmark_heatmaps", "attention", "features")
                        if k in out}
                if "landmark_heatmaps" in kept:
                    kept["heatmaps"] = kept.pop("landmark_heatmaps")
                maps[pos + j] = kept
        pos += n
    cat = {k: (np.concatenate(v) if v else None) for k, v in parts.items()}
    return Predictions(model=getattr(model, "name", "?"), split=split, epoch=getattr(model, "checkpoint_epoch", -1),
                       index=cat["index"], category=cat["category"], category_logits=cat["category_logits"],
                       attributes=cat["attributes"], attribute_scores=cat["attribute_scores"],
                       attribute_types=np.asarray(ds.annotations.attribute_types),
                       landmarks=cat["landmarks"], visibility=cat["visibility"], landmarks_pred=cat["landmarks_pred"],
                       maps=maps, attributes_known=cat["attributes_known"])


def metrics_tolerance(run_dir, device: str = "cpu") -> float:
    """Absolute tolerance for metrics recomputed from :func:`predict` against the run's ``metrics.json``.

    0 on a CPU in fp32: the same weights, batches and accumulator give the same numbers. On CUDA, TF32 matrix
    products and cuDNN's algorithm choice change logits in their last bits (0.005), and bf16 autocast changes
    them more (0.02): either flips a few near-tied top-k ranks.
    """
    from vfu_nb.training.runtime import resolve_device

    if RunDir(resolve(run_dir)).precision()["bf16"]:
        return 0.02
    return 0.0 if resolve_device(str(device)).type == "cpu" else 0.005


def images_of(run_dir, positions: Sequence[int], split: str = "test") -> np.ndarray:
    """uint8 crops (n, S, S, 3) of dataset positions ``positions`` of the run's ``split`` (for overlays)."""
    ds = dataset_for(run_dir, split)
    return np.stack([ds[int(p)]["image"].permute(1, 2, 0).numpy() for p in positions])


def select_cases(predictions, by: str = "category_confidence", n: int = 4) -> dict:
    """Dataset positions of the ``n`` best and ``n`` worst images.

    ``by="category_confidence"``: softmax probability of the true category (best = highest).
    ``by="landmark_error"``: :func:`landmark_errors` (best = lowest; images without visible landmarks are left
    out). Ties keep data-set order. Returns ``{"best": [...], "worst": [...], "values": array}``.
    """
    if by == "category_confidence":
        values = predictions.category_prob
        order = np.argsort(-values, kind="stable")
    elif by == "landmark_error":
        values = landmark_errors(predictions.landmarks_pred, predictions.landmarks, predictions.visibility)
        order = np.argsort(values, kind="stable")          # nan last
    else:
        raise ValueError("by must be 'category_confidence' or 'landmark_error'")
    order = [int(i) for i in order if np.isfinite(values[i])]
    n = min(n, len(order))
    return {"best": order[:n], "worst": order[::-1][:n], "values": values}


def data_description(run_dir) -> str:
    """A short name of the run's data for sentences: "the synthetic benchmark (4000 images, 600 test)" etc."""
    c = RunDir(resolve(run_dir)).read_config()
    root = Path(c["data_root"])
    subset = f", max {c['max_items']} per split" if c.get("max_items") else ""
    marker = root / "synthetic.json"
    if marker.exists():
        info = json.loads(marker.read_text())
        return (f"the synthetic benchmark ({info.get('n')} images, {info.get('splits', {}).get('test')} test"
                f"{subset})")
    return f"the DeepFashion-C data in {root}" + (f" (max {c['max_items']} per split)" if c.get("max_items") else "")


# ----------------------------------------------------------------------------------------------------------
# One image


@dataclass
class Prediction:
    """What one model says about one crop (numpy, batch dimension removed).

    ``landmarks`` (L,2) crop units, ``heatmaps`` (L,S,S) raw, ``attention`` (S,S) = mean over channels of the
    attention output upsampled bilinearly to the input size; all three None for models without a landmark
    branch. ``feature_energy`` (S,S) = mean |conv4_3 features| upsampled: a class-agnostic map every model has.
    """

    category_probs: np.ndarray
    attribute_scores: np.ndarray
    feature_energy: np.ndarray
    landmarks: Optional[np.ndarray] = None
    heatmaps: Optional[np.ndarray] = None
    attention: Optional[np.ndarray] = None

    def heatmap(self, landmark: Optional[int] = None) -> Optional[np.ndarray]:
        """One landmark's heatmap, or (``None``) the maximum over all maps."""
        if self.heatmaps is None:
            return None
        return self.heatmaps.max(axis=0) if landmark is None else self.heatmaps[landmark]


def _upsample(maps: torch.Tensor, size: int) -> np.ndarray:
    """(1,h,w) -> (S,S) float32 numpy, bilinear (align_corners=False, the pixel-centre convention)."""
    return F.interpolate(maps[:, None].float(), size=(size, size), mode="bilinear",
                         align_corners=False)[0, 0].cpu().numpy()


def predict_one(model: torch.nn.Module, image: torch.Tensor) -> Prediction:
    """Run ``model`` on one normalised image (3,S,S) (or a batch of one) and decode its outputs.

    No gradients, eval mode (the model's previous mode is restored), fp32 on the device of the model's parameters.
    Landmarks are decoded with :func:`vfu_nb.models.decode_landmarks` (crop units).
    """
    from vfu_nb.models import decode_landmarks

    if image.dim() == 3:
        image = image[None]
    if image.dim() != 4 or image.shape[0] != 1:
        raise ValueError(f"predict_one takes one image (3,S,S), got {tuple(image.shape)}")
    from vfu_nb.training.loop import inference

    device = next(model.parameters()).device
    with inference(model):
        out = model(image.to(device=device, dtype=torch.float32))
    size = image.shape[-1]
    pred = Prediction(
        category_probs=torch.softmax(out["category_logits"].float(), dim=1)[0].cpu().numpy(),
        attribute_scores=torch.sigmoid(out["attribute_logits"].float())[0].cpu().numpy(),
        feature_energy=_upsample(out["features"].float().abs().mean(dim=1), size),
    )
    if "landmark_heatmaps" in out:
        heatmaps = out["landmark_heatmaps"].float()
        pred.heatmaps = heatmaps[0].cpu().numpy()
        pred.landmarks = decode_landmarks(heatmaps)[0].cpu().numpy()
    if "attention" in out:
        pred.attention = _upsample(out["attention"].float().mean(dim=1), size)
    return pred
