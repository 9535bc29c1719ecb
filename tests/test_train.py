"""vfu_nb.train: a tiny real run, NaN detection, exact resume after SIGKILL, DDP (gloo) equivalence."""

from __future__ import annotations

import math
import random
import signal

import numpy as np
import pytest
import torch

from train_helpers import read_json, run_cli, strip_timing, synth_root, tiny_args  # noqa: F401 (fixture)
from vfu_nb import train as train_mod
from vfu_nb.losses import LossWeights
from vfu_nb.train import (
    EpochBatchSampler, NonFiniteLossError, TrainConfig, config_from_args, add_train_args, get_rng_state,
    load_checkpoint, set_rng_state, train,
)


def tiny_config(root, run_dir, **over) -> TrainConfig:
    base = dict(model="mtl", data_root=str(root), run_dir=str(run_dir), epochs=3, batch_size=8, image_size=32,
                width=0.125, max_items=40, num_workers=0, progress=False, seed=0, threads=1)
    base.update(over)
    return TrainConfig(**base)


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
    again.set_epoch(3)
    assert list(again) != full
    assert sorted(i for b in full for i in b) == list(range(50))
    assert len(EpochBatchSampler(50, 8, max_batches=2)) == 2 and len(list(EpochBatchSampler(50, 8, max_batches=2))) == 2


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


def test_cli_arguments_map_to_config():
    import argparse

    parser = add_train_args(argparse.ArgumentParser())
    args = parser.parse_args(["--model", "cat", "--data-root", "d", "--run-dir", "r", "--epochs", "2", "--bf16",
                              "--lr-schedule", "cosine", "--w-landmark", "5", "--workers", "3", "--resume",
                              "--max-items", "10", "--patience", "2", "--no-progress"])
    cfg = config_from_args(args)
    assert (cfg.model, cfg.data_root, cfg.run_dir, cfg.epochs, cfg.bf16, cfg.lr_schedule) == \
        ("cat", "d", "r", 2, True, "cosine")
    assert cfg.loss_weights == LossWeights(landmark=5.0) and cfg.num_workers == 3 and cfg.resume
    assert cfg.max_items == 10 and cfg.patience == 2 and cfg.progress is False
    d = TrainConfig()
    assert (d.batch_size, d.epochs, d.lr, d.image_size) == (8, 10, 1e-4, 224)  # thesis defaults
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg


# ---------------------------------------------------------------------------------------------------------
# in-process runs


def test_tiny_training_run_learns_and_writes_files(synth_root, tmp_path):
    run_dir = tmp_path / "run"
    cfg = tiny_config(synth_root, run_dir, epochs=3, image_size=64, max_items=None, lr=1e-3)
    metrics = train(cfg)
    for name in ("config.json", "history.json", "metrics.json", "checkpoints/last.pt", "checkpoints/best.pt"):
        assert (run_dir / name).is_file(), name
    assert not list(run_dir.rglob("*.tmp"))
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

    model = build_model("mtl", ck["num_categories"], ck["num_attributes"], 8, 64, 0.125)
    model.load_state_dict(ck["model"])


def test_nan_loss_names_epoch_batch_and_term(synth_root, tmp_path, monkeypatch):
    real = train_mod.multitask_loss
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

    monkeypatch.setattr(train_mod, "multitask_loss", poisoned)
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


def test_cat_model_has_no_landmark_loss_or_ne(synth_root, tmp_path):
    m = train(tiny_config(synth_root, tmp_path / "cat", model="cat", epochs=1, max_batches=2))
    hist = read_json(tmp_path / "cat" / "history.json")
    assert all(v == 0 for v in hist["batches"]["landmark"])
    assert m["test"]["landmark_ne_mean"] is None  # nan -> null in strict JSON


# ---------------------------------------------------------------------------------------------------------
# subprocess runs: SIGKILL + resume, DDP


def test_resume_after_sigkill_matches_uninterrupted_run(synth_root, tmp_path):
    ref = run_cli(tiny_args(synth_root, tmp_path / "ref"))
    assert ref.returncode == 0, ref.stderr[-3000:]
    killed = run_cli(tiny_args(synth_root, tmp_path / "res"), env_extra={train_mod.KILL_ENV: "2:3"})
    assert killed.returncode == -signal.SIGKILL, (killed.returncode, killed.stderr[-3000:])
    assert not (tmp_path / "res" / "metrics.json").exists()
    assert load_checkpoint(tmp_path / "res" / "checkpoints" / "last.pt")["epoch"] == 1
    resumed = run_cli(tiny_args(synth_root, tmp_path / "res", resume=True))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming" in resumed.stdout
    a, b = read_json(tmp_path / "ref" / "metrics.json"), read_json(tmp_path / "res" / "metrics.json")
    assert strip_timing(a) == strip_timing(b)                       # exact equality on CPU
    ha, hb = read_json(tmp_path / "ref" / "history.json"), read_json(tmp_path / "res" / "history.json")
    assert ha["batches"] == hb["batches"]
    assert strip_timing(ha["epochs"]) == strip_timing(hb["epochs"])


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
    # evaluation (rank 0, full split) after identical training steps agrees too
    m1 = read_json(tmp_path / "one" / "metrics.json")
    assert m["test"]["category_top3"] == pytest.approx(m1["test"]["category_top3"], abs=0.03)


def test_bf16_channels_last_path_runs_on_cpu(synth_root, tmp_path):
    # the GPU code path (bf16 autocast, channels_last, deferred loss read-back) exercised on the CPU
    m = train(tiny_config(synth_root, tmp_path / "bf16", model="mtl_pool", epochs=1, max_batches=3, bf16=True,
                          channels_last=True, sync_every=2))
    hist = read_json(tmp_path / "bf16" / "history.json")
    assert hist["batches"]["batch"] == [1, 2, 3] and hist["batches"]["step"] == [1, 2, 3]
    assert all(math.isfinite(v) for v in hist["batches"]["total"])
    assert 0 <= m["test"]["category_top3"] <= 1 and m["test"]["landmark_ne_mean"] is not None
