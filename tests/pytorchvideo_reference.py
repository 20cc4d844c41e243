"""pytorchvideo's video transforms as EILEV's ``train_v2.py`` and ``extract_frames.py`` use them,
written from pytorchvideo's code (``transforms/augmentations.py``, ``rand_augment.py``,
``transforms.py``'s ``OpSampler``, ``functional.py``) with its class structure: one
``AugmentTransform`` per operation holding its own probability and magnitude sampling, an
``OpSampler`` drawing them. pytorchvideo 0.1.5 no longer imports with current torchvision
(``torchvision.transforms.functional_tensor`` is gone); its grid affine is torchvision's own,
which survives as ``torchvision.transforms._functional_tensor.affine``.
"""

from __future__ import annotations

import math

import torch
import torchvision
from torchvision.transforms import _functional_tensor as F_t
from torchvision.transforms.functional import InterpolationMode

_AUGMENTATION_MAX_LEVEL = 10
FILL = {"fill": (0.5, 0.5, 0.5)}


def _randomly_negate(magnitude):
    return magnitude if torch.rand(1).item() > 0.5 else -magnitude


def _increasing_randomly_negate_to_arg(level, params):
    return (params[0] + _randomly_negate(level / _AUGMENTATION_MAX_LEVEL * params[1]),)


def _decreasing_int_to_arg(level, params):
    return (params[0] - int(level / _AUGMENTATION_MAX_LEVEL * params[1]),)


def _decreasing_to_arg(level, params):
    return (params[0] - level / _AUGMENTATION_MAX_LEVEL * params[1],)


def _posterize(video, factor, **kwargs):
    if factor >= 8:
        return video
    return torchvision.transforms.functional.posterize(video, factor)


def _solarize(video, factor, **kwargs):
    return torchvision.transforms.functional.solarize(video, int(factor * 255.0))


def _shear_x(video, factor, **kwargs):
    return F_t.affine(video, [1, factor, video.size(-2) * factor / 2, 0, 1, 0], "bilinear", list(kwargs["fill"]))


def _shear_y(video, factor, **kwargs):
    return F_t.affine(video, [1, 0, 0, factor, 1, video.size(-1) * factor / 2], "bilinear", list(kwargs["fill"]))


def _translate_x(video, factor, **kwargs):
    return F_t.affine(video, [1, 0, factor * video.size(-1), 0, 1, 0], "bilinear", list(kwargs["fill"]))


def _translate_y(video, factor, **kwargs):
    return F_t.affine(video, [1, 0, 0, 0, 1, factor * video.size(-2)], "bilinear", list(kwargs["fill"]))


F = torchvision.transforms.functional
_NAME_TO_TRANSFORM_FUNC = {
    "AdjustBrightness": lambda v, f, **k: F.adjust_brightness(v, f),
    "AdjustContrast": lambda v, f, **k: F.adjust_contrast(v, f),
    "AdjustSaturation": lambda v, f, **k: F.adjust_saturation(v, f),
    "AdjustSharpness": lambda v, f, **k: F.adjust_sharpness(v, f),
    "AutoContrast": lambda v, **k: F.autocontrast(v),
    "Equalize": lambda v, **k: F.equalize(v),
    "Invert": lambda v, **k: F.invert(v),
    "Rotate": lambda v, f, **k: F.rotate(v, f, fill=k["fill"], interpolation=InterpolationMode.BILINEAR),
    "Posterize": _posterize,
    "Solarize": _solarize,
    "ShearX": _shear_x,
    "ShearY": _shear_y,
    "TranslateX": _translate_x,
    "TranslateY": _translate_y,
}
_LEVEL_TO_ARG = {
    "AdjustBrightness": _increasing_randomly_negate_to_arg,
    "AdjustContrast": _increasing_randomly_negate_to_arg,
    "AdjustSaturation": _increasing_randomly_negate_to_arg,
    "AdjustSharpness": _increasing_randomly_negate_to_arg,
    "AutoContrast": None,
    "Equalize": None,
    "Invert": None,
    "Rotate": _increasing_randomly_negate_to_arg,
    "Posterize": _decreasing_int_to_arg,
    "Solarize": _decreasing_to_arg,
    "ShearX": _increasing_randomly_negate_to_arg,
    "ShearY": _increasing_randomly_negate_to_arg,
    "TranslateX": _increasing_randomly_negate_to_arg,
    "TranslateY": _increasing_randomly_negate_to_arg,
}
_TRANSFORM_RANDAUG_MAX_PARAMS = {
    "AdjustBrightness": (1, 0.9), "AdjustContrast": (1, 0.9), "AdjustSaturation": (1, 0.9),
    "AdjustSharpness": (1, 0.9), "AutoContrast": None, "Equalize": None, "Invert": None, "Rotate": (0, 30),
    "Posterize": (4, 4), "Solarize": (1, 1), "ShearX": (0, 0.3), "ShearY": (0, 0.3), "TranslateX": (0, 0.45),
    "TranslateY": (0, 0.45),
}


