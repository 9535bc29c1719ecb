"""vfu_nb.training: config and CLI, run-directory safety, logs, exact resume, DDP, and the CUDA path on the CPU."""

from __future__ import annotations

import csv
import json
import math
import os
import random
import shutil
import signal
import sys

import numpy as np
import pytest
import torch

from train_helpers import read_json, run_cli, strip_timing, tiny_args
from vfu_nb.data.annotations import image_root, load_annotations
from vfu_nb.data.identity import tree_digest
from vfu_nb.losses import LossWeights, multitask_loss
from vfu_nb.training import builders, cli, loop
from vfu_nb.training.builders import EpochBatchSampler, train_subset
from vfu_nb.training.config import RESUME_SAFE_FIELDS, ConfigError, TrainConfig, config_differences, parse_config
from vfu_nb.training.loop import NonFiniteLossError, fit_optimizer_state, select_best, train, training_step
from vfu_nb.training.rundir import (
    CorruptCheckpointError, RunDir, RunExistsError, RunLock, RunLockedError, RunMismatchError, load_checkpoint,
)
from vfu_nb.training.runtime import get_rng_state, resolve_runtime, set_rng_state


def tiny_config(root, run_dir, **over) -> TrainConfig:
    base = dict(model="mtl", data_root=str(root), run_dir=str(run_dir), epochs=3, batch_size=8, image_size=32,
                width=0.125, max_items=40, num_workers=0, progress=False, seed=0, threads=1)
    base.update(over)
    return TrainConfig(**base)


def parse(argv) -> TrainConfig:
    return parse_config(argv)


# ---------------------------------------------------------------------------------------------------------
# pure helpers


def test_sampler_ranks_partition_the_single_process_batches():
    single = EpochBatchSampler(50, 8, seed=3)
    single.set_epoch(2)
    ranks = []
    for r in range(2):
        s = EpochBatchSampler(50, 4, seed=3, rank=r, world_size=2)
        s.set_epoch(2)
        ranks.append(list(s))
    full = list(single)
    assert len(full) == 7 and len(full[-1]) == 2            # 1 process keeps the last partial batch
    assert len(ranks[0]) == len(ranks[1]) == 6              # DDP drops the incomplete global batch
    for b, (r0, r1) in enumerate(zip(*ranks)):
        assert sorted(r0 + r1) == sorted(full[b]) and r0 == full[b][0::2] and r1 == full[b][1::2]
    # same (seed, epoch) -> same order; another epoch -> another order
    again = EpochBatchSampler(50, 8, seed=3)
    again.set_epoch(2)
    assert list(again) == full
    again.set_epoch(2, start_batch=4)                       # resuming inside the epoch skips the first 4
    assert list(again) == full[4:] and len(again) == 3
    again.set_epoch(3)
    assert list(again) != full
    assert sorted(i for b in full for i in b) == list(range(50))
    assert len(EpochBatchSampler(50, 8, max_batches=2)) == 2 and len(list(EpochBatchSampler(50, 8, max_batches=2))) == 2
    dropped = EpochBatchSampler(50, 8, drop_last=True)      # what --compile uses: one batch shape
    assert len(dropped) == 6 and all(len(b) == 8 for b in dropped)


def test_rng_state_roundtrip_through_weights_only_checkpoint(tmp_path):
    torch.manual_seed(1)
    np.random.seed(2)
    random.seed(3)
    state = get_rng_state()
    want = (torch.rand(3), np.random.rand(3), random.random())
    torch.save({"rng": state}, tmp_path / "s.pt")
    loaded = torch.load(tmp_path / "s.pt", weights_only=True)["rng"]
    torch.manual_seed(99)
    np.random.seed(99)
    random.seed(99)
    set_rng_state(loaded)
    got = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(want[0], got[0]) and np.array_equal(want[1], got[1]) and want[2] == got[2]


def test_select_best_on_scripted_val_sequences():
    def run(scores, patience):
        best = {"epoch": None, "score": -math.inf, "val": None, "test": None, "bad_epochs": 0, "stopped": False}
        trace = []
        for epoch, score in enumerate(scores, start=1):
            before = dict(best)
            new = select_best(best, epoch, score, patience)
            assert best == before                                   # a pure function: input unchanged
            best = new
            trace.append((best["epoch"], best["bad_epochs"], best["stopped"]))
            if best["stopped"]:
                break
        return trace

    # strict improvement only: the tie at epoch 3 keeps epoch 2
    assert run([0.1, 0.3, 0.3, 0.2], None) == [(1, 0, False), (2, 0, False), (2, 1, False), (2, 2, False)]
    # patience 2: two epochs without improvement stop the run
    assert run([0.5, 0.4, 0.6, 0.6, 0.1, 0.9], 2) == [(1, 0, False), (1, 1, False), (3, 0, False), (3, 1, False),
                                                     (3, 2, True)]
    # nan never improves, even as the first score
    assert run([float("nan"), 0.2, float("nan")], 3) == [(None, 1, False), (2, 0, False), (2, 1, False)]
    assert run([0.2, 0.1], 1) == [(1, 0, False), (1, 1, True)]
    new = select_best({"epoch": 1, "score": 0.5, "bad_epochs": 0, "stopped": False}, 2, 0.7, None)
    assert new["score"] == 0.7 and new["epoch"] == 2


