"""The egtea section: EGTEA Gaze+ zero-shot action recognition."""

from __future__ import annotations

from functools import partial
from typing import Any

import pyarrow as pa
from pydantic import Field, model_validator

from egoray import storage
from egoray.config import Url
from egoray.eval.sections.common import QueryEncoder, SectionResult, embed_texts
from egoray.eval.sections.pooled import Pooled, no_items, read_input
from egoray.eval.sections.zeroshot import classify, zeroshot_clips


class EGTEASection(QueryEncoder):
    """EGTEA Gaze+ zero-shot action recognition: top-1 and mean-class accuracy (LaViLa's figures)."""

    classes: Url = Field(description="action_idx.txt")
    split: Url = Field(description="a split file, e.g. test_split1.txt")
    video_features: Url = Field(description="features of the EGTEA clip files (one key per clip id)")
    templates: list[str] = ["{label}"]
    model: Url | None = Field(None, description="a train_dual_encoder output; none: one joint space")

    @model_validator(mode="after")
    def _one_encoder(self) -> EGTEASection:
        self.check_one_encoder("egtea")
        return self


def pooled(cfg: EGTEASection) -> Pooled:
    """The clips of the split file (read by a worker), each with its clip's video feature."""
    return Pooled(cfg.video_features, benchmark=partial(read_split, cfg), per_batch=zeroshot_clips)


def read_split(cfg: EGTEASection) -> pa.Table:
    from egoray.data.benchmarks import read_egtea_classes, read_egtea_split

    classes = read_egtea_classes(read_input(cfg.classes), cfg.classes)
    return no_items(read_egtea_split(read_input(cfg.split), classes, cfg.split), cfg.split, "egtea")


def compute(cfg: EGTEASection, clips: str) -> SectionResult:
    """EGTEA zero-shot: the clips of the split against the action names under the templates."""
    from egoray.data.benchmarks import read_egtea_classes
    from egoray.eval.zeroshot import expand_templates

    label_of = read_egtea_classes(storage.read_bytes(cfg.classes), cfg.classes)
    prompts = embed_texts(expand_templates(label_of, cfg.templates), cfg.text_features, cfg.encoder)
    prompts = prompts.reshape(len(label_of), len(cfg.templates), -1)
    return classify(label_of, prompts, cfg.model, clips, cfg.classes, cfg.split)


def note(m: dict[str, Any]) -> str:
    return "top-1 and mean-class accuracy of zero-shot action recognition; chance = 1 / classes."
