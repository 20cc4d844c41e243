"""VideoBLIP frame concatenation and EILEV prompts on the tiny random BLIP-2 (OPT and T5)."""

import numpy as np
import pytest
import torch

from egoray.models.vlm import (
    VLMOptions,
    choose_examples,
    clip_prompts,
    embed_prompt,
    generate,
    load_vlm,
    pixel_values,
    prompt_segments,
)

QUESTION, ANSWER = "Question: What is the camera wearer doing?", "Answer:"


@pytest.fixture(scope="module", params=["tiny:blip2", "tiny:blip2-t5"])
def vlm(request):
    torch.manual_seed(0)
    return load_vlm(request.param)


def _clips(n, frames=8, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 255, (frames, 40, 48, 3), dtype=np.uint8) for _ in range(n)]


def test_frame_tokens_are_concatenated_before_the_qformer(vlm):
    clips = _clips(3, frames=8)
    pv = pixel_values(vlm, clips)
    assert pv.shape == (3, 8, 3, 32, 32)  # resized to the vision tower's input
    seen = {}
    handle = vlm.model.qformer.register_forward_hook(
        lambda mod, args, kwargs, out: seen.update(kv=kwargs["encoder_hidden_states"].shape), with_kwargs=True)
    with torch.no_grad():
        prompts = clip_prompts(vlm.model, pv)
    handle.remove()
    patches = (32 // 8) ** 2 + 1  # 16 patches + CLS per frame
    assert seen["kv"] == (3, 8 * patches, 32)  # all 8 frames' tokens in one sequence per clip
    assert prompts.shape == (3, 4, vlm.model.config.text_config.hidden_size)  # 4 queries
    # the last frame matters: changing it changes the clip's prompt, and only that clip's
    changed = [c.copy() for c in clips]
    changed[1][-1] = 255 - changed[1][-1]
    with torch.no_grad():
        again = clip_prompts(vlm.model, pixel_values(vlm, changed))
    assert torch.allclose(again[0], prompts[0], atol=1e-6) and not torch.allclose(again[1], prompts[1])


def test_interleaved_prompt_with_k_examples(vlm):
    examples = ["The camera wearer cuts a tomato", "The camera wearer opens the door"]
    segments = prompt_segments(QUESTION, ANSWER, examples)
    assert segments == [0, f"{QUESTION} {ANSWER} {examples[0]}", 1, f"{QUESTION} {ANSWER} {examples[1]}",
                        -1, f"{QUESTION} {ANSWER}"]
    with torch.no_grad():
        visual = clip_prompts(vlm.model, pixel_values(vlm, _clips(3)))
        embeds = embed_prompt(vlm, segments, visual[:2], visual[2])
    n_tok = [len(vlm.tokenizer(s, add_special_tokens=False)["input_ids"]) for s in segments if isinstance(s, str)]
    bos = 1 if vlm.decoder_only else 0
    assert embeds.shape == (3 * 4 + sum(n_tok) + bos, visual.shape[-1])
    # the clips sit where the segments put them: example 0 first, the query after the last example text
    assert torch.equal(embeds[:4], visual[0])
    q_at = 2 * 4 + n_tok[0] + n_tok[1] + bos
    assert torch.equal(embeds[q_at:q_at + 4], visual[2])


def test_generation_returns_n_texts_with_scores(vlm):
    with torch.no_grad():
        visual = clip_prompts(vlm.model, pixel_values(vlm, _clips(3)))
        prompts = [embed_prompt(vlm, prompt_segments(QUESTION, ANSWER, ["C cuts"]), visual[:1], visual[1]),
                   embed_prompt(vlm, prompt_segments(QUESTION, ANSWER, []), visual[:0], visual[2])]
    options = VLMOptions(n=3, do_sample=True, max_new_tokens=6)
    seeds = [[1, 2, 3], [4, 5, 6]]
    texts, nlls = generate(vlm, options, prompts, seeds)
    assert [len(t) for t in texts] == [3, 3] and all(isinstance(x, str) for t in texts for x in t)
    assert all(0 < x < 20 for n in nlls for x in n)
    assert generate(vlm, options, prompts, seeds)[0] == texts  # seeded: reproducible
    # per-row seeds: a prompt's narrations are the same alone as in a batch
    assert generate(vlm, options, prompts[1:], seeds[1:])[0] == texts[1:]


def test_examples_by_verb_noun_ratio_never_the_query_itself():
    pool = [{"video_uid": "v", "t_start": float(i), "t_end": i + 1.0, "verb": verb, "noun": noun}
            for i, (verb, noun) in enumerate([("cut", "onion")] * 6 + [("wash", "onion")] * 6 + [("open", "door")] * 6)]
    query = {**pool[0]}
    rng = np.random.default_rng(0)
    chosen = choose_examples(query, pool, 4, "verb_noun", 0.5, rng)
    assert len(chosen) == len(set(chosen)) == 4 and 0 not in chosen
    assert sum(pool[i]["verb"] == "cut" for i in chosen) >= 2  # round(4 * 0.5) share the verb
    assert all(pool[i]["noun"] == "onion" for i in chosen)  # the rest share the noun
    only_verbs = choose_examples(query, pool, 4, "verb_noun", 1.0, rng)
    assert all(pool[i]["verb"] == "cut" for i in only_verbs)
    # an unlabelled query (a plain video folder) falls back to random examples
    assert len(choose_examples({"video_uid": "x"}, pool, 5, "verb_noun", 0.5, rng)) == 5
    assert choose_examples(query, pool, 0, "random", 0.5, rng) == []