class AugmentTransform:
    def __init__(self, transform_name, magnitude, prob=0.5, sampling_std=0.5):
        self.transform_fn = _NAME_TO_TRANSFORM_FUNC[transform_name]
        self.level_fn = _LEVEL_TO_ARG[transform_name]
        self.level_paras = _TRANSFORM_RANDAUG_MAX_PARAMS[transform_name]
        self.magnitude, self.prob, self.sampling_std = magnitude, prob, sampling_std

    def _get_magnitude(self):
        return max(0, min(_AUGMENTATION_MAX_LEVEL,
                          torch.normal(self.magnitude, self.sampling_std, size=(1,)).item()))

    def __call__(self, video):
        if torch.rand(1).item() > self.prob:
            return video
        magnitude = self._get_magnitude()
        level_args = self.level_fn(magnitude, self.level_paras) if self.level_fn is not None else ()
        return self.transform_fn(video, *level_args, **FILL)


class OpSampler:
    def __init__(self, transforms_list, num_sample_op):
        self.transforms_list = transforms_list
        self.transforms_prob = torch.FloatTensor([1] * len(transforms_list))
        self.num_sample_op = num_sample_op

    def __call__(self, x):
        for index in torch.multinomial(self.transforms_prob, self.num_sample_op, replacement=False):
            x = self.transforms_list[index](x)
        return x


class RandAugment:
    def __init__(self, magnitude=9, num_layers=2, prob=0.5):
        self.randaug_fn = OpSampler([AugmentTransform(name, magnitude, prob=prob)
                                     for name in _TRANSFORM_RANDAUG_MAX_PARAMS], num_sample_op=num_layers)

    def __call__(self, video):
        return self.randaug_fn(video)


def uniform_temporal_subsample(x, num_samples, temporal_dim=-3):
    t = x.shape[temporal_dim]
    indices = torch.clamp(torch.linspace(0, t - 1, num_samples), 0, t - 1).long()
    return torch.index_select(x, temporal_dim, indices)


def _get_param_spatial_crop(scale, ratio, height, width, num_tries=10):
    for _ in range(num_tries):
        area = height * width
        target_area = area * (scale[0] + torch.rand(1).item() * (scale[1] - scale[0]))
        log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
        aspect_ratio = math.exp(log_ratio[0] + torch.rand(1).item() * (log_ratio[1] - log_ratio[0]))
        w = int(round(math.sqrt(target_area * aspect_ratio)))
        h = int(round(math.sqrt(target_area / aspect_ratio)))
        if 0 < w <= width and 0 < h <= height:
            i = torch.randint(0, height - h + 1, (1,)).item()
            j = torch.randint(0, width - w + 1, (1,)).item()
            return i, j, h, w
    in_ratio = float(width) / float(height)
    if in_ratio < min(ratio):
        w = width
        h = int(round(w / min(ratio)))
    elif in_ratio > max(ratio):
        h = height
        w = int(round(h * max(ratio)))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def random_resized_crop(frames, target_height, target_width, scale, aspect_ratio, interpolation="bilinear"):
    i, j, h, w = _get_param_spatial_crop(scale, aspect_ratio, frames.shape[2], frames.shape[3])
    cropped = frames[:, :, i:i + h, j:j + w]
    return torch.nn.functional.interpolate(cropped, size=(target_height, target_width), mode=interpolation)


def eilev_train_transform(size, mean, std, num_frames):
    """EILEV's training ``video_transform`` of a ``(C, T, H, W)`` uint8 clip."""

    augment = RandAugment(magnitude=5)
    normalize = torchvision.transforms.Normalize(mean, std)
    flip = torchvision.transforms.RandomHorizontalFlip()

    def transform(video):
        x = uniform_temporal_subsample(video, num_frames)
        x = augment(x.permute(1, 0, 2, 3)).permute(1, 0, 2, 3)
        x = x.to(torch.float32) / 255.0  # ConvertUint8ToFloat
        x = normalize(x.permute(1, 0, 2, 3)).permute(1, 0, 2, 3)  # pytorchvideo's Normalize
        x = random_resized_crop(x, size, size, (0.5, 1.0), (3.0 / 4.0, 4.0 / 3.0), interpolation="bicubic")
        return flip(x)

    return transform


def eilev_eval_transform(size, mean, std, num_frames):
    """EILEV's validation ``video_transform``."""
    resize = torchvision.transforms.Resize((size, size), interpolation=InterpolationMode.BICUBIC, antialias=True)
    normalize = torchvision.transforms.Normalize(mean, std)

    def transform(video):
        x = resize(uniform_temporal_subsample(video, num_frames))
        x = x.to(torch.float32) / 255.0
        return normalize(x.permute(1, 0, 2, 3)).permute(1, 0, 2, 3)

    return transform
