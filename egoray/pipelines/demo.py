"""``egoray demo``: every available job on fresh synthetic data, on a local Ray.

Each step is a shipped ``configs/demo/*.yaml`` with its input and output pointed into the demo
directory, so the demo exercises exactly what a user runs with ``egoray run``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from egoray import storage
from egoray.config import ConfigError
from egoray.console import say
from egoray.data.synth import synthesize
from egoray.pipelines import job_module, load_config
from egoray.runtime import ensure_ray


def _counts(manifest: dict[str, Any]) -> str:
    stages = list(manifest.get("stages", {}).values())
    first, last = (stages[0], stages[-1]) if stages else ({}, {})
    return f"{first.get('in', 0)} in, {last.get('out', 0)} out"


def check_skip(skip: tuple[str, ...]) -> None:
    unknown = sorted(set(skip) - {step.key for step in STEPS})
    if unknown:
        raise ConfigError(f"unknown demo step(s) {unknown}; steps: {', '.join(step.key for step in STEPS)}")


def config_dir() -> Path:
    """The shipped configs: inside an installed wheel, or the repository's ``configs/``."""
    here = Path(__file__).resolve().parent.parent
    for candidate in (here / "_configs", here.parent / "configs"):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError("cannot find egoray's configs directory")


@dataclass
class Step:
    """One job of the demo: a demo config plus overrides (``{out}``/``{data}`` filled in)."""

    name: str
    config: str
    overrides: list[str] = field(default_factory=list)
    short: str | None = None  # the --skip name when it is not the config's

    @property
    def key(self) -> str:
        """Short name for ``egoray demo --skip``: the config's file name without .yaml (or ``short``)."""
        return self.short or self.config.rsplit("/", 1)[-1][: -len(".yaml")]


VLM_NARRATION = ["vlm.num_frames=4", "vlm.in_context.k=2", "vlm.in_context.pool={out}/narrations", "vlm.n=1",
                 "vlm.do_sample=false"]

STEPS: list[Step] = [
    Step("ingest", "demo/ingest.yaml",
         ["input={data}/narration.json", "splits={data}/splits.json", "output={out}/narrations"]),
    Step("ingest (episodic-memory pickle)", "demo/ingest.yaml",
         ["input={data}/em_train_narrations.pkl", "splits={data}/splits.json", "output={out}/em_narrations"],
         short="ingest_em"),
    Step("qa (EgoTimeQA)", "demo/qa.yaml", ["input={out}/em_narrations", "output={out}/qa"]),
    Step("rephrase", "demo/rephrase.yaml", ["input={out}/narrations", "output={out}/rephrase"]),
    Step("text_features (narrations)", "demo/text_features.yaml",
         ["input={out}/narrations", "output={out}/text_features"]),
    Step("text_features (class prompts)", "demo/class_prompts.yaml",
         ["input={data}/labels.txt", "output={out}/class_prompts"]),
    Step("video_features", "demo/video_features.yaml", ["input={data}/videos", "output={out}/video_features"]),
    Step("captions", "demo/captions.yaml", ["input={data}/videos", "output={out}/captions"]),
    Step("train_dual_encoder", "demo/train_dual_encoder.yaml",
         ["input={out}/narrations", "output={out}/dual_encoder", "video_features={out}/video_features",
          "text_features={out}/text_features", "labels={data}/clips.parquet"]),
    Step("train_narrator", "demo/train_narrator.yaml",
         ["input={out}/narrations", "output={out}/narrator", "video_features={out}/video_features"]),
    Step("train_video_text (towers from frames)", "demo/train_video_text.yaml",
         ["input={out}/narrations", "videos={data}/videos", "output={out}/video_text",
          "labels={data}/clips.parquet"]),
    Step("narrate (held-out clips)", "demo/narrate.yaml",
         ["input={data}/clips.parquet", "output={out}/narrate", "model={out}/narrator",
          "video_features={out}/video_features", "video_splits={data}/splits.json"]),
    Step("train_vlm (EILEV on the tiny BLIP-2)", "demo/train_vlm.yaml",
         ["input={out}/narrations", "output={out}/vlm", "videos={data}/videos", "labels={data}/clips.parquet"]),
    # the held-out clips narrated by the VLM before and after train_vlm, as it was trained: 4 frames,
    # 2 in-context examples, greedy
    Step("narrate (trained VLM, in-context examples)", "demo/narrate_vlm.yaml",
         ["input={data}/clips.parquet", "videos={data}/videos", "output={out}/narrate_vlm",
          "video_splits={data}/splits.json", *VLM_NARRATION, "vlm.model={out}/vlm"]),
    Step("narrate (untrained VLM, the same inputs)", "demo/narrate_vlm.yaml",
         ["input={data}/clips.parquet", "videos={data}/videos", "output={out}/narrate_vlm_untrained",
          "video_splits={data}/splits.json", *VLM_NARRATION], short="narrate_vlm_untrained"),
    Step("eval + report", "demo/eval.yaml",
         ["input={out}", "output={out}/eval",
          "retrieval.model={out}/dual_encoder", "retrieval.narrations={out}/narrations",
          "retrieval.video_features={out}/video_features", "retrieval.text_features={out}/text_features",
          "retrieval.labels={data}/clips.parquet",
          "zeroshot.classes={data}/labels.txt", "zeroshot.text_features={out}/text_features",
          "zeroshot.model={out}/dual_encoder", "zeroshot.clips={data}/clips.parquet",
          "zeroshot.video_features={out}/video_features", "zeroshot.video_splits={data}/splits.json",
          "captioning.0.predictions={out}/narrate", "captioning.0.references={out}/narrations",
          "captioning.1.predictions={out}/narrate_vlm", "captioning.1.references={out}/narrations",
          "captioning.2.predictions={out}/narrate_vlm_untrained", "captioning.2.references={out}/narrations",
          "captioning.3.predictions={out}/captions", "captioning.3.references={out}/narrations",
          "mcq.qa={out}/qa", "mcq.model={out}/dual_encoder", "mcq.video_features={out}/video_features",
          "mcq.text_features={out}/text_features", "gap.captions={out}/captions"]),
]


