"""View policies: the paper's recipe exactly, the radiograph policy, and the batched device ops against
torchvision's own functions."""

from __future__ import annotations

import math

import pytest
import torch
from torchvision.ops import roi_align
from torchvision.transforms import InterpolationMode, v2
from torchvision.transforms.v2 import functional as F

from btcxr.data.imagenet import IMAGENET_MEAN, IMAGENET_STD
from btcxr.pretrain import batched_views as bv
from btcxr.pretrain.config import ViewsConfig
from btcxr.pretrain.data import SeededViews
from btcxr.pretrain.views import FixedSize, TwoViews, model_input, paper_view


def _image(h: int = 40, w: int = 48, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (1, h, w), dtype=torch.uint8, generator=g)


def test_paper_policy_is_the_barlow_twins_recipe():
    for view, blur_p, sol_p in ((1, 1.0, 0.0), (2, 0.1, 0.2)):
        ops = paper_view(224, view).transforms
        crop, flip, jitter, gray, blur, sol = ops
        assert isinstance(crop, v2.RandomResizedCrop) and crop.size == (224, 224)
        assert crop.scale == (0.08, 1.0) and crop.ratio == pytest.approx((3 / 4, 4 / 3))
        assert crop.interpolation == InterpolationMode.BICUBIC
        assert isinstance(flip, v2.RandomHorizontalFlip) and flip.p == 0.5
        cj = jitter.transforms[0]
        assert jitter.p == 0.8 and isinstance(cj, v2.ColorJitter)
        assert cj.brightness == pytest.approx((0.6, 1.4)) and cj.contrast == pytest.approx((0.6, 1.4))
        assert cj.saturation == pytest.approx((0.8, 1.2)) and cj.hue == pytest.approx((-0.1, 0.1))
        assert isinstance(gray, v2.RandomGrayscale) and gray.p == 0.2
        assert blur.p == blur_p and blur.transforms[0].sigma == [0.1, 2.0]
        assert isinstance(sol, v2.RandomSolarize) and sol.p == sol_p and sol.threshold == 128


def test_paper_ops_keep_the_three_gray_copies_equal():
    """Hue, saturation and grayscale do nothing to a gray image: shipping one channel loses nothing."""
    x = _image(64, 64).repeat(3, 1, 1)
    view = paper_view(32, 2)
    for seed in range(40):
        torch.manual_seed(seed)
        y = view(x)
        assert y.shape == (3, 32, 32) and y.dtype == torch.uint8
        assert torch.equal(y[0], y[1]) and torch.equal(y[0], y[2])


def test_paper_views_solarize_only_the_second_view_a_fifth_of_the_time():
    # on an all-white image a view is dark only when solarised (brightness, contrast, blur keep it >= 153)
    views = TwoViews(ViewsConfig(policy="paper"), 16)
    white = torch.full((1, 24, 24), 255, dtype=torch.uint8)
    torch.manual_seed(0)
    dark = [[float(v.float().mean()) < 128 for v in views(white)] for _ in range(400)]
    assert sum(d[0] for d in dark) == 0
    assert sum(d[1] for d in dark) / 400 == pytest.approx(0.2, abs=0.05)


def test_two_views_are_single_channel_uint8_and_accept_16_bit_caches():
    for policy in ("paper", "radiograph"):
        views = TwoViews(ViewsConfig(policy=policy), 20)
        x16 = _image().to(torch.int32).mul(257).to(torch.uint16)
        torch.manual_seed(0)
        a, b = views(x16)
        torch.manual_seed(0)
        a8, b8 = views(_image())
        assert a.shape == b.shape == (1, 20, 20) and a.dtype == torch.uint8
        assert torch.equal(a, a8) and torch.equal(b, b8)  # 16-bit v * 257 -> the same 8-bit value v


def test_views_are_a_function_of_seed_epoch_and_index():
    images = [_image(seed=i) for i in range(3)]
    data = SeededViews(images, TwoViews(ViewsConfig(policy="radiograph"), 24), seed=5)
    a = data[(0, 1)]
    torch.manual_seed(123)  # the caller's RNG plays no part and is left alone
    state = torch.get_rng_state()
    b = data[(0, 1)]
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], data[(1, 1)][0])  # another epoch, another draw
    assert not torch.equal(a[0], a[1])  # the two views differ


def test_fixed_size_resizes_the_short_side_and_centre_crops():
    x = torch.zeros(1, 40, 80, dtype=torch.uint8)
    x[:, :, 20:60] = 200  # the middle half of the width
    y = FixedSize(20)(x)
    assert y.shape == (1, 20, 20)
    # only the bright middle survives the crop (the antialiasing filter softens its outer columns a little)
    assert bool((y[..., 2:-2] == 200).all()) and int(y.min()) > 150


def test_model_input_applies_imagenet_mean_and_std_per_channel():
    x = torch.tensor([0, 255], dtype=torch.uint8).view(2, 1, 1, 1)
    y = model_input(x, channels_last=True)
    assert y.shape == (2, 3, 1, 1)
    for c in range(3):
        assert y[0, c].item() == pytest.approx(-IMAGENET_MEAN[c] / IMAGENET_STD[c], rel=1e-6)
        assert y[1, c].item() == pytest.approx((1 - IMAGENET_MEAN[c]) / IMAGENET_STD[c], rel=1e-6)


