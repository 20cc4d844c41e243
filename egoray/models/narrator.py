"""LaViLa-style narrator: a frozen causal LM with gated cross-attention to video tokens.

The visual input of a window is either stored video features (``[F, Dv]``, frozen upstream) or,
with ``tower``, its frames through the frozen video tower of a ``train_video_text`` run, whose
tokens (``1 + T·P`` of them: the clip's class token and every patch, LaViLa's narrator input)
are attended to. Either is summarised by LaViLa's attention pooler (learned queries, multi-query attention) into ``Q``
visual tokens. Every ``cross_attn_every``-th decoder layer of the LM (layers 0, k, 2k, … as
LaViLa's ``layer_idx % cross_attn_freq == 0``) is preceded by LaViLa's gated cross-attention
block: ``x + tanh(a) * xattn(x, visual)`` and ``x + tanh(b) * ff(x)`` (a squared-ReLU
feed-forward) with ``a = b = 0`` at initialisation, so an untrained narrator is
exactly the frozen LM. Only the pooler and the cross-attention blocks train; a tower's weights
are exported with them (``video.``), so a trained narrator loads on its own.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from pydantic import Field
from torch import nn

from egoray.config import StrictModel
from egoray.models.narrator_blocks import AttentionPooler, GatedCrossAttention, GatedLayer, VisualTokens, decoder_layers
from egoray.models.video_text import VideoTextConfig

TRAINED_PREFIXES = ("pooler.", "xattn.")  # the frozen LM's weights come from the LM itself
TOWER_PREFIX = "video."  # a frozen video tower's (the train_video_text run's names)


class NarratorConfig(StrictModel):
    lm: str = Field("tiny:gpt2", description="causal LM (transformers id or tiny:gpt2)")
    video_dim: int = 0
    num_queries: int = Field(8, ge=1)
    num_frames: int = Field(4, ge=1, description="video features sampled per window")
    cross_attn_every: int = Field(1, ge=1)
    heads: int = Field(4, ge=1, description="query heads of the attention pooler (LaViLa: the LM's heads)")
    dim_head: int = Field(64, ge=1, description="width of each pooler head and of its one key/value head")
    dropout: float = Field(0.1, ge=0, lt=1, description="dropout of the cross-attention blocks in training "
                                                       "(LaViLa: GPT-2's 0.1); the LM keeps its own")
    max_text_tokens: int = Field(32, ge=4)
    standardise: bool = Field(False, description="standardise each feature dimension by running batch statistics "
                                                 "(BatchNorm) before the pooler: for encoders whose features share "
                                                 "a large common component, as tiny random ones do")
    tower: VideoTextConfig | None = Field(None, description="the frozen video tower over frames (set by the job "
                                                            "from a train_video_text run); none: stored features")


def saved_prefixes(config: NarratorConfig) -> tuple[str, ...]:
    """The weights a trained narrator exports: the ones it trained, and its tower's."""
    return TRAINED_PREFIXES + ((TOWER_PREFIX,) if config.tower is not None else ())


