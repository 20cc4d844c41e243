"""VideoBLIP frame concatenation and EILEV's exact inputs on the tiny random BLIP-2 (OPT and T5):
the token layout against hand-built sequences, the example choice rules, decoding and scores."""

import functools

import numpy as np
import pytest
import torch

from egoray.models.interleave import clean_narration, eilev_blocks, interleave
from egoray.models.vlm import VLMOptions, clip_prompts, generate, load_vlm, pixel_values, query_inputs, sequence_nll
from egoray.models.vlm_examples import ExamplePool, fit_window, point_window

PROMPT = "Question: What is the camera wearer doing? Answer:"


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


def test_narrations_are_cleaned_as_eilev_does():
    assert clean_narration("#C C drops a plate ") == "The camera wearer drops a plate."
    assert clean_narration("#c  C adjusts the screw. #Unsure.<|eos|>") == "The camera wearer adjusts the screw."
    assert clean_narration("#C C drops #unsure on the countertop<|eos|>") == \
        "The camera wearer drops something on the countertop."
    assert clean_narration("The camera wearer cuts the onion") == "The camera wearer cuts the onion."
    assert clean_narration("what is it?") == "what is it?"


@functools.cache
def _tokenizer(preset):
    return load_vlm(preset).tokenizer


def test_token_layout_decoder_only():
    """OPT: BOS, each clip's query tokens then "\\n", the text, "\\n" between blocks, the target
    as " <target>\\n</s>" — the only tokens with labels."""
    tok = _tokenizer("tiny:blip2")

    def ids(text):
        return tok(text, add_special_tokens=False)["input_ids"]

    bos, eos, pad, nl = tok.bos_token_id, tok.eos_token_id, tok.pad_token_id, ids("\n")
    assert len(nl) == 1
    one = interleave(tok, True, [("A prompt", 1)], "A text", 2)
    answer = ids(" A text") + nl + [eos]
    assert one.input_ids == [bos, pad, pad, *nl, *ids("A prompt"), *answer]
    assert one.labels == [-100] * (4 + len(ids("A prompt"))) + answer
    assert one.video_mask == [0, 1, 1, 0] + [0] * (len(ids("A prompt")) + len(answer))
    # two clips before the first text, three blocks, no target (inference)
    blocks = [("Prompt 1 Text 1", 2), ("Prompt 2 Text 2", 1), ("Prompt 3", 1)]
    many = interleave(tok, True, blocks, None, 2)
    clip = [pad, pad, *nl]
    expected = [bos, *clip, *clip, *ids("Prompt 1 Text 1"), *nl, *clip, *ids("Prompt 2 Text 2"), *nl, *clip,
                *ids("Prompt 3")]
    assert many.input_ids == expected and many.labels == [-100] * len(expected)
    assert sum(many.video_mask) == 4 * 2 and [many.video_mask[i] for i in (1, 2, 3, 4, 5, 6)] == [1, 1, 0, 1, 1, 0]


def test_token_layout_encoder_decoder():
    """T5: no BOS, the encoder input ends with </s>, the target is the decoder's "<target></s>"."""
    tok = _tokenizer("tiny:blip2-t5")

    def ids(text):
        return tok(text, add_special_tokens=False)["input_ids"]

    eos, pad, nl = tok.eos_token_id, tok.pad_token_id, ids("\n")
    one = interleave(tok, False, [("A prompt", 1)], "A text", 2)
    assert one.input_ids == [pad, pad, *nl, *ids("A prompt"), eos]
    assert one.labels == [*ids("A text"), eos]
    blocks = [("Prompt 1 Text 1", 1), ("Prompt 2", 1)]
    two = interleave(tok, False, blocks, None, 2)
    assert two.input_ids == [pad, pad, *nl, *ids("Prompt 1 Text 1"), *nl, pad, pad, *nl, *ids("Prompt 2"), eos]
    assert two.labels == [] and sum(two.video_mask) == 4


