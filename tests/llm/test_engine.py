"""The HF engine on tiny offline models: batching, left padding, schema-constrained decoding."""

import json

import pytest

from egoray.llm.engine import GenerationParams, HFEngine
from egoray.llm.schemas import qa_schema, validate_qa, validate_wrong_answers, wrong_answers_schema
from egoray.models.tiny import resolve_model


@pytest.fixture(scope="module")
def llama():
    return HFEngine("tiny:llama")


def test_tiny_models_build_offline_and_are_cached():
    a = resolve_model("tiny:llama")
    assert resolve_model("tiny:llama") == a
    assert resolve_model("some/hub-id") == "some/hub-id"
    with pytest.raises(ValueError, match="unknown tiny model"):
        resolve_model("tiny:nope")


def test_left_padding_does_not_change_greedy_outputs(llama):
    greedy = GenerationParams(do_sample=False, max_new_tokens=12)
    short, long = "The camera wearer cuts", "Narrations: the camera wearer opens the door and walks to the table"
    alone = llama.generate([short], greedy)[0]
    together = llama.generate([long, short, long], greedy)
    assert llama.tokenizer.padding_side == "left"
    assert together[1] == alone
    assert together[0] == together[2]


def test_json_schema_constrains_every_output(llama):
    params = GenerationParams(max_new_tokens=160, temperature=1.0)
    prompts = [f"Narrations: the camera wearer cuts onion number {i}. JSON:" for i in range(6)]
    outs = llama.generate(prompts, params, schema=qa_schema(), seeds=[[3 + i] for i in range(6)])
    assert len(outs) == 6
    for (text,) in outs:
        obj = json.loads(text)  # valid JSON although the weights are random
        assert set(obj) == {"question", "answer"}
        parsed = validate_qa(text)
        assert parsed.ok, (parsed, text)
        assert parsed.value[0].endswith("?") and len(parsed.value[1].split()) <= 5
    wrong = llama.generate(prompts[:3], params, schema=wrong_answers_schema(3), seeds=[[4, 5], [6, 7], [8, 9]])
    assert [len(w) for w in wrong] == [2, 2, 2]
    for group in wrong:
        for text in group:
            assert len(json.loads(text)["wrong_answers"]) == 3
            assert validate_wrong_answers(text, "xyzzy").reason in (None, "duplicate_wrong_answers")


def test_sampling_is_seeded_per_row_whatever_the_batch(llama):
    """A prompt's samples depend on its own seeds only: alone, in another batch, in another order."""
    params = GenerationParams(max_new_tokens=12, temperature=1.0)
    prompts = [f"the camera wearer picks up cup {i}" + " and walks" * (i % 3) for i in range(6)]
    seeds = [[100 + i, 200 + i] for i in range(6)]
    together = llama.generate(prompts, params, seeds=seeds)
    alone = [llama.generate([p], params, seeds=[s])[0] for p, s in zip(prompts, seeds, strict=True)]
    reversed_order = llama.generate(prompts[::-1], params, seeds=seeds[::-1])[::-1]
    assert together == alone == reversed_order
    assert together[0][0] != together[0][1]  # two seeds, two samples
    assert llama.generate([prompts[0]], params, seeds=[[999, 200]])[0][0] != together[0][0]


def test_row_seeds_are_stable_and_distinct():
    from egoray.models.sampling import row_seed

    assert row_seed(0, "question", "g:1", 0, 0) == row_seed(0, "question", "g:1", 0, 0)
    seeds = {row_seed(0, "question", f"g:{i}", s, a) for i in range(50) for s in range(3) for a in range(2)}
    assert len(seeds) == 300 and all(0 <= x < 2**63 for x in seeds)


def test_seq2seq_returns_n_per_prompt():
    t5 = HFEngine("tiny:t5")
    outs = t5.generate(["paraphrase: the camera wearer cuts an onion </s>", "paraphrase: hi </s>"],
                       GenerationParams(max_new_tokens=6, temperature=1.0), seeds=[[1, 2, 3], [4, 5, 6]])
    assert [len(o) for o in outs] == [3, 3]
    assert t5.seq2seq and t5.tokenizer.padding_side == "right"


