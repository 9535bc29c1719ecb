"""vfu_nb.losses: heatmap targets (peak, pixel convention), masking, attribute/category terms, totals."""

import math

import pytest
import torch

from vfu_nb.losses import (
    LossWeights, attribute_loss, default_heatmap_sigma, gaussian_heatmaps, heatmap_loss, multitask_loss,
)


def test_gaussian_peak_at_pixel_centre_and_decode_roundtrip():
    from vfu_nb.models import decode_landmarks

    S = 16
    # crop unit (i + 0.5) / S is the centre of pixel i -> target peak exactly 1 at that pixel
    coords = torch.tensor([[[(5 + 0.5) / S, (9 + 0.5) / S], [(0 + 0.5) / S, (15 + 0.5) / S]]])
    maps = gaussian_heatmaps(coords, S, S, sigma=1.5)
    assert maps.shape == (1, 2, S, S)
    flat = maps[0, 0].flatten().argmax().item()
    assert divmod(flat, S) == (9, 5)  # (row y, column x)
    assert maps[0, 0, 9, 5].item() == pytest.approx(1.0)
    # neighbours one pixel away: exp(-1 / (2 * 1.5^2))
    assert maps[0, 0, 9, 6].item() == pytest.approx(math.exp(-1 / 4.5))
    assert torch.allclose(decode_landmarks(maps), coords)


def test_gaussian_on_pixel_boundary_is_symmetric():
    S = 16
    coords = torch.tensor([[[5 / S, 8 / S]]])  # continuous position 5.0 -> between pixels 4 and 5
    m = gaussian_heatmaps(coords, S, S, sigma=2.0)[0, 0]
    assert m[7, 4].item() == pytest.approx(m[7, 5].item())
    assert m[7, 4].item() == pytest.approx(m[8, 4].item())


def _batch(B=2, L=8, S=16, visible=None):
    g = torch.Generator().manual_seed(0)
    lm = torch.rand(B, L, 2, generator=g)
    vis = torch.zeros(B, L, dtype=torch.int64) if visible is None else visible
    return lm, vis


def test_heatmap_loss_zero_for_exact_target_and_masking():
    S, sigma = 16, 2.0
    lm, vis = _batch()
    vis[0, 3] = 1   # occluded
    vis[1, 5] = 2   # truncated / outside the crop
    vis[1, 6] = -1  # no such slot
    target = gaussian_heatmaps(lm, S, S, sigma)
    assert heatmap_loss(target, lm, vis, sigma).item() == 0.0
    # garbage in the maps of invisible landmarks changes nothing
    pred = target.clone()
    pred[0, 3] += 7.0
    pred[1, 5] -= 3.0
    pred[1, 6] = float("1e3")
    assert heatmap_loss(pred, lm, vis, sigma).item() == 0.0
    # one wrong pixel in a visible map: error 2 -> sq 4; visible maps = 16 - 3 = 13, each 16*16 pixels
    pred[0, 0, 0, 0] += 2.0
    assert heatmap_loss(pred, lm, vis, sigma).item() == pytest.approx(4 / (13 * 256))


def test_heatmap_loss_no_visible_is_zero_with_gradient():
    lm, _ = _batch()
    vis = torch.full((2, 8), 2, dtype=torch.int64)
    pred = torch.randn(2, 8, 16, 16, requires_grad=True)
    loss = heatmap_loss(pred, lm, vis, 2.0)
    assert loss.item() == 0.0
    loss.backward()
    assert pred.grad is not None and pred.grad.abs().sum() == 0


def test_heatmap_loss_fp32_for_bf16_input():
    lm, vis = _batch()
    target = gaussian_heatmaps(lm, 16, 16, 2.0)
    loss = heatmap_loss(target.to(torch.bfloat16), lm, vis, 2.0)
    assert loss.dtype == torch.float32
    assert loss.item() < 1e-4  # only bf16 rounding of the target remains


def test_attribute_loss_masks_unknown_and_pos_weight():
    logits = torch.tensor([[0.0, 0.0, 50.0]])
    targets = torch.tensor([[1.0, 0.0, 0.0]])
    known = torch.tensor([[1.0, 1.0, 0.0]])  # third label unknown: its huge error must not count
    # BCE at logit 0 = ln 2 for either target -> mean over the 2 known labels = ln 2
    assert attribute_loss(logits, targets, known).item() == pytest.approx(math.log(2))
    # pos_weight 3 multiplies the positive term: (3 ln2 + ln2) / 2 = 2 ln2
    assert attribute_loss(logits, targets, known, pos_weight=3.0).item() == pytest.approx(2 * math.log(2))
    # no mask -> the unknown label counts: (ln2 + ln2 + (50 + log1p(e^-50))) / 3
    assert attribute_loss(logits, targets).item() == pytest.approx((2 * math.log(2) + 50) / 3, rel=1e-5)


