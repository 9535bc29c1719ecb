"""tools/bench.py: the benchmarks print numbers and return them; tiny sizes only (the measured numbers are in
docs/benchmarks.md)."""

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from vfu_nb.data.annotations import load_annotations
from vfu_nb.data.dataset import DeepFashionC

_spec = importlib.util.spec_from_file_location("vfu_bench", Path(__file__).resolve().parents[1] / "tools" / "bench.py")
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)


@pytest.fixture
def tree(synth_root):
    return synth_root          # the session's tree; the benchmarks put their caches under tmp_path


def test_parse_benchmark_round_trips_a_generated_set(tmp_path, capsys):
    result = bench.main(["parse", "--rows", "500", "--json", str(tmp_path / "parse.json")])
    assert result["rows"] == 500 and result["attributes"] == 1000 and result["parse_s"] > 0
    assert json.loads((tmp_path / "parse.json").read_text())["rows"] == 500
    assert "500 rows x 1000 attributes" in capsys.readouterr().out


def test_metrics_benchmark_times_compute_with_and_without_map(tmp_path, capsys):
    result = bench.main(["metrics", "--n", "200", "--json", str(tmp_path / "metrics.json")])
    assert (result["n"], result["attributes"]) == (200, 1000)
    assert result["compute_without_map_s"] > 0 and result["compute_with_map_s"] > 0
    assert json.loads((tmp_path / "metrics.json").read_text())["n"] == 200
    assert "200 images x 1000 attributes" in capsys.readouterr().out


@pytest.mark.slow                 # timing loops of a tool
def test_data_benchmark_reports_every_path_side_by_side(tree, tmp_path, capsys):
    result = bench.main(["data", "--root", str(tree), "--image-size", "16", "--batch-size", "4", "--workers", "1",
                         "--repeats", "2", "--seconds", "0", "--min-batches", "1", "--cache-dir", str(tmp_path)])
    assert result["images"] == len(DeepFashionC(tree, "train", image_size=16))     # the train split
    paths = {p["path"]: p for p in result["paths"]}
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    expected = [f"{name} per item, DataLoader, {w} workers"
                for name in ("decode", "cache", "cache + v2 augmentation") for w in (0, 1)]
    expected += [f"batch loader{aug} ({d})" for d in devices for aug in ("", " + augmentation")]
    expected += [f"batch loader ({devices[-1]}), prefetch {p}, 1 ms step" for p in (0, 2)]
    expected += ["no loader, 1 ms step (the ceiling)"]
    assert list(paths) == expected
    for p in paths.values():
        assert len(p["runs"]) == 2 and p["img_s"] > 0 and p["x_decode"] > 0
    assert paths[result["reference"]]["x_decode"] == 1.0
    assert result["batch_loader_vs_cache_item_0_workers"] == pytest.approx(
        paths["batch loader (cpu)"]["img_s"] / paths["cache per item, DataLoader, 0 workers"]["img_s"], rel=0.01)
    out = capsys.readouterr().out
    assert "median img/s of 2 repetitions" in out and "batch loader + augmentation (cpu)" in out


@pytest.mark.slow                 # timing loops of a tool
def test_train_benchmark_runs_each_batch_size_and_the_batch_loader(tree, tmp_path, capsys):
    result = bench.main(["train", "--model", "mtl", "--image-size", "32", "--width", "0.125",
                         "--batch-size", "2", "3", "--steps", "1", "--warmup", "1", "--windows", "2",
                         "--device", "cpu", "--peak-tflops", "1", "--cache-images", "8", "--batch-loader", "--root", str(tree),
                         "--cache-dir", str(tmp_path), "--augment", "--json", str(tmp_path / "t.json")])
    assert result["train_gflop_per_image"] > 0 and result["parameters"] > 0 and result["compile"] is None
    assert result["num_attributes"] == len(load_annotations(tree).attribute_names) != 1000   # from the tree
    assert [run["batch_size"] for run in result["runs"]] == [2, 3]
    for run in result["runs"]:
        assert run["img_s"] > 0 and len(run["window_img_s"]) == 2 and run["host_syncs_per_step"] is None
        assert run["fraction_of_peak"] > 0 and run["cache"]["img_s"] > 0 and run["cache"]["gather_img_s"] > 0
        loader = run["batch_loader"]
        assert loader["img_s"] > 0 and loader["loader_img_s"] > 0 and loader["augment"] and loader["images"] == len(DeepFashionC(tree, "train", image_size=16))
    assert json.loads((tmp_path / "t.json").read_text())["runs"][1]["batch_size"] == 3
    out = capsys.readouterr().out
    assert "batch 2" in out and "batch 3" in out and "batch loader img/s" in out


def test_batch_loader_needs_a_root(capsys):
    with pytest.raises(SystemExit):
        bench.main(["train", "--batch-loader"])
    assert "--batch-loader needs --root" in capsys.readouterr().err