# ---------------------------------------------------------------------------------------------------------
# config and command line


def test_cli_arguments_map_to_config():
    cfg = parse(["--model", "cat", "--data-root", "d", "--run-dir", "r", "--epochs", "2", "--bf16",
                 "--lr-schedule", "cosine", "--w-landmark", "5", "--workers", "3", "--resume",
                 "--max-items", "10", "--patience", "2", "--no-progress"])
    assert (cfg.model, cfg.data_root, cfg.run_dir, cfg.epochs, cfg.bf16, cfg.lr_schedule) == \
        ("cat", "d", "r", 2, True, "cosine")
    assert cfg.loss_weights == LossWeights(landmark=5.0) and cfg.num_workers == 3 and cfg.resume
    assert cfg.max_items == 10 and cfg.patience == 2 and cfg.progress is False
    d = TrainConfig()
    assert (d.batch_size, d.epochs, d.lr, d.image_size) == (8, 10, 1e-4, 224)  # thesis defaults
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg
    assert parse([]) == TrainConfig()                        # nothing given: the dataclass defaults
    assert parse(["--num-workers", "2", "--patience", "none", "--no-bf16"]).num_workers == 2
    assert parse(["--patience", "none"]).patience is None and parse(["--no-bf16"]).bf16 is False


def test_jsonargparse_spellings_work_too():
    """The parser's own spellings (underscores, explicit booleans, null, nested keys) equal the dashed ones."""
    dashed = parse(["--image-size", "64", "--no-augment", "--bf16", "--w-landmark", "5", "--patience", "none",
                    "--workers", "2", "--lr-schedule", "none"])
    native = parse(["--image_size", "64", "--augment", "false", "--bf16", "true", "--loss_weights.landmark", "5",
                    "--patience", "null", "--num_workers=2", "--lr_schedule=none"])
    assert dashed == native
    assert (dashed.image_size, dashed.augment, dashed.bf16, dashed.patience, dashed.num_workers) == (64, False, True,
                                                                                                    None, 2)
    assert dashed.loss_weights.landmark == 5.0 and dashed.lr_schedule == "none"


def test_every_field_is_an_option_with_its_help_and_default():
    import dataclasses

    text = cli.build_parser().format_help()
    for f in dataclasses.fields(TrainConfig):
        assert f"--{f.name}" in text, f.name
    for name in ("category", "attribute", "landmark"):
        assert f"--loss_weights.{name}" in text
    assert "--config" in text and "--print_config" in text and "default: 0.0001" in text
    # every field has its help text: a docstring under it
    helps = [a for a in cli.build_parser()._actions if a.dest in {f.name for f in dataclasses.fields(TrainConfig)}]
    assert helps and all(a.help and not a.help.startswith("(type") for a in helps), [a.dest for a in helps
                                                                                      if not a.help]


def test_every_option_is_documented():
    import dataclasses
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[1] / "docs" / "training.md").read_text()
    flags = [f"--{f.name.replace('_', '-')}" for f in dataclasses.fields(TrainConfig) if f.name != "loss_weights"]
    flags += [f"--w-{name}" for name in ("category", "attribute", "landmark")]
    missing = [flag for flag in flags if f"`{flag}`" not in doc]
    assert missing == [], f"options missing from docs/training.md: {missing}"
    assert all(f"`{name}`" in doc for name in RESUME_SAFE_FIELDS)


def test_config_file_yaml_and_json_with_flags_overriding(tmp_path):
    yml = tmp_path / "run.yaml"
    yml.write_text("model: cat\nlr: 3e-4\nepochs: 4\nloss_weights:\n  attribute: 10\npatience: 2\n")
    cfg = parse(["--config", str(yml), "--epochs", "6", "--w-landmark", "0"])
    assert cfg.model == "cat" and cfg.lr == 3e-4 and cfg.epochs == 6 and cfg.patience == 2   # flag wins
    assert cfg.loss_weights == LossWeights(category=1.0, attribute=10.0, landmark=0.0)
    assert parse(["--epochs", "6", "--config", str(yml)]).epochs == 4                       # later wins
    js = tmp_path / "config.json"                               # a run's config.json, resolved block included
    js.write_text(json.dumps({**cfg.to_dict(), "resolved": {"device": "cpu", "bf16": False}}))
    assert parse(["--config", str(js)]) == cfg
    bad = tmp_path / "bad.yaml"
    # each error names the setting and the file
    for text, setting in [("modle: cat\n", "modle"), ("train_fraction: 1.5\n", "--train-fraction"),
                          ("epochs: three\n", "epochs"), ("loss_weights: {lndmark: 1}\n", "lndmark")]:
        bad.write_text(text)
        with pytest.raises(ConfigError) as err:
            parse(["--config", str(bad)])
        assert setting in str(err.value) and str(bad) in str(err.value), text


def test_from_dict_checks_like_the_command_line():
    from pathlib import Path

    assert TrainConfig.from_dict({"model": "cat", "lr": 1, "max_items": "none", "data_root": Path("/d")}) == \
        TrainConfig(model="cat", lr=1.0, data_root="/d")
    for bad, setting in [({"modle": "cat"}, "modle"), ({"epochs": "three"}, "epochs"), ({"model": "vgg"}, "model"),
                         ({"batch_size": 0}, "--batch-size")]:
        with pytest.raises(ConfigError) as err:
            TrainConfig.from_dict(bad, source="a.json")
        assert setting in str(err.value) and "a.json" in str(err.value)