def test_videoblip_layout_is_blip2s():
    """VideoBLIP (train_v1): the clip first, then BOS and the prompt; the target " <text></s>"."""
    tok = _tokenizer("tiny:blip2")

    def ids(text):
        return tok(text, add_special_tokens=False)["input_ids"]

    one = interleave(tok, True, [("A prompt", 1)], "A text", 2, layout="videoblip")
    answer = ids(" A text") + [tok.eos_token_id]
    assert one.input_ids == [tok.pad_token_id] * 2 + [tok.bos_token_id, *ids("A prompt"), *answer]
    assert one.labels == [-100] * (3 + len(ids("A prompt"))) + answer and one.video_mask[:3] == [1, 1, 0]
    t5 = _tokenizer("tiny:blip2-t5")
    two = interleave(t5, False, [("A prompt", 1)], "A text", 2, layout="videoblip")
    assert two.input_ids == [t5.pad_token_id] * 2 + t5("A prompt", add_special_tokens=False)["input_ids"] + \
        [t5.eos_token_id]
    with pytest.raises(ValueError, match="one clip"):
        interleave(tok, True, [("x", 1), ("y", 1)], None, 2, layout="videoblip")
    with pytest.raises(ValueError, match="layout: eilev"):
        VLMOptions(layout="videoblip", in_context={"k": 2})


def test_example_blocks_end_with_a_period_and_clips_sit_at_their_placeholders(vlm):
    blocks = eilev_blocks(PROMPT, ["#C C cuts a tomato", "The camera wearer opens the door."])
    assert blocks == [(f"{PROMPT} The camera wearer cuts a tomato.", 1),
                      (f"{PROMPT} The camera wearer opens the door.", 1), (PROMPT, 1)]
    with torch.no_grad():
        visual = clip_prompts(vlm.model, pixel_values(vlm, _clips(4)))
        # row 0: two examples then its query; row 1: no example
        embeds, mask = query_inputs(vlm, PROMPT, [["C cuts", "C opens"], []], visual, 4)
    items = [interleave(vlm.tokenizer, vlm.decoder_only, eilev_blocks(PROMPT, t), None, 4)
             for t in (["C cuts", "C opens"], [])]
    assert embeds.shape[:2] == mask.shape == (2, max(len(x.input_ids) for x in items))
    row0 = np.flatnonzero(items[0].video_mask)
    shift = embeds.shape[1] - len(items[0].input_ids) if vlm.decoder_only else 0  # left padding
    assert torch.equal(embeds[0, shift + row0[:4]], visual[0]) and torch.equal(embeds[0, shift + row0[8:]], visual[2])
    row1 = np.flatnonzero(items[1].video_mask)
    shift = embeds.shape[1] - len(items[1].input_ids) if vlm.decoder_only else 0
    assert torch.equal(embeds[1, shift + row1], visual[3])
    assert int(mask[1].sum()) == len(items[1].input_ids)


def _row(i, verb, noun):
    return {"id": f"c{i}", "verb": verb, "noun": noun}


