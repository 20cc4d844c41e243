"""LaViLa's models at tiny sizes, written for the tests from reading ``facebookresearch/LaViLa``
(``lavila/models/timesformer.py``, ``models.py``, ``openai_model.py``), with LaViLa's parameter
names, so that their ``state_dict`` is a LaViLa checkpoint's. Each forward follows LaViLa's
einops steps; nothing here is egoray's code.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from einops import rearrange, repeat
from torch import nn


class QuickGELU(nn.Module):
    def forward(self, x):
        return x * torch.sigmoid(1.702 * x)


def _attend(q, k, v):
    return torch.einsum("bij,bjd->bid", torch.einsum("bid,bjd->bij", q, k).softmax(dim=-1), v)


class VarAttention(nn.Module):
    def __init__(self, dim, num_heads, zeros=False):
        super().__init__()
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=True)
        self.proj = nn.Linear(dim, dim)
        if zeros:
            self.qkv.weight.data.fill_(0)
            self.qkv.bias.data.fill_(0)
            self.proj.weight.data.fill_(1)
            self.proj.bias.data.fill_(0)

    def forward(self, x, einops_from, einops_to, dims):
        h = self.num_heads
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        q, k, v = (rearrange(t, "b n (h d) -> (b h) n d", h=h) for t in (q, k, v))
        q = q * self.scale
        (cls_q, q_), (cls_k, k_), (cls_v, v_) = ((t[:, 0:1], t[:, 1:]) for t in (q, k, v))
        cls_out = _attend(cls_q, k, v)
        q_, k_, v_ = (rearrange(t, f"{einops_from} -> {einops_to}", **dims) for t in (q_, k_, v_))
        r = q_.shape[0] // cls_k.shape[0]
        cls_k, cls_v = (repeat(t, "b () d -> (b r) () d", r=r) for t in (cls_k, cls_v))
        out = _attend(q_, torch.cat((cls_k, k_), dim=1), torch.cat((cls_v, v_), dim=1))
        out = rearrange(out, f"{einops_to} -> {einops_from}", **dims)
        out = torch.cat((cls_out, out), dim=1)
        return self.proj(rearrange(out, "(b h) n d -> b n (h d)", h=h))


class Mlp(nn.Module):
    def __init__(self, dim, hidden):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = QuickGELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class SpaceTimeBlock(nn.Module):
    def __init__(self, dim, num_heads):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = VarAttention(dim, num_heads)
        self.timeattn = VarAttention(dim, num_heads, zeros=True)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, 4 * dim)
        self.norm3 = nn.LayerNorm(dim, eps=1e-6)

    def forward(self, x, n, f):
        time_output = self.timeattn(self.norm3(x), "b (f n) d", "(b n) f d", {"n": n})
        time_residual = x + time_output
        space_output = self.attn(self.norm1(time_residual), "b (f n) d", "(b f) n d", {"f": f})
        space_residual = x + space_output
        return space_residual + self.mlp(self.norm2(space_residual))


class PatchEmbed(nn.Module):
    def __init__(self, patch, dim):
        super().__init__()
        self.proj = nn.Conv2d(3, dim, kernel_size=patch, stride=patch, bias=False)


class SpaceTimeTransformer(nn.Module):
    """``SpaceTimeTransformer(time_init='zeros', ln_pre=True, act_layer=QuickGELU)`` with the
    head, pre_logits and fc as identities (as LaViLa's CLIP_OPENAI_TIMESFORMER_* set them)."""

    def __init__(self, img_size, patch, dim, depth, heads, num_frames):
        super().__init__()
        self.num_frames, self.embed_dim = num_frames, dim
        self.patches_per_frame = (img_size // patch) ** 2
        self.patch_embed = PatchEmbed(patch, dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, self.patches_per_frame + 1, dim))
        self.temporal_embed = nn.Parameter(torch.zeros(1, num_frames, dim))
        self.ln_pre = nn.LayerNorm(dim)
        self.blocks = nn.ModuleList(SpaceTimeBlock(dim, heads) for _ in range(depth))
        self.norm = nn.LayerNorm(dim, eps=1e-6)

    def forward_features(self, x, cls_at_last=True):
        b, curr_frames = x.shape[:2]
        x = self.patch_embed.proj(x.view(-1, *x.shape[2:]))
        x = x.flatten(2).transpose(2, 1).reshape(b, -1, self.embed_dim)
        x = torch.cat((self.cls_token.expand(x.shape[0], -1, -1), x), dim=1)
        cls_embed = self.pos_embed[:, 0, :].unsqueeze(1)
        tile_pos = self.pos_embed[:, 1:, :].repeat(1, self.num_frames, 1)
        tile_time = self.temporal_embed.repeat_interleave(self.patches_per_frame, 1)
        total = torch.cat([cls_embed, tile_pos + tile_time], dim=1)
        x = self.ln_pre(x + total[:, : x.shape[1]])
        for blk in self.blocks:
            x = blk(x, self.patches_per_frame, curr_frames)
        return self.norm(x)[:, 0] if cls_at_last else self.norm(x)

    def forward(self, x):
        """``x``: B C T H W, as LaViLa's models take it."""
        return self.forward_features(x.permute(0, 2, 1, 3, 4).contiguous())


class ResidualAttentionBlock(nn.Module):
    def __init__(self, width, heads, attn_mask):
        super().__init__()
        self.attn = nn.MultiheadAttention(width, heads)
        self.ln_1 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(OrderedDict([("c_fc", nn.Linear(width, 4 * width)), ("gelu", QuickGELU()),
                                              ("c_proj", nn.Linear(4 * width, width))]))
        self.ln_2 = nn.LayerNorm(width)
        self.attn_mask = attn_mask

    def forward(self, x):
        x = x + self.attn(self.ln_1(x), self.ln_1(x), self.ln_1(x), need_weights=False, attn_mask=self.attn_mask)[0]
        return x + self.mlp(self.ln_2(x))


class Transformer(nn.Module):
    def __init__(self, width, layers, heads, attn_mask):
        super().__init__()
        self.resblocks = nn.Sequential(*[ResidualAttentionBlock(width, heads, attn_mask) for _ in range(layers)])

    def forward(self, x):
        return self.resblocks(x)


class CLIP(nn.Module):
    """LaViLa's ``CLIP`` (models.py): the video tower, OpenAI's text transformer, two projections."""

    def __init__(self, embed_dim, visual, vision_width, context_length, vocab_size, width, heads, layers):
        super().__init__()
        self.visual = visual
        mask = torch.empty(context_length, context_length).fill_(float("-inf")).triu_(1)
        self.transformer = Transformer(width, layers, heads, mask)
        self.token_embedding = nn.Embedding(vocab_size, width)
        self.positional_embedding = nn.Parameter(torch.randn(context_length, width) * 0.01)
        self.ln_final = nn.LayerNorm(width)
        self.image_projection = nn.Parameter(torch.randn(vision_width, embed_dim) * vision_width**-0.5)
        self.text_projection = nn.Parameter(torch.randn(width, embed_dim) * width**-0.5)
        self.logit_scale = nn.Parameter(torch.ones([]) * 2.6592)

    def encode_image(self, image):
        return self.visual(image) @ self.image_projection

    def encode_text(self, text):
        x = (self.token_embedding(text) + self.positional_embedding).permute(1, 0, 2)
        x = self.ln_final(self.transformer(x).permute(1, 0, 2))
        return x[torch.arange(x.shape[0]), text.argmax(dim=-1)] @ self.text_projection


def tiny_tsf_clip(seed: int = 0, num_frames: int = 3) -> CLIP:
    """A tiny CLIP_OPENAI_TIMESFORMER_BASE: 64 px, patch 16, width 64 (4 heads of 16), 2 blocks;
    text width 48 (3 heads of 16), 2 layers, context 16; joint space 24. All weights random
    (the temporal parts too, so that each of them shows)."""
    torch.manual_seed(seed)
    model = CLIP(24, SpaceTimeTransformer(64, 16, 64, 2, 4, num_frames), 64, 16, 49408, 48, 3, 2)
    with torch.no_grad():
        for p in model.parameters():
            if p is not model.logit_scale:
                p.add_(0.2 * torch.randn_like(p))
    return model


class BiasFreeLayerNorm(nn.Module):
    """``coca.LayerNorm``: a gain ``gamma`` and a zero ``beta`` buffer."""

    def __init__(self, dim):
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(dim))
        self.register_buffer("beta", torch.zeros(dim))

    def forward(self, x):
        return torch.nn.functional.layer_norm(x, x.shape[-1:], self.gamma, self.beta)