def test_print_config_is_yaml_that_loads_back(tmp_path, capsys):
    with pytest.raises(SystemExit) as done:
        cli.main(["--print-config", "--model", "cat", "--lr", "0.001", "--w-attribute", "5",
                        "--train-fraction", "0.5", "--device", "cpu"])
    assert done.value.code == 0
    text = capsys.readouterr().out
    (tmp_path / "c.yaml").write_text(text)
    again = parse(["--config", str(tmp_path / "c.yaml")])
    assert again == TrainConfig(model="cat", lr=1e-3, loss_weights=LossWeights(attribute=5.0), train_fraction=0.5,
                                device="cpu")


def test_the_default_run_dir_is_named_after_the_model():
    """Without --run-dir a CAT run goes to runs/cat, never into runs/mtl."""
    assert parse(["--model", "cat"]).run_dir == "runs/cat" and parse([]).run_dir == "runs/mtl"
    assert parse(["--model", "cat", "--run-dir", "r/x"]).run_dir == "r/x"
    assert TrainConfig(model="mtl_pool").run_dir == "runs/mtl_pool"


def test_bad_values_name_the_option(tmp_path, capsys):
    for kw, flag in [({"train_fraction": 0.0}, "--train-fraction"), ({"lr_schedule": "linear"}, "--lr-schedule"),
                     ({"sync_every": 0}, "--sync-every"), ({"batch_size": 0}, "--batch-size")]:
        with pytest.raises(ConfigError, match=flag):
            TrainConfig(**kw)
    for argv, name in [(["--train-fraction", "2"], "--train-fraction"), (["--epochs", "x"], "epochs"),
                       (["--loader", "rows"], "loader"), (["--modle", "cat"], "--modle")]:
        with pytest.raises(SystemExit) as err:
            cli.main(argv + ["--run-dir", str(tmp_path / "never")])
        assert err.value.code == 2 and name in capsys.readouterr().err
    assert not (tmp_path / "never").exists()


def test_train_subset_is_seeded_and_nested():
    data = list(range(100))
    half, quarter = train_subset(data, 0.5, 7), train_subset(data, 0.25, 7)
    assert len(half) == 50 and len(quarter) == 25 and len(train_subset(data, 0.001, 7)) == 1
    assert set(quarter.indices) <= set(half.indices) and half.indices == sorted(half.indices)
    assert train_subset(data, 0.5, 7).indices == half.indices and train_subset(data, 0.5, 8).indices != half.indices


def test_resume_rule_lists_changed_settings_except_the_safe_ones():
    stored = {**TrainConfig(image_size=32, epochs=2).to_dict(), "resolved": {"device": "cpu"}}
    assert config_differences(stored, TrainConfig(image_size=32, epochs=5, device="cuda", threads=4,
                                                  num_workers=8, patience=3, progress=False)) == []
    diffs = config_differences(stored, TrainConfig(image_size=64, epochs=2, lr=1e-3,
                                                   loss_weights=LossWeights(landmark=1.0)))
    assert diffs == ["image_size: 32 -> 64", "lr: 0.0001 -> 0.001", "loss_weights.landmark: 1000.0 -> 1.0"]
    old = {k: v for k, v in stored.items() if k != "train_fraction"}   # written before the field existed
    assert config_differences(old, TrainConfig(image_size=32)) == []
    cosine = TrainConfig(image_size=32, epochs=2, lr_schedule="cosine").to_dict()
    assert config_differences(cosine, TrainConfig(image_size=32, epochs=4, lr_schedule="cosine")) == ["epochs: 2 -> 4"]
    assert {"epochs", "patience", "device", "num_workers", "threads", "sync_every"} <= RESUME_SAFE_FIELDS
    assert not {"model", "lr", "batch_size", "image_size", "seed", "data_root", "bf16"} & RESUME_SAFE_FIELDS


# ---------------------------------------------------------------------------------------------------------
# in-process runs