def test_example_choice_follows_eilev_rules():
    query = _row(0, "cut", "onion")
    pool = ([query] + [_row(i, "cut", "onion") for i in range(1, 4)]  # the query's own action: never
            + [_row(i, "cut", "carrot") for i in range(4, 6)]  # verb bucket (2)
            + [_row(i, "wash", "onion") for i in range(6, 16)]  # noun bucket (10)
            + [_row(i, "[other]", "") for i in range(16, 20)] + [_row(i, "open", None) for i in range(20, 30)])
    examples = ExamplePool(pool)
    for seed in range(5):
        rng = np.random.default_rng(seed)
        chosen = examples.choose(query, 3, "verb_noun", 0.5, rng)  # floor(3 * 0.5) = 1 verb, 2 nouns
        assert sorted(pool[i]["verb"] for i in chosen) == ["cut", "wash", "wash"]
        # the verb bucket runs dry after 2: the noun bucket refills the rest
        chosen = examples.choose(query, 8, "verb_noun", 0.5, np.random.default_rng(seed))
        assert sum(pool[i]["verb"] == "cut" for i in chosen) == 2 and len(chosen) == 8
        assert all(pool[i]["noun"] != "onion" or pool[i]["verb"] != "cut" for i in chosen)
        # both buckets dry: random from the rest, still never the query's own action
        chosen = examples.choose(query, 20, "verb_noun", 0.5, np.random.default_rng(seed))
        assert len(chosen) == len(set(chosen)) == 20 and not {0, 1, 2, 3} & set(chosen)
    # the order is shuffled: the first example is not always from the verb bucket
    firsts = {pool[examples.choose(query, 4, "verb_noun", 0.5, np.random.default_rng(s))[0]]["verb"]
              for s in range(20)}
    assert firsts == {"cut", "wash"}
    # [other] and empty labels match nothing: a query without a noun matches no unlabelled item
    other = {"id": "q", "verb": "[other]", "noun": None}
    picks = examples.choose(other, 6, "verb_noun", 1.0, np.random.default_rng(0))
    assert len(picks) == 6  # all drawn at random: no bucket
    no_noun = {"id": "q2", "verb": "open", "noun": None}
    for seed in range(5):
        picks = examples.choose(no_noun, 4, "verb_noun", 0.0, np.random.default_rng(seed))
        # no noun bucket (None is no label), and every "open" clip is the query's own action
        assert len(picks) == 4 and all(pool[i]["verb"] != "open" for i in picks)
    assert examples.choose(query, 0, "verb_noun", 0.5, np.random.default_rng(0)) == []
    assert 0 not in examples.choose(query, 29, "random", 0.5, np.random.default_rng(0))


def test_training_clips_draw_their_examples_every_epoch_and_targets_are_the_annotated_text():
    """EILEV's dataset draws a sample's in-context examples at every load: a training clip's differ
    between epochs (the same in every run for an epoch), a held-out clip keeps the ones chosen
    once; texts are the annotated ones through EILEV's cleaning."""
    from egoray.pipelines.train_vlm_worker import VLMLoop, VLMRecipe, VLMTrainModel
    from egoray.stages.vlm_train import narration_text
    from egoray.train.distributed import TrainerOptions

    pool = [{**_row(i, "cut" if i % 2 else "wash", f"thing{i % 5}"), "frames_url": f"f{i}.npy",
             "text": f"The camera wearer does {i}", "raw_text": f"#C C does {i} #unsure"} for i in range(40)]
    options = TrainerOptions(seed=3)
    recipe = VLMRecipe(VLMLoop(train=options, output="unused", n_train=len(pool), model=VLMTrainModel(in_context=4),
                               eval_max=8, clips="unused", train_splits=["train"], eval_generate=0, max_new_tokens=8))
    recipe.pool, recipe.options = ExamplePool(pool), options
    query = {**pool[7], "example_urls": ["held.npy"], "example_texts": ["#C C holds"]}
    drawn = {}
    for epoch in (0, 1, 2, 0):
        recipe.epoch = epoch
        urls, texts = recipe._examples(query, train=True)
        assert len(urls) == 4 and "f7.npy" not in urls and texts == [f"#C C does {u[1:-4]} #unsure" for u in urls]
        assert drawn.setdefault(epoch, urls) == urls  # the same draw for an epoch, every time
        assert recipe._examples(query, train=False) == (["held.npy"], ["#C C holds"])
    assert len({tuple(u) for u in drawn.values()}) == 3
    assert narration_text(query) == "The camera wearer does 7."
    assert narration_text({"text": "The camera wearer cuts", "raw_text": None}) == "The camera wearer cuts."


