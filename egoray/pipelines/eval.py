"""``eval`` job: metrics of the other jobs' outputs, and the HTML report of a run directory.

Sections (each optional): ``retrieval`` (R@k, median rank, MIR mAP/nDCG with a dual encoder),
``zeroshot`` (class prompts, top-1/5 or mAP), ``captioning`` (narrator output or summaries against
human text, COCO or LaViLa metrics), ``mcq`` (ClosedQA accuracy), ``egomcq`` (EgoMCQ inter- and
intra-video accuracy), ``egtea`` (EGTEA top-1 and mean-class accuracy), ``gap`` (modality gap + plots). Each
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

import io
import time
from typing import Any, Literal

import numpy as np
import pyarrow as pa
from pydantic import Field, model_validator

from egoray import storage
from egoray.config import JobConfig, urls_of
from egoray.data.raw import InputError
from egoray.data.schema import REJECTS
from egoray.errors import ray_errors
from egoray.eval import sections
from egoray.runner import JobRun, ShardedPlan, run_sharded
from egoray.runtime import Added, ShardLedger, finish

WORK_PAIRS = "_work/retrieval_pairs.npz"


class Config(JobConfig):
    """Config of the ``eval`` job; ``input`` is the run directory the report covers."""

    job: Literal["eval"] = "eval"
    retrieval: sections.RetrievalSection | None = None
    zeroshot: sections.ZeroShotSection | None = None
    captioning: list[sections.CaptioningSection] = []
    mcq: sections.MCQSection | None = None
    egomcq: sections.EgoMCQSection | None = None
    egtea: sections.EGTEASection | None = None
    gap: sections.GapSection | None = None
    report: bool = Field(True, description="write OUTPUT/report.html of the run directory `input`")

    @model_validator(mode="after")
    def _something_to_do(self) -> Config:
        if not any(getattr(self, name) for name in sections.SECTIONS):
            raise ValueError(f"configure at least one of {', '.join(sections.SECTIONS)}")
        for name in sections.SECTIONS:  # a section given as a list: its entries are told apart by name
            entries = getattr(self, name)
            names = [c.name for c in entries] if isinstance(entries, list) else []
            if len(set(names)) != len(names):
                raise ValueError(f"{name} names must be unique; got {names}")
        if self.gap and "dual_encoder" in self.gap.sources and not self.retrieval:
            raise ValueError("gap source dual_encoder needs a retrieval section (its held-out pairs)")
        return self

    def section_config(self, section: str) -> Any:
        """The config of one section id (``captioning-<name>``: that entry of the captioning list)."""
        kind = sections.kind_of(section)
        assert kind is not None, section
        value = getattr(self, kind.name)
        if isinstance(value, list):
            return next(c for c in value if c.name == section.removeprefix(f"{kind.name}-"))
        return value

    def section_ids(self) -> list[str]:
        """The configured sections, in the registry's order (``<section>-<name>`` per entry of a list)."""
        ids: list[str] = []
        for name in sections.SECTIONS:
            value = getattr(self, name)
            if isinstance(value, list):
                ids += [f"{name}-{c.name}" for c in value]
            elif value:
                ids.append(name)
        return ids


def pooled_inputs(config: Config, section: str) -> str | None:
    """The pooled table a section declares (:meth:`~egoray.eval.sections.SectionKind.pooled`),
    built by a Ray Data pass into ``_work/<section>``; None where it declares none."""
    kind = sections.kind_of(section)
    assert kind is not None, section
    declared = kind.pooled(config.section_config(section))
    return build_pooled(config.output, kind.name, declared) if declared is not None else None


def build_pooled(output: str, name: str, pooled: sections.Pooled) -> str:
    """Read the declared items, keep the declared videos, and pool each item's window per video."""
    from egoray.data.tables import table_columns
    from egoray.plans import Source
    from egoray.ray_data_context import read
    from egoray.train.data import text_features_source
    from egoray.train.pairs import build_pairs

    if pooled.text_features is not None:
        items, _ = text_features_source(*pooled.text_features)
        return build_pairs(output, name, items, pooled.video_features, pooled.offset, pooled.labels)
    table = pooled.table if pooled.table is not None else _benchmark_table(output, name, pooled.benchmark)
    columns = None
    if pooled.require:
        table, names = table_columns(table, pooled.require, f"{name} items table")
        columns = sorted({*pooled.require, *(set(pooled.optional) & set(names))})

    def items() -> Any:
        ds = read(Source(table, columns=columns))
        if pooled.per_batch is not None:
            ds = ds.map_batches(pooled.per_batch, batch_format="pyarrow")
        return ds.map_batches(KeepVideos(pooled.videos), batch_format="pyarrow") if pooled.videos is not None else ds

    return build_pairs(output, name, items, pooled.video_features, pooled.offset, pooled.labels)


def _benchmark_table(output: str, name: str, read_items: Any) -> str:
    """``_work/<section>_items``: the benchmark's own file as a table, read and written by a worker."""
    from egoray.exports import run_export

    url = storage.join(output, "_work", f"{name}_items", "part-0000.parquet")
    run_export(_write_items, read_items, url)
    return url


def _write_items(read_items: Any, url: str) -> None:
    storage.write_parquet(url, read_items())


