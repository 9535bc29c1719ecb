"""The benchmarks print numbers and return them; tiny sizes only (speed targets live in the README)."""

import json

from vfu_nb import bench


def test_parse_benchmark_round_trips_a_generated_set(tmp_path, capsys):
    result = bench.main(["parse", "--rows", "500", "--json", str(tmp_path / "parse.json")])
    assert result["rows"] == 500 and result["attributes"] == 1000 and result["parse_s"] > 0
    assert json.loads((tmp_path / "parse.json").read_text())["rows"] == 500
    assert "500 rows x 1000 attributes" in capsys.readouterr().out


def test_data_benchmark_reports_both_paths(tmp_path, capsys):
    from vfu_nb.synthetic import generate
    generate(tmp_path / "tree", 30, seed=0, workers=1, progress=False)
    result = bench.main(["data", "--root", str(tmp_path / "tree"), "--image-size", "32", "--items", "20",
                         "--workers", "1"])
    assert result["decode_img_s"] > 0 and result["cache_item_img_s"] > 0
    assert result["images"] == 21            # 14 of every 20 synthetic images are train
    out = capsys.readouterr().out
    assert "decode path" in out and "cache path" in out


def test_train_benchmark_measures_a_tiny_model(capsys):
    result = bench.main(["train", "--model", "mtl", "--image-size", "32", "--width", "0.125",
                         "--batch-size", "2", "--steps", "1", "--warmup", "1", "--windows", "1",
                         "--num-attributes", "10", "--no-cache", "--device", "cpu"])
    assert result["img_s"] > 0 and result["train_gflop_per_image"] > 0 and result["parameters"] > 0
    assert "img/s" in capsys.readouterr().out
