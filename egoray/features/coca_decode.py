"""CoCa caption decoding, as open_clip's ``CoCa.generate`` does it, without transformers.

open_clip's ``generate`` builds on transformers' logits processors and ``BeamSearchScorer``; the
scorer is gone from transformers 5, and with it the whole method (open_clip then refuses to
generate). This module decodes the same way with torch alone, so the captions of a model and
seed are the ones open_clip 3.x wrote on transformers 4.56 (tests/features/test_coca_decode.py
holds that output):

- ``top_p`` / ``top_k``: one token at a time; eos forbidden before ``min_seq_len`` tokens, then the
  repetition penalty, the top-p / top-k filter, softmax at ``temperature`` and a draw from the
  global torch generator; finished rows get the pad token; the last position is forced to eos.
- ``beam_search``: ``num_beams`` beams in ``num_beam_groups`` groups scored on raw logits (no
  log-softmax, as open_clip), a finished hypothesis scored by its sum over its length, a group
  done once no running beam can beat its worst kept hypothesis; the best hypothesis per image.

:func:`cut_at_eot` turns the padded batch into each caption's own tokens.
"""

from __future__ import annotations

import math
from typing import Any

SOT, EOT = 49406, 49407  # open_clip's (CLIP tokenizer) start and end of text


def _min_length(ids: Any, scores: Any, min_len: int, eos: int) -> Any:
    if ids.shape[-1] < min_len:
        scores = scores.clone()
        scores[:, eos] = -math.inf
    return scores


def _repetition_penalty(ids: Any, scores: Any, penalty: float) -> Any:
    import torch

    if penalty == 1.0:
        return scores
    picked = torch.gather(scores, 1, ids)
    picked = torch.where(picked < 0, picked * penalty, picked / penalty)
    return scores.scatter(1, ids, picked)


def _top_p(scores: Any, top_p: float) -> Any:
    import torch

    sorted_logits, order = torch.sort(scores, descending=False)
    remove_sorted = sorted_logits.softmax(dim=-1).cumsum(dim=-1) <= (1 - top_p)
    remove_sorted[..., -1:] = False  # the most likely token always stays
    return scores.masked_fill(remove_sorted.scatter(1, order, remove_sorted), -math.inf)


def _top_k(scores: Any, top_k: int) -> Any:
    import torch

    k = min(max(top_k, 1), scores.size(-1))
    return scores.masked_fill(scores < torch.topk(scores, k)[0][..., -1, None], -math.inf)


def generate(model: Any, images: Any, generation_type: str = "beam_search", seq_len: int = 30,
             max_seq_len: int = 77, temperature: float = 1.0, top_p: float = 0.1, top_k: int = 1,
             num_beams: int = 6, num_beam_groups: int = 3, min_seq_len: int = 5,
             repetition_penalty: float = 1.0, pad_token_id: int | None = None) -> Any:
    """Token ids ``[batch, length]`` starting with sot, as ``open_clip.CoCa.generate`` returns them."""
    import torch

    if seq_len <= min_seq_len:
        raise ValueError(f"seq_len ({seq_len}) must be larger than min_seq_len ({min_seq_len})")
    pad = int(model.pad_id if pad_token_id is None else pad_token_id)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            if generation_type == "beam_search":
                return _beam_search(model, images, seq_len, num_beams, num_beam_groups, min_seq_len,
                                    repetition_penalty, pad)
            if generation_type not in ("top_p", "top_k"):
                raise ValueError(f"generation_type must be top_p, top_k or beam_search, not {generation_type!r}")
            return _sample(model, images, generation_type, seq_len, max_seq_len, temperature, top_p, top_k,
                           min_seq_len, repetition_penalty, pad)
    finally:
        model.train(was_training)


def _sample(model: Any, images: Any, kind: str, seq_len: int, max_seq_len: int, temperature: float,
            top_p: float, top_k: int, min_seq_len: int, penalty: float, pad: int) -> Any:
    import torch
    import torch.nn.functional as F

    device = images.device
    image_latent, image_embs = model._encode_image(images)
    out = torch.full((images.shape[0], 1), SOT, device=device, dtype=torch.long)
    while True:
        x = out[:, -max_seq_len:]
        logits = model(images, x, image_latent=image_latent, image_embs=image_embs,
                       output_labels=False)["logits"][:, -1]
        done = (out[:, -1] == EOT) | (out[:, -1] == pad)
        step = torch.full((out.shape[0], 1), pad, device=device, dtype=torch.long)
        if done.all():
            break
        live = ~done
        scores = _repetition_penalty(x[live], _min_length(x[live], logits[live], min_seq_len, EOT), penalty)
        scores = _top_p(scores, top_p) if kind == "top_p" else _top_k(scores, top_k)
        probs = F.softmax(scores / temperature, dim=-1)
        if x.shape[1] + 1 == seq_len:
            step[live] = EOT
        else:
            step[live] = torch.multinomial(probs, 1)
        out = torch.cat((out, step), dim=-1)
        if out.shape[-1] >= seq_len:
            break
    return out


