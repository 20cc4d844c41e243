"""Tiny models built offline: the real classes at toy size, their language models briefly pre-trained.

Tests and the demo must run without a network, so model names of the form ``tiny:<preset>``
resolve to a directory this module builds (deterministically, in seconds) and caches:

- a byte-level BPE tokenizer trained on a small built-in English + narration corpus
  (every byte is in the vocabulary, so any text round-trips and grammar-constrained decoding
  can spell anything), with a chat template (:data:`CHAT_TEMPLATE`) on the LLM presets;
- ``tiny:llama`` — a 2-layer ``LlamaForCausalLM`` briefly pre-trained on what the LLM jobs ask
  it for (:func:`assistant_lines`: narrations, summaries, QA JSON), and ``tiny:llama-random``
  without that (it never stops early: generation benchmarks use it for a fixed amount of work
  per call); ``tiny:t5`` — a 2-layer
  ``T5ForConditionalGeneration``; ``tiny:gpt2`` — a 2-layer ``GPT2LMHeadModel`` briefly pre-trained
  on synthetic narration sentences (:func:`narration_sentences`), so that the narrator's frozen LM
  writes narrations as GPT-2 writes English for LaViLa, and only what is in the clip is left to learn;
- ``tiny:blip2`` / ``tiny:blip2-t5`` — a ``Blip2ForConditionalGeneration`` (OPT / T5 language model)
  with its image processor; ``tiny:blip2``'s OPT is briefly pre-trained on synthetic narrations
  in BLIP-2's question–answer form (:func:`pretrain_narration_lm`), so that — frozen, as BLIP-2
  trains it — it is a language model a trained Q-Former can steer, as OPT is for BLIP-2;
- ``tiny:sentence`` — a sentence-transformers model (2-layer BERT, mean pooling), and
  ``tiny:sentence-base`` with BERT-base dimensions for benchmarks.

The directory is a normal Hugging Face model directory: transformers and vLLM load it by path.
Any other name (a Hub id, a local directory, an ``s3://`` URL fetched by the caller) is returned
unchanged.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

PRESET_VERSION = "7"
PRESETS = ("llama", "llama-random", "t5", "gpt2", "sentence", "sentence-base", "blip2", "blip2-t5")
CHAT_PRESETS = ("llama", "llama-random", "t5", "gpt2")  # the LLM jobs' models get a chat template
SPECIAL = {"bos": "<s>", "eos": "</s>", "pad": "<pad>", "unk": "<unk>"}
# A chat template of the common shape (role headers, one end token per turn), so that prompts with
# ``chat: true`` run on the tiny presets too.
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}<|{{ message['role'] }}|>\n{{ message['content'] }}"
    "{{ eos_token }}\n{% endfor %}{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)

_CORPUS_WORDS = """
the a an and or of to in on with from into onto at by for his her their its is was were be been
camera wearer person another someone something what where when which who how why did does do
I you he she it they we my your our this that these those there here then after before while
open opens opened close closes closed cut cuts wash washes washed pick picks picked up put puts
down stir stirs stirred pour pours poured take takes took hold holds held place places placed
walk walks walked look looks looked move moves moved turn turns turned lift lifts lifted drop
door knife onion cup bowl pan tap bottle plate spoon table kitchen water hand hands right left
bag box phone book chair floor wall window sink fridge food bread tomato carrot paper towel
question answer wrong answers summary caption captions video narration narrations paraphrase
generate one pair json format past tense within words concise plausible incorrect three list
""".split()


def cache_root() -> Path:
    return Path(os.environ.get("EGORAY_CACHE", Path.home() / ".cache" / "egoray"))


def is_tiny(name: str) -> bool:
    return name.startswith("tiny:")


def resolve_model(name: str, seed: int = 0) -> str:
    """A loadable model path or id; ``tiny:*`` presets are built on first use and cached."""
    if not is_tiny(name):
        return name
    preset = name.split(":", 1)[1]
    if preset not in PRESETS:
        raise ValueError(f"unknown tiny model {name!r} (presets: {', '.join('tiny:' + p for p in PRESETS)})")
    import transformers

    # Saved files depend on the transformers version that wrote them: one cache entry per version.
    key = hashlib.sha256(f"{preset}-{seed}-{PRESET_VERSION}-{transformers.__version__}".encode()).hexdigest()[:10]
    target = cache_root() / "models" / f"tiny-{preset}-{key}"
    if (target / "config.json").exists():
        return str(target)
    import fcntl

    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / f".{target.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one builder at a time (Ray Train ranks, actors); others wait
        if (target / "config.json").exists():
            return str(target)
        if target.exists():  # an incomplete entry (a build killed mid-way on another filesystem)
            shutil.rmtree(target)
        tmp = target.parent / f".{target.name}.tmp-{uuid.uuid4().hex[:8]}"
        tmp.mkdir(parents=True)
        try:
            build_tiny_model(preset, str(tmp), seed)
            tmp.rename(target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return str(target)


def build_tokenizer(vocab_size: int = 800):
    """A byte-level BPE tokenizer trained on the built-in corpus (deterministic)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[SPECIAL["pad"], SPECIAL["bos"], SPECIAL["eos"], SPECIAL["unk"]],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    lines = [" ".join(_CORPUS_WORDS[i:i + 12]) for i in range(0, len(_CORPUS_WORDS), 12)]
    lines += ['{"question": "What did I cut?", "answer": "an onion"}', '{"wrong_answers": ["a", "b", "c"]}',
              "The camera wearer picks up the cup. Summary: The camera wearer cooked."]
    tok.train_from_iterator(lines * 20, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=SPECIAL["bos"],
        eos_token=SPECIAL["eos"],
        pad_token=SPECIAL["pad"],
        unk_token=SPECIAL["unk"],
        padding_side="left",
        model_max_length=1024,
    )
    return fast