# ------------------------------------------------------------------------------- batched device ops
def test_affine_crop_samples_the_same_points_as_roi_align():
    x = torch.rand(2, 1, 30, 40, generator=torch.Generator().manual_seed(0))
    boxes = torch.tensor([[20.0, 15.0, 40.0, 30.0], [14.5, 12.0, 17.0, 9.0]])  # cx, cy, w, h
    out = bv.affine_crop(x, boxes, 12)
    xyxy = torch.cat([boxes[:, :2] - boxes[:, 2:] / 2, boxes[:, :2] + boxes[:, 2:] / 2], 1)
    rois = torch.cat([torch.arange(2.0).view(2, 1), xyxy], 1)
    ref = roi_align(x, rois, output_size=12, spatial_scale=1.0, sampling_ratio=1, aligned=True)
    assert torch.allclose(out, ref, atol=1e-5)


def test_affine_crop_flip_and_rotation():
    x = torch.rand(1, 1, 16, 16, generator=torch.Generator().manual_seed(1))
    whole = torch.tensor([[8.0, 8.0, 16.0, 16.0]])
    assert torch.allclose(bv.affine_crop(x, whole, 16), x, atol=1e-5)  # the whole image at its size: itself
    flipped = bv.affine_crop(x, whole, 16, flip=torch.tensor([True]))
    assert torch.allclose(flipped, torch.flip(x, dims=[3]), atol=1e-5)
    rotated = bv.affine_crop(x, whole, 16, angle_deg=torch.tensor([90.0]))
    assert torch.allclose(rotated, torch.rot90(x, k=1, dims=(2, 3)), atol=1e-5)


def test_sample_crops_follow_the_random_resized_crop_rule():
    g = torch.Generator().manual_seed(0)
    boxes = bv.sample_crops(2000, 50, 60, (0.35, 1.0), (0.8, 1.25), g, torch.device("cpu"))
    cx, cy, w, h = boxes.unbind(1)
    assert bool(((cx - w / 2) >= 0).all() and ((cx + w / 2) <= 60 + 1e-4).all())
    assert bool(((cy - h / 2) >= 0).all() and ((cy + h / 2) <= 50 + 1e-4).all())
    frac = w * h / (50 * 60)
    assert frac.min() >= 0.35 - 1e-4 and frac.max() <= 1.0 + 1e-4
    ratio = w / h
    assert ratio.min() >= 0.8 - 1e-4 and ratio.max() <= 1.25 + 1e-4


def test_photometric_ops_match_torchvision_per_image():
    x = torch.rand(3, 1, 10, 12, generator=torch.Generator().manual_seed(2))
    f = torch.tensor([0.6, 1.0, 1.4])
    for i in range(3):
        fi = float(f[i])
        assert torch.allclose(bv.brightness(x, f)[i], F.adjust_brightness(x[i], fi), atol=1e-6)
        assert torch.allclose(bv.contrast(x, f)[i], F.adjust_contrast(x[i], fi), atol=1e-6)
        assert torch.allclose(bv.gamma(x, f)[i], F.adjust_gamma(x[i], fi), atol=1e-6)
    apply = torch.tensor([True, False, True])
    sol = bv.solarize(x, apply)
    assert torch.allclose(sol[0], F.solarize(x[0], 128 / 255)) and torch.equal(sol[1], x[1])


def test_batched_blur_matches_torchvision_gaussian_blur():
    x = torch.rand(3, 1, 20, 20, generator=torch.Generator().manual_seed(3))
    sigma = torch.tensor([0.5, 2.0, 0.0])
    out = bv.gaussian_blur(x, sigma, 13)
    for i in (0, 1):
        ref = F.gaussian_blur(x[i], [13, 13], [float(sigma[i])] * 2)
        assert torch.allclose(out[i], ref, atol=1e-5)
    assert torch.allclose(out[2], x[2], atol=1e-6)  # sigma 0: untouched


@pytest.mark.parametrize("policy", ["paper", "radiograph"])
def test_batched_views_draw_per_image(policy):
    cfg, size = ViewsConfig(policy=policy, on_gpu=True), 16
    same = _image(32, 32).expand(8, 1, 32, 32)
    g = torch.Generator().manual_seed(0)
    v1, v2_ = bv.BatchedViews(cfg, size)(same, g)
    assert v1.shape == v2_.shape == (8, 1, 16, 16)
    assert float(v1.min()) >= 0 and float(v1.max()) <= 1
    # eight copies of one image get eight different views
    distinct = {tuple(v.flatten()[:50].tolist()) for v in v1}
    assert len(distinct) == 8
    again = bv.BatchedViews(cfg, size)(same, torch.Generator().manual_seed(0))[0]
    assert torch.equal(v1, again)


def test_batched_paper_views_solarize_only_view_two():
    cfg, size = ViewsConfig(policy="paper", on_gpu=True), 8
    white = torch.full((1000, 1, 12, 12), 255, dtype=torch.uint8)
    v1, v2_ = bv.BatchedViews(cfg, size)(white, torch.Generator().manual_seed(0))
    dark1 = (v1.mean(dim=(1, 2, 3)) < 0.5).float().mean().item()
    dark2 = (v2_.mean(dim=(1, 2, 3)) < 0.5).float().mean().item()
    assert dark1 == 0.0 and dark2 == pytest.approx(0.2, abs=0.04)
    assert not math.isnan(dark2)