class CocaCrossAttention(nn.Module):
    """``coca.CrossAttention(dim, context_dim, dim_head, heads, norm_context=True)`` (no parallel ff)."""

    def __init__(self, dim, context_dim, dim_head, heads):
        super().__init__()
        self.heads, self.scale = heads, dim_head**-0.5
        self.norm = BiasFreeLayerNorm(dim)
        self.context_norm = BiasFreeLayerNorm(context_dim)
        self.to_q = nn.Linear(dim, heads * dim_head, bias=False)
        self.to_kv = nn.Linear(context_dim, dim_head * 2, bias=False)
        self.to_out = nn.Linear(heads * dim_head, dim, bias=False)

    def forward(self, x, context):
        x, context = self.norm(x), self.context_norm(context)
        q = rearrange(self.to_q(x), "b n (h d) -> b h n d", h=self.heads) * self.scale
        k, v = self.to_kv(context).chunk(2, dim=-1)
        sim = torch.einsum("bhid,bjd->bhij", q, k)
        attn = (sim - sim.amax(dim=-1, keepdim=True)).softmax(dim=-1)
        out = rearrange(torch.einsum("bhij,bjd->bhid", attn, v), "b h n d -> b n (h d)")
        return self.to_out(out)


class SqReLU(nn.Module):
    def forward(self, x):
        return torch.pow(torch.relu(x), 2)


