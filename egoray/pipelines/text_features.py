"""``text_features`` job: embeddings of any text table or of class names under prompt templates.

Input: a Parquet table (``id_col`` / ``text_col``; an ingest output directory reads its
``narrations/``), or a label list — ``.txt`` (one label per line; Charades ``cNNN Label`` lines
keep their code as id) or ``.json`` (Kinetics ``{name: id}`` or a list) — turned into one text per
label and template (``"The person in this video is doing {label}"``, id ``<class>:<template>``).
Encoders: sentence-transformers or an open_clip text tower, on one actor pool for the whole job.
A list-of-strings ``text_col`` (rephrase's ``paraphrases``) gives one text per element, id
``<id>#<k>``. The columns in ``keep_columns`` travel with each embedding (by default a narration's
``video_uid, t_start, t_end, split, verb, noun``, which is what training pairs are built from).
Output, keyed by id::

    storage=parquet: OUTPUT/embeddings/<part>.parquet   id, text, embedding, <kept columns>
    storage=hdf5:    OUTPUT/embeddings/<part>.h5        datasets ids [N], embeddings [N, D]
                     OUTPUT/index/<part>.parquet        id, file, row, dim, model, <kept columns>
    OUTPUT/rejects/<part>.parquet                       empty texts
"""

from __future__ import annotations

from typing import Any, Literal

import pyarrow as pa
from pydantic import Field

from egoray import storage
from egoray.config import ActorPool, StreamingJobConfig
from egoray.data.labels import read_labels
from egoray.data.raw import InputError
from egoray.data.tables import table_columns
from egoray.features.text import TextEncoderConfig, encoder_label
from egoray.plans import Listed, Pass, Prepared, Source, StreamingPlan
from egoray.runner import run_plan
from egoray.stages.text import TextEncodeStage, TextSink

NARRATION_COLUMNS = ["video_uid", "t_start", "t_end", "split", "verb", "noun"]


class Config(StreamingJobConfig, ActorPool):
    """Config of the ``text_features`` job."""

    job: Literal["text_features"] = "text_features"
    format: Literal["auto", "parquet", "labels"] = "auto"
    id_col: str = "narration_id"
    text_col: str = "text"
    keep_columns: list[str] | None = Field(None, description="columns copied next to each embedding; "
                                           "default: the narration columns the input has")
    templates: list[str] = Field(default_factory=lambda: ["{label}"], description="for label lists")
    encoder: TextEncoderConfig = TextEncoderConfig()
    storage: Literal["parquet", "hdf5"] = "parquet"
    batch_size: int = Field(256, ge=1, description="texts per actor call")
    rows_per_file: int = Field(20_000, ge=1, description="items committed together (a file per table)")


def label_texts(config: Config) -> pa.Table:
    """(id, text) rows of a class list under the templates: the plan of a label-list run (small)."""
    try:
        labels = read_labels(config.input)
    except storage.StorageError as e:
        raise InputError(f"cannot read class list: {e}") from None
    rows = [(f"{cid}:{t}", template.format(label=label)) for cid, label in labels
            for t, template in enumerate(config.templates)]
    return pa.table({"id": pa.array([r[0] for r in rows], pa.string()),
                     "text": pa.array([r[1] for r in rows], pa.string())})


def is_labels(config: Config) -> bool:
    return config.format == "labels" or (config.format == "auto" and config.input.endswith((".txt", ".json")))


def plan(config: Config) -> StreamingPlan:
    """The text_features job over ``config.input`` (checked here, before anything runs)."""
    model = encoder_label(config.encoder)
    resources = config.resources(config.batch_size)
    source: str | Prepared
    if is_labels(config):
        texts = label_texts(config)  # checked before anything starts
        source = Prepared("labels", Listed(lambda: texts, f"the prompts of {config.input}"))
        id_col, text_col, keep = "id", "text", []
        inputs = [config.input]
    else:
        source, names = table_columns(config.input, (config.id_col, config.text_col), "text table")
        id_col, text_col = config.id_col, config.text_col
        keep = config.keep_columns if config.keep_columns is not None else \
            [c for c in NARRATION_COLUMNS if c in names and c not in (id_col, text_col)]
        unknown = [c for c in keep if c not in names]
        if unknown:
            raise InputError(f"{source}: keep_columns {unknown} not in the table (found {names})")
        inputs = [source]
    sink = TextSink(id_column=id_col, stages=["encode"], input_columns=[id_col, text_col],
                    text_col=text_col, storage_format=config.storage, model=model, keep=keep)
    work = Pass("text_features", Source(source, columns=[id_col, text_col, *keep]),
                [TextEncodeStage(config.encoder, text_col, config.batch_size, resources)], sink, id_col,
                rows_per_file=config.rows_per_file)
    return StreamingPlan(work, inputs, lambda output: {"model": model, "storage": config.storage})


def run(config: Config, overwrite: bool = False) -> dict[str, Any]:
    """Run (or resume) the text_features job; returns the run manifest."""
    return run_plan(config, overwrite, plan(config))