def _outputs(B=2, C=4, A=5, S=32, heat=True, dtype=torch.float32):
    out = {"category_logits": torch.zeros(B, C, dtype=dtype), "attribute_logits": torch.zeros(B, A, dtype=dtype)}
    if heat:
        out["landmark_heatmaps"] = torch.zeros(B, 8, S, S, dtype=dtype)
    return out


def _full_batch(B=2, A=5, S=32):
    lm, vis = _batch(B, 8, S)
    return {"image": torch.zeros(B, 3, S, S, dtype=torch.uint8), "category": torch.tensor([1, 3]),
            "attributes": torch.zeros(B, A), "attributes_known": torch.ones(B, A), "landmarks": lm,
            "landmark_visibility": vis}


def test_multitask_loss_terms_and_total():
    S = 32
    batch = _full_batch(S=S)
    out = _outputs(S=S)
    w = LossWeights(category=1.0, attribute=20.0, landmark=1000.0)
    sigma = 3.0
    losses = multitask_loss(out, batch, w, heatmap_sigma=sigma)
    assert set(losses) == {"category", "attribute", "landmark", "total"}
    # zero logits: CE = ln 4, BCE = ln 2; zero heatmaps: MSE = mean(target^2)
    assert losses["category"].item() == pytest.approx(math.log(4))
    assert losses["attribute"].item() == pytest.approx(math.log(2))
    target = gaussian_heatmaps(batch["landmarks"], S, S, sigma)
    assert losses["landmark"].item() == pytest.approx((target ** 2).mean().item(), rel=1e-5)
    want = math.log(4) + 20 * math.log(2) + 1000 * losses["landmark"].item()
    assert losses["total"].item() == pytest.approx(want, rel=1e-5)
    for v in losses.values():
        assert v.dtype == torch.float32 and v.dim() == 0


def test_multitask_loss_without_heatmaps_or_landmark_weight():
    batch = _full_batch()
    for out, w in [(_outputs(heat=False), LossWeights()), (_outputs(), LossWeights(landmark=0.0))]:
        losses = multitask_loss(out, batch, w)
        assert losses["landmark"].item() == 0.0
        assert losses["total"].item() == pytest.approx(math.log(4) + w.attribute * math.log(2), rel=1e-6)


def test_multitask_loss_sigma_scaled_to_heatmap_size_and_bf16():
    # heatmaps at half the input resolution: sigma in input pixels is halved on the map
    batch = _full_batch(S=32)
    out = _outputs(S=16, dtype=torch.bfloat16)
    losses = multitask_loss(out, batch, LossWeights(), heatmap_sigma=4.0)
    target = gaussian_heatmaps(batch["landmarks"], 16, 16, 2.0)
    assert losses["landmark"].item() == pytest.approx((target ** 2).mean().item(), rel=1e-5)
    assert losses["total"].dtype == torch.float32


def test_default_sigma_scales_with_size_above_a_4px_floor():
    assert default_heatmap_sigma(224) == pytest.approx(5.0)      # thesis setting unchanged
    assert default_heatmap_sigma(448) == pytest.approx(10.0)
    assert default_heatmap_sigma(192) == pytest.approx(5.0 * 192 / 224)
    for S in (32, 64, 96, 128):                                  # CPU sizes: half a stride-8 feature cell
        assert default_heatmap_sigma(S) == pytest.approx(4.0)


def test_default_sigma_keeps_initial_landmark_term_same_order_as_category():
    # with near-zero predictions the heatmap MSE is ~ pi sigma^2 / S^2, independent of S above the floor
    for S in (64, 224):
        sigma = default_heatmap_sigma(S)
        coords = torch.full((1, 8, 2), 0.5)
        mse = (gaussian_heatmaps(coords, S, S, sigma) ** 2).mean().item()
        assert mse == pytest.approx(math.pi * sigma ** 2 / S ** 2, rel=0.02)
        if S >= 180:
            assert 0.3 < LossWeights().landmark * mse < 5  # same order as ln(48) = 3.9
        else:
            assert 5 < LossWeights().landmark * mse < 20   # the 4 px floor: ~12 at 64 px (documented)


