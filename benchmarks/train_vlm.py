"""train_vlm's input path (tiny BLIP-2, EILEV mode, 2 in-context examples, 4 frames): frames decoded
once per clip and read back (ours) against decoding every clip of every sample from its video at
every step (the reference), with the same augmentation and the same training step on each side.

Reference (EILEV ``train_v2.py``'s dataset over videos): for each sample, decode the query's and
each example's frames from the source video, augment, lay out, forward and backward. Ours
(``train_vlm``'s recipe): the frames were decoded once by the preparation pass (timed separately)
into one ``.npy`` per clip; each step reads them, augments, lays out, forward and backward.
Without Ray (the recipe's body in this process); N samples and 8N.

    uv run --extra bench python benchmarks/train_vlm.py          # --samples N
"""

from __future__ import annotations

import argparse
import json
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from egoray import storage
from egoray.data.synth import synthesize
from egoray.models.interleave import eilev_blocks, interleave, pad_interleaved
from egoray.models.tiny import resolve_model
from egoray.models.video_blip import VideoBlip2, freeze_backbones, to_pixels, train_transform
from egoray.stages.video import from_npy, to_npy
from egoray.video.decode import iter_frames, sample_times

HERE = Path(__file__).resolve().parent
FRAMES, K, SIZE = 4, 2, 32


def decode(path: str, t0: float, t1: float) -> np.ndarray:
    times = sample_times(t0, t1, num_frames=FRAMES)
    return np.stack([f for _, f in iter_frames(path, times, 2 * SIZE, squash=True)])  # stored at 2x, cropped


def step(model, optimizer, tokenizer, clips: list[np.ndarray], texts: list[str], transform) -> float:
    pixels = to_pixels(np.stack(clips), transform, list(range(len(clips))))
    item = interleave(tokenizer, True, eilev_blocks("Question: What is the camera wearer doing? Answer:", texts[:-1]),
                      texts[-1], model.config.num_query_tokens)
    b = pad_interleaved([item], tokenizer.pad_token_id, left=False)
    loss = model(pixels[None], b["input_ids"], b["attention_mask"], b["video_mask"], b["labels"]).loss
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return float(loss.detach())


def run(samples: list[list[dict]], ours: bool, model, optimizer, tokenizer, transform) -> float:
    t0 = time.perf_counter()
    for sample in samples:
        if ours:
            clips = [from_npy(storage.read_bytes(c["npy"])) for c in sample]
        else:
            clips = [decode(c["path"], c["t_start"], c["t_end"]) for c in sample]
        step(model, optimizer, tokenizer, clips, [c["text"] for c in sample], transform)
    return time.perf_counter() - t0


def main() -> None:
    import transformers

    parser = argparse.ArgumentParser()
    parser.add_argument("--samples", type=int, default=8)
    args = parser.parse_args()
    torch.manual_seed(0)
    path = resolve_model("tiny:blip2")
    model = VideoBlip2.from_pretrained(path)
    freeze_backbones(model)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    tokenizer = transformers.AutoTokenizer.from_pretrained(path)
    transform = train_transform(SIZE, [0.5] * 3, [0.5] * 3)
    with tempfile.TemporaryDirectory() as tmp:
        synthesize(tmp, videos=4, seed=1)
        videos = {p.stem: str(p) for p in Path(tmp, "videos").glob("*.mp4")}
        clips = [{"path": videos[c["video_uid"]], "t_start": c["t_start"], "t_end": c["t_end"],
                  "text": f"The camera wearer {c['label']}s."}
                 for c in storage.read_parquet(str(Path(tmp) / "clips.parquet")).to_pylist()]
        t0 = time.perf_counter()
        for i, c in enumerate(clips):  # the preparation pass: each clip decoded once
            c["npy"] = str(Path(tmp) / f"{i}.npy")
            storage.write_bytes(c["npy"], to_npy(decode(c["path"], c["t_start"], c["t_end"])))
        prepare_s = time.perf_counter() - t0
        rng = np.random.default_rng(0)
        results = {"clips": len(clips), "frames_per_clip": FRAMES, "in_context_examples": K,
                   "prepare_once_s": round(prepare_s, 2)}
        run([[clips[0]] * (K + 1)], True, model, optimizer, tokenizer, transform)  # warm-up
        for n in (args.samples, 8 * args.samples):
            samples = [[clips[int(j)] for j in rng.choice(len(clips), K + 1, replace=False)] for _ in range(n)]
            t_ref = run(samples, False, model, optimizer, tokenizer, transform)
            t_ours = run(samples, True, model, optimizer, tokenizer, transform)
            results[f"N={n}"] = {"reference_s": round(t_ref, 2), "egoray_s": round(t_ours, 2),
                                 "ratio": round(t_ref / t_ours, 2),
                                 "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "train_vlm.json").write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