class GatedCross(nn.Module):
    """The part of LaViLa's ``GPT2Block.forward`` before self-attention, with its module names."""

    def __init__(self, config):
        super().__init__()
        from transformers.models.gpt2.modeling_gpt2 import GPT2MLP, GPT2Attention

        width = config.hidden_size
        self.crossattention = GPT2Attention(config, is_cross_attention=True, layer_idx=0)
        self.ln_cross_attn = nn.LayerNorm(width, eps=config.layer_norm_epsilon)
        self.mlp_crossattention = GPT2MLP(4 * width, config)
        self.mlp_crossattention.act = SqReLU()
        self.ln_2_crossattention = nn.LayerNorm(width, eps=config.layer_norm_epsilon)
        self.alpha_cattn = nn.Parameter(torch.zeros([]))
        self.alpha_dense = nn.Parameter(torch.zeros([]))

    def forward(self, hidden_states, encoder_hidden_states):
        residual = hidden_states
        attn = self.crossattention(self.ln_cross_attn(hidden_states), encoder_hidden_states=encoder_hidden_states)[0]
        hidden_states = residual + torch.tanh(self.alpha_cattn) * attn
        residual = hidden_states
        ff = self.mlp_crossattention(self.ln_2_crossattention(hidden_states))
        return residual + torch.tanh(self.alpha_dense) * ff