def test_vllm_engine_arguments_come_from_the_engine_config():
    from egoray.llm.vllm_engine import CPU_KV_CACHE_GB, engine_kwargs

    gpu = engine_kwargs("org/model", "bfloat16", 1024 + 64, gpus=2, kv_cache_gb=None, on_gpu=True,
                        extra={"enable_prefix_caching": False})
    assert gpu["model"] == "org/model" and gpu["max_model_len"] == 1088 and gpu["tensor_parallel_size"] == 2
    assert gpu["enable_prefix_caching"] is False and "kv_cache_memory_bytes" not in gpu
    assert gpu["structured_outputs_config"]["backend"] == "guidance"
    cpu = engine_kwargs("m", "auto", 100, gpus=0, kv_cache_gb=None, on_gpu=False, extra={})
    assert cpu["kv_cache_memory_bytes"] == int(CPU_KV_CACHE_GB * 2**30) and "tensor_parallel_size" not in cpu
    assert engine_kwargs("m", "auto", 100, 0, 0.25, False, {})["kv_cache_memory_bytes"] == 2**28


def test_generated_tokens_are_counted_without_padding(llama):
    params = GenerationParams(max_new_tokens=6, do_sample=True, seed=3)
    llama.generated_tokens = 0
    outs = llama.generate(["c opens the door", "c"], params, seeds=[[1, 2], [3, 4]])
    counted = llama.generated_tokens
    assert len(outs) == 2 and all(len(o) == 2 for o in outs)
    assert 0 < counted <= 2 * 2 * 6  # at most max_new_tokens per sequence; padding is not counted
    llama.generate(["c"], params)
    assert counted < llama.generated_tokens <= counted + 6


def test_long_caption_lists_are_shortened_to_fit_and_keep_the_summary_cue(llama):
    """Over max_prompt_tokens the engine would cut the prompt's end ("Summary:"); the summary step
    drops repeated captions (oldest copy first), then the oldest captions, until the prompt fits."""
    from egoray.llm.prompts import SummaryPrompts
    from egoray.llm.steps import SummaryStep, shorten_captions, summary_prompt

    def under(limit):
        return lambda caps: sum(len(c) for c in caps) <= limit

    caps = ["a", "bb", "a", "ccc", "bb", "dddd"]
    assert shorten_captions(caps, under(100)) == caps
    assert shorten_captions(caps, under(10)) == ["a", "ccc", "bb", "dddd"]  # the first "a" and "bb" went
    assert shorten_captions(caps, under(7)) == ["bb", "dddd"]  # then from the front
    assert shorten_captions(caps, under(0)) == []

    step = SummaryStep(GenerationParams(), SummaryPrompts())
    engine = llama
    base = len(engine.tokenizer(summary_prompt([], step.prompts))["input_ids"])
    engine.max_prompt_tokens, saved = base + 150, engine.max_prompt_tokens
    try:
        row = {"kept_captions": [f"frame {i}: a person picks up the cup number {i}" for i in range(60)]}
        assert not engine.fits(step.prompt(row))
        prompt = step.fit_prompt(row, engine.fits)
        assert engine.fits(prompt) and prompt.endswith("Summary:")
        kept = prompt.rsplit("Captions: ", 1)[1].split("\nSummary:")[0].split("; ")
        assert kept == row["kept_captions"][-len(kept):] and 0 < len(kept) < 60  # the latest captions stay
        assert not engine.fits(summary_prompt(row["kept_captions"][-len(kept) - 1:], step.prompts))  # as many as fit
    finally:
        engine.max_prompt_tokens = saved


def test_repetition_penalty_changes_greedy_output(llama):
    prompt = ["The camera wearer opens the door. The camera wearer"]  # the pre-trained LM goes on
    plain = llama.generate(prompt, GenerationParams(do_sample=False, max_new_tokens=12))
    penalised = llama.generate(prompt, GenerationParams(do_sample=False, max_new_tokens=12, repetition_penalty=50.0))
    assert plain != penalised
