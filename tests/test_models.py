"""Fast CPU tests for vfu_nb.models (whole file well under a minute on 2 cores)."""

import functools
import io
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision

from vfu_nb.models import (
    MODEL_NAMES,
    LandmarkAttention,
    LandmarkBranch,
    LandmarkPooling,
    ModelConfig,
    build_model,
    count_parameters,
    decode_landmarks,
    init_weights,
    parameter_summary,
)

torch.set_num_threads(2)

C, A, S, W, B = 50, 1000, 64, 0.25, 2
LANDMARK_MODELS = [n for n in MODEL_NAMES if n != "cat"]


def small(name, **kw):
    torch.manual_seed(0)
    return build_model(name, C, A, image_size=kw.pop("image_size", S), width=kw.pop("width", W), **kw)


def fake_batch(n=B, size=S):
    g = torch.Generator().manual_seed(1)
    return {
        "image": torch.randn(n, 3, size, size, generator=g),
        "category": torch.randint(0, C, (n,), generator=g),
        "attributes": torch.randint(0, 2, (n, A), generator=g).float(),
        "landmarks": torch.rand(n, 8, 2, generator=g),
    }


def simple_loss(out, batch):
    loss = F.cross_entropy(out["category_logits"], batch["category"])
    loss = loss + F.binary_cross_entropy_with_logits(out["attribute_logits"], batch["attributes"])
    if "landmark_heatmaps" in out:
        loss = loss + out["landmark_heatmaps"].float().pow(2).mean()
    return loss


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_output_keys_and_shapes(name):
    model = small(name)
    out = model(fake_batch()["image"])
    c4 = int(512 * W)
    assert model.name == name
    assert out["category_logits"].shape == (B, C)
    assert out["attribute_logits"].shape == (B, A)
    assert out["features"].shape == (B, c4, S // 8, S // 8)
    assert model.has_landmark_branch == (name != "cat")
    assert model.landmark_supervised == (name not in ("cat", "mtl_no_landmarks"))
    if name == "cat":
        assert "landmark_heatmaps" not in out and "attention" not in out
    else:
        assert out["landmark_heatmaps"].shape == (B, 8, S, S)
        assert out["landmark_heatmaps"].dtype == torch.float32
        assert ("attention" in out) == (name != "mtl_no_attention")
    if "attention" in out:
        att = out["attention"]
        assert att.shape[0] == B and att.shape[-2:] == (S // 8, S // 8)
    for v in out.values():
        assert torch.isfinite(v).all()


def test_mtl_and_mtl_no_landmarks_are_the_same_network():
    a, b = small("mtl"), small("mtl_no_landmarks")
    assert type(a) is type(b)
    assert [(n, p.shape) for n, p in a.named_parameters()] == [(n, p.shape) for n, p in b.named_parameters()]
    assert a.landmark_supervised and not b.landmark_supervised


def test_cat_has_no_landmark_parts():
    model = small("cat")
    names = [n for n, _ in model.named_parameters()]
    assert not any(n.startswith(("landmarks", "attention")) for n in names)
    assert count_parameters(model) < count_parameters(small("mtl"))


@pytest.mark.slow
@pytest.mark.parametrize("name", ["mtl", "cat"])
def test_full_size_shapes(name):
    model = build_model(name, 48, 1000, image_size=224, width=1.0).eval()
    n = count_parameters(model)
    assert 60e6 < n < 80e6, n                     # Liu & Lu: ~76M incl. an unused conv5; ours stops at conv4_3
    assert model.categorization.flat_dim == 512 * 7 * 7 == 25088
    with torch.no_grad():
        out = model(torch.randn(1, 3, 224, 224))
    assert out["features"].shape == (1, 512, 28, 28)
    assert out["category_logits"].shape == (1, 48)
    assert out["attribute_logits"].shape == (1, 1000)
    if name == "mtl":
        assert out["landmark_heatmaps"].shape == (1, 8, 224, 224)
        assert out["attention"].shape == (1, 512, 28, 28)
        assert parameter_summary(model)["backbone"] == 7_635_264    # VGG-16 conv1_1..conv4_3


def test_landmark_branch_is_not_width_scaled_below_one():
    # scaled to width 0.25 (16/16/16/32 -> 16/8/8 channels) the branch did not learn at 64 px; see LandmarkBranch
    thin, full = small("mtl").landmarks, build_model("mtl", C, A, image_size=S, width=1.0).landmarks
    assert thin.mid_channels == full.mid_channels == 128
    shapes = lambda m: [p.shape for n, p in m.named_parameters() if not n.startswith("encoder.0.")]
    assert shapes(thin) == shapes(full)
    assert thin.encoder[0].in_channels == 128 and full.encoder[0].in_channels == 512
    assert [m.out_channels for m in thin.decoder if isinstance(m, nn.ConvTranspose2d)] == [64, 32, 16]
    assert 0.3e6 < count_parameters(thin) < 0.4e6
    assert LandmarkBranch(128, 8, width=2.0).mid_channels == 256       # width > 1 still widens it


def test_vgg16_bn_adds_batchnorm():
    plain = small("mtl")
    bn = small("mtl", backbone="vgg16_bn")
    assert not any(isinstance(m, nn.BatchNorm2d) for m in plain.modules())
    assert sum(isinstance(m, nn.BatchNorm2d) for m in bn.backbone.modules()) == 10
    assert sum(isinstance(m, nn.BatchNorm2d) for m in bn.categorization.block.modules()) == 3
    out = bn.train()(fake_batch()["image"])
    assert out["features"].shape == (B, 128, S // 8, S // 8)


def test_decode_landmarks_convention():
    h = torch.zeros(1, 2, 8, 16)                  # H=8, W=16: x uses W, y uses H
    h[0, 0, 5, 3] = 1.0                           # row 5, column 3
    h[0, 1, 0, 15] = 2.0
    xy = decode_landmarks(h)
    assert xy.dtype == torch.float32 and xy.shape == (1, 2, 2)
    assert torch.allclose(xy[0, 0], torch.tensor([3.5 / 16, 5.5 / 8]))
    assert torch.allclose(xy[0, 1], torch.tensor([15.5 / 16, 0.5 / 8]))
    # round trip with the target convention: crop unit u has its Gaussian centre at pixel index u*S - 0.5
    s = 32
    u = torch.tensor([8.5 / s, 23.5 / s])          # pixel centres 8 and 23
    ys, xs = torch.meshgrid(torch.arange(s).float(), torch.arange(s).float(), indexing="ij")
    cx, cy = u[0] * s - 0.5, u[1] * s - 0.5
    target = torch.exp(-((xs - cx) ** 2 + (ys - cy) ** 2) / 2)
    assert torch.allclose(decode_landmarks(target[None, None].bfloat16())[0, 0], u)


@functools.lru_cache(maxsize=None)
def _fake_vgg_bytes(batch_norm) -> bytes:
    """torchvision's own VGG-16 feature layers (no classifier), random values, as features.* keys: the bytes of
    the saved file, made once per session (a full-size network: 0.3 s each time)."""
    torch.manual_seed(3)
    feats = torchvision.models.vgg.make_layers(torchvision.models.vgg.cfgs["D"], batch_norm=batch_norm)
    state = {f"features.{k}": v.clone() for k, v in feats.state_dict().items()}
    for k, v in state.items():
        if v.is_floating_point():
            v.normal_()
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


def _fake_vgg_checkpoint(path, batch_norm):
    """Write the fake VGG-16 checkpoint (:func:`_fake_vgg_bytes`) to ``path``; returns its state dict."""
    data = _fake_vgg_bytes(batch_norm)
    Path(path).write_bytes(data)
    return torch.load(io.BytesIO(data), weights_only=True)


@pytest.mark.slow                 # builds full-size (width 1) networks
@pytest.mark.parametrize("backbone", ["vgg16", "vgg16_bn"])
def test_pretrained_weights_are_copied(tmp_path, backbone):
    path = tmp_path / "vgg.pth"
    state = _fake_vgg_checkpoint(path, backbone == "vgg16_bn")
    model = build_model("mtl", C, A, image_size=64, width=1.0, backbone=backbone, pretrained=str(path))
    if backbone == "vgg16":
        pairs = {"backbone.features.0.weight": "features.0.weight",          # conv1_1
                 "backbone.features.21.bias": "features.21.bias",            # conv4_3
                 "categorization.block.0.weight": "features.24.weight",      # conv5_1
                 "categorization.block.4.weight": "features.28.weight"}      # conv5_3
    else:
        pairs = {"backbone.features.0.weight": "features.0.weight",
                 "backbone.features.31.running_mean": "features.31.running_mean",   # bn after conv4_3
                 "categorization.block.0.weight": "features.34.weight",
                 "categorization.block.7.running_var": "features.41.running_var"}
    mine = model.state_dict()
    for ours, theirs in pairs.items():
        assert torch.equal(mine[ours], state[theirs]), ours


def test_pretrained_loading_lists_what_it_filled_and_refuses_missing_or_misshapen_keys(tmp_path):
    from vfu_nb.models import load_pretrained_vgg
    path = tmp_path / "vgg.pth"
    state = _fake_vgg_checkpoint(path, False)
    model = build_model("cat", C, A, image_size=32, width=1.0)
    expected = [f"backbone.features.{k}" for k in model.backbone.features.state_dict()] + \
        [f"categorization.block.{k}" for k in model.categorization.block.state_dict()]
    assert load_pretrained_vgg(model, path) == expected
    gone = ["features.0.bias", "features.2.weight", "features.5.bias", "features.7.weight", "features.26.weight"]
    torch.save({k: v for k, v in state.items() if k not in gone}, path)
    with pytest.raises(KeyError) as err:
        load_pretrained_vgg(model, path)
    message = err.value.args[0]                                  # the file, how many keys, the first four, the backbone
    assert message.startswith(str(path)) and " 5 " in message and str(gone[:4]) in message and "vgg16" in message
    torch.save(dict(state, **{"features.2.weight": torch.zeros(64, 64, 1, 1)}), path)
    with pytest.raises(ValueError) as err:
        load_pretrained_vgg(model, path)
    for fact in ("backbone.features.2.weight", "<- features.2.weight", "(64, 64, 3, 3)", "(64, 64, 1, 1)"):
        assert fact in str(err.value), fact                      # both keys and both shapes


def test_pretrained_needs_width_one(tmp_path):
    path = tmp_path / "vgg.pth"
    _fake_vgg_checkpoint(path, False)
    with pytest.raises(ValueError, match="width"):
        build_model("cat", C, A, image_size=64, width=0.25, pretrained=str(path))


@pytest.mark.slow                 # builds full-size (width 1) networks
def test_missing_pretrained_file_names_the_path(tmp_path, monkeypatch):
    missing = tmp_path / "nowhere" / "vgg16.pth"
    with pytest.raises(FileNotFoundError) as err:
        build_model("cat", C, A, image_size=64, width=1.0, pretrained=str(missing))
    assert str(missing) in str(err.value)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "th"))
    with pytest.raises(FileNotFoundError) as err:
        build_model("mtl", C, A, image_size=64, width=1.0, pretrained="torchvision")
    expected = torch.hub.get_dir() + "/checkpoints/vgg16-397923af.pth"
    assert expected in str(err.value)
    assert "https://download.pytorch.org/models/vgg16-397923af.pth" in str(err.value)


@pytest.mark.parametrize("name", ["mtl", "mtl_no_landmarks", "mtl_pool", "mtl_bi"])
def test_category_loss_reaches_landmark_branch(name):
    model = small(name)
    out = model(fake_batch()["image"])
    F.cross_entropy(out["category_logits"], fake_batch()["category"]).backward()
    for p in (model.landmarks.encoder[0].weight, model.landmarks.head.conv.weight):
        assert p.grad is not None and p.grad.abs().sum() > 0


def test_landmark_loss_reaches_categorization_in_mtl_bi():
    model = small("mtl_bi")
    model(fake_batch()["image"])["landmark_heatmaps"].pow(2).mean().backward()
    assert model.feedback.weight.grad.abs().sum() > 0
    # feedback starts at zero, so it does not yet pass gradient into conv5; after one step it does
    with torch.no_grad():
        model.feedback.weight.normal_(0, 0.01)
    model.zero_grad()
    model(fake_batch()["image"])["landmark_heatmaps"].pow(2).mean().backward()
    assert model.categorization.block[0].weight.grad.abs().sum() > 0


def test_mtl_no_attention_classifies_the_unattended_features_like_cat():
    """Same seed: mtl_no_attention's logits equal cat's (the attention is skipped, F goes to conv5), while
    mtl's differ (it sees (1 + A) * F); the landmark loss still reaches the shared backbone."""
    outs = {}
    for name in ("mtl_no_attention", "cat", "mtl"):
        torch.manual_seed(3)
        outs[name] = small(name).eval()(fake_batch()["image"])
    assert "attention" not in outs["mtl_no_attention"] and "attention" in outs["mtl"]
    assert torch.allclose(outs["mtl_no_attention"]["category_logits"], outs["cat"]["category_logits"], atol=1e-6)
    assert not torch.allclose(outs["mtl"]["category_logits"], outs["cat"]["category_logits"], atol=1e-6)
    model = small("mtl_no_attention")
    assert model.landmark_supervised
    model(fake_batch()["image"])["landmark_heatmaps"].pow(2).mean().backward()
    assert model.backbone.features[0].weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.attention.parameters())