def test_tiny_training_run_learns_and_writes_files(synth_root, tmp_path):
    run_dir = tmp_path / "run"
    cfg = tiny_config(synth_root, run_dir, epochs=3, max_items=None, lr=1e-3)
    metrics = train(cfg)
    for name in ("config.json", "history.json", "metrics.json", "metrics.csv", "batches.csv", "train.log",
                 "checkpoints/last.pt", "checkpoints/best.pt"):
        assert (run_dir / name).is_file(), name
    assert not list(run_dir.rglob("*.tmp")) and not (run_dir / "train.lock").exists()
    hist = read_json(run_dir / "history.json")
    assert len(hist["epochs"]) == 3
    batches = hist["batches"]
    assert set(batches) >= {"epoch", "batch", "step", "category", "attribute", "landmark", "total"}
    assert len(batches["total"]) == batches["step"][-1] and all(math.isfinite(v) for v in batches["total"])
    means = [e["train"]["total"] for e in hist["epochs"]]
    assert means[-1] < means[0], means                              # losses fall
    assert hist["epochs"][-1]["train"]["landmark"] < hist["epochs"][0]["train"]["landmark"]
    for e in hist["epochs"]:
        for split in ("val", "test"):
            m = e[split]
            assert {"category_top1", "category_top3", "category_top5", "attr_top3_texture", "attr_top5_style",
                    "attr_top3_all_grouped", "attr_top3_all_strict", "landmark_ne_mean", "landmark_ne_l_hem",
                    "loss_total"} <= set(m)
        assert e["images_per_s"] > 0 and e["seconds"] > 0
    m = read_json(run_dir / "metrics.json")
    assert m == metrics or strip_timing(m) == strip_timing(metrics)
    assert m["model"] == "mtl" and m["params"] > 0 and 1 <= m["best_epoch"] <= 3
    best = hist["epochs"][m["best_epoch"] - 1]
    assert m["test"] == best["test"] and m["val"] == best["val"]
    assert m["val"]["category_top3"] == max(e["val"]["category_top3"] for e in hist["epochs"])
    ck = load_checkpoint(run_dir / "checkpoints" / "last.pt")      # weights_only=True
    assert ck["epoch"] == 3 and "model" in ck and "optimizer" in ck
    torch.load(run_dir / "checkpoints" / "best.pt", weights_only=True)
    from vfu_nb.models import build_model

    model = build_model("mtl", ck["num_categories"], ck["num_attributes"], 8, 32, 0.125)
    model.load_state_dict(ck["model"])
    # config.json: the settings plus what was resolved for this machine
    stored, resolved = RunDir(run_dir).train_config()
    assert stored == cfg
    assert resolved == {**resolved, "device": "cpu", "bf16": False, "channels_last": False,
                                  "deterministic": True, "num_workers": 0, "sync_every": 1, "heatmap_sigma": 4.0,
                                  "eval_batch_size": 32, "threads": 1}
    # metrics.csv: one row per epoch, equal to the history; batches.csv: one row per step
    with open(run_dir / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
    assert float(rows[1]["val_category_top3"]) == hist["epochs"][1]["val"]["category_top3"]
    assert float(rows[2]["train_total"]) == hist["epochs"][2]["train"]["total"] and float(rows[0]["lr"]) == 1e-3
    with open(run_dir / "batches.csv") as f:
        steps = list(csv.DictReader(f))
    assert len(steps) == len(batches["total"]) and float(steps[-1]["total"]) == batches["total"][-1]
    log = (run_dir / "train.log").read_text()
    assert "device cpu x1" in log and "precision fp32" in log and str(synth_root) in log
    assert "data path batch loader (one gather per batch from the uint8 cache, 1 prefetch thread, 0 worker " \
           "processes, pin_memory False)" in log
    assert "epoch 3/3 loss" in log


@pytest.mark.parametrize("over", [dict(epochs=2, max_items=44),                       # 5 batches of 8 + 1 of 4
                                  dict(epochs=1, batch_size=4, train_fraction=0.5, channels_last=True)],
                         ids=["partial-batch", "subset-channels-last"])
def test_batch_loader_and_per_item_loader_give_bit_identical_runs(synth_root, tmp_path, over):
    runs = {}
    for loader in ("items", "batch"):
        train(tiny_config(synth_root, tmp_path / loader, loader=loader, lr=1e-3, **over))
        runs[loader] = {name: strip_timing(read_json(tmp_path / loader / name))
                        for name in ("history.json", "metrics.json")}
        log = (tmp_path / loader / "train.log").read_text()
        assert ("data path batch loader" in log) == (loader == "batch"), log
        assert ("data path per-item DataLoader (0 worker processes" in log) == (loader == "items"), log
    assert runs["batch"] == runs["items"]                       # every loss and metric, bit for bit
    steps = runs["batch"]["history.json"]["batches"]["step"]
    assert len(steps) == (12 if over.get("max_items") == 44 else 5)


def test_batch_loader_resumed_inside_an_augmented_epoch_repeats_its_batches(synth_root):
    from vfu_nb.data.dataset import DeepFashionC

    ds = DeepFashionC(synth_root, "train", 32, augment=True, cache=True, uint8=True, max_items=40, progress=False)
    sampler = builders.EpochBatchSampler(len(ds), 8, seed=1, items=list(range(39, -1, -1)))
    loader = builders.EpochBatchLoader(ds, sampler, "cpu", augment=True, generator=torch.Generator())

    def epoch(start_batch):
        sampler.set_epoch(2, start_batch=start_batch)
        loader.generator.manual_seed(7)
        return list(loader)

    full, resumed = epoch(0), epoch(3)
    assert len(full) == 5 and len(resumed) == 2
    for want, got in zip(full[3:], resumed):
        for key in want:
            assert torch.equal(want[key], got[key]), key
    assert not torch.equal(full[0]["image"], full[1]["image"])
    sampler.set_epoch(2)
    first = list(sampler)[:3]
    sampler.set_epoch(2, start_batch=3)
    assert sampler.skipped_batches() == first and min(i for b in first for i in b) >= 0


def test_worker_default_depends_on_the_input_path():
    cuda = resolve_runtime(TrainConfig(device="cuda"))
    assert cuda.num_workers == 0 and cuda.resolved()["num_workers"] == 0     # the batch loader needs none
    items = resolve_runtime(TrainConfig(device="cuda", loader="items"))
    assert items.num_workers == min(8, max(1, os.cpu_count() or 1))
    assert resolve_runtime(TrainConfig(device="cuda", loader="items", num_workers=3)).num_workers == 3
    assert resolve_runtime(TrainConfig(device="cuda", num_workers=3)).num_workers == 0
    assert resolve_runtime(TrainConfig(device="cpu", loader="items")).num_workers == 0
    with pytest.raises(ConfigError, match="--loader"):
        TrainConfig(loader="rows")


def test_batch_losses_reach_disk_during_the_epoch_and_tensorboard(synth_root, tmp_path):
    run_dir = tmp_path / "tb"
    seen = {}

    def on_step(epoch, batch, step):
        if step == 3:   # mid-epoch: rows of steps 1-3 are already on disk
            seen["rows"] = (run_dir / "batches.csv").read_text().strip().splitlines()

    train(tiny_config(synth_root, run_dir, epochs=1, max_batches=4, log_every=1, tensorboard=True), on_step=on_step)
    assert len(seen["rows"]) == 1 + 3 and seen["rows"][3].startswith("1,3,3,")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    tags = events.Tags()["scalars"]
    assert "train_step/total" in tags and "val/category_top3" in tags and "test/category_top3" in tags
    assert [e.step for e in events.Scalars("train_step/total")] == [1, 2, 3, 4]


def test_nan_loss_names_epoch_batch_and_term(synth_root, tmp_path, monkeypatch):
    real = builders.multitask_loss
    calls = {"n": 0}

    def poisoned(*args, **kwargs):
        out = real(*args, **kwargs)
        if not torch.is_grad_enabled():  # evaluation (under no_grad) also computes losses
            return out
        calls["n"] += 1
        if calls["n"] == 5:  # 3 training batches per epoch -> epoch 2, batch 2
            out = dict(out)
            out["attribute"] = out["attribute"] * float("nan")
            out["total"] = out["total"] + out["attribute"]
        return out

    monkeypatch.setattr(builders, "multitask_loss", poisoned)
    with pytest.raises(NonFiniteLossError) as err:
        train(tiny_config(synth_root, tmp_path / "nan", epochs=3, max_batches=3))
    e = err.value
    assert isinstance(e, FloatingPointError)
    assert (e.epoch, e.batch, e.term) == (2, 2, "attribute")
    assert "epoch 2, batch 2" in str(e) and "attribute" in str(e)


def test_early_stopping_and_finished_resume(synth_root, tmp_path):
    run_dir = tmp_path / "stop"
    # lr 0: the model never changes, so val top-3 never improves after epoch 1 -> stop after epoch 1 + patience
    m = train(tiny_config(synth_root, run_dir, epochs=5, lr=0.0, patience=2, max_batches=1))
    assert m["early_stopped"] and m["epochs_run"] == 3 and m["best_epoch"] == 1
    # resuming a finished run trains nothing and reports the same metrics
    again = train(tiny_config(synth_root, run_dir, epochs=5, lr=0.0, patience=2, max_batches=1, resume=True))
    assert strip_timing(again) == strip_timing(m)
    # patience is re-applied on resume: a larger one continues the stopped run
    more = train(tiny_config(synth_root, run_dir, epochs=5, lr=0.0, patience=3, max_batches=1, resume=True))
    assert more["epochs_run"] == 4 and more["early_stopped"]


def test_cat_model_has_no_landmark_loss_or_ne(synth_root, tmp_path):
    m = train(tiny_config(synth_root, tmp_path / "cat", model="cat", epochs=1, max_batches=2))
    hist = read_json(tmp_path / "cat" / "history.json")
    assert all(v == 0 for v in hist["batches"]["landmark"])
    assert m["test"]["landmark_ne_mean"] is None  # nan -> null in strict JSON


def test_train_fraction_trains_on_a_subset_with_the_same_evaluation(synth_root, tmp_path):
    full = train(tiny_config(synth_root, tmp_path / "full", epochs=1, batch_size=4))
    half = train(tiny_config(synth_root, tmp_path / "half", epochs=1, batch_size=4, train_fraction=0.5))
    h_full, h_half = read_json(tmp_path / "full" / "history.json"), read_json(tmp_path / "half" / "history.json")
    assert h_full["epochs"][0]["train_images"] == 40 and h_half["epochs"][0]["train_images"] == 20
    assert len(h_half["batches"]["step"]) == 5
    assert full["test"]["n_images"] == half["test"]["n_images"] and full["val"]["n_images"] == half["val"]["n_images"]


# ---------------------------------------------------------------------------------------------------------
# run-directory safety


def test_existing_run_is_refused_without_resume_and_changed_settings_with_it(synth_root, tmp_path):
    run_dir = tmp_path / "run"
    train(tiny_config(synth_root, run_dir, epochs=1, max_batches=1))
    stamp = (run_dir / "checkpoints" / "last.pt").stat().st_mtime_ns
    with pytest.raises(RunExistsError) as err:
        train(tiny_config(synth_root, run_dir, epochs=1, max_batches=1))
    msg = str(err.value)
    assert str(run_dir) in msg and "config.json" in msg and "--resume" in msg and "--run-dir" in msg
    with pytest.raises(RunMismatchError, match=r"image_size: 32 -> 64; lr: 0\.0001 -> 0\.001"):
        train(tiny_config(synth_root, run_dir, epochs=2, max_batches=1, image_size=64, lr=1e-3, resume=True))
    assert (run_dir / "checkpoints" / "last.pt").stat().st_mtime_ns == stamp          # nothing touched
    # safe changes are accepted: more epochs, other thread count, progress, sync_every
    m = train(tiny_config(synth_root, run_dir, epochs=2, max_batches=1, resume=True, threads=2, sync_every=2))
    assert m["epochs_run"] == 2


def test_a_run_resumes_from_its_data_tree_reached_by_another_path_but_not_from_another_tree(synth_root, tmp_path):
    """A git worktree, a moved or symlinked tree: same data, other path (vfu_nb.data.identity)."""
    first, other = tmp_path / "first" / "df", tmp_path / "other" / "df"
    shutil.copytree(synth_root, first)
    shutil.copytree(synth_root, other)
    run_dir = tmp_path / "run"
    train(tiny_config(first, run_dir, epochs=1, max_batches=1))
    assert read_json(run_dir / "config.json")["resolved"]["data_digest"] == tree_digest(synth_root)
    moved = tmp_path / "moved"
    os.rename(first.parent, moved)
    image = image_root(other) / load_annotations(other).image_names[3]
    image.write_bytes(image.read_bytes() + b"\0")                 # same annotations, one image differs
    with pytest.raises(RunMismatchError, match=r"data_root: '.*first/df' -> '.*other/df'"):
        train(tiny_config(other, run_dir, epochs=2, max_batches=1, resume=True))
    m = train(tiny_config(moved / "df", run_dir, epochs=2, max_batches=1, resume=True))
    assert m["epochs_run"] == 2 and read_json(run_dir / "config.json")["data_root"] == str(moved / "df")


def test_a_second_writer_is_refused_and_a_dead_writers_lock_taken_over(synth_root, tmp_path):
    run_dir = tmp_path / "locked"
    with RunLock(run_dir):
        with pytest.raises(RunLockedError, match=rf"pid {os.getpid()}"):
            train(tiny_config(synth_root, run_dir, epochs=1, max_batches=1))
    assert not (run_dir / "config.json").exists()
    # a lock file left by a killed process (nobody holds the flock) is taken over
    (run_dir / "train.lock").write_text("pid 999999 on somewhere since yesterday\n")
    m = train(tiny_config(synth_root, run_dir, epochs=1, max_batches=1))
    assert m["epochs_run"] == 1 and not (run_dir / "train.lock").exists()


def test_corrupt_checkpoint_gives_one_line_saying_what_to_do(synth_root, tmp_path, capsys):
    run_dir = tmp_path / "corrupt"
    train(tiny_config(synth_root, run_dir, epochs=1, max_batches=1))
    last = run_dir / "checkpoints" / "last.pt"
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])                    # truncated
    with pytest.raises(CorruptCheckpointError) as err:
        train(tiny_config(synth_root, run_dir, epochs=2, max_batches=1, resume=True))
    msg = str(err.value)
    assert str(last) in msg and "best.pt" in msg and "--run-dir" in msg and "\n" not in msg
    argv = ["--data-root", str(synth_root), "--run-dir", str(run_dir), "--epochs", "2", "--max-batches", "1",
            "--image-size", "32", "--width", "0.125", "--max-items", "40", "--threads", "1", "--resume",
            "--no-progress"]
    with pytest.raises(SystemExit) as exit_:
        cli.main(argv)
    err_text = capsys.readouterr().err
    assert exit_.value.code == 2 and str(last) in err_text and "Traceback" not in err_text
    assert len(err_text.strip().splitlines()) == 1