def test_reduce_counts_hook_rescales_denominators():
    batch = _full_batch()
    out = _outputs()
    base = multitask_loss(out, batch, LossWeights())
    doubled = multitask_loss(out, batch, LossWeights(), reduce_counts=lambda c: 2 * c)
    for k in ("category", "attribute", "landmark", "total"):
        assert doubled[k].item() == pytest.approx(base[k].item() / 2, rel=1e-6)


# ops of the multi-task loss (forward and backward) that have no deterministic CUDA implementation, or only one
# under torch.use_deterministic_algorithms (see its documentation)
NONDETERMINISTIC_ON_CUDA = {"nll_loss_forward", "nll_loss_backward", "nll_loss2d_forward", "nll_loss2d_backward",
                            "scatter_add", "scatter_add_", "scatter_reduce", "index_add", "index_add_", "index_put",
                            "index_put_", "put_", "gather", "histc", "bincount", "cumsum", "embedding_dense_backward"}


def _recorded_ops(device: str) -> set:
    from torch.utils._python_dispatch import TorchDispatchMode

    ops = set()

    class Record(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            ops.add(func.overloadpacket.__name__)
            return func(*args, **(kwargs or {}))

    B, C, A, S = 4, 6, 10, 16
    out = {"category_logits": torch.randn(B, C, device=device, requires_grad=True),
           "attribute_logits": torch.randn(B, A, device=device, requires_grad=True),
           "landmark_heatmaps": torch.randn(B, 8, S, S, device=device, requires_grad=True)}
    batch = {"image": torch.zeros(B, 3, S, S, dtype=torch.uint8, device=device),
             "category": torch.zeros(B, dtype=torch.int64, device=device),
             "attributes": torch.zeros(B, A, device=device), "attributes_known": torch.ones(B, A, device=device),
             "landmarks": torch.rand(B, 8, 2, device=device),
             "landmark_visibility": torch.zeros(B, 8, dtype=torch.int64, device=device)}
    with Record():
        losses = multitask_loss(out, batch, LossWeights(), attr_pos_weight=2.0)
        losses["total"].backward()
    return ops


def test_loss_off_the_cpu_uses_only_deterministic_ops():
    # "meta" stands in for CUDA: the same device-independent code path, recorded op by op (forward + backward)
    ops = _recorded_ops("meta")
    assert "binary_cross_entropy_with_logits" in ops and "_log_softmax_backward_data" in ops
    assert not ops & NONDETERMINISTIC_ON_CUDA, ops & NONDETERMINISTIC_ON_CUDA
    assert "nll_loss_forward" in _recorded_ops("cpu")          # the CPU keeps F.cross_entropy (the recorder works)


def test_category_term_is_the_same_off_the_cpu():
    from vfu_nb.losses import masked_cross_entropy_sum

    g = torch.Generator().manual_seed(0)
    logits = (torch.randn(16, 48, generator=g) * 4).requires_grad_()
    target = torch.randint(0, 48, (16,), generator=g)
    cpu = torch.nn.functional.cross_entropy(logits, target, reduction="sum")
    masked = masked_cross_entropy_sum(logits, target)
    assert masked.item() == pytest.approx(cpu.item(), rel=1e-6)
    (ga,) = torch.autograd.grad(cpu, logits)
    (gb,) = torch.autograd.grad(masked, logits)
    assert torch.allclose(ga, gb, atol=1e-6)


# ---------------------------------------------------------------------------------------------------------
# The training path: masking and options reach the terms through multitask_loss, labels may stay on the host


def test_multitask_loss_leaves_unknown_attribute_labels_out():
    batch = _full_batch()
    out = _outputs()
    out["attribute_logits"] = torch.tensor([[0.0, 40.0, 0.0, -40.0, 0.0], [0.0, 0.0, 40.0, 0.0, 0.0]])
    batch["attributes_known"] = torch.tensor([[1.0, 0.0, 1.0, 0.0, 1.0], [1.0, 1.0, 0.0, 1.0, 1.0]])
    batch["attributes"][0, 3] = 1.0                     # an unknown label that would cost 40 nats if it counted
    losses = multitask_loss(out, batch, LossWeights())
    # every known label has logit 0 and costs ln 2; the unknown ones (logits +-40, target 0 or 1) count nowhere
    assert losses["attribute"].item() == pytest.approx(math.log(2), rel=1e-6)
    assert losses["total"].item() == pytest.approx(math.log(4) + 20 * math.log(2) + 1000 * losses["landmark"].item(),
                                                   rel=1e-5)
    del batch["attributes_known"]                       # no mask: every label counts
    unmasked = multitask_loss(out, batch, LossWeights())["attribute"].item()
    assert unmasked == pytest.approx((7 * math.log(2) + 40 + 40 + 40) / 10, rel=1e-4)


def test_multitask_loss_passes_the_positive_weight():
    batch = _full_batch()
    batch["attributes"][:, 0] = 1.0                     # 2 positives among 10 labels, all at logit 0
    for pos_weight in (3.0, torch.tensor([3.0, 1.0, 1.0, 1.0, 1.0])):
        losses = multitask_loss(_outputs(), batch, LossWeights(), attr_pos_weight=pos_weight)
        assert losses["attribute"].item() == pytest.approx((2 * 3 + 8) * math.log(2) / 10, rel=1e-6)


def test_heatmap_sigma_follows_the_heatmap_width_without_an_image():
    batch = _full_batch(S=32)
    del batch["image"]                                  # sigma is then in heatmap pixels
    losses = multitask_loss(_outputs(S=16), batch, LossWeights(), heatmap_sigma=3.0)
    target = gaussian_heatmaps(batch["landmarks"], 16, 16, 3.0)
    assert losses["landmark"].item() == pytest.approx((target ** 2).mean().item(), rel=1e-5)


def test_reduced_counts_below_one_divide_exactly():
    # DDP: all_reduce(counts) / world can be a fraction (a rank that holds all of few labels)
    batch, out = _full_batch(), _outputs()
    base = multitask_loss(out, batch, LossWeights())
    quarter = multitask_loss(out, batch, LossWeights(), reduce_counts=lambda c: c / 40)
    for k in ("category", "attribute", "landmark", "total"):
        assert quarter[k].item() == pytest.approx(base[k].item() * 40, rel=1e-5), k


def test_a_single_label_or_pixel_is_its_own_mean():
    logits, targets = torch.tensor([[2.0, -1.0]]), torch.tensor([[1.0, 1.0]])
    one_known = attribute_loss(logits, targets, torch.tensor([[0.0, 1.0]]))
    assert one_known.item() == pytest.approx(math.log1p(math.exp(1.0)), rel=1e-6)      # BCE of logit -1, target 1
    lm, vis = torch.tensor([[[0.5, 0.5], [0.5, 0.5]]]), torch.tensor([[0, 1]])
    assert heatmap_loss(torch.full((1, 2, 1, 1), 3.0), lm, vis, 1.0).item() == pytest.approx(4.0)   # (3 - 1)^2


def test_label_dtypes_do_not_change_the_loss():
    logits = torch.tensor([[0.5, -1.0, 2.0], [1.5, 0.0, -0.5]])
    targets = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 1.0]])
    known = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 1.0]])
    want = attribute_loss(logits, targets, known, pos_weight=torch.tensor([2.0, 1.0, 0.5]))
    got = attribute_loss(logits, targets.bool(), known.double(), pos_weight=torch.tensor([2.0, 1.0, 0.5]).double())
    assert got.dtype == torch.float32 and got.item() == pytest.approx(want.item(), rel=1e-6)
    coords = torch.rand(2, 8, 2, dtype=torch.float64)
    assert gaussian_heatmaps(coords, 8, 8, 2.0).dtype == torch.float32
    assert gaussian_heatmaps(coords.float(), 8, 8, 2.0, dtype=torch.float64).dtype == torch.float64


