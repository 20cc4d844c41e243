"""What the seeded global order costs a training worker, against the local shuffle buffer it
replaced, on the same pair dataset in one run.

    uv run --extra bench python benchmarks/train_order.py            # 160,000 and 1,280,000 pairs

Input: N dual-encoder pairs (id, 256-d video, 256-d text embedding, verb/noun codes; about 2 KB
each) in 16 Parquet files, materialized in a local Ray's object store as ``pairs_dataset`` does
for small runs. One worker of 2 (rank 0) reads one epoch of batches of 128:

- **reference**: Ray Train's old path — its half of the stream (``streaming_split(2)``),
  ``iter_batches`` with a local shuffle buffer of 8 batches (the order of arrival decides the
  batches; a batch holds a few videos' consecutive narrations). The other rank's half is read in
  a thread of the same process, as a streaming split only moves while both consumers read.
- **ours**: :class:`egoray.train.data.OrderedShard` — the ids read once (set-up), then per epoch
  the whole stream read, this worker's share of the seeded permutation picked and ordered in
  memory, sliced into batches.

Each side runs in its own process (its own Ray of 2 CPUs); time is one epoch after set-up, memory
the process's peak RSS (the object store's shared memory is not counted on either side).
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

DIM, BATCH, FILES = 256, 128, 16


def write_pairs(path: Path, n: int) -> None:
    """``n`` pairs in ``FILES`` Parquet files, video by video (as the pair pass writes them)."""
    path.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    per = math.ceil(n / FILES)
    for f in range(FILES):
        ids = np.arange(f * per, min(n, (f + 1) * per))
        vectors = pa.FixedSizeListArray.from_arrays(rng.standard_normal(len(ids) * DIM, np.float32), DIM)
        texts = pa.FixedSizeListArray.from_arrays(rng.standard_normal(len(ids) * DIM, np.float32), DIM)
        pq.write_table(pa.table({"id": [f"video{i // 50:06d}_{i:08d}" for i in ids], "video": vectors,
                                 "embedding": texts, "verb_code": (ids % 10).astype(np.int64),
                                 "noun_code": (ids % 9).astype(np.int64)}), path / f"part-{f:04d}.parquet")


def one_side(path: str, side: str) -> dict:
    """One epoch of rank 0's batches, on a fresh local Ray."""
    import ray

    from egoray.train.data import OrderedShard

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    ds = ray.data.read_parquet(path).materialize()
    t0 = time.perf_counter()
    if side == "reference":
        import threading

        shards = ds.streaming_split(2, equal=True)
        setup = time.perf_counter() - t0
        counted = [0, 0]

        def consume(rank: int) -> None:  # a streaming split moves only while every consumer reads
            counted[rank] = sum(len(b["id"]) for b in shards[rank].iter_batches(
                batch_size=BATCH, batch_format="numpy", drop_last=True,
                local_shuffle_buffer_size=8 * BATCH, local_shuffle_seed=1))

        t1 = time.perf_counter()
        other = threading.Thread(target=consume, args=(1,))
        other.start()
        consume(0)
        other.join()
        rows = counted[0]
    else:
        ordered = OrderedShard(ds.iterator(), seed=0, rank=0, world=2, keep_bytes=0)  # stream every epoch
        setup = time.perf_counter() - t0
        t1 = time.perf_counter()
        rows = sum(len(b["id"]) for b in ordered.batches(1, BATCH))
    epoch = time.perf_counter() - t1
    ray.shutdown()
    return {"rows": rows, "setup_s": round(setup, 2), "epoch_s": round(epoch, 2),
            "rows_per_s": round(rows / epoch), "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pairs", type=int, default=160_000)
    parser.add_argument("--side", choices=["reference", "ours"])
    parser.add_argument("--path")
    args = parser.parse_args()
    if args.side:  # one side in this process
        print(json.dumps(one_side(args.path, args.side)))
        return
    results: dict = {"dim": DIM, "batch": BATCH, "world": 2}
    with tempfile.TemporaryDirectory() as tmp:
        for n in (args.pairs, 8 * args.pairs):
            path = Path(tmp) / f"pairs-{n}"
            write_pairs(path, n)
            row: dict = {"bytes_mb": round(sum(p.stat().st_size for p in path.iterdir()) / 2**20)}
            for side in ("reference", "ours"):
                out = subprocess.run([sys.executable, __file__, "--side", side, "--path", str(path)],
                                     capture_output=True, text=True, check=True)
                row[side] = json.loads(out.stdout.strip().splitlines()[-1])
            row["time_ratio"] = round(row["ours"]["epoch_s"] / row["reference"]["epoch_s"], 2)
            row["memory_ratio"] = round(row["ours"]["peak_rss_mb"] / row["reference"]["peak_rss_mb"], 2)
            results[f"N={n}"] = row
            print(json.dumps(row), flush=True)
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "train_order.json").write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