# ---------------------------------------------------------------------------------------------------------
# the CUDA path, checked on the CPU


def _tiny_batch(B=4, S=32, C=5, A=7, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"image": torch.randint(0, 256, (B, 3, S, S), dtype=torch.uint8, generator=g),
            "category": torch.randint(0, C, (B,), generator=g),
            "attributes": (torch.rand(B, A, generator=g) < 0.2).float(),
            "attributes_known": torch.ones(B, A), "landmarks": torch.rand(B, 8, 2, generator=g),
            "landmark_visibility": torch.zeros(B, 8, dtype=torch.int64), "index": torch.arange(B)}


def test_training_step_makes_no_host_device_copies_or_syncs(monkeypatch):
    """Nothing in train.py / losses.py builds a tensor from host data with a device argument or reads one back."""
    import functools

    from vfu_nb.models import build_model

    rt = resolve_runtime(TrainConfig(device="cpu", sync_every=25, image_size=32))
    model = build_model("mtl", 5, 7, 8, 32, 0.125)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = functools.partial(multitask_loss, weights=LossWeights(), heatmap_sigma=4.0,
                                attr_pos_weight=torch.full((), 2.0))
    batch = _tiny_batch()
    ours = (os.path.join("vfu_nb", "train.py"), os.path.join("vfu_nb", "losses.py"), "test_train.py")
    calls = []

    def spy(name, real, needs_device):
        def wrapper(*args, **kwargs):
            caller = sys._getframe(1).f_code
            if caller.co_filename.endswith(ours) and (not needs_device or "device" in kwargs):
                calls.append((name, caller.co_name))
            return real(*args, **kwargs)
        return wrapper

    monkeypatch.setattr(torch, "tensor", spy("tensor", torch.tensor, True))
    monkeypatch.setattr(torch, "as_tensor", spy("as_tensor", torch.as_tensor, True))
    for method in ("item", "tolist", "cpu", "numpy", "__bool__", "__float__", "__int__"):
        monkeypatch.setattr(torch.Tensor, method, spy(method, getattr(torch.Tensor, method), False))
    logged = training_step(model, optimizer, batch, loss_fn, rt)
    assert calls == []
    torch.tensor([1.0], device="cpu").tolist()              # the spy does see such calls
    monkeypatch.undo()
    assert calls == [("tensor", "test_training_step_makes_no_host_device_copies_or_syncs"),
                     ("tolist", "test_training_step_makes_no_host_device_copies_or_syncs")]
    assert logged.shape == (4,) and torch.isfinite(logged).all()


