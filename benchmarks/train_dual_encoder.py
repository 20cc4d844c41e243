"""Benchmark: CLEP dual-encoder training throughput, our data path vs the reference way.

    uv run --extra bench python benchmarks/train_dual_encoder.py            # dual encoder, batch 128
    uv run --extra bench python benchmarks/train_dual_encoder.py narrator   # narrator sampling, KV cache on/off

Same features, same model (seed 001's CLEP: two 2-layer heads, 1536-d video / 768-d text → 1536),
same loss, same optimizer, one process on the CPU, batch 128.

reference (seed 001): a ``torch.utils.data.Dataset`` whose ``__getitem__`` slices the video's
    features out of one HDF5 file (``h5py``), ``torch.load``s the narration's embedding file and
    mean-pools the window; a ``DataLoader`` with 2 worker processes (one per core).
ours: each video's features are read once (``FeatureStore``) and ``pool`` pools every
    window of that video with one cumulative sum (what the pair-building pass does per video),
    text embeddings come from one table; batches are slices of a shuffled order.
ours, streamed: what the job runs — the pair-building Ray Data pass (grouped by video, a local
    Ray of 2 CPUs) into ``_work/pairs``, then every epoch's batches streamed from the pair dataset
    as a Ray Train worker iterates its shard (``iter_batches`` with a local shuffle).

Reported: examples/s of each over the same number of epochs (steady state), our one-time load
and pooling, both ratios, and the data path alone (batches produced, no model) on each side.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

VIDEO_DIM, TEXT_DIM, FPS, OFFSET = 1536, 768, 30 / 16, 2.0


def _save(name: str, results: dict) -> None:
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / f"{name}.json").write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


def make_inputs(root: Path, videos: int, seconds: float, narrations: int, seed: int = 0) -> dict:
    """The same features in both layouts: ours (video_features output) and the reference's."""
    import h5py
    import pyarrow as pa
    import torch

    from egoray import storage

    rng = np.random.default_rng(seed)
    uids = [f"v{i:04d}" for i in range(videos)]
    n = int(seconds * FPS)
    feats = {u: rng.standard_normal((n, VIDEO_DIM), dtype=np.float32) for u in uids}
    # ours: 4 HDF5 shards + index
    index = []
    for s in range(4):
        part = {u: feats[u] for u in uids[s::4]}
        storage.write_hdf5_shard(str(root / "ours" / "features" / f"part-{s:04d}.h5"), part)
        index += [{"key": u, "video_uid": u, "file": f"features/part-{s:04d}.h5", "n": n, "dim": VIDEO_DIM,
                   "fps": FPS, "model": "bench", "t_start": 0.0, "t_end": seconds} for u in part]
    storage.write_parquet(str(root / "ours" / "index" / "part-0000.parquet"), pa.Table.from_pylist(index))
    # reference: one HDF5 file keyed by uid
    with h5py.File(root / "features.h5", "w") as h5:
        for u in uids:
            h5.create_dataset(u, data=feats[u])
    meta = [{"idx": f"n{i:06d}", "uid": uids[int(rng.integers(videos))],
             "ts": float(rng.uniform(0, seconds))} for i in range(narrations)]
    text = rng.standard_normal((narrations, TEXT_DIM), dtype=np.float32)
    (root / "narrations").mkdir()
    for m, t in zip(meta, text, strict=True):
        torch.save(torch.from_numpy(t.copy()), root / "narrations" / f"{m['idx']}.pt")
    torch.save(meta, root / "meta.pt")
    return {"meta": meta, "text": text}


class ReferenceDataset:
    """Seed 001's ``Ego4DClipDset``: one HDF5 slice and one torch.load per item."""

    def __init__(self, root: Path) -> None:
        import torch

        self.root = root
        self.metadata = torch.load(root / "meta.pt")
        self.features = None

    def __len__(self) -> int:
        return len(self.metadata)

    def __getitem__(self, idx: int) -> dict:
        import h5py
        import torch

        if self.features is None:  # opened per worker process
            self.features = h5py.File(self.root / "features.h5", "r")
        meta = self.metadata[idx]
        vid = self.features[meta["uid"]]
        nf = len(vid)
        x1 = min(max(0, math.floor((meta["ts"] - OFFSET) * FPS)), nf - 1)
        x2 = min(math.floor((meta["ts"] + OFFSET) * FPS), nf - 1)
        return {"video": torch.tensor(vid[x1:x2 + 1]).mean(0),
                "text": torch.load(self.root / "narrations" / f"{meta['idx']}.pt")}


def _model_and_opt(seed: int = 0):
    import torch

    from egoray.models.dual_encoder import DualEncoder, DualEncoderConfig

    torch.manual_seed(seed)
    # seed 001's ClipModel: FEATURE_DIM = 1536 for hidden and output of both heads
    model = DualEncoder(DualEncoderConfig(video_dim=VIDEO_DIM, text_dim=TEXT_DIM, embed_dim=1536, hidden_dim=1536))
    return model, torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.98, 0.9), eps=1e-6)


