"""--pretrained imagenet (vfu_nb.weights): torchvision's weights API, its cache in $TORCH_HOME, a hash-checked
download when the file is missing, one line offline. Nothing is ever downloaded here: torch.hub's download function
is replaced in every test."""

import urllib.error

import pytest
import torch

from test_models import A, C, _fake_vgg_checkpoint
from vfu_nb import pipeline, weights
from vfu_nb.training.runs import train_settings
from vfu_nb.models import build_model
from vfu_nb.weights import WeightsUnavailableError

URL = "https://download.pytorch.org/models/vgg16-397923af.pth"


@pytest.fixture
def torch_home(tmp_path, monkeypatch):
    """An empty TORCH_HOME; any download attempt fails the test unless the test installs its own."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))

    def no_network(url, dst, hash_prefix=None, progress=True):
        raise AssertionError(f"tried to download {url}")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    return tmp_path / "torch"


def backbone_convs(model):
    return {k: v for k, v in model.state_dict().items() if k.startswith("backbone.features.0.")}


@pytest.mark.slow                 # builds full-size (width 1) networks
@pytest.mark.parametrize("backbone, filename", [("vgg16", "vgg16-397923af.pth"), ("vgg16_bn", "vgg16_bn-6c64b313.pth")])
def test_a_cached_file_is_used_as_torchvision_would(torch_home, backbone, filename):
    path = torch_home / "hub" / "checkpoints" / filename
    assert weights.cache_path(backbone) == path
    path.parent.mkdir(parents=True)
    state = _fake_vgg_checkpoint(path, backbone == "vgg16_bn")           # the cache hit: no download
    model = build_model("cat", C, A, image_size=32, width=1.0, backbone=backbone, pretrained="imagenet")
    assert torch.equal(model.state_dict()["backbone.features.0.weight"], state["features.0.weight"])
    local = build_model("cat", C, A, image_size=32, width=1.0, backbone=backbone, pretrained=str(path))   # a path
    assert all(torch.equal(v, backbone_convs(model)[k]) for k, v in backbone_convs(local).items())


def test_a_missing_file_is_downloaded_once_with_its_hash_checked(torch_home, tmp_path, monkeypatch):
    source = tmp_path / "served.pth"
    state = _fake_vgg_checkpoint(source, False)
    calls = []

    def download(url, dst, hash_prefix=None, progress=True):
        calls.append((url, hash_prefix))
        with open(dst, "wb") as f:
            f.write(source.read_bytes())

    monkeypatch.setattr(torch.hub, "download_url_to_file", download)
    loaded = weights.imagenet_state_dict("vgg16")
    assert calls == [(URL, "397923af")]                               # torchvision's URL, the hash in its name
    assert torch.equal(loaded["features.0.weight"], state["features.0.weight"])
    assert (torch_home / "hub" / "checkpoints" / "vgg16-397923af.pth").is_file()
    weights.imagenet_state_dict("vgg16")
    assert len(calls) == 1                                            # from the cache after that


def test_offline_without_the_file_says_which_file_to_put_where(torch_home, monkeypatch):
    def offline(url, dst, hash_prefix=None, progress=True):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    target = torch_home / "hub" / "checkpoints" / "vgg16-397923af.pth"
    with pytest.raises(WeightsUnavailableError) as err:
        build_model("mtl", C, A, image_size=32, width=1.0, pretrained="imagenet")
    assert isinstance(err.value, FileNotFoundError)
    assert str(err.value) == (
        "ImageNet weights for vgg16 (torchvision's VGG16_Weights.IMAGENET1K_V1) are not cached and could not be "
        "downloaded (URLError: <urlopen error [Errno -3] Temporary failure in name resolution>): put "
        f"vgg16-397923af.pth (from {URL}) at {target}")
    assert not target.exists()


def test_a_failed_hash_check_or_a_damaged_cached_file_is_one_line(torch_home, monkeypatch):
    def tampered(url, dst, hash_prefix=None, progress=True):
        raise RuntimeError(f'invalid hash value (expected "{hash_prefix}", got "0badc0de")')

    monkeypatch.setattr(torch.hub, "download_url_to_file", tampered)
    with pytest.raises(WeightsUnavailableError, match=r"^the download of .*vgg16-397923af\.pth \(torchvision's "
                                                      r"VGG16_Weights\.IMAGENET1K_V1\) failed its hash check \(invalid "
                                                      r"hash value .*\); nothing was kept"):
        weights.imagenet_state_dict("vgg16")
    path = weights.cache_path("vgg16_bn")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"PK\x03\x04 not really a checkpoint")
    with pytest.raises(WeightsUnavailableError) as err:
        weights.imagenet_state_dict("vgg16_bn")
    assert str(err.value).startswith(f"{path} (torchvision's VGG16_BN_Weights.IMAGENET1K_V1) is truncated or corrupt (")
    assert str(err.value).endswith("; delete it, and the next run downloads it again (hash-checked), or put "
                                   "torchvision's vgg16_bn-6c64b313.pth from "
                                   "https://download.pytorch.org/models/vgg16_bn-6c64b313.pth there")


def test_the_full_profile_fetches_imagenet_weights_before_anything_runs(torch_home, monkeypatch, tmp_path):
    p = train_settings(pipeline.parameters("full", "02_train_mtl", run_dir=tmp_path))
    assert p["pretrained"] == "imagenet" and p["image_size"] == 224 and p["width"] == 1.0

    def offline(url, dst, hash_prefix=None, progress=True):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    ran = []
    monkeypatch.setattr(pipeline, "run_notebook", lambda *a, **k: ran.append(a) or {})
    with pytest.raises(pipeline.PipelineError, match=r"^ImageNet weights for vgg16 .* put vgg16-397923af\.pth "
                                                     r"\(from .*\) at .*/hub/checkpoints/vgg16-397923af\.pth$"):
        pipeline.run_pipeline("full", run_dir=tmp_path, steps=["02_train_mtl"])
    assert ran == []
    path = weights.cache_path("vgg16")
    path.parent.mkdir(parents=True, exist_ok=True)
    _fake_vgg_checkpoint(path, False)
    pipeline.run_pipeline("full", run_dir=tmp_path, steps=["02_train_mtl"])   # cached: straight to the notebook
    assert len(ran) == 1