def test_evaluate_keeps_labels_on_the_host(monkeypatch):
    from vfu_nb.models import build_model

    seen = []

    class Recorder:
        def __init__(self, attribute_types, num_landmarks=8):
            pass

        def update(self, **kw):
            seen.append(kw)

        def compute(self):
            return {"category_top3": 0.5}

    batches = [_tiny_batch(seed=s) for s in range(2)]
    monkeypatch.setattr(loop, "EvalAccumulator", Recorder)
    model = build_model("mtl", 5, 7, 8, 32, 0.125)
    out = loop.evaluate(model, batches, "cpu", np.ones(7, dtype=int), loss_weights=LossWeights(),
                             heatmap_sigma=4.0)
    assert out["category_top3"] == 0.5 and math.isfinite(out["loss_total"])
    for kw, batch in zip(seen, batches):
        for key in ("category", "attributes", "attributes_known", "landmarks", "landmark_visibility"):
            assert kw[key] is batch[key], key                   # the loader's own host tensor, no round trip
        assert kw["category_logits"].shape == (4, 5) and kw["landmarks_pred"].shape == (4, 8, 2)


def _conv_net():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.Conv2d(8, 4, 3))


@pytest.mark.parametrize("saved_layout,resumed_layout", [(torch.channels_last, torch.contiguous_format),
                                                         (torch.contiguous_format, torch.channels_last)])
