"""Prompt templates: versioned, kept in config, checked for their fields when loaded."""

from __future__ import annotations

import string
from typing import ClassVar

from pydantic import Field, model_validator

from egoray.config import StrictModel


class Template(StrictModel):
    """Base for a set of prompt templates; subclasses list the fields each template may use."""

    version: str = Field(min_length=1, description="recorded with every output generated from these prompts")
    FIELDS: ClassVar[dict[str, set[str]]] = {}

    @model_validator(mode="after")
    def _fields_known(self) -> Template:
        for name, allowed in self.FIELDS.items():
            used = {f for _, f, _, _ in string.Formatter().parse(getattr(self, name)) if f}
            unknown = used - allowed
            if unknown:
                raise ValueError(f"{name} uses unknown field(s) {sorted(unknown)}; allowed: {sorted(allowed)}")
        return self


QUESTION_PROMPT = (
    "You write one question-answer pair about what I (the camera wearer) did in a first-person video.\n"
    "Rules: the question is in the past tense, at most 10 words, and asks about \"I\"; the answer has at "
    "most 5 words. Reply with JSON only: {{\"question\": \"...\", \"answer\": \"...\"}}\n"
    "Narrations:\n{narrations}\nJSON:"
)
WRONG_ANSWERS_PROMPT = (
    "I give you a question and its correct answer. Write three plausible but incorrect answers that "
    "closely resemble the correct one, each at most 5 words. Reply with JSON only: "
    "{{\"wrong_answers\": [\"...\", \"...\", \"...\"]}}\n"
    "Question: {question}\nCorrect answer: {answer}\nJSON:"
)


class QAPrompts(Template):
    """Prompts of the qa job: ``{narrations}`` is the group's narrations, each as ``narration_line``."""

    version: str = "egotimeqa-v1"
    question: str = QUESTION_PROMPT
    wrong_answers: str = WRONG_ANSWERS_PROMPT
    narration_line: str = "- {text}"
    narration_separator: str = Field("\n", description="between the narration lines (GroundVQA: a space)")
    FIELDS: ClassVar[dict[str, set[str]]] = {
        "question": {"narrations"},
        "wrong_answers": {"question", "answer"},
        "narration_line": {"text", "t_start", "t_end"},
    }


class RephrasePrompts(Template):
    """Prompt of the rephrase job (``paraphrase: {text} </s>`` is what T5 paraphrasers expect)."""

    version: str = "rephrase-v1"
    paraphrase: str = "paraphrase: {text} </s>"
    FIELDS: ClassVar[dict[str, set[str]]] = {"paraphrase": {"text"}}


SUMMARY_EXAMPLES = [
    {
        "captions": ["a person holding a knife over a cutting board", "chopped onions on a board",
                     "a pan on a stove with onions"],
        "summary": "The camera wearer chopped onions and fried them in a pan.",
    },
    {
        "captions": ["a hand opening a fridge", "a bottle of milk in a hand", "milk poured into a glass"],
        "summary": "The camera wearer took milk from the fridge and poured a glass.",
    },
]


class SummaryPrompts(Template):
    """Few-shot prompt turning time-ordered captions into one summary."""

    version: str = "summary-v1"
    instruction: str = "Summarise what the camera wearer did, in one sentence, from captions of video frames in order."
    example: str = "Captions: {captions}\nSummary: {summary}"
    query: str = "Captions: {captions}\nSummary:"
    separator: str = Field("; ", description="between the captions of a list (the lab's prompt: a new line each)")
    examples: list[dict[str, str | list[str]]] = Field(default_factory=lambda: list(SUMMARY_EXAMPLES))
    FIELDS: ClassVar[dict[str, set[str]]] = {"example": {"captions", "summary"}, "query": {"captions"},
                                             "instruction": set()}
