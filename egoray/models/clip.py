"""open_clip models by name: real ones with pretrained tags, or tiny offline configs.

``tiny-clip`` and ``tiny-coca`` are configs shipped in ``open_clip_configs/`` (small towers,
open_clip's bundled tokenizer) and built with random weights from a fixed seed, so tests and the
demo run without downloading anything. Real configs name e.g. ``ViT-L-14`` +
``laion2b_s32b_b82k`` or ``coca_ViT-L-14`` + ``mscoco_finetuned_laion2B-s13B-b90k``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field

from egoray.config import StrictModel

CONFIG_DIR = Path(__file__).resolve().parent / "open_clip_configs"
_registered = False


class ClipModel(StrictModel):
    """Which open_clip model to load."""

    name: str = Field("tiny-clip", description="open_clip model name (tiny-clip, tiny-coca, ViT-L-14, ...)")
    pretrained: str | None = Field(None, description="open_clip pretrained tag or checkpoint path; none = random")
    seed: int = Field(0, description="seed of random weights when pretrained is empty")
    precision: str = Field("fp32", description="fp32, fp16, bf16 (GPU)")
    architecture: dict[str, Any] | None = Field(
        None, description="an open_clip model config (embed_dim, vision_cfg, text_cfg, quick_gelu) to build "
                          "instead of looking the name up: how an imported checkpoint (egoray import lavila) "
                          "records its towers' shapes; weights come from the export")


def register_tiny_configs() -> None:
    global _registered
    if not _registered:
        import open_clip

        open_clip.add_model_config(CONFIG_DIR)
        _registered = True


def load_open_clip(spec: ClipModel, device: str = "cpu") -> tuple[Any, Any, dict[str, Any]]:
    """(model in eval mode, tokenizer, image settings {size, mean, std})."""
    import open_clip
    import torch

    register_tiny_configs()
    if not spec.pretrained:
        torch.manual_seed(spec.seed)
    if spec.architecture is not None:
        if spec.pretrained:
            raise ValueError(f"{spec.name}: an architecture is built with its own weights, not a pretrained tag")
        dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[spec.precision]
        model = open_clip.CLIP(**spec.architecture).to(device=device, dtype=dtype)
        text = spec.architecture["text_cfg"]
        tokenizer = open_clip.SimpleTokenizer(context_length=int(text.get("context_length", 77)))
    else:
        model, _, _ = open_clip.create_model_and_transforms(
            spec.name, pretrained=spec.pretrained or None, precision=spec.precision, device=device
        )
        tokenizer = open_clip.get_tokenizer(spec.name)
    if not spec.pretrained:
        _initialise(model, spec.seed)
    model.eval()
    size = model.visual.image_size
    size = size[0] if isinstance(size, tuple | list) else int(size)
    mean = getattr(model.visual, "image_mean", None) or open_clip.OPENAI_DATASET_MEAN
    std = getattr(model.visual, "image_std", None) or open_clip.OPENAI_DATASET_STD
    return model, tokenizer, {"size": int(size), "mean": tuple(mean), "std": tuple(std)}


def image_size(spec: ClipModel) -> int:
    """The visual tower's input size, from the model's config (no weights are built or fetched)."""
    import open_clip

    register_tiny_configs()
    config = spec.architecture or open_clip.get_model_config(spec.name)
    if config is None:
        from egoray.data.raw import InputError

        raise InputError(f"open_clip knows no model {spec.name!r}")
    size = config["vision_cfg"]["image_size"]
    return int(size[0] if isinstance(size, list | tuple) else size)


def _initialise(model: Any, seed: int) -> None:
    """Random weights, all of them: some open_clip towers (CoCa's multimodal decoder) allocate
    parameters with ``torch.empty`` and rely on pretrained weights to fill them, so a randomly
    built model would otherwise hold whatever memory was there (zeros, or NaN)."""
    import torch

    torch.manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if module is model or not hasattr(module, "init_parameters"):
                continue
            try:
                module.init_parameters()
            except AttributeError:  # open_clip's MultimodalTransformer.init_parameters is broken
                for p in module.parameters(recurse=False):
                    torch.nn.init.normal_(p, std=p.shape[0] ** -0.5 if p.dim() > 1 else 0.02)
        for p in model.parameters():
            if not torch.isfinite(p).all() or p.abs().max() > 1e3 or (p.dim() > 1 and not p.any()):
                torch.nn.init.normal_(p, std=0.02)