def eval_without_skipped(config: Any, skip: tuple[str, ...]) -> Any:
    """The demo's eval config less the parts that read the output of a skipped step."""
    update: dict[str, Any] = {}
    if "qa" in skip:
        update["mcq"] = None
    if "train_dual_encoder" in skip:  # retrieval, zero-shot, MCQ and the dual-encoder gap need the model
        update.update(retrieval=None, zeroshot=None, mcq=None)
    # a captioning entry reads the output of the step whose output folder it names
    update["captioning"] = [c for c in config.captioning if storage.basename(c.predictions) not in skip]
    if config.gap:
        sources = [s for s in config.gap.sources if not (s == "captions" and "captions" in skip)
                   and not (s == "dual_encoder" and "train_dual_encoder" in skip)]
        update["gap"] = config.gap.model_copy(update={"sources": sources, "captions": config.gap.captions
                                                      if "captions" in sources else None}) if sources else None
    return config.model_copy(update=update)


def run_demo(out: str, videos: int = 12, seed: int = 0, skip: tuple[str, ...] = ()) -> dict[str, dict]:
    """Synthesize data under ``out/data`` and run every step (but ``skip``); returns the manifests."""
    check_skip(skip)
    if "train_vlm" in skip and "narrate_vlm_untrained" not in skip:  # narrate_vlm is the untrained VLM then
        skip = (*skip, "narrate_vlm_untrained")
    t0 = time.perf_counter()
    out = out.rstrip("/")
    data = storage.join(out, "data")
    say(f"[demo] synthesizing {videos} videos into {data}")
    synthesize(data, videos=videos, seed=seed)
    started = ensure_ray()
    manifests = {}
    try:
        for step in STEPS:
            if step.key in skip:
                say(f"[demo] {step.name}: skipped")
                continue
            overrides = [o.format(out=out, data=data) for o in step.overrides]
            if step.key == "qa" and "ingest_em" in skip:  # the pickle's clips were not ingested
                overrides = [o.replace("/em_narrations", "/narrations") for o in overrides]
            if step.key == "narrate_vlm" and "train_vlm" in skip:  # the untrained VLM, then
                overrides = [o for o in overrides if not o.startswith("vlm.model=")]
            config = load_config(str(config_dir() / step.config), overrides)
            if step.key == "eval":
                config = eval_without_skipped(config, skip)
                if not config.section_ids():
                    say(f"[demo] {step.name}: nothing to evaluate without the skipped steps")
                    continue
            say(f"[demo] {step.name}: egoray run configs/{step.config} {' '.join(overrides)}")
            t1 = time.perf_counter()
            manifests[step.name] = m = job_module(config.job).run(config, overwrite=True)
            say(f"       {m.get('status', '?')} in {time.perf_counter() - t1:.0f} s: {_counts(m)}")
    finally:
        if started:
            import ray

            ray.shutdown()
    say(f"\n[demo] finished in {time.perf_counter() - t0:.0f}s. Outputs:")
    say(f"  synthetic data      {data}")
    for name, m in manifests.items():
        say(f"  {name:<34} {m['output']}  ({_counts(m)}; run.json there)")
    if "eval + report" in manifests:
        say(f"\n[demo] report: {storage.join(manifests['eval + report']['output'], 'report.html')}")
    return manifests