def test_mtl_bi_passes_agree_at_init():
    out = small("mtl_bi")(fake_batch()["image"])
    assert torch.equal(out["landmark_heatmaps"], out["landmark_heatmaps_first"])


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_one_training_step(name):
    model = small(name)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    batch = fake_batch()
    before = model.categorization.category_head[0].weight.detach().clone()
    loss = simple_loss(model(batch["image"]), batch)
    assert torch.isfinite(loss)
    opt.zero_grad()
    loss.backward()
    opt.step()
    assert not torch.equal(before, model.categorization.category_head[0].weight)


def test_heatmap_head_stays_fp32_under_autocast():
    model = small("mtl")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(fake_batch()["image"])
    assert out["landmark_heatmaps"].dtype == torch.float32
    assert out["features"].dtype == torch.bfloat16


def test_landmark_pooling_alignment():
    pool = LandmarkPooling(num_landmarks=3, window=3)
    feats = torch.zeros(1, 1, 8, 8)
    feats[0, 0, 2, 5] = 1.0                                  # row 2, column 5
    heat = torch.ones(1, 3, 64, 64)
    coords = torch.tensor([[[5.5 / 8, 2.5 / 8],            # on the cell centre
                            [6.5 / 8, 2.5 / 8],            # one cell right: still inside the 3x3 window
                            [7.5 / 8, 4.5 / 8]]])          # two cells away: outside
    pooled, gate = pool(feats, heat, coords)
    assert pooled.shape == (1, 3, 1) and gate.shape == (1, 3)
    g = torch.sigmoid(torch.tensor(4.0 * 0.5))
    assert torch.allclose(pooled[0, :, 0], torch.stack([g, g, torch.tensor(0.0)]))
    window = pool.window_map(coords, gate, (8, 8))
    assert window.shape == (1, 3, 8, 8) and window[0, 0].gt(0).sum() == 9


