"""LaViLa's released checkpoints as egoray exports (``egoray import lavila CHECKPOINT OUTPUT``).

A LaViLa checkpoint is ``{"state_dict": ..., "args": Namespace(...), ...}`` (keys with or without
DDP's ``module.``). The towers' shapes are read from the weights — LaViLa's heads are all 64
wide (``head_width``) — and the weights renamed onto egoray's models, whose space–time tower
(:mod:`egoray.models.timesformer`) keeps LaViLa's names. Covered:

- dual encoders ``CLIP_OPENAI_TIMESFORMER_{BASE,LARGE,LARGE_336PX}``: the space–time tower and
  OpenAI CLIP's text transformer (an open_clip ``CLIP`` with the checkpoint's shapes and QuickGELU);
- ``CLIP_OPENAI_TIMESFORMER_*_DISTILBERT_BASE``: the same tower and a DistilBERT text tower (its
  first token, projected), built from ``text_model``'s config and tokenizer;
- narrators ``VCLM_OPENAI_TIMESFORMER_*_GPT2*``: the tower, the attention pooler and GPT-2 with
  its gated cross-attention blocks (the LM's weights are exported too: LaViLa may have tuned it).

The result is what a training job exports (``OUTPUT/model/model.pt``), so ``video_features
tower=``, ``text_features encoder.kind=video_text``, ``train_video_text init_from=`` and
``narrate model=`` take it.
"""

from __future__ import annotations

import io
import re
from typing import Any

import torch

from egoray import storage
from egoray.data.raw import InputError
from egoray.models.checkpoint import MODEL_FILE

HEAD_WIDTH = 64  # every LaViLa tower's attention heads (ViT-B/L, CLIP's text, GPT-2 and its pooler)


