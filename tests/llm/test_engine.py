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
    outs = llama.generate(prompts, params, schema=qa_schema(), seed=3)
    assert len(outs) == 6
    for (text,) in outs:
        obj = json.loads(text)  # valid JSON although the weights are random
        assert set(obj) == {"question", "answer"}
        parsed = validate_qa(text)
        assert parsed.ok, (parsed, text)
        assert parsed.value[0].endswith("?") and len(parsed.value[1].split()) <= 5
    wrong = llama.generate(prompts[:3], params, schema=wrong_answers_schema(3), n=2, seed=4)
    assert [len(w) for w in wrong] == [2, 2, 2]
    for group in wrong:
        for text in group:
            assert len(json.loads(text)["wrong_answers"]) == 3
            assert validate_wrong_answers(text, "xyzzy").reason in (None, "duplicate_wrong_answers")


def test_sampling_is_seeded(llama):
    params = GenerationParams(max_new_tokens=8, temperature=1.0)
    a = llama.generate(["hello there"], params, seed=11)
    assert llama.generate(["hello there"], params, seed=11) == a
    assert llama.generate(["hello there"], params, n=4, seed=12)[0] != a[0] * 4


def test_seq2seq_returns_n_per_prompt():
    t5 = HFEngine("tiny:t5")
    outs = t5.generate(["paraphrase: the camera wearer cuts an onion </s>", "paraphrase: hi </s>"],
                       GenerationParams(max_new_tokens=6, temperature=1.0), n=3, seed=1)
    assert [len(o) for o in outs] == [3, 3]
    assert t5.seq2seq and t5.tokenizer.padding_side == "right"


def test_vllm_processor_config_is_built_from_the_engine_config():
    from egoray.llm.engine import EngineConfig
    from egoray.llm.stage import vllm_processor_config

    cfg = vllm_processor_config(
        EngineConfig(kind="vllm", model="org/model", batch_size=32, num_actors=3, gpus_per_actor=2,
                     engine_kwargs={"enable_prefix_caching": True}),
        GenerationParams(max_new_tokens=64))
    assert cfg.model_source == "org/model" and cfg.batch_size == 32 and cfg.concurrency == 3
    assert cfg.engine_kwargs["tensor_parallel_size"] == 2
    assert cfg.engine_kwargs["max_model_len"] == 1024 + 64
    assert cfg.engine_kwargs["enable_prefix_caching"] is True


def test_generated_tokens_are_counted_without_padding(llama):
    params = GenerationParams(max_new_tokens=6, do_sample=True, seed=3)
    llama.generated_tokens = 0
    outs = llama.generate(["c opens the door", "c"], params, n=2)
    counted = llama.generated_tokens
    assert len(outs) == 2 and all(len(o) == 2 for o in outs)
    assert 0 < counted <= 2 * 2 * 6  # at most max_new_tokens per sequence; padding is not counted
    llama.generate(["c"], params)
    assert counted < llama.generated_tokens <= counted + 6