def _step(model, opt, video, text) -> float:
    from egoray.models.dual_encoder import contrastive_loss

    ve, te, scale, _ = model(video, text)
    loss = contrastive_loss(ve, te, scale)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return float(loss.detach())


def run_reference(root: Path, epochs: int, batch: int, workers: int, train: bool = True) -> dict:
    """With ``train=False`` only the batches are produced (the data path alone)."""
    import torch
    from torch.utils.data import DataLoader

    torch.set_num_threads(2)
    model, opt = _model_and_opt()
    loader = DataLoader(ReferenceDataset(root), batch_size=batch, num_workers=workers, shuffle=True,
                        drop_last=True, persistent_workers=workers > 0)
    seen, t0 = 0, time.perf_counter()
    for _ in range(epochs):
        for b in loader:
            if train:
                _step(model, opt, b["video"], b["text"])
            seen += len(b["video"])
    seconds = time.perf_counter() - t0
    return {"examples": seen, "seconds": round(seconds, 3), "examples_per_s": round(seen / seconds, 1)}


def run_ours(root: Path, inputs: dict, epochs: int, batch: int, train: bool = True) -> dict:
    import torch

    from egoray.features.windows import FeatureStore, pool

    torch.set_num_threads(2)
    t0 = time.perf_counter()
    # what the pair-building pass does per video (here in one process): read the video's features
    # once, pool all its windows at once
    store = FeatureStore(str(root / "ours"))
    meta = inputs["meta"]
    by_video: dict[str, list[int]] = {}
    for i, m in enumerate(meta):
        by_video.setdefault(m["uid"], []).append(i)
    pooled = np.zeros((len(meta), VIDEO_DIM), np.float32)
    for uid, items in by_video.items():
        ts = np.array([meta[i]["ts"] for i in items])
        pooled[items] = pool(store.get(uid), ts - OFFSET, ts + OFFSET)
    video = torch.from_numpy(pooled)
    text = torch.from_numpy(inputs["text"])
    setup = time.perf_counter() - t0
    model, opt = _model_and_opt()
    seen, t0 = 0, time.perf_counter()
    for epoch in range(1, epochs + 1):
        perm = np.random.default_rng(epoch).permutation(len(meta))
        for idx in (perm[s:s + batch] for s in range(0, len(meta) - batch + 1, batch)):
            i = torch.from_numpy(idx)
            v, t = video[i], text[i]
            if train:
                _step(model, opt, v, t)
            seen += len(idx)
    seconds = time.perf_counter() - t0
    return {"examples": seen, "seconds": round(seconds, 3), "examples_per_s": round(seen / seconds, 1),
            "load_and_pool_seconds": round(setup, 3)}


def write_text_features(root: Path, inputs: dict) -> str:
    """The narrations as a ``text_features`` output (embedding + video, times, split): the input
    of the streamed path."""
    import pyarrow as pa

    from egoray import storage

    meta, text = inputs["meta"], inputs["text"]
    url = str(root / "text_features")
    storage.write_parquet(storage.join(url, "embeddings", "part-0000.parquet"), pa.table({
        "id": [m["idx"] for m in meta], "text": [m["idx"] for m in meta],
        "embedding": pa.FixedSizeListArray.from_arrays(pa.array(text.reshape(-1)), TEXT_DIM).cast(pa.list_(pa.float32())),
        "video_uid": [m["uid"] for m in meta], "t_start": [m["ts"] for m in meta], "t_end": [m["ts"] for m in meta],
        "split": ["train"] * len(meta)}))
    return url


def run_streamed(root: Path, inputs: dict, epochs: int, batch: int, train: bool = True) -> dict:
    """What ``train_dual_encoder`` runs: the pair-building Ray Data pass (grouped by video) into
    ``_work/pairs``, then each epoch's batches streamed from the pair dataset the way a Ray Train
    worker iterates its shard (one process here, no Ray Train: the data path and the model step)."""
    import ray
    import torch

    from egoray.pipelines.train_dual_encoder import _stack
    from egoray.runtime import ensure_ray
    from egoray.train.data import text_features_source
    from egoray.train.pairs import build_pairs, pairs_dataset

    torch.set_num_threads(2)
    tf = write_text_features(root, inputs) if not (root / "text_features").exists() else str(root / "text_features")
    started = ensure_ray()
    try:
        t0 = time.perf_counter()
        items, _ = text_features_source(tf, ["train"])
        out = root / f"streamed-{int(train)}"
        url = build_pairs(str(out), "pairs", items, str(root / "ours"), OFFSET)
        ds = pairs_dataset(url, ["train"], ["video", "embedding"])
        setup = time.perf_counter() - t0
        model, opt = _model_and_opt()
        seen, t0 = 0, time.perf_counter()
        for epoch in range(1, epochs + 1):
            for b in ds.iter_batches(batch_size=batch, batch_format="numpy", drop_last=True,
                                     local_shuffle_buffer_size=8 * batch, local_shuffle_seed=epoch):
                v, t = torch.from_numpy(_stack(b["video"])), torch.from_numpy(_stack(b["embedding"]))
                if train:
                    _step(model, opt, v, t)
                seen += len(v)
        seconds = time.perf_counter() - t0
    finally:
        if started:
            ray.shutdown()
    return {"examples": seen, "seconds": round(seconds, 3), "examples_per_s": round(seen / seconds, 1),
            "pair_pass_seconds": round(setup, 3)}


