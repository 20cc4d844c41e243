"""The summary step: an ordered list of captions → one summary, with a few-shot prompt.

Reusable by any job (the captions job calls it): :func:`summary_prompt` and
:func:`parse_summary` are Ray-free; :func:`summarise` runs them through an engine with retries.
"""

from __future__ import annotations

from typing import Any

from egoray.llm.engine import EngineConfig, GenerationParams
from egoray.llm.prompts import SummaryPrompts
from egoray.llm.retry import Outcome, generate_validated
from egoray.llm.schemas import Parsed, as_text


def summary_prompt(captions: list[str], prompts: SummaryPrompts | None = None) -> str:
    prompts = prompts or SummaryPrompts()
    shots = [prompts.example.format(captions="; ".join(ex["captions"]), summary=ex["summary"])
             for ex in prompts.examples]
    query = prompts.query.format(captions="; ".join(c.strip() for c in captions if c and c.strip()))
    return "\n\n".join([prompts.instruction, *shots, query])


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


def summarise(
    items: dict[str, list[str]],
    engine: EngineConfig,
    params: GenerationParams,
    prompts: SummaryPrompts | None = None,
    max_attempts: int = 3,
) -> dict[str, Outcome]:
    """Summary per key (e.g. video uid) of its time-ordered captions. Needs a running Ray."""
    prompts = prompts or SummaryPrompts()
    rows: list[dict[str, Any]] = [{"id": k, "prompt": summary_prompt(v, prompts)} for k, v in items.items()]
    return generate_validated(
        rows, id_col="id", prompt_col="prompt", engine=engine, params=params,
        validate=lambda row, outs: parse_summary(outs[0] if outs else None), max_attempts=max_attempts,
    )
