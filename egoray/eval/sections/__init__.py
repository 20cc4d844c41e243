"""The sections of the ``eval`` job, one module each, and the registry the job and the report read.

Ray-free: every section reads its inputs with :mod:`egoray.storage`, computes with numpy (and
the trained heads with torch) and returns a :class:`SectionResult`. A section module holds its
config, ``pooled(config)`` where the eval job pools inputs for it (a :class:`Pooled`),
``compute(config, inputs)`` (``inputs``: the URL of what was pooled, if anything, or with
``uses_pairs(config)`` the paired embeddings an earlier section's result holds),
``note(metrics)`` (the line under its table in the report) and, where it has headline numbers
with a level to beat, ``headlines(section_id, metrics)``. The job records each section as it
finishes, so a re-run skips finished sections.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from egoray.eval.sections import captioning, egomcq, egtea, gap, mcq, retrieval, zeroshot
from egoray.eval.sections.captioning import CaptioningSection, narration_references
from egoray.eval.sections.common import QueryEncoder, SectionResult, embed_texts, fmt, text_encoder_of
from egoray.eval.sections.egomcq import EgoMCQSection
from egoray.eval.sections.egtea import EGTEASection
from egoray.eval.sections.gap import GapSection
from egoray.eval.sections.mcq import MCQSection
from egoray.eval.sections.pooled import Pooled
from egoray.eval.sections.retrieval import EK100Relevancy, RetrievalSection, retrieval_offset
from egoray.eval.sections.zeroshot import ZeroShotSection


@dataclass(frozen=True)
class SectionKind:
    """One kind of section: its config class and module (compute, note, headlines)."""

    name: str
    config: type
    module: ModuleType

    def compute(self, config: Any, inputs: Any = None) -> SectionResult:
        result: SectionResult = self.module.compute(config, inputs)
        return result

    def pooled(self, config: Any) -> Pooled | None:
        """What the eval job pools for this section before ``compute``; None: nothing."""
        of: Callable[[Any], Pooled] | None = getattr(self.module, "pooled", None)
        return of(config) if of is not None else None

    def uses_pairs(self, config: Any) -> bool:
        """Whether ``compute`` takes the paired embeddings an earlier section's result handed on."""
        of: Callable[[Any], bool] | None = getattr(self.module, "uses_pairs", None)
        return of(config) if of is not None else False

    def note(self, metrics: dict[str, Any]) -> str:
        text: str = self.module.note(metrics)
        return text

    def headlines(self, section: str, metrics: dict[str, Any]) -> list[tuple[str, float, float, str]]:
        of: Callable[..., list[tuple[str, float, float, str]]] | None = getattr(self.module, "headlines", None)
        return of(section, metrics) if of is not None else []


# in the order the eval job runs them (gap last: it may use retrieval's pairs)
SECTIONS: dict[str, SectionKind] = {kind.name: kind for kind in (
    SectionKind("retrieval", RetrievalSection, retrieval),
    SectionKind("zeroshot", ZeroShotSection, zeroshot),
    SectionKind("captioning", CaptioningSection, captioning),
    SectionKind("mcq", MCQSection, mcq),
    SectionKind("egomcq", EgoMCQSection, egomcq),
    SectionKind("egtea", EGTEASection, egtea),
    SectionKind("gap", GapSection, gap),
)}


def kind_of(section: str) -> SectionKind | None:
    """The kind of a section id (``captioning-narrator`` is a captioning section)."""
    return SECTIONS.get(section.split("-", 1)[0])


__all__ = ["SECTIONS", "CaptioningSection", "EGTEASection", "EK100Relevancy", "EgoMCQSection", "GapSection",
           "MCQSection", "Pooled", "QueryEncoder", "RetrievalSection", "SectionKind", "SectionResult", "ZeroShotSection",
           "embed_texts", "fmt", "kind_of", "narration_references", "retrieval_offset", "text_encoder_of"]
