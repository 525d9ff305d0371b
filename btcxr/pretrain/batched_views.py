"""Both view policies for a whole batch at once on the training device (`views.on_gpu: true`), with a
separate random draw for every image (torchvision's v2 transforms draw one set of parameters per call, so
on a batch every image would get the same crop).

Hand-written from batched tensor ops: crop, flip and rotation are one affine grid per image sampled with
grid_sample; brightness, contrast, gamma, blur (grouped separable convolution), solarize and noise are
element-wise with per-image parameters. Each op matches its torchvision.transforms.v2.functional
counterpart on float images (tests/test_views.py). For the paper's policy the hue, saturation and
grayscale steps are left out: on a gray image they change nothing (the loader path shows it), and the
ColorJitter's random order reduces to brightness-then-contrast or the reverse, drawn per image.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as tnf

from btcxr.pretrain.config import ViewsConfig
from btcxr.pretrain.views import PAPER_BLUR_P, PAPER_BLUR_SIGMA, PAPER_SOLARIZE_P, blur_kernel_size


def _uniform(n: int, low: float, high: float, gen: torch.Generator, device: torch.device) -> torch.Tensor:
    return low + (high - low) * torch.rand(n, generator=gen, device=device)


def _coin(n: int, p: float, gen: torch.Generator, device: torch.device) -> torch.Tensor:
    return torch.rand(n, generator=gen, device=device) < p


def sample_crops(n: int, height: int, width: int, scale: tuple[float, float], ratio: tuple[float, float],
                 gen: torch.Generator, device: torch.device, tries: int = 10) -> torch.Tensor:
    """RandomResizedCrop's box rule for n images at once: (n, 4) = centre x, centre y, width, height in
    pixels. Ten draws per image, the first that fits wins; otherwise the whole image at a clamped ratio."""
    area = height * width * _uniform(n * tries, scale[0], scale[1], gen, device).view(n, tries)
    log_r = _uniform(n * tries, math.log(ratio[0]), math.log(ratio[1]), gen, device).view(n, tries)
    w = torch.sqrt(area * torch.exp(log_r))
    h = torch.sqrt(area / torch.exp(log_r))
    fits = (w <= width) & (h <= height)
    first = torch.where(fits.any(1), fits.float().argmax(1), torch.full((n,), -1, device=device))
    in_ratio = width / height
    if in_ratio < ratio[0]:
        fw, fh = float(width), width / ratio[0]
    elif in_ratio > ratio[1]:
        fw, fh = height * ratio[1], float(height)
    else:
        fw, fh = float(width), float(height)
    idx = first.clamp(min=0).unsqueeze(1)
    w = torch.where(first >= 0, w.gather(1, idx).squeeze(1), torch.full((n,), fw, device=device))
    h = torch.where(first >= 0, h.gather(1, idx).squeeze(1), torch.full((n,), fh, device=device))
    cx = w / 2 + (width - w) * torch.rand(n, generator=gen, device=device)
    cy = h / 2 + (height - h) * torch.rand(n, generator=gen, device=device)
    return torch.stack([cx, cy, w, h], 1)


def affine_crop(x: torch.Tensor, boxes: torch.Tensor, size: int, flip: torch.Tensor | None = None,
                angle_deg: torch.Tensor | None = None, mode: str = "bilinear",
                padding_mode: str = "border") -> torch.Tensor:
    """Resample box (cx, cy, w, h) of each image to size x size, mirrored where `flip`, rotated by
    `angle_deg` about the box centre. Output pixel j samples input x = left + (j + 0.5) * w / size - 0.5,
    the same points as torchvision's resize and roi_align(aligned=True)."""
    n, _, height, width = x.shape
    cx, cy, w, h = boxes.unbind(1)
    sign = 1.0 - 2.0 * flip.float() if flip is not None else torch.ones_like(w)
    a = torch.deg2rad(angle_deg) if angle_deg is not None else torch.zeros_like(w)
    cos, sin = torch.cos(a), torch.sin(a)
    theta = torch.stack([
        torch.stack([cos * w * sign / width, -sin * h / width, 2 * cx / width - 1], 1),
        torch.stack([sin * w * sign / height, cos * h / height, 2 * cy / height - 1], 1),
    ], 1)
    grid = tnf.affine_grid(theta, [n, x.shape[1], size, size], align_corners=False)
    out = tnf.grid_sample(x, grid, mode=mode, padding_mode=padding_mode, align_corners=False)
    return out.clamp_(0, 1) if mode == "bicubic" else out


def _per_image(v: torch.Tensor) -> torch.Tensor:
    return v.view(-1, 1, 1, 1)


