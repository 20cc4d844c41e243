"""Constrained decoding on tokenizers of both kinds, and failures that stay with their row."""

import json
import shutil

import pyarrow as pa
import pytest
import torch

from egoray.llm.engine import GenerationParams, HFEngine
from egoray.llm.grammar import GrammarProcessor, stop_token_ids, tokenizer_info, vocab_kind
from egoray.models.tiny import SPECIAL, resolve_model

CHOICE = {"type": "object", "properties": {"a": {"enum": ["yes", "no"]}, "n": {"type": "integer", "minimum": 0,
                                                                             "maximum": 9}},
          "required": ["a", "n"], "additionalProperties": False}
SENTENCEPIECE_DECODER = {"type": "Sequence", "decoders": [
    {"type": "Replace", "pattern": {"String": "\u2581"}, "content": " "}, {"type": "ByteFallback"}, {"type": "Fuse"},
    {"type": "Strip", "content": " ", "start": 1, "stop": 0}]}
METASPACE = {"type": "Metaspace", "replacement": "\u2581", "prepend_scheme": "first", "split": False}


def _with_tokenizer(tmp_path, name, edit):
    """A copy of the tiny Llama whose tokenizer.json ``edit`` changed."""
    path = tmp_path / name
    shutil.copytree(resolve_model("tiny:llama"), path)
    spec = json.loads((path / "tokenizer.json").read_text())
    edit(spec)
    (path / "tokenizer.json").write_text(json.dumps(spec))
    return str(path)


def _byte_fallback_llama(tmp_path) -> str:
    """A sentencepiece-style tokenizer (BPE with byte fallback, ``▁`` for spaces, ``<0xNN>`` byte
    tokens, as Llama 2 / Mistral ship) and a random Llama of its vocabulary."""
    import transformers
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    metaspace = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="first", split=False)
    trained = Tokenizer(models.BPE(unk_token="<unk>"))
    trained.pre_tokenizer = metaspace
    specials = [SPECIAL["unk"], SPECIAL["bos"], SPECIAL["eos"], SPECIAL["pad"]]
    trained.train_from_iterator(['{"a": "yes", "n": 3} the camera wearer opens the door'] * 50,
                                trainers.BpeTrainer(vocab_size=160, special_tokens=specials, show_progress=False))
    learned = json.loads(trained.to_str())["model"]
    # the byte tokens are ordinary vocabulary (as in Llama 2's), right after the special tokens
    words = specials + [f"<0x{b:02X}>" for b in range(256)]
    words += [t for t, _ in sorted(learned["vocab"].items(), key=lambda kv: kv[1]) if t not in specials]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in learned["merges"]]
    tok = Tokenizer(models.BPE({t: i for i, t in enumerate(words)}, merges, unk_token="<unk>", byte_fallback=True,
                               fuse_unk=True))
    tok.pre_tokenizer = metaspace
    tok.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(" ", 1, 0)])
    tok.add_special_tokens(specials)
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=SPECIAL["bos"],
                                                eos_token=SPECIAL["eos"], pad_token=SPECIAL["pad"],
                                                unk_token=SPECIAL["unk"])
    ids = {k: fast.convert_tokens_to_ids(v) for k, v in SPECIAL.items()}
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=len(fast), hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=1,
        num_key_value_heads=1, bos_token_id=ids["bos"], eos_token_id=ids["eos"], pad_token_id=ids["pad"]))
    path = tmp_path / "spm-llama"
    model.generation_config.eos_token_id = [ids["eos"], ids["unk"]]  # a Llama-3-style list of end tokens
    model.save_pretrained(path)
    fast.save_pretrained(path)
    return str(path)


def _choices(engine):
    outs = engine.generate(["Answer: ", "Q: is it? "], GenerationParams(max_new_tokens=24, temperature=1.5),
                           CHOICE, seeds=[[1, 2, 3], [4, 5, 6]])
    return [json.loads(o) for row in outs for o in row]


def test_byte_fallback_tokenizer_is_read_as_byte_fallback_and_decodes_valid_json(tmp_path):
    engine = HFEngine(_byte_fallback_llama(tmp_path))
    assert vocab_kind(engine.tokenizer) == ("byte_fallback", True)
    assert engine.stops == [engine.tokenizer.convert_tokens_to_ids("</s>"), 0]  # every end token of the config
    for value in _choices(engine):
        assert value["a"] in ("yes", "no") and 0 <= value["n"] <= 9


