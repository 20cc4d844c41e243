"""VLM narration (tiny BLIP-2, 8 frames, 2 in-context examples): egoray's batched actor vs the
EILEV sample script's way, one clip at a time.

Reference (EILEV `samples/eilev_generate_action_narration.py`): per clip, decode the frames of the
query and of each example video, run the processor and the model on that one prompt, generate.
Ours (`VLMStage`, what the Ray Data actors run): decoded clips stay in a small LRU cache
(examples recur across queries), a batch encodes all its clips' frames in one vision pass and
generates for the whole batch at once; the cache starts empty. Both run in this process on the same clips and examples, without Ray (the stage adds only
Ray Data's scheduling), greedy decoding, the same number of new tokens.

    uv run --extra bench python benchmarks/narrate_vlm.py          # --videos N --batch B
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

from egoray import storage
from egoray.data.synth import synthesize
from egoray.data.text import normalise_one
from egoray.models.vlm import VLMOptions, clip_prompts, generate, pixel_values, query_inputs
from egoray.models.vlm_examples import choose_examples
from egoray.stages.vlm import VLMStage

HERE = Path(__file__).resolve().parent


def make_clips(root: Path, videos: int) -> list[dict]:
    synthesize(str(root), videos=videos, seed=1)
    paths = {p.stem: str(p) for p in (root / "videos").glob("*.mp4")}
    clips = storage.read_parquet(str(root / "clips.parquet")).to_pylist()
    rows = [{"window_id": f"c{i}", "path": paths[c["video_uid"]], "t_start": c["t_start"], "t_end": c["t_end"],
             "video_uid": c["video_uid"], "text": f"The camera wearer {c['label']}s"} for i, c in enumerate(clips)]
    rng = np.random.default_rng(0)
    for r in rows:
        chosen = choose_examples(r, rows, 2, "random", 0.5, rng)
        r["examples"] = json.dumps([{k: rows[j][k] for k in ("path", "t_start", "t_end", "text")} for j in chosen])
    return rows


def reference(actor: VLMStage, rows: list[dict]) -> list[str]:
    """One clip at a time, every clip's frames decoded for each use, as the sample script does."""
    o, out = actor.options, []
    for r in rows:
        actor.cache.clear()
        examples = json.loads(r["examples"])
        frames = [actor._frames(e["path"], e["t_start"], e["t_end"]) for e in examples]
        frames.append(actor._frames(r["path"], r["t_start"], r["t_end"]))
        with torch.no_grad():
            visual = clip_prompts(actor.vlm.model, pixel_values(actor.vlm, frames))
            embeds, mask = query_inputs(actor.vlm, f"{o.question} {o.answer_prefix}", [[e["text"] for e in examples]],
                                        visual, actor.vlm.model.config.num_query_tokens)
        out.append(normalise_one(generate(actor.vlm, o, embeds, mask)[0][0][0]))  # as the stage cleans its outputs
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--videos", type=int, default=4)
    parser.add_argument("--batch", type=int, default=8)
    args = parser.parse_args()
    options = VLMOptions(model="tiny:blip2", num_frames=8, n=1, do_sample=False, max_new_tokens=12)
    with tempfile.TemporaryDirectory() as tmp:
        rows = make_clips(Path(tmp), args.videos)
        actor = VLMStage(options)
        actor.setup()
        reference(actor, rows[:2])  # warm-up both paths
        actor(pa.Table.from_pylist(rows[:2]))
        t0 = time.perf_counter()
        ref_texts = reference(actor, rows)
        t_ref = time.perf_counter() - t0
        actor.cache.clear()
        t0 = time.perf_counter()
        ours = [actor(pa.Table.from_pylist(rows[i:i + args.batch])) for i in range(0, len(rows), args.batch)]
        t_ours = time.perf_counter() - t0
    our_texts = [t[0] for table in ours for t in table["texts"].to_pylist()]
    same = sum(a == b for a, b in zip(our_texts, ref_texts, strict=True))
    results = {"clips": len(rows), "frames_per_clip": 8, "in_context_examples": 2, "batch": args.batch,
               "reference_s": round(t_ref, 2), "egoray_s": round(t_ours, 2),
               "reference_clips_per_s": round(len(rows) / t_ref, 2), "egoray_clips_per_s": round(len(rows) / t_ours, 2),
               "ratio": round(t_ref / t_ours, 2), "identical_greedy_texts": f"{same}/{len(rows)}"}
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "narrate_vlm.json").write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