class KeepVideos:
    """Rows of some videos only (a picklable batch function)."""

    def __init__(self, videos: list[str]) -> None:
        self.videos = pa.array(sorted(videos), pa.string())

    def __call__(self, batch: pa.Table) -> pa.Table:
        import pyarrow.compute as pc

        return batch.filter(pc.is_in(pc.cast(batch["video_uid"], pa.string()), value_set=self.videos))


def _compute(config: Config, section: str, pooled: str | None) -> sections.SectionResult:
    kind = sections.kind_of(section)
    assert kind is not None, section
    cfg = config.section_config(section)
    inputs: Any = pooled  # what pooled_inputs built (none for captioning and gap)
    if kind.uses_pairs(cfg):  # the paired embeddings an earlier section (retrieval) handed on
        url = storage.join(config.output, WORK_PAIRS)
        if not storage.exists(url):
            raise InputError(f"{section} needs the retrieval section's pairs; run retrieval first")
        with np.load(io.BytesIO(storage.read_bytes(url)), allow_pickle=False) as data:
            inputs = (data["video"], data["text"])
    result = kind.compute(cfg, inputs)
    if result.pairs is not None:  # for a later section that uses them
        buf = io.BytesIO()
        np.savez(buf, video=result.pairs[0], text=result.pairs[1])
        storage.write_bytes(storage.join(config.output, WORK_PAIRS), buf.getvalue())
    return result


def compute_section(config: Config, section: str, pooled: str | None) -> tuple[str, dict[str, Any]]:
    """One section, computed and committed by a worker (its inputs and rejects stay there)."""
    t0 = time.perf_counter()
    result = _compute(config, section, pooled)
    plots = []
    for name, png in result.plots.items():
        storage.write_bytes(storage.join(config.output, "plots", name), png)
        plots.append(f"plots/{name}")
    rejects = pa.Table.from_pylist(result.rejects, schema=REJECTS)
    ShardLedger(config.output).commit(section, {"rejects": rejects},
                                      {section: {**result.counts, "seconds": time.perf_counter() - t0}},
                                      extra={"metrics": result.metrics, "samples": result.samples, "plots": plots,
                                             "seconds": time.perf_counter() - t0})
    return _headline(result.metrics), {"seconds": time.perf_counter() - t0}


def plan(config: Config) -> ShardedPlan:
    """The eval job's plan: its sections, in the order they run (each one is a shard). Every input
    URL of a section still to do must exist: a mistyped one fails here, not after the sections
    before it ran."""
    ids = config.section_ids()
    done = ShardLedger(config.output).completed() if storage.exists(config.output) else {}
    todo = [(section, key, url) for section in ids if section not in done
            for key, url in urls_of(config.section_config(section))]
    for section, key, url in todo:
        if not storage.exists(url):
            raise InputError(f"eval section {section}, {key}: input not found: {url}")

    def work(job: JobRun) -> Added:
        import ray

        from egoray.ray_data_context import io_cpus
        from egoray.work_inputs import clean_work

        ledger = ShardLedger(config.output)
        done = ledger.completed()
        for section in ids:
            if section in done:
                print(f"[eval] {section}: done in an earlier run", flush=True)
                continue
            print(f"[eval] {section} ...", flush=True)
            t0 = time.perf_counter()
            pooled = pooled_inputs(config, section)
            task = ray.remote(compute_section).options(num_cpus=min(1.0, max(io_cpus(), 0.5)))
            with ray_errors():
                headline, _ = ray.get(task.remote(config, section, pooled))
            print(f"[eval] {section}: {headline} ({time.perf_counter() - t0:.1f}s)", flush=True)
        markers = ledger.completed()
        metrics = {s: markers[s]["metrics"] for s in ids if s in markers}
        storage.write_json(storage.join(config.output, "metrics.json"), metrics)
        storage.write_json(storage.join(config.output, "samples.json"),
                           {s: markers[s].get("samples", []) for s in ids if s in markers})
        added = finish(job.manifest, ledger, ids, done, job.wall0, ["rejects"], extra={"metrics": metrics})
        if job.manifest.status == "complete":
            clean_work(config.output)  # the sections' pooled inputs
        return added

    def report(manifest: dict[str, Any]) -> None:
        from egoray.eval.report import write_report

        url = write_report(config.input, storage.join(config.output, "report.html"))
        print(f"[eval] report: {url}", flush=True)

    lines = [f"sections, in this order, each by a Ray task (pooled inputs first where it has them): {', '.join(ids)}",
             f"{len(todo)} input URL(s) of the sections still to do: found",
             "then metrics.json and samples.json" + (f", and report.html of {config.input}" if config.report else "")]
    return ShardedPlan([], ids, work, lines, report if config.report else None)


def run(config: Config, overwrite: bool = False) -> dict[str, Any]:
    """Run (or resume) the eval job; returns the run manifest."""
    return run_sharded(config, overwrite, plan(config))


def _headline(metrics: dict[str, Any]) -> str:
    keys = [k for k, v in metrics.items() if isinstance(v, float)][:4]
    return ", ".join(f"{k}={metrics[k]:.3f}" for k in keys) or "done"