class Narrator(nn.Module):
    def __init__(self, config: NarratorConfig, lm: nn.Module | None = None, tokenizer: Any = None) -> None:
        super().__init__()
        if lm is None or tokenizer is None:
            lm, tokenizer = load_lm(config.lm)
        self.config = config
        self.tokenizer = tokenizer
        self.lm = lm
        self.lm.requires_grad_(False)
        width = lm.config.hidden_size
        video_dim = config.video_dim
        if config.tower is not None:
            from egoray.models.video_text import build_video_tower

            self.video, self.image = build_video_tower(config.tower)
            self.video.requires_grad_(False)
            video_dim = self.video.width
        self.pooler = AttentionPooler(video_dim, width, config.num_queries, config.heads, config.dim_head,
                                      config.standardise)
        self._visual = VisualTokens()
        layers = decoder_layers(lm)
        lm_config = lm.config
        inner = getattr(lm_config, "n_inner", None) or 4 * width  # GPT-2's MLP width
        eps = getattr(lm_config, "layer_norm_epsilon", None) or getattr(lm_config, "rms_norm_eps", None) or 1e-5
        self.xattn = nn.ModuleList()
        for i in range(len(layers)):
            if i % config.cross_attn_every == 0:  # LaViLa: layer_idx % cross_attn_freq == 0
                block = GatedCrossAttention(width, lm_config.num_attention_heads, inner, config.dropout, eps,
                                            len(layers), getattr(lm_config, "initializer_range", 0.02))
                self.xattn.append(block)
                layers[i] = GatedLayer(layers[i], block, self._visual)

    def train(self, mode: bool = True) -> Narrator:
        """The LM trains with its own dropout, frozen or not (LaViLa's GPT-2 is in train mode too);
        a frozen video tower stays in evaluation mode."""
        super().train(mode)
        if self.config.tower is not None:
            self.video.eval()
        return self

    def prepare(self, frames: np.ndarray) -> torch.Tensor:
        """A batch of windows' visual input as the model takes it: stored features as floats, or
        uint8 frames [B, T, H, W, 3] normalised for the tower."""
        if self.config.tower is None:
            return torch.from_numpy(np.ascontiguousarray(frames)).float()
        from egoray.models.video_text import normalise_frames

        return normalise_frames(frames, self.image)

    def visual_tokens(self, frames: torch.Tensor) -> torch.Tensor:
        """``Q`` pooled visual tokens of each window (through the frozen tower first, if any)."""
        if self.config.tower is not None:
            with torch.no_grad():
                frames = self.video.tokens(frames)
        return self.pooler(frames)

    def set_gradient_checkpointing(self, on: bool) -> None:
        for layer in decoder_layers(self.lm):
            if isinstance(layer, GatedLayer):
                layer.checkpointing = on

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def forward(self, frames: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                labels: torch.Tensor | None = None) -> Any:
        """Teacher-forced LM output (``.loss`` when ``labels`` are given) conditioned on ``frames``."""
        self._visual.tokens = self.visual_tokens(frames)
        try:
            return self.lm(input_ids=input_ids, attention_mask=attention_mask, labels=labels, use_cache=False)
        finally:
            self._visual.tokens = None

    def tokenize(self, texts: list[str]) -> dict[str, torch.Tensor]:
        """``bos text eos`` right-padded; labels are -100 on padding."""
        tok = self.tokenizer
        bos = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        seqs = []
        for t in texts:
            ids = tok(t, add_special_tokens=False)["input_ids"][: self.config.max_text_tokens - 2]
            seqs.append([bos, *ids, tok.eos_token_id])
        width = max(len(s) for s in seqs)
        input_ids = torch.full((len(seqs), width), pad, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for i, s in enumerate(seqs):
            input_ids[i, : len(s)] = torch.tensor(s)
            mask[i, : len(s)] = 1
        labels = input_ids.masked_fill(mask == 0, -100)
        return {"input_ids": input_ids, "attention_mask": mask, "labels": labels}

    @torch.no_grad()
    def generate(self, frames: torch.Tensor, n: int = 1, max_new_tokens: int = 20, top_p: float = 0.95,
                 temperature: float = 0.7, do_sample: bool = True, use_cache: bool = True,
                 seeds: list[list[int]] | None = None, return_entropy: bool = False) -> tuple[list[list[Any]], ...]:
        """``n`` captions per window and each caption's mean negative log-likelihood per token
        (and, with ``return_entropy``, the mean entropy of the model's next-token distribution
        over the caption's steps: what LaViLa scores a caption by, as its exponential).

        Sample ``s`` of window ``i`` is drawn with its own generator seeded by ``seeds[i][s]``
        (:mod:`egoray.models.sampling`), so a window's captions do not depend on its batch. The
        NLL is computed from the unmodified model distribution (before top-p/temperature).
        """
        from egoray.models.sampling import sampling_kwargs

        tok = self.tokenizer
        self.eval()
        b = frames.shape[0]
        seeds = seeds if seeds is not None else [[i * n + s for s in range(n)] for i in range(b)]
        bos = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id
        input_ids = torch.full((b * n, 1), bos, dtype=torch.long, device=frames.device)
        self._visual.tokens = self.visual_tokens(frames).repeat_interleave(n, dim=0)
        try:
            out = self.lm.generate(
                input_ids=input_ids, attention_mask=torch.ones_like(input_ids), max_new_tokens=max_new_tokens,
                use_cache=use_cache, output_logits=True, return_dict_in_generate=True,
                pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id,
                eos_token_id=tok.eos_token_id,
                **sampling_kwargs([x for row in seeds for x in row], do_sample, temperature, 0, top_p))
        finally:
            self._visual.tokens = None
        new = out.sequences[:, 1:]
        logp = torch.stack(out.logits, dim=1).float().log_softmax(-1)
        token_logp = logp.gather(-1, new.unsqueeze(-1)).squeeze(-1)
        # tokens after the first eos are padding
        is_eos = (new == tok.eos_token_id).int()
        valid = (is_eos.cumsum(1) - is_eos) == 0
        nll = -(token_logp * valid).sum(1) / valid.sum(1).clamp(min=1)
        texts = tok.batch_decode(new.masked_fill(~valid, tok.pad_token_id or 0), skip_special_tokens=True)
        texts = [" ".join(t.split()) for t in texts]
        out_texts = [texts[i * n:(i + 1) * n] for i in range(b)]
        out_nlls = [nll[i * n:(i + 1) * n].tolist() for i in range(b)]
        if not return_entropy:
            return out_texts, out_nlls
        steps = torch.special.entr(logp.exp()).sum(-1)  # each step's entropy, the eos step included
        entropy = (steps * valid).sum(1) / valid.sum(1).clamp(min=1)
        return out_texts, out_nlls, [entropy[i * n:(i + 1) * n].tolist() for i in range(b)]


def load_lm(name: str) -> tuple[nn.Module, Any]:
    import transformers

    from egoray.models.tiny import resolve_model

    path = resolve_model(name)
    tokenizer = transformers.AutoTokenizer.from_pretrained(path)
    lm = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    return lm, tokenizer


def load_narrator(url: str) -> Narrator:
    """A trained narrator from a ``train_narrator`` output (or its model.pt)."""
    from egoray.data.raw import InputError
    from egoray.models.checkpoint import load_exported_kind

    blob = load_exported_kind(url, "narrator", "a narrator")
    model = Narrator(NarratorConfig(**blob["config"]))
    missing = model.load_state_dict(blob["state_dict"], strict=False)
    bad = [k for k in missing.missing_keys if k.startswith(saved_prefixes(model.config))]
    if bad or missing.unexpected_keys:
        raise InputError(f"{url}: weights do not match the narrator ({bad[:3]} {missing.unexpected_keys[:3]})")
    return model.eval()
