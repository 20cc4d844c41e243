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

import numpy as np
from pydantic import Field, model_validator

from egoray.config import StrictModel, Url
from egoray.data.raw import InputError
from egoray.train.distributed import TrainerOptions
from egoray.train.job import TrainingJobConfig, launch
from egoray.train.recipe import LoopConfig, Recipe

# EILEV's training prompts (InstructBLIP's templates), one drawn for every clip of a sample
EILEV_PROMPTS = [
    "What is the camera wearer doing?",
    "Question: What is the camera wearer doing?",
    "What is the camera wearer doing? An answer to the question is",
    "Q: What is the camera wearer doing? A:",
    "Given the video, answer the following question. What is the camera wearer doing?",
    "Based on the video, respond to this question: What is the camera wearer doing? Answer:",
    "Use the provided video to answer the question: What is the camera wearer doing?",
    'What is the answer to the following question? "What is the camera wearer doing?"',
    'The question "What is the camera wearer doing?" can be answered using the video. The answer is',
]
EVAL_PROMPT = "Question: What is the camera wearer doing? Answer:"


class VLMTrainModel(StrictModel):
    """What is trained and how its inputs are laid out."""

    base: str = Field("tiny:blip2", description="the BLIP-2-family model to start from (Salesforce/blip2-opt-2.7b, ...)")
    mode: Literal["videoblip", "eilev"] = Field("eilev", description="videoblip: one clip, one fixed prompt "
                                                                     "(train_v1); eilev: k interleaved examples (train_v2)")
    num_frames: int = Field(8, ge=1, le=64)
    in_context: int = Field(16, ge=0, le=64, description="eilev: examples per sample")
    eval_in_context: int | None = Field(None, ge=0, le=64, description="eilev: examples per held-out sample "
                                                                        "(default: in_context)")
    verb_noun_ratio: float = Field(0.5, ge=0, le=1)
    random_examples: bool = Field(False, description="eilev: examples at random instead of by verb and noun")
    prompts: list[str] = Field(EILEV_PROMPTS, min_length=1, description="eilev: templates drawn per clip")
    eval_prompt: str = Field(EVAL_PROMPT, description="the prompt of held-out samples and of videoblip mode")
    augment: bool = Field(True, description="RandAugment, random resized crop and flip of training frames")
    point_window_sec: float = Field(8.0, gt=0)

    @property
    def layout(self) -> str:
        return "eilev" if self.mode == "eilev" else "videoblip"

    @property
    def example_strategy(self) -> str:
        """:meth:`ExamplePool.choose`'s strategy."""
        return "random" if self.random_examples else "verb_noun"

    def examples(self, held_out: bool) -> int:
        if self.mode == "videoblip":
            return 0
        return self.eval_in_context if held_out and self.eval_in_context is not None else self.in_context


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
# Worker side
# ---------------------------------------------------------------------------------------------


def _recovered(words: str | None, text: str) -> bool | None:
    """Whether every word of a label (``pick up``) starts a word of ``text`` (``picks up the cup``)."""
    if not words:
        return None
    said = text.lower().replace(".", " ").split()
    return all(any(w.startswith(part) for w in said) for part in str(words).lower().split())


class VLMLoop(LoopConfig):
    """What each worker of train_vlm is given."""

    model: VLMTrainModel
    eval_max: int
    clips: str  # the decoded clips (the in-context examples' pool)
    train_splits: list[str]
    eval_generate: int
    max_new_tokens: int