def test_byte_level_vocabulary_under_a_sentencepiece_pipeline_is_byte_level(tmp_path):
    """The shape that crashed a qa job: a byte-level BPE vocabulary (``Ġ`` spaces) loaded with a
    sentencepiece pipeline. xgrammar's own detection follows the pipeline (byte fallback); the
    vocabulary decides here, and the tokenizer is given the byte-level pipeline it needs."""
    import xgrammar as xgr
    from transformers import AutoTokenizer

    def sentencepiece_pipeline(spec):
        spec["pre_tokenizer"], spec["decoder"] = METASPACE, SENTENCEPIECE_DECODER

    path = _with_tokenizer(tmp_path, "bpe-as-spm", sentencepiece_pipeline)
    raw = AutoTokenizer.from_pretrained(path)
    assert xgr.TokenizerInfo.from_huggingface(raw).vocab_type == xgr.VocabType.BYTE_FALLBACK
    assert vocab_kind(raw) == ("byte_level", False)
    engine = HFEngine(path)
    text = "The camera wearer opens the door."
    assert engine.tokenizer.decode(engine.tokenizer(text, add_special_tokens=False)["input_ids"]) == text
    assert tokenizer_info(engine.tokenizer, len(engine.tokenizer), engine.stops).vocab_type == xgr.VocabType.BYTE_LEVEL
    for value in _choices(engine):
        assert value["a"] in ("yes", "no")


def test_a_row_the_grammar_refuses_is_ended_and_reported_not_raised():
    engine = HFEngine("tiny:llama")
    compiled = engine._grammar(CHOICE)
    stops = stop_token_ids(engine.tokenizer, engine.model.generation_config)
    brace, letter = engine.tokenizer.convert_tokens_to_ids("{"), engine.tokenizer.convert_tokens_to_ids("x")
    processor = GrammarProcessor(compiled, stops)
    vocab = compiled.tokenizer_info.vocab_size
    start = torch.tensor([[1], [1]])
    first = processor(start, torch.zeros(2, vocab))
    assert torch.isfinite(first[0, brace]) and torch.isfinite(first).sum() < vocab  # only what the grammar allows
    second = processor(torch.cat([start, torch.tensor([[brace], [letter]])], 1), torch.zeros(2, vocab))
    assert processor.dead[0] is None and "refused token" in processor.dead[1]
    assert torch.isfinite(second[1]).nonzero().flatten().tolist() == [stops[0]]  # the dead row can only stop


def test_a_prompt_whose_generation_raises_fails_alone(monkeypatch):
    from egoray.llm.engine import EngineConfig
    from egoray.llm.prompts import RephrasePrompts
    from egoray.llm.steps import ParaphraseStep
    from egoray.stages.base import DETAIL, REASON
    from egoray.stages.generate import LLMStage

    stage = LLMStage(EngineConfig(model="tiny:llama", batch_size=4),
                     [ParaphraseStep(GenerationParams(max_new_tokens=8), RephrasePrompts(paraphrase="{text} ->"), k=2)],
                     "id")
    stage.setup()
    real = stage.engine.model.generate
    poison = stage.engine.tokenizer("POISON", add_special_tokens=False)["input_ids"]

    def generate(**kwargs):
        ids = kwargs["input_ids"][:, -len(poison) - 3:].tolist()
        if any(any(row[i:i + len(poison)] == poison for i in range(len(row))) for row in ids):
            raise RuntimeError("CUDA error: device-side assert triggered")
        return real(**kwargs)

    monkeypatch.setattr(stage.engine.model, "generate", generate)
    out = stage(pa.table({"id": ["a", "b", "c"], "text": ["C opens the door", "POISON", "C cuts the onion"]}))
    reasons = out[REASON].to_pylist()
    assert reasons[1] == "generation_error" and reasons[0] != "generation_error" != reasons[2]
    detail = out[DETAIL].to_pylist()[1]
    assert detail.startswith("RuntimeError: CUDA error") and "generate" in detail
    assert out["attempts_paraphrase"].to_pylist()[1] == 2  # retried, then rejected


def test_no_end_token_is_a_clear_error():
    class NoEos:
        eos_token_id = None

    with pytest.raises(ValueError, match="end-of-sequence"):
        stop_token_ids(NoEos(), None)
