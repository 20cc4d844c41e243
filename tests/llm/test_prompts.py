import pytest
from pydantic import ValidationError

from egoray.llm.prompts import QAPrompts, RephrasePrompts, SummaryPrompts
from egoray.llm.steps import parse_summary, summary_prompt


def test_templates_are_checked_for_fields():
    with pytest.raises(ValidationError, match="unknown field"):
        QAPrompts(question="Narrations: {narations}")
    with pytest.raises(ValidationError, match="unknown field"):
        RephrasePrompts(paraphrase="{sentence}")
    assert QAPrompts(version="v2", question="{narrations}?").version == "v2"


def test_summary_prompt_is_few_shot_and_ordered():
    prompt = summary_prompt(["a hand on a door", "  ", "a cup on a table"])
    examples = SummaryPrompts().examples
    assert prompt.count("Summary:") == len(examples) + 1
    assert prompt.endswith("Captions: a hand on a door; a cup on a table\nSummary:")
    assert examples[0]["summary"] in prompt


@pytest.mark.parametrize(
    ("raw", "value", "reason"),
    [
        (" The camera wearer cooked.\nCaptions: more", "The camera wearer cooked.", None),
        ("\n\nSummary: I washed dishes", "I washed dishes", None),
        ("   \n  ", None, "empty_output"),
        (b"\xff\xfe", None, "not_utf8"),
        (None, None, "empty_output"),
    ],
)
def test_parse_summary(raw, value, reason):
    parsed = parse_summary(raw)
    assert parsed.reason == reason and parsed.value == value


def test_long_summary_is_cut():
    assert len(parse_summary("word " * 100, max_words=10).value.split()) == 10