def test_bad_arguments():
    with pytest.raises(ValueError, match="unknown model"):
        build_model("resnet", C, A)
    with pytest.raises(ValueError, match="multiple of 32"):
        build_model("cat", C, A, image_size=100, width=W)
    with pytest.raises(ValueError, match="expected images"):
        small("cat")(torch.randn(1, 3, 96, 96))


# ---------------------------------------------------------------------------------------------------------
# ModelConfig


def test_build_model_with_config_equals_positional_arguments():
    config = ModelConfig(C, A, image_size=S, width=W)
    torch.manual_seed(0)
    a = build_model("mtl", config=config)
    torch.manual_seed(0)
    b = build_model("mtl", C, A, 8, S, W, "vgg16", None)              # the positional form train.py uses
    assert a.config == b.config == config and a.image_size == S
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_config_fields_reach_the_model():
    model = build_model("mtl_pool", config=ModelConfig(C, 7, num_landmarks=5, image_size=32, width=0.125,
                                                       backbone="vgg16_bn", pool_window=5))
    assert model.pooling.window == 5 and model.pooling.offsets.shape == (25, 2)
    assert model.landmarks.head.conv.out_channels == 5 and model.local[0].in_features == 5 * 64
    assert model.categorization.attribute_head[2].out_features == 7
    out = model(torch.randn(1, 3, 32, 32))
    assert out["landmark_heatmaps"].shape == (1, 5, 32, 32) and out["attribute_logits"].shape == (1, 7)


