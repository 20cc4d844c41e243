"""The ``train_vlm`` job's model and what each Ray Train worker runs: EILEV's prompt templates,
the model block of the config, and the recipe that lays clips and narrations out as EILEV does,
trains the Q-Former, its queries and the projection, and scores held-out clips (loss, CIDEr,
verbs and nouns recovered). Part of the job (:mod:`egoray.pipelines.train_vlm`), which only
prepares the samples and launches it."""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
from pydantic import Field

from egoray.config import StrictModel
from egoray.train.distributed import TrainerOptions
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
        from egoray.models.interleave import eilev_blocks, interleave, pad_interleaved
        from egoray.models.video_blip import to_pixels
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


def train_loop(loop: VLMLoop) -> None:
    from egoray.train.recipe import train

    train(VLMRecipe(loop), loop)