def build_tiny_model(preset: str, out_dir: str, seed: int = 0) -> None:
    """Write a tiny random-weight model and its tokenizer to ``out_dir``."""
    import torch
    import transformers

    tokenizer = build_tokenizer()
    if preset in CHAT_PRESETS:  # not the sentence encoders: sentence-transformers would chat-format their texts
        tokenizer.chat_template = CHAT_TEMPLATE
    ids = {k: tokenizer.convert_tokens_to_ids(v) for k, v in SPECIAL.items()}
    vocab = len(tokenizer)
    torch.manual_seed(seed)
    if preset in ("llama", "llama-random"):
        config = transformers.LlamaConfig(
            vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
            # head_dim 32: vLLM's CPU attention rejects 16
            num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=1024,
            bos_token_id=ids["bos"], eos_token_id=ids["eos"], pad_token_id=ids["pad"],
            tie_word_embeddings=False,
        )
        model = transformers.LlamaForCausalLM(config)
        if preset == "llama":
            pretrain_narration_lm(model, tokenizer, seed, lines=assistant_lines)
    elif preset == "gpt2":
        config = transformers.GPT2Config(
            vocab_size=vocab, n_embd=64, n_layer=2, n_head=4, n_positions=1024,
            bos_token_id=ids["bos"], eos_token_id=ids["eos"], pad_token_id=ids["pad"],
        )
        model = transformers.GPT2LMHeadModel(config)
        pretrain_narration_lm(model, tokenizer, seed, lines=narration_sentences)
    elif preset in ("sentence", "sentence-base"):
        # "sentence-base" has BERT-base dimensions: realistic work per text for benchmarks.
        dims = (768, 12, 12, 3072) if preset == "sentence-base" else (64, 2, 2, 128)
        _build_tiny_sentence_transformer(tokenizer, ids, out_dir, dims)
        return
    elif preset in ("blip2", "blip2-t5"):
        model = _tiny_blip2(preset, vocab, ids)
        if preset == "blip2":
            pretrain_narration_lm(model.language_model, tokenizer, seed)
        if preset == "blip2-t5":
            tokenizer.padding_side = "right"
        transformers.BlipImageProcessor(size={"height": 32, "width": 32}).save_pretrained(out_dir)
    elif preset == "t5":
        tokenizer.padding_side = "right"
        config = transformers.T5Config(
            vocab_size=vocab, d_model=64, d_kv=16, d_ff=128, num_layers=2, num_decoder_layers=2,
            num_heads=4, eos_token_id=ids["eos"], pad_token_id=ids["pad"], decoder_start_token_id=ids["pad"],
        )
        model = transformers.T5ForConditionalGeneration(config)
    else:
        raise ValueError(f"unknown preset {preset!r}")
    model.generation_config.pad_token_id = ids["pad"]
    model.generation_config.eos_token_id = ids["eos"]
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)


def narration_lines(rng: Any, n: int) -> list[str]:
    """Synthetic narrations in the form BLIP-2 and EILEV feed them: one to three "<question>
    <narration>." blocks separated by newlines, each narration built from the synthetic data's
    verbs and nouns."""
    from egoray.data.synth import NOUNS, VERBS

    questions = ["Question: What is the camera wearer doing? Answer:", "What is the camera wearer doing?",
                 "Q: What is the camera wearer doing? A:", ""]
    lines = []
    for _ in range(n):
        blocks = []
        for _ in range(int(rng.integers(1, 4))):
            verb, noun = VERBS[int(rng.integers(len(VERBS)))][1], NOUNS[int(rng.integers(len(NOUNS)))]
            article = "the" if rng.random() < 0.7 else "a"
            blocks.append(f"{questions[int(rng.integers(len(questions)))]} The camera wearer {verb} {article} {noun}."
                          .strip())
        lines.append("\n".join(blocks) + "\n")
    return lines


def narration_sentences(rng: Any, n: int) -> list[str]:
    """Synthetic narrations as ``ingest`` cleans them ("The camera wearer opens the door", ...):
    every verb with every noun, so the text alone cannot tell which one a clip shows."""
    from egoray.data.synth import NOUNS, VERBS

    tails = ["", "", "", " with his right hand", " with both hands"]
    lines = []
    for _ in range(n):
        verb, noun = VERBS[int(rng.integers(len(VERBS)))][1], NOUNS[int(rng.integers(len(NOUNS)))]
        if rng.random() < 0.1:
            lines.append(f"Another person {verb} the {noun}")
        else:
            article = "the" if rng.random() < 0.8 else "a"
            lines.append(f"The camera wearer {verb} {article} {noun}{tails[int(rng.integers(len(tails)))]}")
    return lines


