"""Chat prompts: rendered by the model's own chat template, on every LLM step."""

import json
import shutil

import pytest

from egoray.config import ConfigError
from egoray.llm.engine import GenerationParams, HFEngine, check_chat_template
from egoray.llm.prompts import QAPrompts, RephrasePrompts, SummaryPrompts, Turn
from egoray.llm.schemas import qa_schema, validate_qa
from egoray.llm.steps import ParaphraseStep, QuestionStep, SummaryStep, WrongAnswersStep
from egoray.models.tiny import resolve_model

ROW = {"texts": ["C opens the fridge", "C takes the milk"], "t_start": 1.0, "t_end": 4.0,
       "question": "What did I take?", "answer": "the milk", "text": "C opens the fridge",
       "kept_captions": ["a fridge", "a hand holding milk"]}


def test_every_step_builds_system_examples_and_user_messages():
    chat = QAPrompts(version="v", chat=True, system="Be brief.",
                     question_examples=[Turn(user="Narrations: - C cuts", assistant='{"question": "q?", "answer": "a"}')])
    p = GenerationParams()
    messages = QuestionStep(p, chat).prompt(ROW)
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user"]
    assert messages[0]["content"] == "Be brief." and "C takes the milk" in messages[-1]["content"]
    assert [m["role"] for m in WrongAnswersStep(p, chat).prompt(ROW)] == ["system", "user"]
    rephrase = RephrasePrompts(version="v", chat=True, paraphrase="{text}")
    assert ParaphraseStep(p, rephrase).prompt(ROW) == [{"role": "user", "content": "C opens the fridge"}]
    summary = SummaryStep(p, SummaryPrompts(chat=True)).prompt(ROW)
    assert summary[0]["role"] == "system" and summary[0]["content"] == SummaryPrompts().instruction
    assert [m["role"] for m in summary[1:]] == ["user", "assistant", "user", "assistant", "user"]
    assert summary[-1]["content"].endswith("a fridge; a hand holding milk\nSummary:")
    # raw prompts stay the exact strings
    assert QuestionStep(p, QAPrompts()).prompt(ROW).startswith("You write one question-answer pair")


def test_chat_messages_in_a_raw_prompt_are_a_config_error():
    with pytest.raises(ValueError, match="set chat: true"):
        QAPrompts(version="v", system="Be brief.")
    with pytest.raises(ValueError, match="question_examples"):
        QAPrompts(version="v", question_examples=[Turn(user="u", assistant="a")])


def test_the_hf_engine_renders_the_models_chat_template_and_constrains_it():
    engine = HFEngine("tiny:llama")
    messages = [{"role": "system", "content": "Reply with JSON."}, {"role": "user", "content": "C cuts an onion"}]
    text = engine.render(messages)
    assert text == "<s><|system|>\nReply with JSON.</s>\n<|user|>\nC cuts an onion</s>\n<|assistant|>\n"
    ids = engine.tokenizer(text, add_special_tokens=False)["input_ids"]
    assert ids.count(engine.tokenizer.bos_token_id) == 1  # the template's BOS, none added on top
    outs = engine.generate([messages], GenerationParams(max_new_tokens=96, temperature=1.0), qa_schema(10, 5),
                           seeds=[[1, 2]])
    assert all(validate_qa(o, 10, 5).ok for o in outs[0]), outs
    assert engine.fits(messages) and not HFEngine.fits(engine, [{"role": "user", "content": "word " * 2000}])


def test_a_model_without_a_chat_template_stops_the_job_before_it_starts(tmp_path):
    path = tmp_path / "no-template"
    shutil.copytree(resolve_model("tiny:llama"), path)
    (path / "chat_template.jinja").unlink(missing_ok=True)
    config = json.loads((path / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (path / "tokenizer_config.json").write_text(json.dumps(config))
    with pytest.raises(ConfigError, match="has no chat template"):
        check_chat_template(str(path))
    check_chat_template("tiny:llama")


def test_the_lab_phi_config_builds_the_notebooks_summary_prompt_byte_for_byte():
    """Seed 002's notebook: ``sentences += f"\\n{caption}"`` per caption, then an indented
    triple-quoted f-string holding the instruction, one example and ``Context:{sentences}``."""
    import yaml

    from egoray.llm.steps import summary_prompt
    from egoray.pipelines import validate_config
    from tests.conftest import ROOT

    config = validate_config(yaml.safe_load((ROOT / "configs" / "captions_lab_phi.yaml").read_text()))
    captions = ["a man on a kite board", "a man riding a wave on a kite board"]
    sentences = "".join(f"\n{c}" for c in captions)
    example = ["The two kids are playing with the cat", "The cat is runnning in the living room .",
               "The cat is runnning in the living room .", "Two kids are trying to catch a black cat",
               "One child is running in the living room .", "The cat is runnning in the living room .",
               "A woman is holding a black cat .", "The children and a woman are petting the cat ."]
    pad = " " * 8
    lab = (f"\n{pad}Instruction:\n{pad}Create a summary sentence that aggregate the meaning of all the sentences "
           "provided in the context. The sentences in the context are in cronological order. Provide a concise "
           f"summary using only the information provided in the context.\n\n{pad}Context:\n"
           + "".join(f"{pad}{line}\n" for line in example)
           + f"\n{pad}Summary:\n{pad}Two children run into the living room trying to catch a black cat. After a "
           f"woman catches the cat, they all pet it together .\n\n{pad}Context:{sentences}\n\n{pad}Summary:\n{pad}")
    assert summary_prompt(captions, config.summary_prompts) == lab