def test_config_errors_name_the_field():
    with pytest.raises(ValueError, match="pool_window must be an odd"):
        ModelConfig(C, A, pool_window=4)
    with pytest.raises(ValueError, match="backbone must be one of"):
        ModelConfig(C, A, backbone="resnet50")
    with pytest.raises(ValueError, match="width must be > 0"):
        ModelConfig(C, A, width=0)
    with pytest.raises(TypeError, match="also \\['image_size'\\]"):
        build_model("cat", config=ModelConfig(C, A), image_size=64)
    with pytest.raises(TypeError, match="num_categories and num_attributes"):
        build_model("cat", image_size=64)


# ---------------------------------------------------------------------------------------------------------
# Paired initialisation


def test_paired_initialisation_across_models():
    """At one seed every parameter two models share by name and shape is equal; the global RNG ends equal."""
    models, rng_after = {}, {}
    for name in MODEL_NAMES:
        torch.manual_seed(7)
        models[name] = build_model(name, C, A, image_size=S, width=W)
        rng_after[name] = torch.get_rng_state()
    for name in MODEL_NAMES:
        assert torch.equal(rng_after[name], rng_after["mtl"]), name
    states = {n: m.state_dict() for n, m in models.items()}
    compared = {n: set() for n in MODEL_NAMES}
    for a in MODEL_NAMES:
        for b in MODEL_NAMES:
            for key, value in states[a].items():
                other = states[b].get(key)
                if other is not None and other.shape == value.shape:
                    assert torch.equal(value, other), (a, b, key)
                    compared[a].add(key)
    # the shared parts really were compared (not vacuous): backbone, conv5, heads, landmark branch, attention
    cat_keys = set(states["cat"])
    for name in MODEL_NAMES:
        expected = {k for k in cat_keys if not (name == "mtl_pool" and k.endswith("head.0.weight"))}
        assert expected <= compared[name], name
    landmark_keys = {k for k in states["mtl"] if k.startswith("landmarks.")}
    assert landmark_keys and all(landmark_keys <= set(states[n]) for n in LANDMARK_MODELS)
    attention_keys = {k for k in states["mtl"] if k.startswith("attention.")}
    assert attention_keys <= set(states["mtl_bi"]) and attention_keys <= set(states["mtl_no_landmarks"])
    # mtl_pool's head sees [conv5 features, local features]: same seed stream, different shape
    assert states["mtl_pool"]["categorization.category_head.0.weight"].shape[1] > \
        states["cat"]["categorization.category_head.0.weight"].shape[1]


def test_different_seeds_give_different_weights():
    a = small("cat").state_dict()
    torch.manual_seed(1)
    b = build_model("cat", C, A, image_size=S, width=W).state_dict()
    for key in ("backbone.features.0.weight", "categorization.block.0.weight",
                "categorization.category_head.0.weight", "categorization.attribute_head.2.weight"):
        assert not torch.equal(a[key], b[key]), key


