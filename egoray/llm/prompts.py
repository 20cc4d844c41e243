"""Prompt templates: versioned, kept in config, checked for their fields when loaded.

With ``chat: true`` a template's text is the user message of a chat — after the ``system``
message and the step's few-shot ``*_examples`` as user / assistant turns — which the engine
renders with the model's own chat template (so no model's markup is written by hand). With
``chat: false`` (the default) the template is the whole prompt, markup included, sent as it is
(GroundVQA's Llama-2 ``[INST]`` prompts in ``configs/qa.yaml`` are that exact raw string).
"""

from __future__ import annotations

import string
from typing import ClassVar

from pydantic import Field, model_validator

from egoray.config import StrictModel

Messages = list[dict[str, str]]


class Turn(StrictModel):
    """One few-shot example as a chat exchange."""

    user: str
    assistant: str


class Template(StrictModel):
    """Base for a set of prompt templates; subclasses list the fields each template may use."""

    version: str = Field(min_length=1, description="recorded with every output generated from these prompts")
    chat: bool = Field(False, description="render through the model's chat template (system + examples + user)")
    system: str = Field("", description="the chat's system message (chat: true; empty: none)")
    FIELDS: ClassVar[dict[str, set[str]]] = {}
    EXAMPLES: ClassVar[tuple[str, ...]] = ()  # the fields holding few-shot chat turns

    @model_validator(mode="after")
    def _fields_known(self) -> Template:
        for name, allowed in self.FIELDS.items():
            used = {f for _, f, _, _ in string.Formatter().parse(getattr(self, name)) if f}
            unknown = used - allowed
            if unknown:
                raise ValueError(f"{name} uses unknown field(s) {sorted(unknown)}; allowed: {sorted(allowed)}")
        if not self.chat:
            given = [name for name in self.EXAMPLES if getattr(self, name)]
            if given or self.system:
                raise ValueError(f"{', '.join(given + (['system'] if self.system else []))} are chat messages: "
                                 "set chat: true (raw prompts carry their examples in the template text)")
        return self

    def as_prompt(self, user: str, examples: list[Turn] | None = None, system: str | None = None
                  ) -> str | Messages:
        """The raw prompt ``user``, or (chat) the messages around it."""
        if not self.chat:
            return user
        system = self.system if system is None else system
        messages = [{"role": "system", "content": system}] if system else []
        for turn in examples or []:
            messages += [{"role": "user", "content": turn.user}, {"role": "assistant", "content": turn.assistant}]
        return [*messages, {"role": "user", "content": user}]


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
    """Prompts of the qa job: ``{narrations}`` is the group's narrations, each as ``narration_line``
    (``{text}``: ingest's cleaned text; ``{raw_text}``: as annotated, for prompts written for it)."""

    version: str = "egotimeqa-v1"
    question: str = QUESTION_PROMPT
    wrong_answers: str = WRONG_ANSWERS_PROMPT
    narration_line: str = "- {text}"
    narration_separator: str = Field("\n", description="between the narration lines (GroundVQA: a space)")
    question_examples: list[Turn] = Field(default_factory=list, description="few-shot turns (chat)")
    wrong_answers_examples: list[Turn] = Field(default_factory=list, description="few-shot turns (chat)")
    FIELDS: ClassVar[dict[str, set[str]]] = {
        "question": {"narrations"},
        "wrong_answers": {"question", "answer"},
        "narration_line": {"text", "raw_text", "t_start", "t_end"},
    }
    EXAMPLES: ClassVar[tuple[str, ...]] = ("question_examples", "wrong_answers_examples")


class RephrasePrompts(Template):
    """Prompt of the rephrase job (``paraphrase: {text} </s>`` is what T5 paraphrasers expect)."""

    version: str = "rephrase-v1"
    paraphrase: str = "paraphrase: {text} </s>"
    paraphrase_examples: list[Turn] = Field(default_factory=list, description="few-shot turns (chat)")
    FIELDS: ClassVar[dict[str, set[str]]] = {"paraphrase": {"text"}}
    EXAMPLES: ClassVar[tuple[str, ...]] = ("paraphrase_examples",)


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
    """Few-shot prompt turning time-ordered captions into one summary (chat: the instruction is
    the system message unless ``system`` is set, each example a user / assistant turn)."""

    version: str = "summary-v1"
    instruction: str = "Summarise what the camera wearer did, in one sentence, from captions of video frames in order."
    example: str = "Captions: {captions}\nSummary: {summary}"
    query: str = "Captions: {captions}\nSummary:"
    separator: str = Field("; ", description="between the captions of a list (the lab's prompt: a new line each)")
    examples: list[dict[str, str | list[str]]] = Field(default_factory=lambda: list(SUMMARY_EXAMPLES))
    FIELDS: ClassVar[dict[str, set[str]]] = {"example": {"captions", "summary"}, "query": {"captions"},
                                             "instruction": set()}
