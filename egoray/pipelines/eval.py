"""``eval`` job: metrics of the other jobs' outputs, and the HTML report of a run directory.

Sections (each optional): ``retrieval`` (R@k, median rank, MIR mAP/nDCG with a dual encoder),
``zeroshot`` (class prompts, top-1/5 or mAP), ``captioning`` (narrator output or summaries against
human text, COCO metrics), ``mcq`` (ClosedQA accuracy), ``gap`` (modality gap + plots). Each
section is a unit of work with its own completion marker, so a re-run skips finished sections.
Output::

    OUTPUT/metrics.json                    {section: {metric: value}}
    OUTPUT/samples.json                    a few items per section for the report
    OUTPUT/plots/*.png                     modality-gap plots (SVD, UMAP)
    OUTPUT/rejects/part-<section>.parquet  items a section could not score, with a reason
    OUTPUT/report.html                     the report of ``input`` (a run directory), this eval included
    OUTPUT/run.json
"""

from __future__ import annotations

import time
from typing import Any, Literal

import pyarrow as pa
from pydantic import Field, model_validator

from egoray import storage
from egoray.config import JobConfig
from egoray.data.schema import REJECTS
from egoray.eval import sections
from egoray.runtime import ShardLedger, finish


class Config(JobConfig):
    """Config of the ``eval`` job; ``input`` is the run directory the report covers."""

    job: Literal["eval"] = "eval"
    retrieval: sections.RetrievalSection | None = None
    zeroshot: sections.ZeroShotSection | None = None
    captioning: list[sections.CaptioningSection] = []
    mcq: sections.MCQSection | None = None
    gap: sections.GapSection | None = None
    report: bool = Field(True, description="write OUTPUT/report.html of the run directory `input`")

    @model_validator(mode="after")
    def _something_to_do(self) -> Config:
        if not (self.retrieval or self.zeroshot or self.captioning or self.mcq or self.gap):
            raise ValueError("configure at least one of retrieval, zeroshot, captioning, mcq, gap")
        names = [c.name for c in self.captioning]
        if len(set(names)) != len(names):
            raise ValueError(f"captioning names must be unique; got {names}")
        if self.gap and "dual_encoder" in self.gap.sources and not self.retrieval:
            raise ValueError("gap source dual_encoder needs a retrieval section (its held-out pairs)")
        return self

    def section_ids(self) -> list[str]:
        ids = [name for name in ("retrieval", "zeroshot") if getattr(self, name)]
        ids += [f"captioning-{c.name}" for c in self.captioning]
        ids += [name for name in ("mcq", "gap") if getattr(self, name)]
        return ids


def _compute(config: Config, section: str, cache: dict[str, Any]) -> sections.SectionResult:
    if section == "retrieval":
        cache["retrieval"] = sections.retrieval(config.retrieval)
        return cache["retrieval"]
    if section == "zeroshot":
        return sections.zeroshot(config.zeroshot)
    if section.startswith("captioning-"):
        name = section[len("captioning-"):]
        return sections.captioning(next(c for c in config.captioning if c.name == name))
    if section == "mcq":
        return sections.mcq(config.mcq)
    pairs = None
    if "dual_encoder" in config.gap.sources:
        pairs = (cache.get("retrieval") or sections.retrieval(config.retrieval)).pairs
    return sections.gap(config.gap, pairs)


def run(config: Config, overwrite: bool = False) -> dict[str, Any]:
    wall0 = time.perf_counter()
    ledger = ShardLedger(config.output)
    ids = config.section_ids()
    ledger.prepare(config, ids, overwrite=overwrite)
    done = ledger.completed()
    cache: dict[str, Any] = {}
    for section in ids:
        if section in done:
            print(f"[eval] {section}: done in an earlier run", flush=True)
            continue
        t0 = time.perf_counter()
        print(f"[eval] {section} ...", flush=True)
        result = _compute(config, section, cache)
        plots = []
        for name, png in result.plots.items():
            storage.write_bytes(storage.join(config.output, "plots", name), png)
            plots.append(f"plots/{name}")
        rejects = pa.Table.from_pylist(result.rejects, schema=REJECTS)
        ledger.commit(section, {"rejects": rejects}, {section: {**result.counts, "seconds": time.perf_counter() - t0}},
                      extra={"metrics": result.metrics, "samples": result.samples, "plots": plots,
                             "seconds": time.perf_counter() - t0})
        print(f"[eval] {section}: {_headline(result.metrics)} ({time.perf_counter() - t0:.1f}s)", flush=True)
    markers = ledger.completed()
    metrics = {s: markers[s]["metrics"] for s in ids if s in markers}
    storage.write_json(storage.join(config.output, "metrics.json"), metrics)
    storage.write_json(storage.join(config.output, "samples.json"),
                       {s: markers[s].get("samples", []) for s in ids if s in markers})
    manifest = finish(config, ledger, ids, done, wall0, ["rejects"], extra={"metrics": metrics})
    manifest.write()
    if config.report and manifest.status == "complete":
        from egoray.eval.report import write_report

        url = write_report(config.input, storage.join(config.output, "report.html"))
        print(f"[eval] report: {url}", flush=True)
    return manifest.to_dict()


def _headline(metrics: dict[str, Any]) -> str:
    keys = [k for k, v in metrics.items() if isinstance(v, float)][:4]
    return ", ".join(f"{k}={metrics[k]:.3f}" for k in keys) or "done"
