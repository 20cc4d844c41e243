"""``train_vlm`` job: VideoBLIP / EILEV — BLIP-2 fine-tuned to narrate egocentric clips.

Input: an ingest output (narrations with splits; ``verb``/``noun`` for EILEV's example choice,
e.g. Ego4D's ``fho_main.json``) and ``videos``. Two Ray Data passes prepare the clips: the
workers take each narration's window (points widened to ``point_window_sec``) and ``num_frames``
of its own frames, resized bicubic to twice the processor's size, stored once per clip under
``_work/frames`` (as EILEV's ``extract_frames.py``), then pick the held-out clips' in-context
examples into ``_work/samples``. The samples stream to the Ray Train workers, which draw each
training clip's examples again every epoch, read the frames, augment them as EILEV does
(pytorchvideo's RandAugment, a random resized crop, a flip), lay the clips and texts out as EILEV
does (randomised prompt templates, target ``" <narration>\\n</s>"``, the prompt masked out of
the loss) and train the Q-Former, its queries and the projection; the vision tower and the
language model stay frozen. Held-out loss and narrations generated for
held-out clips (CIDEr, verbs and nouns recovered) are measured at every evaluation.

Output::

    OUTPUT/model/model.pt            the trained Q-Former, queries and projection + the base model's name (last)
    OUTPUT/best/model.pt, best.json  the weights with the lowest held-out loss (train.best_metric)
    OUTPUT/metrics/part-0000.parquet every evaluation (step 0 included)
    OUTPUT/tensorboard/              every scalar
    OUTPUT/rejects/*.parquet         narrations whose video is missing or unreadable
    OUTPUT/train/                    Ray Train checkpoints
    OUTPUT/run.json

``narrate backend: vlm`` loads ``OUTPUT`` (or ``OUTPUT/best``) as ``vlm.model``.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from egoray.config import Url
from egoray.data.raw import InputError
from egoray.pipelines.train_vlm_worker import VLMLoop, VLMTrainModel, train_loop
from egoray.train.distributed import TrainerOptions
from egoray.train.job import TrainingJobConfig, TrainingPlan, run_training


class Config(TrainingJobConfig):
    """Config of the ``train_vlm`` job (``input``: an ingest output)."""

    job: Literal["train_vlm"] = "train_vlm"
    videos: Url = Field(description="the folder holding <video_uid>.<ext>")
    labels: Url | None = Field(None, description="verb/noun of narrations without them: a table of labelled "
                                                 "segments (video_uid, t_start, t_end, verb, noun)")
    eval_splits: list[str] = ["val"]
    model: VLMTrainModel = VLMTrainModel()
    eval_max: int = Field(256, ge=1, description="held-out samples scored at each evaluation (those with the smallest ids)")
    eval_generate: int = Field(64, ge=0, description="of those, how many are narrated (CIDEr, verbs and nouns)")
    max_new_tokens: int = Field(30, ge=1)
    seed: int = 0
    train: TrainerOptions = TrainerOptions(strategy="deepspeed", zero_stage=2, epochs=5, batch_size=1, grad_accum=16,
                                           lr=1e-5, weight_decay=0.05, schedule="linear",
                                           best_metric="eval_loss", best_mode="min")

    @model_validator(mode="after")
    def _mode(self) -> Config:
        if self.model.mode == "videoblip" and (self.model.in_context or self.model.eval_in_context):
            raise ValueError("model.mode videoblip takes no in-context examples (set model.in_context: 0)")
        return self


# ---------------------------------------------------------------------------------------------
# Driver side
# ---------------------------------------------------------------------------------------------


def plan(config: Config) -> TrainingPlan:
    """The train_vlm job's plan (its inputs checked here, before anything runs)."""
    from egoray import storage
    from egoray.data.videos import video_paths
    from egoray.plans import WORK_DIR
    from egoray.ray_data_context import io_cpus, read
    from egoray.stages.clips import DecodeClips
    from egoray.stages.vlm_train import SAMPLE_COLUMNS, ChooseTrainingExamples, PointWindows, StoreFrames
    from egoray.train.data import narrations_dataset
    from egoray.train.pairs import pairs_dataset
    from egoray.work_inputs import prepare_dataset as prepare_work

    videos = video_paths(config.videos) or {}
    if not videos:
        raise InputError(f"{config.videos}: no video files (<video_uid>.mp4, ...)")
    items, inputs = narrations_dataset(config.input, config.train_splits + config.eval_splits, extra=("raw_text",))
    spec = config.model
    size = _image_size(spec.base)
    frames_dir = storage.join(config.output, WORK_DIR, "frames")
    k_train, k_eval = spec.examples(False), spec.examples(True)

    def pairs() -> dict[str, Any]:
        from egoray.plans import Source

        # as EILEV's extract_frames.py: the window's own frames subsampled, the whole frame resized
        # (bicubic) to twice the processor's size for the random resized crop of training
        decode = DecodeClips(videos, spec.num_frames, 2 * size, labels=config.labels, squash=True,
                             window_frames=True, bicubic=True)
        clips = prepare_work(config.output, "clips", lambda: items().map_batches(
            PointWindows(spec.point_window_sec), batch_format="pyarrow").map_batches(
            decode, batch_format="pyarrow", batch_size=8).map_batches(StoreFrames(frames_dir), batch_format="pyarrow"))
        k = max(k_train, k_eval)
        choose = ChooseTrainingExamples(clips, config.train_splits, k, spec.example_strategy, spec.verb_noun_ratio,
                                        config.seed, config.eval_splits)
        samples = prepare_work(config.output, "samples", lambda: read(Source(clips)).map_batches(
            choose, batch_format="pyarrow", batch_size=256))
        # the trainers hold the CPUs: the feeding tasks ask for none (as pairs_dataset's reads)
        train = pairs_dataset(samples, config.train_splits, SAMPLE_COLUMNS).map_batches(
            _Keep(k_train), batch_format="pyarrow", num_cpus=io_cpus())
        held = pairs_dataset(samples, config.eval_splits, SAMPLE_COLUMNS).map_batches(
            _Keep(k_eval), batch_format="pyarrow", num_cpus=io_cpus())
        return {"url": samples, "aux": [], "datasets": {"train": train, "eval": held}}

    def loop(counts: dict[str, Any]) -> VLMLoop:
        if counts["train"] <= max(k_train, k_eval):
            raise InputError(f"{counts['train']} training clips cannot give {max(k_train, k_eval)} in-context "
                             "examples each (another clip's); add data or lower model.in_context")
        return VLMLoop(train=config.train, output=config.output, n_train=counts["train"], model=spec,
                       eval_max=config.eval_max, clips=storage.join(config.output, WORK_DIR, "clips"),
                       train_splits=config.train_splits, eval_generate=config.eval_generate,
                       max_new_tokens=config.max_new_tokens)

    return TrainingPlan(inputs, config.train, train_loop, pairs, loop)


def run(config: Config, overwrite: bool = False) -> dict[str, Any]:
    """Run (or resume) the train_vlm job; returns its run.json."""
    return run_training(config, overwrite, plan(config))


class _Keep:
    """The first ``k`` examples of each sample (held-out samples may use fewer than training ones)."""

    def __init__(self, k: int) -> None:
        self.k = k

    def __call__(self, batch: Any) -> Any:
        import pyarrow as pa
        import pyarrow.compute as pc

        for name in ("example_urls", "example_texts"):
            column = batch[name]
            kept = pa.array([x[:self.k] for x in column.to_pylist()], pa.list_(pa.string()))
            batch = batch.set_column(batch.schema.get_field_index(name), name, kept)
        return batch.filter(pc.is_valid(batch["frames_url"]))


def _image_size(base: str) -> int:
    """The processor's frame size (its config file only)."""
    import transformers

    from egoray.models.tiny import resolve_model

    return int(transformers.BlipImageProcessor.from_pretrained(resolve_model(base)).size["height"])
