"""EILEV's video augmentation, computed as pytorchvideo computes it.

EILEV trains with pytorchvideo's ``RandAugment(magnitude=5)`` and ``RandomResizedCrop``;
pytorchvideo 0.1.5 (its last release) no longer imports with current torchvision, so the two are
written here from its code: the same operations, arguments and random draws from torch's
generator in the same order, so a clip gets what EILEV's loader would give it under the same torch
seed.

RandAugment: ``num_layers`` of the 14 operations are drawn without replacement
(``torch.multinomial``); each is applied with probability ``prob``, at a magnitude drawn from
N(magnitude, 0.5) clipped to [0, 10] and mapped linearly onto the operation's range (half the time
negated for the signed ones); geometric operations fill with 0.5 (black on uint8 frames). The
random resized crop draws one box for all frames (an area of ``scale``, a log-uniform aspect of
``ratio``, 10 tries, then the centre) and resizes it with ``torch.nn.functional.interpolate``
(no antialiasing).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as F

MAX_LEVEL = 10
FILL = [0.5, 0.5, 0.5]
MAGNITUDE_STD = 0.5


def _signed(level: float, span: float, base: float = 0.0) -> float:
    value = level / MAX_LEVEL * span
    return base + (value if torch.rand(1).item() > 0.5 else -value)


def _grid_affine(video: torch.Tensor, matrix: list[float]) -> torch.Tensor:
    """Sample ``video`` (``[..., C, H, W]``) at ``matrix`` applied to each output pixel's centred
    coordinates (in pixels), bilinear, the outside filled with :data:`FILL`."""
    h, w = video.shape[-2:]
    lead = video.shape[:-3]
    x = video.reshape(-1, *video.shape[-3:])
    dtype = x.dtype if x.is_floating_point() else torch.float32
    xs = torch.linspace(-w * 0.5 + 0.5, w * 0.5 - 0.5, steps=w)
    ys = torch.linspace(-h * 0.5 + 0.5, h * 0.5 - 0.5, steps=h)
    base = torch.empty(1, h, w, 3, dtype=dtype)
    base[..., 0] = xs
    base[..., 1] = ys.unsqueeze(-1)
    base[..., 2] = 1
    theta = torch.tensor(matrix, dtype=dtype).reshape(1, 2, 3)
    grid = base.view(1, h * w, 3).bmm(theta.transpose(1, 2) / torch.tensor([0.5 * w, 0.5 * h], dtype=dtype))
    grid = grid.view(1, h, w, 2).expand(x.shape[0], h, w, 2)
    src = x.to(dtype)
    src = torch.cat([src, torch.ones_like(src[:, :1])], dim=1)  # a mask channel: where the source was
    out = torch.nn.functional.grid_sample(src, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    mask = out[:, -1:].expand_as(out[:, :-1])
    fill = torch.tensor(FILL, dtype=dtype).view(1, -1, 1, 1).expand_as(out[:, :-1])
    out = out[:, :-1] * mask + (1.0 - mask) * fill
    if not x.is_floating_point():
        out = torch.round(out).to(x.dtype)
    return out.reshape(*lead, *out.shape[-3:])


def _posterize(video: torch.Tensor, level: float) -> torch.Tensor:
    bits = 4 - int(level / MAX_LEVEL * 4)
    return video if bits >= 8 else F.posterize(video, bits)


def _solarize(video: torch.Tensor, level: float) -> torch.Tensor:
    threshold = 1 - level / MAX_LEVEL
    return F.solarize(video, int(threshold * 255.0) if video.dtype == torch.uint8 else threshold)


def _shear_x(video: torch.Tensor, level: float) -> torch.Tensor:
    f = _signed(level, 0.3)
    return _grid_affine(video, [1, f, video.size(-2) * f / 2, 0, 1, 0])


def _shear_y(video: torch.Tensor, level: float) -> torch.Tensor:
    f = _signed(level, 0.3)
    return _grid_affine(video, [1, 0, 0, f, 1, video.size(-1) * f / 2])


def _translate_x(video: torch.Tensor, level: float) -> torch.Tensor:
    return _grid_affine(video, [1, 0, _signed(level, 0.45) * video.size(-1), 0, 1, 0])


def _translate_y(video: torch.Tensor, level: float) -> torch.Tensor:
    return _grid_affine(video, [1, 0, 0, 0, 1, _signed(level, 0.45) * video.size(-2)])


# pytorchvideo's order (its draws index this list)
OPERATIONS: dict[str, Callable[[torch.Tensor, float], torch.Tensor]] = {
    "AdjustBrightness": lambda v, m: F.adjust_brightness(v, _signed(m, 0.9, 1.0)),
    "AdjustContrast": lambda v, m: F.adjust_contrast(v, _signed(m, 0.9, 1.0)),
    "AdjustSaturation": lambda v, m: F.adjust_saturation(v, _signed(m, 0.9, 1.0)),
    "AdjustSharpness": lambda v, m: F.adjust_sharpness(v, _signed(m, 0.9, 1.0)),
    "AutoContrast": lambda v, m: F.autocontrast(v),
    "Equalize": lambda v, m: F.equalize(v),
    "Invert": lambda v, m: F.invert(v),
    "Rotate": lambda v, m: F.rotate(v, _signed(m, 30.0), fill=FILL, interpolation=InterpolationMode.BILINEAR),
    "Posterize": _posterize,
    "Solarize": _solarize,
    "ShearX": _shear_x,
    "ShearY": _shear_y,
    "TranslateX": _translate_x,
    "TranslateY": _translate_y,
}


class RandAugment:
    """pytorchvideo's ``RandAugment`` of a uint8 clip ``[T, C, H, W]`` (one draw for every frame)."""

    def __init__(self, magnitude: float = 5, num_layers: int = 2, prob: float = 0.5) -> None:
        if not 0 < num_layers <= len(OPERATIONS):
            raise ValueError(f"num_layers must be 1..{len(OPERATIONS)}")
        self.magnitude, self.num_layers, self.prob = magnitude, num_layers, prob
        self.names = list(OPERATIONS)

    def __call__(self, video: torch.Tensor) -> torch.Tensor:
        for index in torch.multinomial(torch.ones(len(self.names)), self.num_layers, replacement=False):
            if torch.rand(1).item() > self.prob:
                continue
            level = max(0.0, min(MAX_LEVEL, torch.normal(float(self.magnitude), MAGNITUDE_STD, size=(1,)).item()))
            video = OPERATIONS[self.names[int(index)]](video, level)
        return video