def test_weights_depend_only_on_the_base_seed():
    """Construction-time draws of PyTorch's default init neither leak nor matter, and init uses no global RNG."""
    reference = small("mtl_bi")
    torch.manual_seed(123)
    other = build_model("mtl_bi", C, A, image_size=S, width=W)
    state = torch.get_rng_state()
    init_weights(other, reference.init_seed)
    assert torch.equal(state, torch.get_rng_state())
    ref, got = reference.state_dict(), other.state_dict()
    assert all(torch.equal(ref[k], got[k]) for k in ref)


def test_initialisation_scheme():
    model = small("mtl_bi")
    conv = model.backbone.features[21].weight                             # conv4_3, 128 x 128 x 3 x 3
    assert abs(conv.std().item() / (2 / (conv.shape[0] * 9)) ** 0.5 - 1) < 0.03    # Kaiming fan_out, ReLU
    head = model.categorization.attribute_head[2].weight
    assert abs(head.std().item() - 0.01) < 0.0005 and abs(head.mean().item()) < 0.0005
    assert abs(model.landmarks.head.conv.weight.std().item() - 0.01) < 0.004    # 128 values only
    biases = [m.bias for m in model.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear))]
    assert all(torch.count_nonzero(b) == 0 for b in biases)
    assert torch.count_nonzero(model.feedback.weight) == 0
    pool = small("mtl_pool").pooling
    assert torch.equal(pool.gate_scale, torch.full((8,), 4.0)) and torch.equal(pool.gate_shift, torch.full((8,), 0.5))


# ---------------------------------------------------------------------------------------------------------
# CUDA-clean building blocks


@pytest.mark.parametrize("name", ["cat", "mtl_pool"])
def test_logits_are_fp32_under_bf16_autocast(name):
    model = small(name)
    inputs = {}
    for head in ("category_head", "attribute_head"):
        layer = getattr(model.categorization, head)[2]
        layer.register_forward_hook(lambda m, args, out, head=head: inputs.__setitem__(head, (args[0], out)))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(fake_batch()["image"])
    assert out["features"].dtype == torch.bfloat16                     # autocast is really on
    for head, key in (("category_head", "category_logits"), ("attribute_head", "attribute_logits")):
        hidden, logits = inputs[head]
        assert hidden.dtype == torch.bfloat16 and out[key].dtype == torch.float32
        layer = getattr(model.categorization, head)[2]
        assert torch.equal(out[key], F.linear(hidden.float(), layer.weight, layer.bias))


def test_attention_downsampling_is_an_exact_block_mean():
    heatmaps = torch.randn(2, 8, 64, 64, generator=torch.Generator().manual_seed(0))
    small_maps = LandmarkAttention.downsample(heatmaps, (8, 8))
    torch.testing.assert_close(small_maps, F.adaptive_avg_pool2d(heatmaps, (8, 8)), rtol=0, atol=1e-6)
    torch.testing.assert_close(small_maps[0, 3, 2, 5], heatmaps[0, 3, 16:24, 40:48].mean(), rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="multiple of the feature grid"):
        LandmarkAttention.downsample(heatmaps, (6, 6))


def test_forward_builds_no_tensors_from_python_values(monkeypatch):
    """torch.tensor(..., device=cuda) in forward is a blocking host-to-device copy on every call."""
    models = {name: small(name) for name in MODEL_NAMES}

    def forbidden(*args, **kwargs):
        raise AssertionError("torch.tensor called in forward")

    monkeypatch.setattr(torch, "tensor", forbidden)
    images = fake_batch()["image"]
    for name, model in models.items():
        assert torch.isfinite(model(images)["category_logits"]).all(), name


@pytest.mark.slow                 # builds full-size (width 1) networks
def test_truncated_pretrained_file_gives_one_clear_line(tmp_path):
    path = tmp_path / "vgg16-397923af.pth"
    _fake_vgg_checkpoint(path, False)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(RuntimeError) as err:
        build_model("cat", C, A, image_size=64, width=1.0, pretrained=str(path))
    message = str(err.value)
    assert "\n" not in message and str(path) in message and "truncated or corrupt" in message
    assert "https://download.pytorch.org/models/vgg16-397923af.pth" in message
    assert err.value.__cause__ is None and err.value.__suppress_context__          # no raw zip-reader traceback


# ---------------------------------------------------------------------------------------------------------
# What each network feeds its categorization branch, checked numerically


def _categorization_input(model, images):
    seen = {}
    model.categorization.register_forward_pre_hook(lambda m, args: seen.update(x=args[0].detach().clone()))
    with torch.no_grad():
        out = model(images)
    return out, seen["x"]