def read_checkpoint(url: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """A LaViLa checkpoint's ``state_dict`` without DDP's ``module.`` prefix, and its ``args``.
    Loaded as every egoray export is (``load_weights``: ``weights_only``), LaViLa's ``args``
    Namespace allowed besides, nothing that could run code."""
    import argparse

    from egoray.models.checkpoint import load_weights

    with torch.serialization.safe_globals([argparse.Namespace]):
        blob = load_weights(storage.read_bytes(url), url)
    state = blob.get("state_dict", blob) if isinstance(blob, dict) else None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise InputError(f"{url}: not a LaViLa checkpoint (no state_dict of tensors)")
    args = blob.get("args") if isinstance(blob, dict) else None
    return ({k.removeprefix("module."): v for k, v in state.items()},
            vars(args) if isinstance(args, argparse.Namespace) else {})


def _count(state: dict[str, torch.Tensor], pattern: str) -> int:
    found = {int(m.group(1)) for k in state if (m := re.match(pattern, k))}
    return max(found) + 1 if found else 0


def tower_architecture(state: dict[str, torch.Tensor], head_width: int = HEAD_WIDTH) -> tuple[dict[str, Any], int]:
    """open_clip's ``vision_cfg`` for the checkpoint's space–time tower, and its frame count."""
    width = state["visual.cls_token"].shape[-1]
    patch = state["visual.patch_embed.proj.weight"].shape[-1]
    patches = state["visual.pos_embed"].shape[1] - 1
    side = round(patches**0.5)
    if side * side != patches:
        raise InputError(f"the tower's {patches} patch positions are not a square grid")
    vision = {"image_size": side * patch, "patch_size": patch, "width": width, "head_width": head_width,
              "layers": _count(state, r"visual\.blocks\.(\d+)\."),
              "mlp_ratio": state["visual.blocks.0.mlp.fc1.weight"].shape[0] / width}
    return vision, state["visual.temporal_embed"].shape[1]


def _lavila_clip(vision: dict[str, Any], embed_dim: int, text_cfg: dict[str, Any]) -> Any:
    """The open_clip model an import builds: the checkpoint's shapes, OpenAI's QuickGELU."""
    from egoray.models.clip import ClipModel

    return ClipModel(name="lavila", architecture={"embed_dim": embed_dim, "quick_gelu": True, "vision_cfg": vision,
                                                  "text_cfg": text_cfg})


def _tower_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {f"video.{k}": v for k, v in state.items() if k.startswith("visual.")}


def import_dual_encoder(state: dict[str, torch.Tensor], args: dict[str, Any], head_width: int = HEAD_WIDTH,
                        text_model: str = "distilbert-base-uncased") -> dict[str, Any]:
    """An egoray ``video_text`` export from a LaViLa ``CLIP``/``CLIP_HF`` state dict."""
    from egoray.models.video_text import VideoTextConfig, VideoTextModel, export_config

    vision, frames = tower_architecture(state, head_width)
    embed_dim = state["image_projection"].shape[1]
    mapped = {**_tower_state(state), "video.proj": state["image_projection"]}
    if "textual.embeddings.word_embeddings.weight" in state:  # CLIP_HF: a transformers text tower
        text_width = state["text_projection"].shape[0]
        text_cfg = {"width": text_width, "heads": text_width // head_width, "layers": 1, "context_length": 77}
        # (older transformers saved DistilBERT's position_ids buffer; today's builds it)
        mapped.update({f"text.encoder.{k.removeprefix('textual.')}": v for k, v in state.items()
                       if k.startswith("textual.") and not k.endswith(".position_ids")})
        mapped["text.proj.weight"] = state["text_projection"].T
        text = text_model
    else:
        width = state["token_embedding.weight"].shape[1]
        text_cfg = {"context_length": state["positional_embedding"].shape[0],
                    "vocab_size": state["token_embedding.weight"].shape[0], "width": width,
                    "heads": width // head_width, "layers": _count(state, r"transformer\.resblocks\.(\d+)\.")}
        for k, v in state.items():
            if k.startswith(("transformer.", "token_embedding.", "ln_final.")) or k in ("positional_embedding",
                                                                                         "text_projection"):
                mapped[f"text.clip.{k}"] = v
        text = "open_clip"
    if "logit_scale" in state:
        mapped["logit_scale"] = state["logit_scale"].reshape(1)
    config = VideoTextConfig(vision=_lavila_clip(vision, embed_dim, text_cfg), temporal="space_time",
                             num_frames=frames, text=text, embed_dim=embed_dim,
                             norm_embed=bool(args.get("norm_embed", True)))
    model = VideoTextModel(config)
    _load_exactly(model, mapped, allowed_missing={"aux_logit_scale"})
    return {"kind": "video_text", "config": export_config(config), "state_dict": model.state_dict()}


def _load_exactly(model: torch.nn.Module, mapped: dict[str, torch.Tensor], allowed_missing: set[str]) -> None:
    """Load ``mapped`` into ``model``: every tensor used, shapes equal, nothing else left at random."""
    own = model.state_dict()
    unknown = [k for k in mapped if k not in own]
    wrong = [f"{k} {tuple(v.shape)} vs {tuple(own[k].shape)}" for k, v in mapped.items()
             if k in own and v.shape != own[k].shape]
    missing = [k for k in own if k not in mapped and k not in allowed_missing]
    if unknown or wrong or missing:
        raise InputError(f"the checkpoint does not match the model built from its shapes: unused {unknown[:3]}, "
                         f"shapes {wrong[:3]}, not in the checkpoint {missing[:3]}")
    model.load_state_dict(mapped, strict=False)


GPT2_BY_WIDTH = {768: "gpt2", 1024: "gpt2-medium", 1280: "gpt2-large", 1600: "gpt2-xl"}
_LAVILA_BUFFERS = (".attn.bias", ".attn.masked_bias", ".crossattention.bias", ".crossattention.masked_bias")
_CROSS_NAMES = {"ln_cross_attn.weight": "ln.weight", "ln_cross_attn.bias": "ln.bias",
                "ln_2_crossattention.weight": "ln_ff.weight", "ln_2_crossattention.bias": "ln_ff.bias"}
_CROSS_CONV1D = {"crossattention.q_attn": "attn.q", "crossattention.c_attn": "attn.kv",
                 "crossattention.c_proj": "attn.proj", "mlp_crossattention.c_fc": "ff.fc",
                 "mlp_crossattention.c_proj": "ff.proj"}


def _tower_config(state: dict[str, torch.Tensor], head_width: int) -> Any:
    """A video–text config whose video tower is the checkpoint's (the narrator's frozen tower)."""
    from egoray.models.video_text import VideoTextConfig

    vision, frames = tower_architecture(state, head_width)
    text_cfg = {"width": head_width, "heads": 1, "layers": 1, "context_length": 77}  # unused: the tower alone
    return VideoTextConfig(vision=_lavila_clip(vision, vision["width"], text_cfg), temporal="space_time",
                           num_frames=frames)


def import_narrator(state: dict[str, torch.Tensor], head_width: int = HEAD_WIDTH, lm: str | None = None) -> dict:
    """An egoray ``narrator`` export from a LaViLa ``VCLM_HF`` state dict over a space–time tower:
    the tower (``video.``), the pooler, the gated blocks and the LM's own weights (``lm.``)."""
    from egoray.models.narrator import Narrator, NarratorConfig
    from egoray.models.narrator_blocks import GatedLayer, decoder_layers

    width = state["img_queries"].shape[1]
    n_layer = _count(state, r"text_decoder\.transformer\.h\.(\d+)\.")
    gated = sorted({int(m.group(1)) for k in state
                    if (m := re.match(r"text_decoder\.transformer\.h\.(\d+)\.crossattention\.", k))})
    every = gated[1] - gated[0] if len(gated) > 1 else n_layer
    if not gated or gated != list(range(0, n_layer, every)):
        raise InputError(f"cross-attention in layers {gated[:6]} of {n_layer}: not LaViLa's every k-th from 0")
    dim_head = state["img_attn_pool.to_kv.weight"].shape[0] // 2
    lm_name = lm or GPT2_BY_WIDTH.get(width)
    if lm_name is None:
        raise InputError(f"no GPT-2 of width {width}: name the LM (--lm)")
    config = NarratorConfig(lm=lm_name, num_queries=state["img_queries"].shape[0], cross_attn_every=every,
                            heads=state["img_attn_pool.to_q.weight"].shape[0] // dim_head, dim_head=dim_head,
                            max_text_tokens=77, tower=_tower_config(state, head_width))
    model = Narrator(config)
    mapped = {**_tower_state(state), "pooler.queries": state["img_queries"],
              "pooler.ln_q.weight": state["img_attn_pool.norm.gamma"],
              "pooler.ln_kv.weight": state["img_attn_pool.context_norm.gamma"],
              "pooler.to_q.weight": state["img_attn_pool.to_q.weight"],
              "pooler.to_kv.weight": state["img_attn_pool.to_kv.weight"],
              "pooler.to_out.weight": state["img_attn_pool.to_out.weight"],
              "pooler.ln_out.weight": state["img_attn_pool_norm.gamma"]}
    layers = decoder_layers(model.lm)
    used: set[str] = set()

    def take(key: str) -> torch.Tensor:
        used.add(key)
        return state[key]

    for j, i in enumerate(gated):
        prefix = f"text_decoder.transformer.h.{i}."
        for theirs, ours in _CROSS_NAMES.items():
            mapped[f"xattn.{j}.{ours}"] = take(prefix + theirs)
        for theirs, ours in _CROSS_CONV1D.items():  # Conv1D holds [in, out]: a Linear's weight transposed
            mapped[f"xattn.{j}.{ours}.weight"] = take(f"{prefix}{theirs}.weight").T
            mapped[f"xattn.{j}.{ours}.bias"] = take(f"{prefix}{theirs}.bias")
        mapped[f"xattn.{j}.attn_gate"] = take(prefix + "alpha_cattn").reshape(1)
        mapped[f"xattn.{j}.ff_gate"] = take(prefix + "alpha_dense").reshape(1)
    for k, v in state.items():
        if not k.startswith("text_decoder.") or k in used or k.endswith(_LAVILA_BUFFERS):
            continue
        name = "lm." + k.removeprefix("text_decoder.")
        m = re.match(r"lm\.transformer\.h\.(\d+)\.(.*)", name)
        if m and isinstance(layers[int(m.group(1))], GatedLayer):
            name = f"lm.transformer.h.{m.group(1)}.layer.{m.group(2)}"
        mapped[name] = v
    # the pooler's bias-free norms have zero betas (LaViLa's buffers); the tower's projection is unused
    _load_exactly(model, mapped, allowed_missing={"video.proj"})
    return {"kind": "narrator", "config": config.model_dump(), "state_dict": model.state_dict()}


def import_lavila(checkpoint: str, output: str, head_width: int = HEAD_WIDTH,
                  text_model: str = "distilbert-base-uncased", lm: str | None = None) -> dict[str, Any]:
    """Write ``OUTPUT/model/model.pt`` from a LaViLa checkpoint; returns a summary of what it held."""
    state, args = read_checkpoint(checkpoint)
    if "visual.blocks.0.timeattn.qkv.weight" not in state:
        raise InputError(f"{checkpoint}: not a LaViLa space–time (TimeSformer) checkpoint; its keys begin "
                         f"{sorted(state)[:4]}")
    if "image_projection" in state:
        export = import_dual_encoder(state, args, head_width, text_model)
    elif "img_queries" in state:
        export = import_narrator(state, head_width, lm)
    else:
        raise InputError(f"{checkpoint}: neither a LaViLa dual encoder (image_projection) nor a narrator")
    target = storage.join(output, "model", MODEL_FILE)
    buffer = io.BytesIO()
    torch.save({**export, "imported_from": {"lavila": checkpoint, "model": args.get("model")}}, buffer)
    storage.write_bytes(target, buffer.getvalue())
    return {"kind": export["kind"], "model": args.get("model"), "tensors": len(export["state_dict"]),
            "output": target}