class _Hypotheses:
    """The ``size`` best finished beams of one image and group, scored by sum / length."""

    def __init__(self, size: int) -> None:
        self.size, self.beams, self.worst = size, [], 1e9

    def add(self, tokens: Any, total: float, length: int) -> None:
        score = total / length
        if len(self.beams) < self.size or score > self.worst:
            self.beams.append((score, tokens))
            if len(self.beams) > self.size:
                ranked = sorted((s, i) for i, (s, _) in enumerate(self.beams))
                del self.beams[ranked[0][1]]
                self.worst = ranked[1][0]
            else:
                self.worst = min(score, self.worst)

    def done(self, best_total: float, length: int) -> bool:
        return len(self.beams) >= self.size and self.worst >= best_total / length


def _beam_search(model: Any, images: Any, seq_len: int, num_beams: int, num_groups: int, min_seq_len: int,
                 penalty: float, pad: int) -> Any:
    import torch

    if num_beams <= 1 or num_beams % num_groups:
        raise ValueError(f"num_beams ({num_beams}) must be > 1 and divisible by num_beam_groups ({num_groups})")
    device, batch = images.device, images.shape[0]
    group = num_beams // num_groups
    images = torch.repeat_interleave(images, num_beams, dim=0)
    image_latent, image_embs = model._encode_image(images)
    ids = torch.full((batch * num_beams, 1), SOT, device=device, dtype=torch.long)
    hyps = [_Hypotheses(group) for _ in range(batch * num_groups)]
    finished = [False] * (batch * num_groups)
    scores = torch.full((batch, num_beams), -1e9, dtype=torch.float, device=device)
    scores[:, ::group] = 0  # one live beam per group at the start, so a group's beams differ
    scores = scores.view(-1)
    while True:
        current = torch.zeros(batch * num_beams, dtype=ids.dtype, device=device)
        logits = model(images, ids, image_latent=image_latent, image_embs=image_embs,
                       output_labels=False)["logits"][:, -1, :]
        for g in range(num_groups):
            rows = [b * num_beams + j for b in range(batch) for j in range(g * group, (g + 1) * group)]
            group_ids = ids[rows]
            processed = _repetition_penalty(group_ids, _min_length(group_ids, logits[rows], min_seq_len, EOT),
                                            penalty)
            vocab = processed.shape[-1]
            totals = (processed + scores[rows].unsqueeze(-1)).view(batch, group * vocab)
            top_scores, top_tokens = torch.topk(totals, 2 * group, dim=1, largest=True, sorted=True)
            top_beams = torch.div(top_tokens, vocab, rounding_mode="floor")
            top_tokens = top_tokens % vocab
            length = group_ids.shape[-1] + 1
            next_scores = torch.zeros((batch, group), dtype=top_scores.dtype, device=device)
            next_tokens = torch.zeros((batch, group), dtype=top_tokens.dtype, device=device)
            next_beams = torch.zeros((batch, group), dtype=top_beams.dtype, device=device)
            for b in range(batch):
                h = b * num_groups + g
                if finished[h]:
                    next_tokens[b, :] = pad
                    continue
                kept = 0
                for rank, (token, total, beam) in enumerate(zip(top_tokens[b], top_scores[b], top_beams[b])):
                    row = b * group + int(beam)
                    if int(token) == EOT:
                        if rank < group:
                            hyps[h].add(group_ids[row].clone(), float(total), length)
                    else:
                        next_scores[b, kept], next_tokens[b, kept], next_beams[b, kept] = total, token, row
                        kept += 1
                    if kept == group:
                        break
                finished[h] = finished[h] or hyps[h].done(float(top_scores[b].max()), length)
            beam_idx = next_beams.view(-1)
            scores[rows] = next_scores.view(-1)
            ids[rows] = group_ids[beam_idx]
            current[rows] = next_tokens.view(-1)
        ids = torch.cat([ids, current.unsqueeze(-1)], dim=-1)
        if all(finished) or ids.shape[-1] >= seq_len:
            break
    return _best(ids, scores, hyps, finished, batch, num_groups, group, seq_len, pad)


def _best(ids: Any, scores: Any, hyps: list[_Hypotheses], finished: list[bool], batch: int, num_groups: int,
          group: int, seq_len: int, pad: int) -> Any:
    """The best hypothesis per image (running beams count as finished at the end), padded, with
    eot after each one shorter than the longest."""
    for h, hyp in enumerate(hyps):
        if finished[h]:
            continue
        for j in range(group):
            row = h * group + j
            hyp.add(ids[row], float(scores[row]), ids.shape[-1])
    best = []
    for b in range(batch):
        candidates = [beam for hyp in hyps[b * num_groups:(b + 1) * num_groups] for beam in hyp.beams]
        best.append(sorted(candidates, key=lambda x: x[0])[-1][1])
    lengths = [len(t) for t in best]
    width = min(max(lengths) + 1, seq_len)
    out = ids.new_full((batch, width), pad) if min(lengths) != max(lengths) else ids.new_empty((batch, width))
    for i, tokens in enumerate(best):
        out[i, :lengths[i]] = tokens
        if lengths[i] < width:
            out[i, lengths[i]] = EOT
    return out


def cut_at_eot(tokens: Any) -> list[list[int]]:
    """Each row's tokens after sot up to (not including) its first eot; padding dropped."""
    rows = []
    for row in tokens.tolist():
        row = row[1:] if row and row[0] == SOT else row
        rows.append(row[:row.index(EOT)] if EOT in row else row)
    return rows
