"""The generation steps of the LLM jobs: prompt, validate, columns (see :mod:`egoray.stages.generate`)."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any, ClassVar

import pyarrow as pa

from egoray.llm.engine import GenerationParams, Prompt
from egoray.llm.prompts import QAPrompts, RephrasePrompts, SummaryPrompts, Turn
from egoray.llm.schemas import (
    Parsed,
    accept_qa_as_groundvqa,
    accept_wrong_answers_as_groundvqa,
    as_text,
    qa_schema,
    validate_qa,
    validate_wrong_answers,
    wrong_answers_schema,
)
from egoray.stages.generate import Step


class QuestionStep(Step):
    """A question about a group of narrations and its short answer (EgoTimeQA)."""

    name = "question"
    fields: ClassVar[list[pa.Field]] = [pa.field("question", pa.string()), pa.field("answer", pa.string())]

    def __init__(self, params: GenerationParams, prompts: QAPrompts, max_question_words: int = 10,
                 max_answer_words: int = 5, max_attempts: int = 3, acceptance: str = "strict") -> None:
        groundvqa = acceptance == "groundvqa"  # unconstrained, one try, GroundVQA's parse
        super().__init__(params, None if groundvqa else qa_schema(max_question_words, max_answer_words), 1,
                         1 if groundvqa else max_attempts)
        self.prompts, self.max_q, self.max_a, self.groundvqa = prompts, max_question_words, max_answer_words, groundvqa

    def prompt(self, row: dict[str, Any]) -> Prompt:
        raw = row.get("raw_texts") or row["texts"]
        lines = [self.prompts.narration_line.format(text=t, raw_text=r, t_start=row["t_start"], t_end=row["t_end"])
                 for t, r in zip(row["texts"], raw, strict=True)]
        user = self.prompts.question.format(narrations=self.prompts.narration_separator.join(lines))
        return self.prompts.as_prompt(user, self.prompts.question_examples)

    def validate(self, row: dict[str, Any], outputs: list[str]) -> Parsed:
        output = outputs[0] if outputs else None
        return accept_qa_as_groundvqa(output) if self.groundvqa else validate_qa(output, self.max_q, self.max_a)

    def columns(self, row: dict[str, Any], value: Any) -> dict[str, Any]:
        return {"question": value[0], "answer": value[1]}

    def reject_input(self, row: dict[str, Any], outputs: list[str], attempts: int) -> str:
        return json.dumps({"narrations": row["texts"], "raw_output": (outputs or [""])[0], "attempts": attempts},
                          ensure_ascii=False)[:8000]


class WrongAnswersStep(Step):
    """Three plausible wrong answers, distinct from each other and from the answer."""

    name = "wrong_answers"
    fields: ClassVar[list[pa.Field]] = [pa.field("wrong_answers", pa.list_(pa.string()))]

    def __init__(self, params: GenerationParams, prompts: QAPrompts, n_wrong: int = 3, max_answer_words: int = 5,
                 max_attempts: int = 3, acceptance: str = "strict") -> None:
        groundvqa = acceptance == "groundvqa"
        super().__init__(params, None if groundvqa else wrong_answers_schema(n_wrong, max_answer_words), 1,
                         1 if groundvqa else max_attempts)
        self.prompts, self.n_wrong, self.max_a, self.groundvqa = prompts, n_wrong, max_answer_words, groundvqa

    def prompt(self, row: dict[str, Any]) -> Prompt:
        user = self.prompts.wrong_answers.format(question=row["question"], answer=row["answer"])
        return self.prompts.as_prompt(user, self.prompts.wrong_answers_examples)

    def validate(self, row: dict[str, Any], outputs: list[str]) -> Parsed:
        output = outputs[0] if outputs else None
        if self.groundvqa:
            return accept_wrong_answers_as_groundvqa(output, self.n_wrong)
        return validate_wrong_answers(output, row["answer"], self.n_wrong, self.max_a)

    def columns(self, row: dict[str, Any], value: Any) -> dict[str, Any]:
        return {"wrong_answers": list(value)}

    def reject_input(self, row: dict[str, Any], outputs: list[str], attempts: int) -> str:
        return json.dumps({"narrations": row["texts"], "question": row["question"], "answer": row["answer"],
                           "raw_output": (outputs or [""])[0], "attempts": attempts}, ensure_ascii=False)[:8000]


def _key(text: str) -> str:
    return " ".join(re.sub(r"[^\w\s]", " ", text.lower()).split())


def clean_paraphrases(original: str, candidates: list[str]) -> list[str]:
    """First line of each candidate, de-duplicated, without the original; order kept."""
    seen = {_key(original)}
    out = []
    for cand in candidates:
        line = next((ln.strip() for ln in (cand or "").splitlines() if ln.strip()), "")
        line = re.sub(r"^(paraphrase|paraphrased output)\s*:\s*", "", line, flags=re.IGNORECASE)
        line = " ".join(line.split())
        key = _key(line)
        if not key or key in seen:
            continue
        seen.add(key)
        out.append(line)
    return out


class ParaphraseStep(Step):
    """``k`` sampled paraphrases of a narration, cleaned and de-duplicated (LaViLa's rephraser)."""

    name = "paraphrase"
    fields: ClassVar[list[pa.Field]] = [pa.field("paraphrases", pa.list_(pa.string()))]

    def __init__(self, params: GenerationParams, prompts: RephrasePrompts, k: int = 3, max_attempts: int = 2) -> None:
        super().__init__(params, None, k, max_attempts)
        self.prompts = prompts

    def prompt(self, row: dict[str, Any]) -> Prompt:
        return self.prompts.as_prompt(self.prompts.paraphrase.format(text=row["text"]), self.prompts.paraphrase_examples)

    def validate(self, row: dict[str, Any], outputs: list[str]) -> Parsed:
        kept = clean_paraphrases(row["text"], outputs)
        if not kept:
            return Parsed(reason="no_paraphrase", detail=f"{len(outputs)} candidates, all empty or repeats")
        return Parsed(value=kept)

    def columns(self, row: dict[str, Any], value: Any) -> dict[str, Any]:
        return {"paraphrases": value}

    def reject_input(self, row: dict[str, Any], outputs: list[str], attempts: int) -> str:
        return json.dumps({"text": row["text"], "raw_output": outputs, "attempts": attempts},
                          ensure_ascii=False)[:8000]


def summary_prompt(captions: list[str], prompts: SummaryPrompts | None = None) -> Prompt:
    """The instruction, the examples and the query as one text; or (chat) as system message,
    example turns and the query."""
    prompts = prompts or SummaryPrompts()
    sep = prompts.separator
    query = prompts.query.format(captions=sep.join(c.strip() for c in captions if c and c.strip()))
    if prompts.chat:
        turns = [Turn(user=prompts.query.format(captions=sep.join(ex["captions"])), assistant=str(ex["summary"]))
                 for ex in prompts.examples]
        return prompts.as_prompt(query, turns, prompts.system or prompts.instruction)
    shots = [prompts.example.format(captions=sep.join(ex["captions"]), summary=ex["summary"])
             for ex in prompts.examples]
    return "\n\n".join([prompts.instruction, *shots, query])


def shorten_captions(captions: list[str], fits: Callable[[list[str]], bool]) -> list[str]:
    """The captions a prompt can hold: all if they fit; else repeated captions go first, the
    oldest copy first (a later one stays), then captions from the front (the oldest) — never the
    prompt's end, whose cue (``Summary:``) the model needs."""
    kept = list(captions)
    if fits(kept):
        return kept
    i = 0
    while i < len(kept) and not fits(kept):
        if kept[i] in kept[i + 1:]:
            del kept[i]
        else:
            i += 1
    if fits(kept):
        return kept
    lo, hi = 0, len(kept)  # the fewest captions dropped from the front that fit (binary search)
    while lo < hi:
        mid = (lo + hi) // 2
        if fits(kept[mid:]):
            hi = mid
        else:
            lo = mid + 1
    return kept[lo:]


def parse_summary(raw: str | bytes | None, max_words: int = 60) -> Parsed:
    """The first non-empty line of the output, without a leading ``Summary:``; at most ``max_words``."""
    text = as_text(raw)
    if not text.ok:
        return text
    for line in text.value.splitlines():
        line = line.strip()
        if line.lower().startswith("summary:"):
            line = line[len("summary:"):].strip()
        if line:
            words = line.split()
            if len(words) > max_words:
                line = " ".join(words[:max_words])
            return Parsed(value=line)
    return Parsed(reason="empty_output", detail="no summary line")


class SummaryStep(Step):
    """One summary of a video's time-ordered, de-duplicated captions (few-shot prompt)."""

    name = "summary"
    fields: ClassVar[list[pa.Field]] = [pa.field("summary", pa.string())]

    def __init__(self, params: GenerationParams, prompts: SummaryPrompts, captions_col: str = "kept_captions",
                 max_attempts: int = 3) -> None:
        super().__init__(params, None, 1, max_attempts)
        self.prompts, self.captions_col = prompts, captions_col

    def prompt(self, row: dict[str, Any]) -> Prompt:
        return summary_prompt(row[self.captions_col] or [], self.prompts)

    def fit_prompt(self, row: dict[str, Any], fits: Callable[[Prompt], bool]) -> Prompt:
        captions = shorten_captions(list(row[self.captions_col] or []),
                                    lambda c: fits(summary_prompt(c, self.prompts)))
        return summary_prompt(captions, self.prompts)

    def validate(self, row: dict[str, Any], outputs: list[str]) -> Parsed:
        return parse_summary(outputs[0] if outputs else None)

    def columns(self, row: dict[str, Any], value: Any) -> dict[str, Any]:
        return {"summary": value}

    def reject_input(self, row: dict[str, Any], outputs: list[str], attempts: int) -> str:
        return json.dumps({"kept_captions": row[self.captions_col], "raw_output": outputs, "attempts": attempts},
                          ensure_ascii=False)[:8000]