def test_point_narrations_get_8_s_inside_the_video():
    assert point_window(10.0, 10.0, 8.0) == (6.0, 14.0)
    assert point_window(2.0, 2.0, 8.0) == (0.0, 8.0)
    assert point_window(3.0, 5.0, 8.0) == (3.0, 5.0)  # an interval keeps its own bounds
    assert fit_window(*point_window(10.0, 10.0, 8.0), duration=12.0) == (4.0, 12.0)
    assert fit_window(0.0, 8.0, duration=5.0) == (0.0, 5.0)


def _prompts(vlm, rows=2):
    with torch.no_grad():
        visual = clip_prompts(vlm.model, pixel_values(vlm, _clips(rows + 1)))
        return query_inputs(vlm, PROMPT, [["C cuts"]] + [[] for _ in range(rows - 1)],
                            torch.cat([visual[:2], visual[2:rows + 1]]), 4)


def test_generation_returns_n_texts_with_scores(vlm):
    embeds, mask = _prompts(vlm)
    options = VLMOptions(n=3, do_sample=True, max_new_tokens=6)
    seeds = [[1, 2, 3], [4, 5, 6]]
    texts, nlls = generate(vlm, options, embeds, mask, seeds)
    assert [len(t) for t in texts] == [3, 3] and all(isinstance(x, str) for t in texts for x in t)
    assert all(0 < x < 20 for n in nlls for x in n)
    assert generate(vlm, options, embeds, mask, seeds)[0] == texts  # seeded: reproducible
    # per-row seeds: a prompt's narrations are the same alone as in a batch (row 1 is right-aligned
    # or left-aligned the same way alone: rebuild it as its own batch)
    alone_embeds, alone_mask = query_inputs_row(vlm, embeds, mask, 1)
    assert generate(vlm, options, alone_embeds, alone_mask, seeds[1:])[0] == texts[1:]


def query_inputs_row(vlm, embeds, mask, row):
    """Row ``row`` of a padded batch, without its padding."""
    keep = mask[row].bool()
    return embeds[row:row + 1, keep], mask[row:row + 1, keep]


def test_sampling_has_no_hidden_top_k(vlm):
    """Sampling draws from the whole vocabulary (transformers would cut it to the top 50)."""
    embeds, mask = _prompts(vlm, rows=1)
    options = VLMOptions(n=40, do_sample=True, max_new_tokens=1, temperature=50.0, top_p=1.0)
    texts, _ = generate(vlm, options, embeds, mask, [list(range(40))])
    with torch.no_grad():
        lm = vlm.model.language_model
        if vlm.decoder_only:
            logits = lm(inputs_embeds=embeds, attention_mask=mask).logits[0, -1]
        else:
            start = torch.tensor([[lm.config.decoder_start_token_id]])
            logits = lm(inputs_embeds=embeds, attention_mask=mask, decoder_input_ids=start).logits[0, -1]
    top50 = set(torch.topk(logits, 50).indices.tolist())
    drawn = {vlm.tokenizer(t, add_special_tokens=False)["input_ids"][0] for t in texts[0] if t}
    assert drawn - top50, "every draw fell in the top 50 tokens"