class VCLM(nn.Module):
    """LaViLa's ``VCLM_HF`` over a space–time tower: ``img_queries`` pooled over the tower's
    tokens, GPT-2 with gated cross-attention before layers ``0, freq, 2·freq, …``. The GPT-2 is
    transformers' (LaViLa's file copies it); the gated parts run before their blocks by hooks and
    are saved under LaViLa's names (:meth:`lavila_state_dict`)."""

    def __init__(self, visual, vision_width, lm, num_queries, dim_head, heads, cross_attn_freq):
        super().__init__()
        self.visual = visual
        self.text_decoder = lm
        width = lm.config.hidden_size
        self.img_queries = nn.Parameter(torch.randn(num_queries, width) * width**-0.5)
        self.img_attn_pool = CocaCrossAttention(width, vision_width, dim_head, heads)
        self.img_attn_pool_norm = BiasFreeLayerNorm(width)
        cfg = lm.config
        cfg._attn_implementation = "eager"
        layers = range(0, cfg.n_layer, cross_attn_freq)
        self.gated = nn.ModuleDict({str(i): GatedCross(cfg) for i in layers})
        self._image_tokens = None
        for i in layers:
            lm.transformer.h[i].register_forward_pre_hook(self._hook(str(i)))

    def _hook(self, key):
        def hook(module, args):
            return (self.gated[key](args[0], self._image_tokens), *args[1:])
        return hook

    def encode_image(self, image):
        """``image`` B C T H W → pooled visual tokens (LaViLa: forward_features(cls_at_last=False))."""
        x = self.visual.forward_features(image.permute(0, 2, 1, 3, 4).contiguous(), cls_at_last=False)
        queries = repeat(self.img_queries, "n d -> b n d", b=x.shape[0])
        return self.img_attn_pool_norm(self.img_attn_pool(queries, x))

    def logits(self, image, text):
        self._image_tokens = self.encode_image(image)
        try:
            return self.text_decoder(text, use_cache=False).logits
        finally:
            self._image_tokens = None

    def lavila_state_dict(self):
        """The state dict of LaViLa's VCLM_HF: the gated parts inside their GPT-2 blocks, and the
        causal-mask buffers LaViLa's GPT2Attention keeps."""
        state = {k: v for k, v in self.state_dict().items() if not k.startswith("gated.")}
        n_pos = self.text_decoder.config.n_positions
        for key, block in self.gated.items():
            for name, value in block.state_dict().items():
                state[f"text_decoder.transformer.h.{key}.{name}"] = value
            state[f"text_decoder.transformer.h.{key}.crossattention.bias"] = torch.tril(
                torch.ones(n_pos, n_pos, dtype=torch.uint8)).view(1, 1, n_pos, n_pos)
        for i in range(self.text_decoder.config.n_layer):
            state[f"text_decoder.transformer.h.{i}.attn.bias"] = torch.tril(
                torch.ones(n_pos, n_pos, dtype=torch.uint8)).view(1, 1, n_pos, n_pos)
            state[f"text_decoder.transformer.h.{i}.attn.masked_bias"] = torch.tensor(-1e4)
        return state


def tiny_vclm(lm, seed: int = 0, num_frames: int = 3, cross_attn_freq: int = 2) -> VCLM:
    """A tiny VCLM_OPENAI_TIMESFORMER_BASE_GPT2 over the tiny GPT-2: tower as :func:`tiny_tsf_clip`,
    5 queries, pooler 4 heads of 16, every weight random and the gates open."""
    torch.manual_seed(seed)
    model = VCLM(SpaceTimeTransformer(64, 16, 64, 2, 4, num_frames), 64, lm, 5, 16, 4, cross_attn_freq)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if not name.startswith("text_decoder."):
                p.add_(0.2 * torch.randn_like(p))
        for block in model.gated.values():
            block.alpha_cattn.fill_(0.6)
            block.alpha_dense.fill_(-0.4)
    return model.eval()


class CLIPHF(nn.Module):
    """LaViLa's ``CLIP_HF`` with ``text_use_cls_token`` and the default projections (its
    ``*_DISTILBERT_BASE`` models): the first token's state of a transformers encoder, projected."""

    def __init__(self, embed_dim, visual, vision_width, textual):
        super().__init__()
        self.visual = visual
        self.textual = textual
        width = textual.config.dim
        self.image_projection = nn.Parameter(torch.randn(vision_width, embed_dim) * vision_width**-0.5)
        self.text_projection = nn.Parameter(torch.randn(width, embed_dim) * width**-0.5)
        self.logit_scale = nn.Parameter(torch.ones([]) * 2.6592)

    def encode_image(self, image):
        return self.visual(image) @ self.image_projection

    def encode_text(self, text, attention_mask):
        x = self.textual(text, attention_mask=attention_mask).last_hidden_state
        return x[torch.arange(x.shape[0]), 0, :] @ self.text_projection