class VLMRecipe(Recipe):
    """BLIP-2's part of the shared trainer: interleaved clips and narrations, the prompt masked."""

    name = "train_vlm"
    best_metric = "eval_loss"
    best_mode = "min"
    loop: VLMLoop

    def __init__(self, loop: VLMLoop) -> None:
        from egoray.models.video_blip import TRAINED

        super().__init__(loop)
        self.spec = loop.model
        self.save_prefixes = TRAINED
        self.epoch = 0

    def build(self) -> Any:
        from egoray.models.tiny import resolve_model
        from egoray.models.video_blip import VideoBlip2, freeze_backbones

        model = VideoBlip2.from_pretrained(resolve_model(self.spec.base))
        freeze_backbones(model)
        return model

    def setup(self, model: Any, options: TrainerOptions) -> None:
        import ray.train
        import transformers

        from egoray.models.tiny import resolve_model
        from egoray.models.video_blip import eval_transform, train_transform
        from egoray.stages.vlm_train import load_example_pool
        from egoray.train.data import ordered_shard

        path = resolve_model(self.spec.base)
        self.tokenizer = transformers.AutoTokenizer.from_pretrained(path)
        processor = transformers.BlipImageProcessor.from_pretrained(path)
        mean, std, size = list(processor.image_mean), list(processor.image_std), int(processor.size["height"])
        self.held_out_transform = eval_transform(size, mean, std)
        self.train_transform = train_transform(size, mean, std) if self.spec.augment else self.held_out_transform
        # training clips draw their in-context examples every epoch (EILEV's dataset draws them
        # at every load) from the training pool: metadata only, read once per worker
        k = self.spec.examples(False)
        self.pool = load_example_pool(self.loop.clips, self.loop.train_splits) if k else None
        self.model, self.options = model, options
        self.decoder_only = bool(model.config.use_decoder_only_language_model)
        self.queries = int(model.config.num_query_tokens)
        held = ray.train.get_dataset_shard("eval")
        # the eval_max held-out samples with the smallest ids (rows, not frames): the same samples
        # at every evaluation and in every run, whatever order the blocks arrive in
        self.eval_rows: list[dict[str, Any]] = []
        for b in held.iter_batches(batch_size=256, batch_format="pyarrow"):
            smallest = b.sort_by("id").slice(0, self.loop.eval_max).to_pylist()  # rows only of those
            self.eval_rows = sorted(self.eval_rows + smallest, key=lambda r: r["id"])[:self.loop.eval_max]
        self.train_rows = ordered_shard("train", options.seed)

    def batches(self, epoch: int, batch: int, rank: int) -> Any:
        self.epoch = epoch
        return self.train_rows.batches(epoch, batch, "pyarrow")

    # -- one batch -------------------------------------------------------------------------

    def _examples(self, row: dict[str, Any], train: bool) -> tuple[list[str], list[str]]:
        """A sample's in-context examples (frame URLs, texts): a training clip's drawn for this
        epoch, a held-out clip's chosen once (the same at every evaluation)."""
        from egoray.data.seeds import row_seed
        from egoray.stages.vlm_train import example_text

        if not (train and self.pool is not None):
            return list(row["example_urls"] or []), list(row["example_texts"] or [])
        rng = np.random.default_rng(row_seed(self.options.seed, "vlm_examples", row["id"], self.epoch))
        picks = self.pool.choose(row, self.spec.examples(False), self.spec.example_strategy, self.spec.verb_noun_ratio,
                                 rng)
        return [self.pool.pool[j]["frames_url"] for j in picks], [example_text(self.pool.pool[j]) for j in picks]

    def _inputs(self, rows: list[dict[str, Any]], train: bool) -> dict[str, Any]:
        """Pixels ``[rows, clips, frames, 3, H, W]`` and the padded interleaved tokens. Templates
        are drawn per clip (EILEV's training and validation sets): per epoch in training, once per
        clip for the held-out loss."""
        from egoray import storage
        from egoray.data.seeds import row_seed
        from egoray.models.video_blip import to_pixels
        from egoray.models.vlm import eilev_blocks, interleave, pad_interleaved
        from egoray.stages.video import from_npy
        from egoray.stages.vlm_train import narration_text

        seed = self.options.seed
        clips, items, seeds = [], [], []
        for r in rows:
            urls, texts = self._examples(r, train)
            urls = [*urls, r["frames_url"]]
            clips += [from_npy(storage.read_bytes(u)) for u in urls]
            seeds += [row_seed(seed, "augment", r["id"], self.epoch, j) for j in range(len(urls))]
            if self.spec.mode == "eilev":
                draw = row_seed(seed, "prompts", r["id"], self.epoch) if train else row_seed(seed, "held-out prompts",
                                                                                              r["id"])
                rng = np.random.default_rng(draw)
                picks = [self.spec.prompts[int(i)] for i in rng.integers(0, len(self.spec.prompts), len(urls))]
                blocks = eilev_blocks(picks[-1], texts, picks[:-1])
            else:
                blocks = eilev_blocks(self.spec.eval_prompt, texts)
            items.append(interleave(self.tokenizer, self.decoder_only, blocks, narration_text(r),
                                    self.queries, self.spec.layout))
        pixels = to_pixels(np.stack(clips), self.train_transform if train else self.held_out_transform, seeds)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        batch = pad_interleaved(items, pad, left=False)
        batch["pixel_values"] = pixels.reshape(len(rows), -1, *pixels.shape[1:])
        return batch

    def loss(self, engine: Any, rows: Any) -> tuple[Any, int]:
        records = rows.to_pylist()
        b = self._inputs(records, train=True)
        out = engine(engine.to_input(b["pixel_values"]), engine.to_input(b["input_ids"]),
                     engine.to_input(b["attention_mask"]), engine.to_input(b["video_mask"]),
                     engine.to_input(b["labels"]))
        return out.loss, len(records)

    # -- evaluation ------------------------------------------------------------------------

    def evaluate(self, engine: Any) -> dict[str, float]:
        import torch

        if not self.eval_rows:
            return {}
        model = engine.module
        model.eval()
        device = next(p for p in model.parameters()).device
        dtype = next(p for p in model.parameters()).dtype
        total, tokens = 0.0, 0
        with torch.no_grad():
            for i in range(0, len(self.eval_rows), 8):
                b = self._inputs(self.eval_rows[i:i + 8], train=False)
                out = model(b["pixel_values"].to(device, dtype), b["input_ids"].to(device),
                            b["attention_mask"].to(device), b["video_mask"].to(device), b["labels"].to(device))
                # a decoder-only LM predicts each label from the token before it
                n = int((b["labels"][:, 1:] != -100).sum()) if self.decoder_only else int((b["labels"] != -100).sum())
                total += float(out.loss) * n
                tokens += n
        metrics = {"eval_loss": total / max(tokens, 1)}
        if self.loop.eval_generate:
            metrics.update(self._generated(model, device, dtype))
        return metrics

    def _generated(self, model: Any, device: Any, dtype: Any) -> dict[str, float]:
        """Narrations of held-out clips (greedy, stopping at a newline): CIDEr against their own
        narrations, and the share whose verb and noun labels appear in the generated text."""
        import torch

        from egoray.models.vlm import LoadedVLM, VLMOptions, clip_prompts, generate, query_inputs
        from egoray.stages.vlm_train import narration_text

        rows = self.eval_rows[:self.loop.eval_generate]
        vlm = LoadedVLM(model, self.tokenizer, None, device)
        options = VLMOptions(model=self.spec.base, max_new_tokens=self.loop.max_new_tokens, layout=self.spec.layout)
        texts: list[str] = []
        with torch.no_grad():
            for i in range(0, len(rows), 8):
                chunk = rows[i:i + 8]
                b = self._inputs(chunk, train=False)
                pixels = b["pixel_values"].to(device, dtype)
                visual = clip_prompts(model, pixels.flatten(0, 1))
                embeds, mask = query_inputs(vlm, self.spec.eval_prompt, [list(r["example_texts"] or []) for r in chunk],
                                            visual, self.queries, self.spec.layout)
                texts += [t[0] for t in generate(vlm, options, embeds, mask)[0]]
        from pycocoevalcap.cider.cider import Cider

        from egoray.eval.captioning import simple_tokenize

        refs = simple_tokenize({str(i): [narration_text(r)] for i, r in enumerate(rows)})
        preds = simple_tokenize({str(i): [t] for i, t in enumerate(texts)})
        cider, _ = Cider().compute_score(refs, preds)
        verbs = [_recovered(r.get("verb"), t) for r, t in zip(rows, texts, strict=True)]
        nouns = [_recovered(r.get("noun"), t) for r, t in zip(rows, texts, strict=True)]
        out = {"cider": float(cider)}
        for name, hits in (("verb_recovered", verbs), ("noun_recovered", nouns)):
            labelled = [h for h in hits if h is not None]
            if labelled:
                out[name] = float(np.mean(labelled))
        return out

    def export(self) -> dict[str, Any]:
        return {"kind": "vlm", "config": {"base": self.spec.base, "layout": self.spec.layout,
                                          "num_frames": self.spec.num_frames, "prompt": self.spec.eval_prompt,
                                          "mode": self.spec.mode, "in_context": self.spec.examples(True)}}