def test_beam_search_scores_belong_to_their_narrations(vlm):
    """Each beam's NLL is its own tokens' under the model, step by step (beams reorder as they go)."""
    embeds, mask = _prompts(vlm, rows=1)
    options = VLMOptions(n=3, num_beams=3, max_new_tokens=5, stop_at_newline=False)
    lm = vlm.model.language_model
    with torch.no_grad():
        out = lm.generate(inputs_embeds=embeds, attention_mask=mask, max_new_tokens=5, num_beams=3,
                          num_return_sequences=3, do_sample=False, pad_token_id=vlm.tokenizer.pad_token_id,
                          eos_token_id=[vlm.tokenizer.eos_token_id], return_dict_in_generate=True)
    tokens = out.sequences if vlm.decoder_only else out.sequences[:, 1:]
    eos = vlm.tokenizer.eos_token_id
    ends = [t.tolist().index(eos) if eos in t.tolist() else tokens.shape[1] for t in tokens]
    _, nlls = generate(vlm, options, embeds, mask)
    # step by step: the log-probability of each token given the prompt and the tokens before it
    expected = []
    for r in range(tokens.shape[0]):
        total, count = 0.0, 0
        for t in range(min(ends[r] + 1, tokens.shape[1])):
            with torch.no_grad():
                if vlm.decoder_only:
                    seq = torch.cat([embeds, lm.get_input_embeddings()(tokens[r:r + 1, :t])], dim=1)
                    logits = lm(inputs_embeds=seq, attention_mask=torch.ones(seq.shape[:2], dtype=torch.long)
                                ).logits[0, -1]
                else:
                    dec = torch.cat([torch.tensor([[lm.config.decoder_start_token_id]]), tokens[r:r + 1, :t]], dim=1)
                    logits = lm(inputs_embeds=embeds, attention_mask=mask, decoder_input_ids=dec).logits[0, -1]
            total -= float(torch.log_softmax(logits.float(), -1)[tokens[r, t]])
            count += 1
        expected.append(total / count)
    assert nlls[0] == pytest.approx(expected, rel=1e-4, abs=1e-4)
    assert sequence_nll(vlm, embeds.repeat(3, 1, 1), mask.repeat(3, 1), tokens, ends) == pytest.approx(expected, 1e-4)


@pytest.mark.parametrize("preset", ["tiny:blip2", "tiny:blip2-t5"])
def test_training_loss_sees_only_the_target_and_trains_only_the_qformer(preset):
    """VideoBlip2's loss is the cross-entropy of the target tokens after the interleaved prompt,
    and its gradient reaches the Q-Former, its queries and the projection only."""
    from egoray.models.interleave import pad_interleaved
    from egoray.models.tiny import resolve_model
    from egoray.models.video_blip import VideoBlip2, eval_transform, freeze_backbones, to_pixels

    torch.manual_seed(0)
    model = VideoBlip2.from_pretrained(resolve_model(preset))
    frozen = freeze_backbones(model)
    assert any(n.startswith("vision_model.") for n in frozen) and any(n.startswith("language_model.") for n in frozen)
    tok = _tokenizer(preset)
    decoder_only = model.config.use_decoder_only_language_model
    items = [interleave(tok, decoder_only, eilev_blocks(PROMPT, ["C cuts"]), "The camera wearer opens the door.", 4),
             interleave(tok, decoder_only, eilev_blocks(PROMPT, ["C washes"]), "The camera wearer stirs.", 4)]
    batch = pad_interleaved(items, tok.pad_token_id, left=False)
    frames = np.random.default_rng(0).integers(0, 255, (4, 2, 32, 32, 3), dtype=np.uint8)  # 2 samples x 2 clips
    pixels = to_pixels(frames, eval_transform(32, [0.5] * 3, [0.5] * 3)).reshape(2, 2, 2, 3, 32, 32)
    out = model(pixels, batch["input_ids"], batch["attention_mask"], batch["video_mask"], batch["labels"])
    logits, labels = out.logits.float(), batch["labels"]
    if decoder_only:  # token t is predicted at position t - 1
        logits, labels = logits[:, :-1], labels[:, 1:]
    expected = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1),
                                                 ignore_index=-100)
    target_tokens = sum(len(tok(" " * decoder_only + t, add_special_tokens=False)["input_ids"])
                        for t in ("The camera wearer opens the door.", "The camera wearer stirs."))
    assert int((labels != -100).sum()) == target_tokens + 2 * (2 if decoder_only else 1)  # + "\n" and </s>
    assert float(out.loss) == pytest.approx(float(expected), rel=1e-5)
    out.loss.backward()
    graded = {n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert graded and all(n.startswith(("qformer.", "query_tokens", "language_projection.")) for n in graded)
    assert "query_tokens" in graded and any(n.startswith("language_projection.") for n in graded)


def _eilev_layout(tokenizer, prompts, text, num_query_tokens, decoder_only):
    """EILEV's ``generate_input_ids_and_labels_from_interleaved`` (eilev/data/utils.py), written
    out from its code: lists instead of tensors."""
    input_ids, labels, video = [], [], []
    newline = tokenizer("\n", add_special_tokens=False).input_ids[0]
    pad, q = tokenizer.pad_token_id, num_query_tokens
    for i, (prompt, clips) in enumerate(prompts):
        for _ in range(clips):
            input_ids += [pad] * q + [newline]
            video += [1] * q + [0]
            if decoder_only:
                labels += [-100] * (q + 1)
        if decoder_only and i == 0:
            input_ids, labels, video = [tokenizer.bos_token_id] + input_ids, [-100] + labels, [0] + video
        if i != len(prompts) - 1:
            prompt += "\n"
        tokens = tokenizer(prompt, add_special_tokens=False).input_ids
        if not decoder_only and i == len(prompts) - 1:
            tokens.append(tokenizer.eos_token_id)
        input_ids += tokens
        video += [0] * len(tokens)
        if decoder_only:
            labels += [-100] * len(tokens)
    if text is not None:
        if decoder_only:
            tokens = tokenizer(" " + text + "\n", add_special_tokens=False).input_ids + [tokenizer.eos_token_id]
            input_ids += tokens
            video += [0] * len(tokens)
            labels += tokens
        else:
            labels = tokenizer(text).input_ids
    return input_ids, labels, video


def _merging_tokenizer():
    """A BPE tokenizer with no pre-tokenizer whose merges cross into a newline (``"t\\n"`` is one
    token): tokenising a text and its newline apart differs from tokenising them together, as
    with sentencepiece tokenizers that treat the newline as whitespace."""
    from tokenizers import Tokenizer, models, normalizers
    from transformers import PreTrainedTokenizerFast

    chars = sorted(set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 .?\n"))
    vocab = {"<pad>": 0, "</s>": 1, "<s>": 2, **{c: i + 3 for i, c in enumerate(chars)}}
    vocab["t\n"] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[("t", "\n")]))
    tok.normalizer = normalizers.Sequence([])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", bos_token="<s>")


