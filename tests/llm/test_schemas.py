import json
import re

import pytest

from egoray.llm.schemas import (
    accept_qa_as_groundvqa,
    accept_wrong_answers_as_groundvqa,
    qa_schema,
    validate_qa,
    validate_wrong_answers,
    words_pattern,
)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ('{"question": "What did I cut?", "answer": "an onion"}', ("What did I cut?", "an onion")),
        ('Sure! Here is the pair:\n{"question": "Where did I put  the cup?", "answer": "on the table"}\nHope it helps.',
         ("Where did I put the cup?", "on the table")),
        (b'{"question": "What did I wash?", "answer": "a bowl"}', ("What did I wash?", "a bowl")),
        ('{"note": 1} then {"question": "What did I open?", "answer": "door"}', None),  # first object lacks keys
    ],
)
def test_valid_and_prose_around(raw, expected):
    parsed = validate_qa(raw)
    if expected is None:
        assert parsed.reason == "missing_field"
    else:
        assert parsed.ok and parsed.value == expected


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ('{"question": "What did I cut?", "answer": "an on', "invalid_json"),
        ("The question is what did I cut", "no_json"),
        ('{"question": ["What did I cut?"], "answer": "onion"}', "wrong_type"),
        ('{"question": "What did I cut?", "answer": 5}', "wrong_type"),
        ('{"question": "What did I cut?"}', "missing_field"),
        ('{"question": "  ", "answer": "onion"}', "empty_field"),
        ('{"question": "What did I cut with the big sharp knife on the table today?", "answer": "onion"}',
         "too_long"),
        ('{"question": "What did I cut?", "answer": "a very big red onion slice"}', "too_long"),
        (b'{"question": "What did I cut?", "answer": "\xff\xfe"}', "not_utf8"),
        ("", "empty_output"),
        (None, "empty_output"),
        ("__import__('os').system('touch /tmp/x')", "no_json"),
        ("{'question': 'What did I cut?', 'answer': 'onion'}", "invalid_json"),  # Python literal, not JSON
    ],
)
def test_bad_qa_outputs_have_reasons(raw, reason):
    parsed = validate_qa(raw)
    assert not parsed.ok and parsed.reason == reason


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ('{"wrong_answers": ["a cup", "a knife", "a pan"]}', None),
        ('Answers: {"wrong_answers": ["a cup", "a knife"]}', "wrong_count"),
        ('{"wrong_answers": ["a cup", "a knife", "a pan", "a jar"]}', "wrong_count"),
        ('{"wrong_answers": ["a cup", "A Cup", "a pan"]}', "duplicate_wrong_answers"),
        ('{"wrong_answers": ["a cup", "the onion", "a pan"]}', "wrong_equals_answer"),
        ('{"wrong_answers": ["a cup", "", "a pan"]}', "empty_field"),
        ('{"wrong_answers": "a cup, a knife, a pan"}', "wrong_type"),
        ('{"wrong_answers": ["a cup", 3, "a pan"]}', "wrong_type"),
        ('{"wrong": ["a cup", "b", "c"]}', "missing_field"),
        ('{"wrong_answers": ["a cup", "a knife", "a p', "invalid_json"),
        (b'{"wrong_answers": ["\xc3\x28", "b", "c"]}', "not_utf8"),
    ],
)
def test_wrong_answers(raw, reason):
    parsed = validate_wrong_answers(raw, answer="an onion")
    assert parsed.reason == reason
    if reason is None:
        assert parsed.value == ["a cup", "a knife", "a pan"]


def test_schema_patterns_match_the_validator_limits():
    q = re.compile(qa_schema()["properties"]["question"]["pattern"])
    assert q.match("What did I cut?") and not q.match("What did I cut")
    assert not q.match(" ".join(["word"] * 11) + "?")
    a = re.compile(words_pattern(5))
    assert a.match("a red onion") and not a.match("one two three four five six")


def test_word_pattern_admits_dots_slashes_and_accented_letters():
    import re

    from egoray.llm.schemas import words_pattern

    answer = re.compile(words_pattern(5))
    for ok in ("the café", "1/2 cup", "e.g. salt", "Müller's bag", "w/o lid"):
        assert answer.match(ok), ok
    for bad in ("two  spaces", "bad!", "a b c d e f", ""):
        assert not answer.match(bad), bad


def test_groundvqa_acceptance_is_literal_eval_of_the_whole_output():
    """GroundVQA's generators: ``qa = literal_eval(gen_result); qa['Q'], qa['A']`` and
    ``literal_eval(gen_result)`` a list of 3; anything raising is dropped; no limits checked."""
    long_q = "What did I do with the thing in my left hand today?"  # 12 words: strict rejects it
    output = json.dumps({"question": long_q, "answer": "put it down"})
    assert accept_qa_as_groundvqa(" " + output).value == (long_q, "put it down")
    assert not validate_qa(output).ok
    assert accept_qa_as_groundvqa("{'question': 'Did I wash it?', 'answer': 2}").value == ("Did I wash it?", "2")
    prose = 'Sure! {"question": "What did I cut?", "answer": "an onion"}'
    assert validate_qa(prose).ok and accept_qa_as_groundvqa(prose).reason == "not_a_literal"
    assert accept_qa_as_groundvqa('{"q": "What?"}').reason == "missing_field"
    assert accept_qa_as_groundvqa('["What?"]').reason == "missing_field"
    assert accept_qa_as_groundvqa("").reason == "empty_output"
    assert accept_wrong_answers_as_groundvqa('["one piece", "one piece", "two pieces"]', 3).value == [
        "one piece", "one piece", "two pieces"]  # duplicates and the answer itself are not checked
    assert accept_wrong_answers_as_groundvqa('{"wrong_answers": ["a", "b", "c"]}', 3).value == ["a", "b", "c"]
    assert accept_wrong_answers_as_groundvqa('["a", "b"]', 3).reason == "wrong_count"
    assert accept_wrong_answers_as_groundvqa('["a", "b", "c"] </s>', 3).reason == "not_a_literal"