def _train_loop(loop: VLMLoop) -> None:
    from egoray.train.recipe import train

    train(VLMRecipe(loop), loop)


# ---------------------------------------------------------------------------------------------
# Driver side
# ---------------------------------------------------------------------------------------------


def run(config: Config, overwrite: bool = False) -> dict[str, Any]:
    from egoray import storage
    from egoray.data.videos import video_paths
    from egoray.executor import WORK_DIR, io_cpus, read
    from egoray.executor import prepare as prepare_work
    from egoray.stages.clips import DecodeClips
    from egoray.stages.vlm_train import SAMPLE_COLUMNS, ChooseTrainingExamples, PointWindows, StoreFrames
    from egoray.train.data import narrations_dataset, pairs_dataset

    videos = video_paths(config.videos) or {}
    if not videos:
        raise InputError(f"{config.videos}: no video files (<video_uid>.mp4, ...)")
    items, inputs = narrations_dataset(config.input, config.train_splits + config.eval_splits, extra=("raw_text",))
    spec = config.model
    size = _image_size(spec.base)
    frames_dir = storage.join(config.output, WORK_DIR, "frames")
    k_train, k_eval = spec.examples(False), spec.examples(True)

    def pairs() -> dict[str, Any]:
        from egoray.executor import Source

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

    return launch(config, overwrite, inputs, config.train, _train_loop, pairs, loop)


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