@pytest.mark.parametrize("case", ["opt", "t5", "merging"])
def test_interleaved_layout_is_eilevs(case):
    """Our layout against EILEV's function on the tiny OPT and T5 tokenizers and on one whose
    newline merges with the text before it (where tokenising them apart would differ)."""
    tok = {"opt": lambda: _tokenizer("tiny:blip2"), "t5": lambda: _tokenizer("tiny:blip2-t5"),
           "merging": _merging_tokenizer}[case]()
    decoder_only = case != "t5"
    if case == "merging":  # the case has teeth: apart, "text" and "\n" give other ids
        assert tok("A text", add_special_tokens=False).input_ids + tok("\n", add_special_tokens=False).input_ids \
            != tok("A text\n", add_special_tokens=False).input_ids
    blocks = [("What is the camera wearer doing? The camera wearer cuts a carrot.", 1),
              ("Q: What is the camera wearer doing? A: The camera wearer washes a pot.", 2),
              ("What is the camera wearer doing?", 1)]
    for target in ("The camera wearer opens the fridge.", None):
        ours = interleave(tok, decoder_only, blocks, target, 3)
        ids, labels, video = _eilev_layout(tok, blocks, target, 3, decoder_only)
        assert ours.input_ids == ids and ours.video_mask == video
        if not decoder_only and target is not None and labels[-1] != tok.eos_token_id:
            labels = labels + [tok.eos_token_id]  # T5's tokenizer appends </s> itself; the tiny one has no post-processor
        assert ours.labels == (labels if target is not None or decoder_only else [])
