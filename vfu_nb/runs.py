"""Run directories as the notebooks use them: train-or-resume, load, rebuild the model, predict.

A run directory is what :func:`vfu_nb.train.train` writes: ``config.json``, ``history.json``, ``metrics.json``
and ``checkpoints/{last,best}.pt``. The notebooks never call ``train`` directly; they call

* :func:`ensure_run` -- train a run, resume it if ``checkpoints/last.pt`` exists (a killed kernel or a
  restarted pipeline continues where it stopped; a finished run re-executes in seconds), and refuse a run
  directory that holds a run with a different configuration;
* :func:`load_run` -- config, history and metrics of a finished run;
* :func:`load_model` -- the network of ``best.pt`` (the best **val** epoch) or ``last.pt``, in eval mode;
* :func:`predict` -- raw outputs of that network over a split (category logits, attribute scores, decoded
  landmarks, optionally the heatmaps and attention maps of a few images) with the ground truth beside them.

The data set of a run is rebuilt from its ``config.json`` (same ``data_root``, ``image_size``, ``max_items``,
``data_seed``), so predictions cover exactly the images the run was evaluated on.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

from vfu_nb.rundir import RunMismatchError, check_resume  # noqa: F401 (RunMismatchError re-exported)


def _read_json(path) -> dict:
    return json.loads(Path(path).read_text())


def is_finished(run_dir, epochs: Optional[int] = None) -> bool:
    """True when ``run_dir`` has a metrics.json (and, if given, at least ``epochs`` epochs or an early stop)."""
    mfile = Path(run_dir) / "metrics.json"
    if not mfile.exists():
        return False
    if epochs is None:
        return True
    m = _read_json(mfile)
    return bool(m.get("early_stopped")) or int(m.get("epochs_run") or 0) >= int(epochs)


def ensure_run(run_dir, model: str = "mtl", *, data_root: str = "../data/synthetic", progress: bool = False,
               **config) -> dict:
    """Train ``model`` into ``run_dir``, resuming a partial run; return its metrics.json content.

    ``config`` holds any :class:`vfu_nb.train.TrainConfig` field (``epochs``, ``batch_size``, ``lr``,
    ``image_size``, ``width``, ``max_items``, ``seed``, ``device`` ...). ``data_root`` is stored as an absolute
    path so the run can be reloaded from any working directory. A run directory whose ``config.json`` differs
    in anything but :data:`vfu_nb.train_config.RESUME_SAFE_FIELDS` raises :class:`RunMismatchError` (the
    trainer's own rule, :func:`vfu_nb.rundir.check_resume`); raising ``epochs`` continues a finished run.
    """
    from vfu_nb.train import TrainConfig, train

    run_dir = Path(run_dir)
    cfg = TrainConfig.from_dict({**config, "model": model, "data_root": str(Path(data_root).resolve()),
                                 "run_dir": str(run_dir), "resume": True, "progress": progress})
    if (run_dir / "config.json").exists():
        check_resume(run_dir, cfg)
        check_compatible(run_dir)
        if is_finished(run_dir, cfg.epochs) and (run_dir / "checkpoints" / "best.pt").exists():
            print(f"{run_dir}: finished run found ({_read_json(run_dir / 'metrics.json')['epochs_run']} epochs), "
                  f"not retrained", flush=True)
            return _read_json(run_dir / "metrics.json")
    return train(cfg)


def check_compatible(run_dir) -> None:
    """Raise :class:`RunMismatchError` when the run's checkpoint no longer fits the current model code.

    (A stored run trained before a change to :mod:`vfu_nb.models` cannot be resumed or evaluated.)
    """
    from vfu_nb.models import build_model
    from vfu_nb.train import load_checkpoint

    run_dir = Path(run_dir)
    path = run_dir / "checkpoints" / "last.pt"
    if not path.exists():
        return
    c = _read_json(run_dir / "config.json")
    ck = load_checkpoint(path)
    model = build_model(ck.get("model_name", c["model"]), int(ck["num_categories"]), int(ck["num_attributes"]), 8,
                        c["image_size"], c["width"], c.get("backbone", "vgg16"), pretrained=None)
    want = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    have = {k: tuple(v.shape) for k, v in ck["model"].items()}
    if want != have:
        diff = sorted(k for k in set(want) | set(have) if want.get(k) != have.get(k))
        raise RunMismatchError(f"{run_dir} was trained with another version of the model code ({len(diff)} tensors "
                               f"differ, e.g. {diff[0]}); delete that folder (make clean-runs) to retrain it")


def resolve_run(run_dir, model: str, fallback_dir, **smoke) -> Path:
    """``run_dir`` when given (it must hold a finished run), else a small run trained into ``fallback_dir``.

    This lets a downstream notebook run alone with its defaults (nbval executes each notebook in isolation):
    with ``run_dir=""`` it trains its own tiny ``model`` with the ``smoke`` settings.
    """
    if run_dir:
        run_dir = Path(run_dir)
        if not is_finished(run_dir):
            raise FileNotFoundError(f"{run_dir} has no finished run (no metrics.json); run its training notebook "
                                    f"first or leave the parameter empty to train a small one here")
        check_compatible(run_dir)
        return run_dir
    fallback_dir = Path(fallback_dir)
    print(f"no {model} run given: training a small one in {fallback_dir}", flush=True)
    ensure_run(fallback_dir, model, **smoke)
    return fallback_dir


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


def load_run(run_dir) -> Run:
    run_dir = Path(run_dir)
    return Run(run_dir, _read_json(run_dir / "config.json"), _read_json(run_dir / "history.json"),
               _read_json(run_dir / "metrics.json"))


def dataset_for(run_dir, split: str = "test", uint8: bool = True):
    """The ``split`` data set of the run (same root, image size, ``max_items`` subset and cache)."""
    from vfu_nb.data import DeepFashionC

    c = _read_json(Path(run_dir) / "config.json")
    return DeepFashionC(c["data_root"], split, c["image_size"], cache=True, uint8=uint8, cache_dir=c.get("cache_dir"),
                        pad_to_square=c.get("pad_to_square", False), max_items=c.get("max_items"),
                        subset_seed=c.get("data_seed", 0), progress=False)


def load_model(run_dir, which: str = "best", device: str = "cpu") -> torch.nn.Module:
    """Rebuild the network of ``run_dir`` and load ``checkpoints/<which>.pt`` (``best``: the best val epoch).

    ``device``: "cpu", "cuda", "auto" (CUDA when available) ...; the model is returned there, in eval mode.
    """
    from vfu_nb.models import build_model
    from vfu_nb.train import load_checkpoint, resolve_device

    device = resolve_device(str(device))
    run_dir = Path(run_dir)
    c = _read_json(run_dir / "config.json")
    ck = load_checkpoint(run_dir / "checkpoints" / f"{which}.pt", map_location=device)
    model = build_model(ck.get("model_name", c["model"]), int(ck["num_categories"]), int(ck["num_attributes"]), 8,
                        c["image_size"], c["width"], c.get("backbone", "vgg16"), pretrained=None)
    model.load_state_dict(ck["model"])
    model.checkpoint_epoch = int(ck["epoch"])
    return model.to(device).eval()


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

    @property
    def category_prob(self) -> np.ndarray:
        """Softmax probability of the true category, per image."""
        z = self.category_logits - self.category_logits.max(axis=1, keepdims=True)
        p = np.exp(z)
        p /= p.sum(axis=1, keepdims=True)
        return p[np.arange(len(p)), self.category]

    def metrics(self) -> dict:
        """The metrics of :class:`vfu_nb.metrics.EvalAccumulator` recomputed from these predictions."""
        from vfu_nb.metrics import EvalAccumulator

        acc = EvalAccumulator(self.attribute_types)
        acc.update(self.category_logits, self.category, self.attribute_scores, self.attributes,
                   self.landmarks_pred, self.landmarks if self.landmarks_pred is not None else None,
                   self.visibility if self.landmarks_pred is not None else None)
        return acc.compute()


@torch.no_grad()
def predict(run_dir, split: str = "test", which: str = "best", device: str = "cpu", batch_size: int = 64,
            keep_maps: Sequence[int] = (), model: Optional[torch.nn.Module] = None) -> Predictions:
    """Run the ``which`` checkpoint of ``run_dir`` over ``split``; keep the maps of dataset positions ``keep_maps``.

    Maps kept per image: ``heatmaps`` (8, S, S) raw, ``attention`` (channels, S/8, S/8) and ``features``
    (channels, S/8, S/8) as float32 numpy arrays (missing keys for models without them).
    """
    from vfu_nb.data import normalize_images
    from vfu_nb.models import decode_landmarks
    from vfu_nb.train import resolve_device

    device = resolve_device(str(device))
    model = model if model is not None else load_model(run_dir, which, device)
    ds = dataset_for(run_dir, split)
    keep = set(int(k) for k in keep_maps)
    parts: dict = {k: [] for k in ("index", "category", "category_logits", "attributes", "attribute_scores",
                                   "landmarks", "visibility", "landmarks_pred")}
    maps: dict = {}
    loader = torch.utils.data.DataLoader(ds, batch_size=batch_size, shuffle=False, num_workers=0)
    pos = 0
    for batch in loader:
        images = normalize_images(batch["image"].to(device))
        out = model(images)
        heat = out.get("landmark_heatmaps")
        parts["index"].append(batch["index"].numpy())
        parts["category"].append(batch["category"].numpy())
        parts["category_logits"].append(out["category_logits"].float().cpu().numpy())
        parts["attributes"].append(batch["attributes"].numpy())
        parts["attribute_scores"].append(out["attribute_logits"].float().cpu().numpy())
        parts["landmarks"].append(batch["landmarks"].numpy())
        parts["visibility"].append(batch["landmark_visibility"].numpy())
        if heat is not None:
            parts["landmarks_pred"].append(decode_landmarks(heat).cpu().numpy())
        n = len(batch["category"])
        for j in range(n):
            if pos + j in keep:
                maps[pos + j] = {k: out[k][j].float().cpu().numpy() for k in ("landmark_heatmaps", "attention",
                                                                             "features") if k in out}
                if "landmark_heatmaps" in maps[pos + j]:
                    maps[pos + j]["heatmaps"] = maps[pos + j].pop("landmark_heatmaps")
        pos += n
    cat = {k: (np.concatenate(v) if v else None) for k, v in parts.items()}
    return Predictions(model=getattr(model, "name", "?"), split=split, epoch=getattr(model, "checkpoint_epoch", -1),
                       index=cat["index"], category=cat["category"], category_logits=cat["category_logits"],
                       attributes=cat["attributes"], attribute_scores=cat["attribute_scores"],
                       attribute_types=np.asarray(ds.annotations.attribute_types),
                       landmarks=cat["landmarks"], visibility=cat["visibility"], landmarks_pred=cat["landmarks_pred"],
                       maps=maps)


def images_of(run_dir, positions: Sequence[int], split: str = "test") -> np.ndarray:
    """uint8 crops (n, S, S, 3) of dataset positions ``positions`` of the run's ``split`` (for overlays)."""
    ds = dataset_for(run_dir, split)
    return np.stack([ds[int(p)]["image"].permute(1, 2, 0).numpy() for p in positions])


def data_description(run_dir) -> str:
    """A short name of the run's data for sentences: "the synthetic benchmark (4000 images, 600 test)" etc."""
    c = _read_json(Path(run_dir) / "config.json")
    root = Path(c["data_root"])
    marker = root / "synthetic.json"
    subset = f", max {c['max_items']} per split" if c.get("max_items") else ""
    if marker.exists():
        info = _read_json(marker)
        return (f"the synthetic benchmark ({info.get('n')} images, {info.get('splits', {}).get('test')} test"
                f"{subset})")
    return f"the DeepFashion-C data in {root}" + (f" (max {c['max_items']} per split)" if c.get("max_items") else "")