def test_optimizer_state_resumes_in_another_memory_layout_exactly(tmp_path, saved_layout, resumed_layout):
    def grads(model, k):
        g = torch.Generator().manual_seed(k)
        for p in model.parameters():
            p.grad = torch.empty_like(p).copy_(torch.randn(p.shape, generator=g))

    ref = _conv_net().to(memory_format=saved_layout)
    opt = torch.optim.Adam(ref.parameters(), lr=1e-2)
    for k in range(3):
        grads(ref, k)
        opt.step()
    state = opt.state_dict()
    for group in state["param_groups"]:
        group["fused"] = True        # as written by a CUDA run (fused Adam)
    torch.save({"model": ref.state_dict(), "optimizer": state}, tmp_path / "ck.pt")
    ck = torch.load(tmp_path / "ck.pt", weights_only=True)
    resumed = _conv_net().to(memory_format=resumed_layout)
    resumed.load_state_dict(ck["model"])
    opt2 = torch.optim.Adam(resumed.parameters(), lr=1e-2)
    opt2.load_state_dict(ck["optimizer"])
    fit_optimizer_state(opt2)
    for p in resumed.parameters():
        assert opt2.state[p]["exp_avg"].stride() == p.stride() and opt2.state[p]["step"].device.type == "cpu"
    assert opt2.param_groups[0]["fused"] is None
    for k in range(3, 6):             # the next steps equal the uninterrupted reference exactly
        grads(ref, k)
        opt.step()
        grads(resumed, k)
        opt2.step()
        for a, b in zip(ref.parameters(), resumed.parameters()):
            assert torch.equal(a, b)


def test_run_saved_channels_last_resumes_contiguous(synth_root, tmp_path):
    # a channels_last run with a CUDA-style checkpoint (fused Adam) continues contiguous on the CPU
    common = dict(epochs=2, max_batches=3, lr=1e-3)
    ref = tiny_config(synth_root, tmp_path / "ref", channels_last=True, **common)
    train(ref)
    res = tmp_path / "res"
    train(tiny_config(synth_root, res, channels_last=True, **{**common, "epochs": 1}))
    last = res / "checkpoints" / "last.pt"
    ck = torch.load(last, weights_only=True)
    for group in ck["optimizer"]["param_groups"]:
        group["fused"] = True
    torch.save(ck, last)
    train(tiny_config(synth_root, res, channels_last=False, resume=True, **common))
    a, b = read_json(tmp_path / "ref" / "history.json"), read_json(res / "history.json")
    assert a["batches"]["total"][:3] == b["batches"]["total"][:3]
    # convolutions differ at float precision between layouts; a misread optimiser state differs by far more
    np.testing.assert_allclose(b["batches"]["total"][3:], a["batches"]["total"][3:], rtol=1e-4)


# ---------------------------------------------------------------------------------------------------------
# subprocess runs: SIGKILL + resume, DDP, compile