def bench_dual_encoder(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP")) as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        inputs = make_inputs(root, args.videos, args.seconds, args.narrations)
        print(f"inputs written in {time.perf_counter() - t0:.0f}s", flush=True)
        ref = run_reference(root, args.epochs, args.batch, args.workers)
        print("reference", ref, flush=True)
        ours = run_ours(root, inputs, args.epochs, args.batch)
        print("ours", ours, flush=True)
        streamed = run_streamed(root, inputs, args.epochs, args.batch)
        print("ours, streamed", streamed, flush=True)
        ref_data = run_reference(root, args.epochs, args.batch, args.workers, train=False)
        ours_data = run_ours(root, inputs, args.epochs, args.batch, train=False)
        streamed_data = run_streamed(root, inputs, args.epochs, args.batch, train=False)
        print("data path only", ref_data, ours_data, streamed_data, flush=True)
    total_ours = ours["examples"] / (ours["seconds"] + ours["load_and_pool_seconds"])
    _save("train_dual_encoder", {
        "inputs": {"videos": args.videos, "seconds_per_video": args.seconds, "narrations": args.narrations,
                   "video_dim": VIDEO_DIM, "text_dim": TEXT_DIM, "batch": args.batch, "epochs": args.epochs,
                   "reference_loader_workers": args.workers, "cpu_cores": os.cpu_count()},
        "reference": ref, "ours": ours, "ours_streamed": streamed,
        "data_path_only": {"reference": ref_data, "ours": ours_data, "ours_streamed": streamed_data,
                           "ratio": round(ours_data["examples_per_s"] / ref_data["examples_per_s"], 1),
                           "ratio_streamed": round(streamed_data["examples_per_s"] / ref_data["examples_per_s"], 1)},
        "ratio_streamed_steady_state": round(streamed["examples_per_s"] / ref["examples_per_s"], 2),
        "ratio_streamed_including_pair_pass": round(
            streamed["examples"] / (streamed["seconds"] + streamed["pair_pass_seconds"]) / ref["examples_per_s"], 2),
        "ratio_steady_state": round(ours["examples_per_s"] / ref["examples_per_s"], 2),
        "ratio_including_our_load": round(total_ours / ref["examples_per_s"], 2),
    })


def bench_narrator(args: argparse.Namespace) -> None:
    """Captions/s of the narrator's sampling with and without the KV cache (tiny GPT-2 geometry
    scaled to GPT-2 small's width is not buildable offline; we use a 6-layer 256-wide GPT-2)."""
    import torch
    import transformers

    from egoray.models.narrator import Narrator, NarratorConfig
    from egoray.models.tiny import resolve_model

    torch.set_num_threads(2)
    torch.manual_seed(0)
    tok = transformers.AutoTokenizer.from_pretrained(resolve_model("tiny:gpt2"))
    cfg = transformers.GPT2Config(vocab_size=len(tok), n_embd=256, n_layer=6, n_head=8, n_positions=256,
                                  bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                                  pad_token_id=tok.pad_token_id)
    lm = transformers.GPT2LMHeadModel(cfg).eval()
    model = Narrator(NarratorConfig(video_dim=512, num_queries=8, heads=8), lm, tok)
    with torch.no_grad():
        for block in model.xattn:
            block.attn_gate.fill_(0.5)
    frames = torch.randn(args.windows, 4, 512)
    out = {}
    for cache in (True, False):
        model.generate(frames[:2], n=2, max_new_tokens=4, use_cache=cache, seed=0)  # warm-up
        t0 = time.perf_counter()
        texts, _ = model.generate(frames, n=args.n, max_new_tokens=args.tokens, use_cache=cache, seed=0,
                                  do_sample=True)
        seconds = time.perf_counter() - t0
        out["with_cache" if cache else "without_cache"] = {
            "captions": args.windows * args.n, "seconds": round(seconds, 3),
            "captions_per_s": round(args.windows * args.n / seconds, 2)}
    _save("narrator_sampling", {
        "inputs": {"windows": args.windows, "n": args.n, "max_new_tokens": args.tokens,
                   "lm": "GPT-2 6 layers x 256 (random)", "cpu_cores": os.cpu_count()},
        **out, "ratio": round(out["with_cache"]["captions_per_s"] / out["without_cache"]["captions_per_s"], 2)})


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("what", nargs="?", default="dual_encoder", choices=["dual_encoder", "narrator"])
    parser.add_argument("--videos", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=300.0)
    parser.add_argument("--narrations", type=int, default=10_000)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--windows", type=int, default=16)
    parser.add_argument("--n", type=int, default=5)
    parser.add_argument("--tokens", type=int, default=32)
    args = parser.parse_args()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    (bench_dual_encoder if args.what == "dual_encoder" else bench_narrator)(args)


if __name__ == "__main__":
    main()