def brightness(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return (x * _per_image(factor)).clamp(0, 1)


def contrast(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    f = _per_image(factor)
    return (f * x + (1 - f) * mean).clamp(0, 1)


def gamma(x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    return x.pow(_per_image(g)).clamp(0, 1)


def solarize(x: torch.Tensor, apply: torch.Tensor, threshold: float = 128 / 255) -> torch.Tensor:
    return torch.where(_per_image(apply) & (x >= threshold), 1 - x, x)


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """Separable Gaussian blur with one sigma per image (sigma <= 0: left as is), reflect padding."""
    n, c, height, width = x.shape
    half = (kernel_size - 1) / 2
    t = torch.linspace(-half, half, kernel_size, device=x.device)
    s = sigma.clamp(min=1e-6).view(-1, 1)
    k = torch.exp(-0.5 * (t / s) ** 2)
    k = k / k.sum(1, keepdim=True)
    identity = (t == 0).float().expand_as(k)
    k = torch.where((sigma > 0).view(-1, 1), k, identity).repeat_interleave(c, 0)
    pad = kernel_size // 2
    y = tnf.pad(x.reshape(1, n * c, height, width), (pad, pad, pad, pad), mode="reflect")
    y = tnf.conv2d(y, k.view(n * c, 1, 1, kernel_size), groups=n * c)
    y = tnf.conv2d(y, k.view(n * c, 1, kernel_size, 1), groups=n * c)
    return y.view(n, c, height, width)


class BatchedViews:
    """uint8 batch (B, 1, H, W) on the device -> two float views (B, 1, size, size) in [0, 1]."""

    def __init__(self, cfg: ViewsConfig, size: int):
        self.cfg, self.size = cfg, size

    def __call__(self, images: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        x = images.float().div_(255.0) if images.dtype == torch.uint8 else images.float()
        make = self._paper if self.cfg.policy == "paper" else self._radiograph
        return make(x, 1, gen), make(x, 2, gen)

    def _paper(self, x: torch.Tensor, view: int, gen: torch.Generator) -> torch.Tensor:
        n, dev = x.shape[0], x.device
        boxes = sample_crops(n, x.shape[2], x.shape[3], (0.08, 1.0), (3 / 4, 4 / 3), gen, dev)
        y = affine_crop(x, boxes, self.size, flip=_coin(n, 0.5, gen, dev), mode="bicubic")
        y = self._jitter(y, 0.8, 0.4, 0.4, gen)
        sigma = _uniform(n, *PAPER_BLUR_SIGMA, gen, dev)
        sigma = torch.where(_coin(n, PAPER_BLUR_P[view - 1], gen, dev), sigma, torch.zeros_like(sigma))
        y = gaussian_blur(y, sigma, blur_kernel_size(PAPER_BLUR_SIGMA[1]))
        return solarize(y, _coin(n, PAPER_SOLARIZE_P[view - 1], gen, dev))

    def _radiograph(self, x: torch.Tensor, view: int, gen: torch.Generator) -> torch.Tensor:
        rc, n, dev = self.cfg.radiograph, x.shape[0], x.device
        boxes = sample_crops(n, x.shape[2], x.shape[3], tuple(rc.crop_scale), tuple(rc.crop_ratio), gen, dev)
        angle = _uniform(n, -rc.rotation_deg, rc.rotation_deg, gen, dev)
        y = affine_crop(x, boxes, self.size, flip=_coin(n, rc.flip_p, gen, dev), angle_deg=angle,
                        mode="bicubic", padding_mode="zeros")
        y = self._jitter(y, rc.jitter_p, rc.brightness, rc.contrast, gen)
        g = torch.exp(_uniform(n, math.log(rc.gamma[0]), math.log(rc.gamma[1]), gen, dev))
        y = gamma(y, torch.where(_coin(n, rc.gamma_p, gen, dev), g, torch.ones_like(g)))
        sigma = _uniform(n, rc.blur_sigma[0], rc.blur_sigma[1], gen, dev)
        sigma = torch.where(_coin(n, rc.blur_p[view - 1], gen, dev), sigma, torch.zeros_like(sigma))
        y = gaussian_blur(y, sigma, blur_kernel_size(rc.blur_sigma[1]))
        noise = torch.randn(y.shape, generator=gen, device=dev) * rc.noise_std
        return (y + noise * _per_image(_coin(n, rc.noise_p, gen, dev))).clamp(0, 1)

    @staticmethod
    def _jitter(y: torch.Tensor, p: float, b: float, c: float, gen: torch.Generator) -> torch.Tensor:
        """ColorJitter's brightness and contrast, in a random order per image, applied with probability p."""
        n, dev = y.shape[0], y.device
        on = _coin(n, p, gen, dev)
        fb = torch.where(on, _uniform(n, max(0.0, 1 - b), 1 + b, gen, dev), torch.ones(n, device=dev))
        fc = torch.where(on, _uniform(n, max(0.0, 1 - c), 1 + c, gen, dev), torch.ones(n, device=dev))
        b_first = contrast(brightness(y, fb), fc)
        c_first = brightness(contrast(y, fc), fb)
        return torch.where(_per_image(_coin(n, 0.5, gen, dev)), b_first, c_first)