def assistant_lines(rng: Any, n: int) -> list[str]:
    """What the demo's LLM jobs ask ``tiny:llama`` for, in their output formats: narrations, video
    summaries, and question–answer pairs and wrong answers as the JSON the QA job constrains to,
    all about the synthetic verbs and nouns (the content is random: it reads like an answer, it
    is not one)."""
    from egoray.data.synth import NOUNS, VERBS

    lines = []
    for text in narration_sentences(rng, n):
        verb = VERBS[int(rng.integers(len(VERBS)))]
        nouns = [NOUNS[int(i)] for i in rng.choice(len(NOUNS), 4, replace=False)]
        roll = rng.random()
        if roll < 0.4:
            lines.append(text)
        elif roll < 0.6:
            lines.append(f"The camera wearer was working in a kitchen, handling {nouns[0]} and {nouns[1]}.")
        elif roll < 0.8:
            lines.append(f'{{"question": "What did the camera wearer {verb[0]}?", "answer": "the {nouns[0]}"}}')
        else:
            lines.append('{"wrong_answers": [' + ", ".join(f'"the {x}"' for x in nouns[1:]) + "]}")
    return lines


def pretrain_narration_lm(lm: Any, tokenizer: Any, seed: int = 0, steps: int = 200, batch: int = 32,
                          lines: Any = narration_lines) -> None:
    """A short text-only run of a tiny causal LM on ``lines(rng, batch)`` texts, each as
    ``<bos> text <eos>`` (seconds on a CPU)."""
    import numpy as np
    import torch

    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    optimizer = torch.optim.AdamW(lm.parameters(), lr=3e-3)
    lm.train()
    pad = tokenizer.pad_token_id
    for _ in range(steps):
        ids = [[tokenizer.bos_token_id, *tokenizer(t, add_special_tokens=False)["input_ids"], tokenizer.eos_token_id]
               for t in lines(rng, batch)]
        longest = max(len(x) for x in ids)
        input_ids = torch.tensor([x + [pad] * (longest - len(x)) for x in ids])
        mask = (torch.arange(longest)[None] < torch.tensor([len(x) for x in ids])[:, None]).long()
        labels = input_ids.masked_fill(mask == 0, -100)
        loss = lm(input_ids=input_ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    lm.eval()


def _tiny_blip2(preset: str, vocab: int, ids: dict[str, int]):
    """A BLIP-2 of the real architecture at toy size: ViT (32 px, 8 px patches) → Q-Former (4
    queries) → OPT or T5. Same classes as ``Salesforce/blip2-opt-2.7b`` / ``blip2-flan-t5-xl``."""
    import transformers

    vision = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
              "image_size": 32, "patch_size": 8}
    qformer = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
               "encoder_hidden_size": 32, "cross_attention_frequency": 1}
    if preset == "blip2":
        text = {"model_type": "opt", "vocab_size": vocab, "hidden_size": 64, "word_embed_proj_dim": 64,
                "ffn_dim": 128, "num_hidden_layers": 2, "num_attention_heads": 4, "max_position_embeddings": 1024,
                "bos_token_id": ids["bos"], "eos_token_id": ids["eos"], "pad_token_id": ids["pad"]}
    else:
        text = {"model_type": "t5", "vocab_size": vocab, "d_model": 64, "d_kv": 16, "d_ff": 128, "num_layers": 2,
                "num_decoder_layers": 2, "num_heads": 4, "eos_token_id": ids["eos"], "pad_token_id": ids["pad"],
                "decoder_start_token_id": ids["pad"]}
    config = transformers.Blip2Config(vision_config=vision, qformer_config=qformer, text_config=text,
                                      num_query_tokens=4)
    return transformers.Blip2ForConditionalGeneration(config)


def _build_tiny_sentence_transformer(tokenizer, ids: dict[str, int], out_dir: str,
                                    dims: tuple[int, int, int, int] = (64, 2, 2, 128)) -> None:
    """A sentence-transformers model: a BERT (hidden, layers, heads, ffn) with mean pooling, random weights."""
    import tempfile

    import transformers
    from sentence_transformers import SentenceTransformer, models

    hidden, layers, heads, ffn = dims
    config = transformers.BertConfig(vocab_size=len(tokenizer), hidden_size=hidden, num_hidden_layers=layers,
                                     num_attention_heads=heads, intermediate_size=ffn, max_position_embeddings=256,
                                     pad_token_id=ids["pad"])
    with tempfile.TemporaryDirectory() as bert_dir:
        transformers.BertModel(config).save_pretrained(bert_dir)
        tokenizer.padding_side = "right"
        tokenizer.save_pretrained(bert_dir)
        word = models.Transformer(bert_dir, max_seq_length=128)
        pooling = models.Pooling(word.get_word_embedding_dimension(), pooling_mode="mean")
        SentenceTransformer(modules=[word, pooling], device="cpu").save(out_dir)