def crop_box(height: int, width: int, scale: tuple[float, float], ratio: tuple[float, float],
             tries: int = 10) -> tuple[int, int, int, int]:
    """pytorchvideo's random crop box (top, left, height, width)."""
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(tries):
        target = area * (scale[0] + torch.rand(1).item() * (scale[1] - scale[0]))
        aspect = math.exp(log_ratio[0] + torch.rand(1).item() * (log_ratio[1] - log_ratio[0]))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(torch.randint(0, height - h + 1, (1,)).item())
            left = int(torch.randint(0, width - w + 1, (1,)).item())
            return top, left, h, w
    aspect_in = width / height
    if aspect_in < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif aspect_in > max(ratio):
        h, w = height, int(round(height * max(ratio)))
    else:
        h, w = height, width
    return (height - h) // 2, (width - w) // 2, h, w


def random_resized_crop(video: torch.Tensor, size: int, scale: tuple[float, float] = (0.5, 1.0),
                        ratio: tuple[float, float] = (3 / 4, 4 / 3), mode: str = "bicubic") -> torch.Tensor:
    """pytorchvideo's ``RandomResizedCrop`` of a float clip ``[C, T, H, W]`` → ``[C, T, size, size]``."""
    top, left, h, w = crop_box(video.shape[-2], video.shape[-1], scale, ratio)
    crop = video[..., top:top + h, left:left + w]
    return torch.nn.functional.interpolate(crop, size=(size, size), mode=mode)