@pytest.mark.parametrize("name", ["mtl", "mtl_no_landmarks", "mtl_bi"])
def test_attention_is_applied_as_one_plus_a_times_f(name):
    model = small(name, image_size=32, width=0.125)
    with torch.no_grad():                                     # a non-trivial attention map (init gives A ~ 0)
        model.attention.net[2].bias.normal_(0, 0.5, generator=torch.Generator().manual_seed(0))
    out, x = _categorization_input(model, fake_batch(1, 32)["image"])
    a, f = out["attention"], out["features"]
    assert a.shape == f.shape and a.abs().max() > 0.1 and (a.abs() < 1).all()       # tanh output
    torch.testing.assert_close(x, (1 + a) * f, rtol=0, atol=1e-6)
    assert not torch.allclose(x, a * f, atol=1e-3) and not torch.allclose(x, f + a, atol=1e-3)


def test_cat_feeds_the_features_unchanged():
    model = small("cat", image_size=32, width=0.125)
    out, x = _categorization_input(model, fake_batch(1, 32)["image"])
    assert torch.equal(x, out["features"])


# ---------------------------------------------------------------------------------------------------------
# Landmark pooling in both directions, the feedback path, summaries, checkpoints


def test_landmark_pooling_window_extends_one_cell_each_way_in_y_too():
    pool = LandmarkPooling()
    assert pool.gate_scale.shape == (8,) and pool.window == 3 and pool.offsets.shape == (9, 2)
    feats = torch.zeros(1, 1, 8, 16)                          # h=8, w=16: x and y steps differ
    feats[0, 0, 5, 3] = 1.0
    heat = torch.ones(1, 8, 64, 128)
    coords = torch.zeros(1, 8, 2)
    coords[0, :, 0] = 3.5 / 16
    coords[0, :, 1] = torch.tensor([5.5, 4.5, 6.5, 3.5, 7.5, 5.5, 5.5, 5.5]) / 8   # 0, -1, +1, -2, +2 cells in y
    coords[0, 5:, 0] = torch.tensor([2.5, 4.5, 5.5]) / 16                          # -1, +1, +2 cells in x
    pooled, gate = pool(feats, heat, coords)
    hit = (pooled[0, :, 0] > 0).tolist()
    assert hit == [True, True, True, False, False, True, True, False]
    assert "offsets" not in pool.state_dict()                 # a constant, not a weight to save


def test_model_construction_and_forward_warn_about_nothing():
    torch.set_warn_always(True)          # torch's once-per-process warnings (e.g. meshgrid's) every time
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            for name in ("mtl_pool", "mtl_bi"):
                small(name, image_size=32, width=0.125)(fake_batch(1, 32)["image"])
    finally:
        torch.set_warn_always(False)


def test_mtl_bi_second_pass_adds_the_feedback():
    model = small("mtl_bi", image_size=32, width=0.125)
    with torch.no_grad():
        model.feedback.weight.normal_(0, 0.1, generator=torch.Generator().manual_seed(1))
        model.feedback.bias.fill_(0.3)
        images = fake_batch(1, 32)["image"]
        out = model(images)
        conv5 = {}
        model.categorization.register_forward_hook(lambda m, a, o: conv5.update(x=o[2]))
        model(images)
        mid = model.landmarks.encode(out["features"])
        want = model.landmarks.decode(mid + model.feedback(conv5["x"].mean(dim=(2, 3)))[:, :, None, None])
    torch.testing.assert_close(out["landmark_heatmaps"], want)
    assert not torch.allclose(out["landmark_heatmaps"], out["landmark_heatmaps_first"])


def test_hidden_sizes_follow_width_with_a_floor():
    wide = build_model("mtl_pool", config=ModelConfig(C, 7, image_size=32, width=1.0))
    thin = build_model("mtl_pool", config=ModelConfig(C, 7, image_size=32, width=1 / 32))
    assert wide.local[0].out_features == wide.categorization.hidden == 1024
    assert thin.local[0].out_features == thin.categorization.hidden == 64


def test_parameter_summary_counts_each_part_and_own_parameters():
    model = small("mtl_pool", image_size=32, width=0.125)
    summary = parameter_summary(model)
    assert list(summary) == ["backbone", "landmarks", "pooling", "local", "categorization", "total"]
    assert summary["pooling"] == 16 and summary["total"] == sum(p.numel() for p in model.parameters())
    assert sum(v for k, v in summary.items() if k != "total") == summary["total"]
    assert parameter_summary(LandmarkPooling(4)) == {"(own)": 8, "total": 8}
    for p in model.backbone.parameters():
        p.requires_grad_(False)
    assert count_parameters(model, trainable_only=True) == summary["total"] - summary["backbone"]


def test_checkpoint_errors_give_the_reason_in_one_line(tmp_path, monkeypatch):
    from vfu_nb.models import read_vgg_checkpoint
    path = tmp_path / "weights.pth"
    path.write_bytes(b"")
    for error, reason in ((EOFError("Ran out of input. More detail\nsecond line"), "EOFError: Ran out of input"),
                          (ValueError(""), "ValueError"), (OSError("disk\ngone"), "OSError: disk")):
        def fail(*args, _error=error, **kwargs):
            raise _error
        monkeypatch.setattr(torch, "load", fail)
        with pytest.raises(RuntimeError) as err:
            read_vgg_checkpoint(path)
        message = str(err.value)                                 # one line: the file, the reason, the file to fetch
        assert "\n" not in message and str(path) in message and f"({reason})" in message
        assert "vgg16-397923af.pth" in message


