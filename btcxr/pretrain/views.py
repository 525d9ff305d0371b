"""The two augmented views of each radiograph, made per image in the data loader (torchvision.transforms.v2
on single-channel uint8 tensors), plus the device-side input normalisation.

Policies (config `views.policy`):
- "paper": the Barlow Twins views exactly as the paper ran them: the gray image copied to three channels,
  RandomResizedCrop(224, bicubic), flip 0.5, ColorJitter(0.4, 0.4, 0.2, 0.1) p 0.8, RandomGrayscale p 0.2,
  Gaussian blur sigma 0.1-2 (p 1.0 view 1, 0.1 view 2), solarize (p 0.0 view 1, 0.2 view 2). On a gray
  image hue, saturation and grayscale change nothing, so the three channels stay equal (tested) and one is
  shipped; ImageNet mean/std are applied per channel on the device (`model_input`).
- "radiograph": no hue/saturation, small rotations, crops that keep most of the anatomy, brightness,
  contrast and gamma, some blur and noise (`RadiographViewsConfig`).

With `views.on_gpu` the loader only brings every image to one fixed size (`fixed_size`) and
`btcxr.pretrain.batched_views` makes the views for the whole batch on the device.
"""

from __future__ import annotations

import math

import torch
from torchvision.transforms import InterpolationMode, v2
from torchvision.transforms.v2 import functional as F

from btcxr.data.imagenet import gray_to_imagenet
from btcxr.pretrain.config import RadiographViewsConfig, ViewsConfig

PAPER_BLUR_SIGMA = (0.1, 2.0)
PAPER_BLUR_P = (1.0, 0.1)
PAPER_SOLARIZE_P = (0.0, 0.2)


def blur_kernel_size(sigma_max: float) -> int:
    """Odd kernel reaching 3 sigma each side (PIL's blur, which the paper used, has no fixed size)."""
    return 2 * math.ceil(3 * sigma_max) + 1


def paper_view(size: int, view: int) -> v2.Compose:
    """View 1 or 2 of the Barlow Twins recipe, for a 3-channel uint8 tensor."""
    return v2.Compose([
        v2.RandomResizedCrop(size, interpolation=InterpolationMode.BICUBIC, antialias=True),
        v2.RandomHorizontalFlip(p=0.5),
        v2.RandomApply([v2.ColorJitter(brightness=0.4, contrast=0.4, saturation=0.2, hue=0.1)], p=0.8),
        v2.RandomGrayscale(p=0.2),
        v2.RandomApply([v2.GaussianBlur(blur_kernel_size(PAPER_BLUR_SIGMA[1]), sigma=PAPER_BLUR_SIGMA)],
                       p=PAPER_BLUR_P[view - 1]),
        v2.RandomSolarize(threshold=128, p=PAPER_SOLARIZE_P[view - 1]),
    ])


class RandomGamma:
    """x -> x ** gamma with gamma log-uniform in [low, high], with probability p."""

    def __init__(self, gamma: tuple[float, float] | list[float], p: float):
        self.log_low, self.log_high = math.log(gamma[0]), math.log(gamma[1])
        self.p = p

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if torch.rand(()) >= self.p:
            return x
        gamma = math.exp(self.log_low + float(torch.rand(())) * (self.log_high - self.log_low))
        return F.adjust_gamma(x, gamma)


class RandomNoise:
    """Additive Gaussian noise (std as a fraction of the full range) on uint8 images, with probability p.
    v2.GaussianNoise only takes float images; the loader ships uint8."""

    def __init__(self, std: float, p: float):
        self.std, self.p = std, p

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if torch.rand(()) >= self.p:
            return x
        noisy = x.float() + torch.randn(x.shape) * (self.std * 255.0)
        return noisy.round_().clamp_(0, 255).to(torch.uint8)


def radiograph_view(size: int, view: int, rc: RadiographViewsConfig) -> v2.Compose:
    """View 1 or 2 of the radiograph policy, for a 1-channel uint8 tensor."""
    return v2.Compose([
        v2.RandomRotation(rc.rotation_deg, interpolation=InterpolationMode.BILINEAR),
        v2.RandomResizedCrop(size, scale=tuple(rc.crop_scale), ratio=tuple(rc.crop_ratio),
                             interpolation=InterpolationMode.BICUBIC, antialias=True),
        v2.RandomHorizontalFlip(p=rc.flip_p),
        v2.RandomApply([v2.ColorJitter(brightness=rc.brightness, contrast=rc.contrast)], p=rc.jitter_p),
        RandomGamma(rc.gamma, rc.gamma_p),
        v2.RandomApply([v2.GaussianBlur(blur_kernel_size(rc.blur_sigma[1]), sigma=tuple(rc.blur_sigma))],
                       p=rc.blur_p[view - 1]),
        RandomNoise(rc.noise_std, rc.noise_p),
    ])


def as_uint8(image: torch.Tensor) -> torch.Tensor:
    """8-bit view of a cache image (16-bit caches are scaled down)."""
    return image if image.dtype == torch.uint8 else F.to_dtype(image, torch.uint8, scale=True)


class TwoViews:
    """image (1, H, W) uint8/uint16 -> (view 1, view 2), each (1, size, size) uint8."""

    def __init__(self, cfg: ViewsConfig, size: int):
        self.three_channel = cfg.policy == "paper"  # as the paper: RGB copies through the whole pipeline
        if cfg.policy == "paper":
            self.views = (paper_view(size, 1), paper_view(size, 2))
        else:
            self.views = tuple(radiograph_view(size, v, cfg.radiograph) for v in (1, 2))

    def __call__(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.view(image, 0), self.view(image, 1)

    def view(self, image: torch.Tensor, which: int) -> torch.Tensor:
        x = as_uint8(image)
        if self.three_channel:
            x = x.repeat(3, 1, 1)
        # the three channels of a gray image stay equal under the paper's ops: keep one
        return self.views[which](x)[:1]


class LabelledView:
    """(image, target) -> (view 1 of the image, target): the input of supervised pre-training."""

    def __init__(self, cfg: ViewsConfig, size: int):
        self.views = TwoViews(cfg, size)

    def __call__(self, item: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        image, target = item
        return self.views.view(image, 0), target


class FixedSize:
    """The loader's only job under `views.on_gpu`: resize the shorter side and centre-crop to one size."""

    def __init__(self, size: int):
        self.size = size

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        x = F.resize(as_uint8(image), [self.size], interpolation=InterpolationMode.BILINEAR, antialias=True)
        return F.center_crop(x, [self.size, self.size])


def loader_transform(cfg: ViewsConfig, size: int) -> TwoViews | FixedSize:
    """What the loader does to each image: both views of size x size px, or (views.on_gpu) one fixed crop."""
    return FixedSize(cfg.load_size or size) if cfg.on_gpu else TwoViews(cfg, size)


def model_input(x: torch.Tensor, channels_last: bool = False) -> torch.Tensor:
    """Gray batch (B, 1, H, W), uint8 or float in [0, 1], on the device -> ImageNet-normalised 3 channels."""
    x = gray_to_imagenet(x)
    return x.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