@pytest.mark.slow
@pytest.mark.parametrize("loader,augment", [("batch", True), ("batch", False), ("items", True)])
def test_resume_after_sigkill_matches_uninterrupted_run(synth_root, tmp_path, loader, augment):
    # augmentation draws from per-epoch seeded streams (batch loader) or the restored RNG states (items), so the
    # resumed data must match too
    common = {"loader": loader, "augment": augment}
    ref = run_cli(tiny_args(synth_root, tmp_path / "ref", **common))
    assert ref.returncode == 0, ref.stderr[-3000:]
    a, ha = read_json(tmp_path / "ref" / "metrics.json"), read_json(tmp_path / "ref" / "history.json")
    # killed after epoch 2, batch 3 (5 batches per epoch, step 8); resumed from the epoch-1 checkpoint (step 5),
    # or, with --checkpoint-every 2, from the step checkpoint 2 steps after it (step 7 = epoch 2, batch 2)
    for name, extra, ck_batch, ck_step in [("res", common, 0, 5),
                                           ("steps", {**common, "checkpoint_every": 2}, 2, 7)]:
        killed = run_cli(["--kill-at", "2:3", *tiny_args(synth_root, tmp_path / name, **extra)], module="train_helpers")
        assert killed.returncode == -signal.SIGKILL, (killed.returncode, killed.stderr[-3000:])
        assert not (tmp_path / name / "metrics.json").exists()
        ck = load_checkpoint(tmp_path / name / "checkpoints" / "last.pt")
        assert (ck["epoch"], ck["batch"], ck["global_step"]) == (1, ck_batch, ck_step)
        resumed = run_cli(tiny_args(synth_root, tmp_path / name, resume=True, **extra))
        assert resumed.returncode == 0, resumed.stderr[-3000:]
        assert "resuming" in resumed.stdout
        b, hb = read_json(tmp_path / name / "metrics.json"), read_json(tmp_path / name / "history.json")
        assert strip_timing(a) == strip_timing(b)                       # exact equality on CPU
        assert ha["batches"] == hb["batches"]
        assert strip_timing(ha["epochs"]) == strip_timing(hb["epochs"])
        with open(tmp_path / name / "batches.csv") as f:                # no duplicated rows of redone steps
            assert [int(r["step"]) for r in csv.DictReader(f)] == list(range(1, 16))


@pytest.mark.slow
def test_ddp_gloo_two_processes_match_one_process(synth_root, tmp_path):
    common = dict(epochs=1, max_batches=4, lr="1e-3")  # 40 train images: 5 global batches of 8
    single = run_cli(tiny_args(synth_root, tmp_path / "one", batch_size=8, **common))
    assert single.returncode == 0, single.stderr[-3000:]
    ddp = run_cli(tiny_args(synth_root, tmp_path / "two", batch_size=4, **common),
                  launcher=["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"],
                  env_extra={"OMP_NUM_THREADS": "1"})
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    one, two = read_json(tmp_path / "one" / "history.json"), read_json(tmp_path / "two" / "history.json")
    assert len(one["batches"]["total"]) == len(two["batches"]["total"]) == 4
    for term in ("category", "attribute", "landmark", "total"):
        np.testing.assert_allclose(two["batches"][term], one["batches"][term], rtol=1e-4, err_msg=term)
    m = read_json(tmp_path / "two" / "metrics.json")
    assert m["timing"]["world_size"] == 2
    assert read_json(tmp_path / "two" / "config.json")["resolved"]["world_size"] == 2
    # evaluation (rank 0, full split) after identical training steps agrees too
    m1 = read_json(tmp_path / "one" / "metrics.json")
    assert m["test"]["category_top3"] == pytest.approx(m1["test"]["category_top3"], abs=0.03)


@pytest.mark.slow
def test_compiled_epoch_with_a_partial_batch_compiles_once(synth_root, tmp_path):
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    # 44 train images, batch 8: 5 full batches and one of 4, which --compile drops
    train(tiny_config(synth_root, tmp_path / "compiled", epochs=1, max_items=44, compile=True))
    assert counters["stats"]["unique_graphs"] == 1, dict(counters["stats"])
    assert not counters["recompiles"]
    hist = read_json(tmp_path / "compiled" / "history.json")
    assert hist["batches"]["step"] == [1, 2, 3, 4, 5] and hist["epochs"][0]["train_images"] == 40
    torch._dynamo.reset()


def test_bf16_channels_last_path_runs_on_cpu(synth_root, tmp_path):
    # the GPU code path (bf16 autocast, channels_last, deferred loss read-back) exercised on the CPU
    m = train(tiny_config(synth_root, tmp_path / "bf16", model="mtl_pool", epochs=1, max_batches=3, bf16=True,
                          channels_last=True, sync_every=2))
    hist = read_json(tmp_path / "bf16" / "history.json")
    assert hist["batches"]["batch"] == [1, 2, 3] and hist["batches"]["step"] == [1, 2, 3]
    assert all(math.isfinite(v) for v in hist["batches"]["total"])
    assert 0 <= m["test"]["category_top3"] <= 1 and m["test"]["landmark_ne_mean"] is not None
    assert read_json(tmp_path / "bf16" / "config.json")["resolved"]["tf32"] is False