def test_a_checkpoint_that_is_not_plain_weights_is_refused(tmp_path):
    import argparse
    from vfu_nb.models import read_vgg_checkpoint
    path = tmp_path / "weights.pth"
    torch.save({"features.0.weight": torch.zeros(1), "args": argparse.Namespace(lr=1)}, path)
    with pytest.raises(RuntimeError, match="truncated or corrupt"):
        read_vgg_checkpoint(path)
    torch.save({"state_dict": {"features.0.weight": torch.ones(2)}, "epoch": 3}, path)
    assert read_vgg_checkpoint(path).keys() == {"features.0.weight"}


def test_landmark_branch_has_a_relu_after_every_hidden_layer():
    # thesis 3.2.1: four convolutions and three transposed convolutions, each followed by a ReLU
    branch = LandmarkBranch(32, width=0.125)
    kinds = [type(m).__name__ for m in list(branch.encoder) + list(branch.decoder)]
    assert kinds == ["Conv2d", "ReLU"] * 4 + ["ConvTranspose2d", "ReLU"] * 3
    shapes = [(m.in_channels, m.out_channels, m.kernel_size, m.stride, m.padding)
              for m in list(branch.encoder)[::2] + list(branch.decoder)[::2]]
    assert shapes == [(32, 64, (1, 1), (1, 1), (0, 0)), (64, 64, (3, 3), (1, 1), (1, 1)),
                      (64, 64, (3, 3), (1, 1), (1, 1)), (64, 128, (3, 3), (1, 1), (1, 1)),
                      (128, 64, (4, 4), (2, 2), (1, 1)), (64, 32, (4, 4), (2, 2), (1, 1)),
                      (32, 16, (4, 4), (2, 2), (1, 1))]
    assert (branch.head.conv.in_channels, branch.head.conv.out_channels, branch.mid_channels) == (16, 8, 128)


def test_count_parameters_counts_frozen_ones_by_default():
    model = LandmarkPooling(4)
    model.gate_scale.requires_grad_(False)
    assert count_parameters(model) == 8 and count_parameters(model, trainable_only=True) == 4


def test_images_of_the_wrong_rank_are_refused_before_the_network_runs():
    model = small("cat", image_size=32, width=0.125)
    for shape in ((2, 3, 1, 32, 32), (3, 32, 32), (1, 1, 32, 32), (1, 3, 32, 16)):
        with pytest.raises(ValueError) as err:
            model(torch.zeros(shape))
        assert str(err.value).startswith("cat:") and "(B,3,32,32)" in str(err.value)   # the model, wanted, given
        assert str(err.value).endswith(str(shape))


def test_default_arguments_give_the_full_size_parts():
    from vfu_nb.models import VGGBackbone, scaled
    assert scaled(64, 0.01) == 8 and scaled(64, 0.5) == 32
    backbone = VGGBackbone()
    convs = [m for m in backbone.features if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [64, 64, 128, 128, 256, 256, 256, 512, 512, 512]
    assert backbone.out_channels == 512 and not any(isinstance(m, nn.BatchNorm2d) for m in backbone.features)
    branch = LandmarkBranch(512)
    assert branch.encoder[0].out_channels == 64 and branch.mid_channels == 128 and branch.head.conv.out_channels == 8
    attention = LandmarkAttention(512)
    assert (attention.net[0].in_channels, attention.net[0].out_channels) == (520, 64)


def test_heatmaps_must_cover_the_feature_grid_a_whole_number_of_times_on_each_axis():
    heat = torch.arange(32 * 32, dtype=torch.float32).reshape(1, 1, 32, 32)
    assert LandmarkAttention.downsample(heat, (8, 4)).shape == (1, 1, 8, 4)
    for size in ((8, 5), (5, 8)):
        with pytest.raises(ValueError, match=rf"^heatmaps 32x32 are not a whole multiple of the feature grid "
                                             rf"{size[0]}x{size[1]}$"):
            LandmarkAttention.downsample(heat, size)


def test_pretrained_path_names_the_backbones_file_and_folder(tmp_path, monkeypatch):
    from vfu_nb.models import load_pretrained_vgg, pretrained_path
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "th"))
    folder = tmp_path / "th" / "hub" / "checkpoints"
    with pytest.raises(FileNotFoundError) as err:
        pretrained_path("torchvision")
    first, rest = str(err.value).split("\n", 1)                  # the missing file, then its folder and the variable
    assert first.endswith(str(folder / "vgg16-397923af.pth")) and str(folder) in rest and "$TORCH_HOME" in rest
    folder.mkdir(parents=True)
    (folder / "vgg16_bn-6c64b313.pth").write_bytes(b"")
    assert pretrained_path("torchvision", "vgg16_bn") == folder / "vgg16_bn-6c64b313.pth"
    model = build_model("cat", C, A, image_size=32, width=1.0, backbone="vgg16_bn")
    with pytest.raises(RuntimeError, match=r"vgg16_bn-6c64b313\.pth.*vgg16_bn-6c64b313\.pth"):
        load_pretrained_vgg(model, "torchvision")                 # found the (empty) vgg16_bn file, names it twice