@pytest.mark.parametrize("heat", [True, False])
def test_labels_on_the_host_losses_on_the_outputs_device(heat):
    # "meta" stands in for CUDA: mixing it with host tensors raises, so every label must be moved to the outputs
    out = {k: v.to("meta") for k, v in _outputs(heat=heat).items()}
    batch = _full_batch()
    losses = multitask_loss(out, batch, LossWeights(), attr_pos_weight=torch.full((5,), 2.0))
    assert {v.device.type for v in losses.values()} == {"meta"}
    assert attribute_loss(out["attribute_logits"], batch["attributes"], batch["attributes_known"],
                          pos_weight=2.0).device.type == "meta"
    if heat:
        assert heatmap_loss(out["landmark_heatmaps"], batch["landmarks"], batch["landmark_visibility"],
                            2.0).device.type == "meta"


def test_a_float64_positive_weight_is_used_in_float32():
    logits, targets = torch.tensor([[0.3, 1.3]]), torch.ones(1, 2)
    weight = torch.tensor([0.1, 1.7], dtype=torch.float64)            # not exact in float32
    for k in range(2):                                                # one label: the loss is that label's term
        known = torch.tensor([[1.0 - k, float(k)]])
        want = attribute_loss(logits, targets, known, pos_weight=weight.float())
        assert torch.equal(attribute_loss(logits, targets, known, pos_weight=weight), want), k   # bit for bit