def test_a_wrapped_checkpoint_is_unwrapped_only_without_top_level_weights(tmp_path):
    from vfu_nb.models import read_vgg_checkpoint
    path = tmp_path / "weights.pth"
    weights = {"features.0.weight": torch.ones(2), "state_dict": {"features.0.weight": torch.zeros(2)}}
    torch.save(weights, path)
    assert torch.equal(read_vgg_checkpoint(path)["features.0.weight"], torch.ones(2))
    torch.save({"model.0.weight": torch.ones(2)}, path)                  # neither: returned as it is
    assert read_vgg_checkpoint(path).keys() == {"model.0.weight"}


def test_landmark_pooling_keeps_bfloat16_features_in_bfloat16():
    pool = LandmarkPooling()
    feats = torch.randn(2, 16, 8, 8, generator=torch.Generator().manual_seed(0))
    heat = torch.rand(2, 8, 64, 64, generator=torch.Generator().manual_seed(1))
    coords = torch.rand(2, 8, 2, generator=torch.Generator().manual_seed(2))
    full, gate = pool(feats, heat, coords)
    half, half_gate = pool(feats.bfloat16(), heat, coords)
    assert half.dtype == torch.bfloat16 and half_gate.dtype == torch.float32
    torch.testing.assert_close(half.float(), full, atol=0.1, rtol=0.05)
    torch.testing.assert_close(half_gate, gate)


def test_mtl_pool_local_features_and_gate_output():
    model = small("mtl_pool", image_size=32, width=0.125)
    assert [type(m) for m in model.local] == [nn.Linear, nn.ReLU]
    seen = {}
    model.pooling.register_forward_hook(lambda m, args, out: seen.update(gate=out[1]))
    with torch.no_grad():
        out = model(fake_batch(1, 32)["image"])
    assert torch.equal(out["landmark_gate"], seen["gate"])


def test_landmark_parts_follow_the_width_in_every_landmark_model():
    from vfu_nb.models import MTLNet, MTLPoolNet
    thin = small("mtl", image_size=32, width=0.125)
    assert thin.attention.net[0].out_channels == 8 and thin.landmarks.mid_channels == 128     # not below width 1
    config = ModelConfig(C, 7, image_size=32, width=1.125)     # built without the (slow) initialisation
    for wide in (MTLNet("mtl", config), MTLPoolNet("mtl_pool", config)):
        assert wide.landmarks.mid_channels == 144                          # 128 x 1.125: widened above 1
    assert MTLNet("mtl", config).attention.net[0].out_channels == 72


def test_configuration_errors_name_the_field_and_the_value():
    from vfu_nb.models import CATNet
    ModelConfig(1, 1, num_landmarks=1, pool_window=1)                    # the smallest valid values
    for kwargs, message in (({"num_categories": 0}, "ModelConfig.num_categories must be >= 1, got 0"),
                            ({"num_attributes": -2}, "ModelConfig.num_attributes must be >= 1, got -2"),
                            ({"num_landmarks": 0}, "ModelConfig.num_landmarks must be >= 1, got 0"),
                            ({"pool_window": 2}, "ModelConfig.pool_window must be an odd number >= 1, got 2")):
        with pytest.raises(ValueError) as err:
            ModelConfig(**{"num_categories": 3, "num_attributes": 4, **kwargs})
        assert str(err.value) == message
    with pytest.raises(TypeError, match=r"^build_model needs num_categories and num_attributes, or "
                                        r"config=ModelConfig\(\.\.\.\)$"):
        build_model("cat", num_attributes=4)
    with pytest.raises(ValueError, match=r"^CATNet implements \('cat',\), not 'mtl'$"):
        CATNet("mtl", ModelConfig(3, 4))
    with pytest.raises(TypeError, match=r"^config must be a ModelConfig, got dict$"):
        CATNet("cat", {"num_categories": 3})


def test_build_model_passes_the_landmark_count_and_takes_one_draw_for_its_seed():
    import hashlib
    from vfu_nb.models import part_generator
    torch.manual_seed(5)
    seed = int(torch.randint(0, 2**62, ()))
    after_one_draw = torch.rand(1)
    torch.manual_seed(5)
    model = build_model("mtl", 3, 4, num_landmarks=5, image_size=32, width=0.125)
    assert model.init_seed == seed and model.config.num_landmarks == 5
    assert torch.equal(torch.rand(1), after_one_draw)
    digest = hashlib.sha256(f"{seed}/backbone".encode()).digest()
    assert part_generator(seed, "backbone").initial_seed() == int.from_bytes(digest[:8], "little")
