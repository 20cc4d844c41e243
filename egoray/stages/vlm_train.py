"""The training clips of ``train_vlm``: narration windows, their decoded frames stored once per
clip (as EILEV extracts frames before training), and each sample's in-context examples.

Batch functions for Ray Data's CPU workers; the driver sees none of these rows.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pyarrow as pa

from egoray import storage
from egoray.data.seeds import row_seed
from egoray.models.interleave import clean_narration
from egoray.models.vlm_examples import ExamplePool, point_window
from egoray.stages.base import pending

SAMPLE_COLUMNS = ["id", "text", "raw_text", "verb", "noun", "split", "frames_url", "example_urls", "example_texts"]
POOL_COLUMNS = ("id", "text", "raw_text", "verb", "noun", "split", "frames_url")


def example_text(row: dict) -> str:
    """A clip's narration as annotated (``#C C picks …``; ingest's ``text`` where there is none),
    for EILEV's own cleaning."""
    return row.get("raw_text") or row["text"] or ""


def narration_text(row: dict) -> str:
    """The narration as EILEV feeds it: the annotated text through EILEV's cleaning, not ingest's
    normalised ``text``."""
    return clean_narration(example_text(row))


def load_example_pool(clips_url: str, train_splits: list[str]) -> ExamplePool:
    """The clips in-context examples are drawn from: the usable clips of ``train_splits``, their
    ids, labels, texts and frame URLs (no frames), in id order — the files' order (named by write
    task) differs between runs, and the seeded draws pick positions in this list."""
    import pyarrow.compute as pc

    from egoray.stages.base import REASON

    names = storage.parquet_schema(clips_url).names
    columns = [c for c in (*POOL_COLUMNS, REASON) if c in names]
    table = storage.read_parquet(clips_url, columns=columns)
    keep = pa.array(pending(table))
    if train_splits:
        keep = pc.and_(keep, pc.fill_null(pc.is_in(table["split"], value_set=pa.array(train_splits)), False))
    kept = table.filter(keep).select([c for c in columns if c != REASON]).sort_by("id")
    return ExamplePool(kept.to_pylist())


class PointWindows:
    """Narrations narrated at a point get ``length`` seconds around it (EILEV's 8 s clips)."""

    def __init__(self, length: float) -> None:
        self.length = length

    def __call__(self, batch: pa.Table) -> pa.Table:
        t0 = batch["t_start"].to_pylist()
        t1 = batch["t_end"].to_pylist()
        windows = [point_window(float(a), float(b), self.length) for a, b in zip(t0, t1, strict=True)]
        batch = batch.set_column(batch.schema.get_field_index("t_start"), "t_start",
                                 pa.array([w[0] for w in windows], pa.float64()))
        return batch.set_column(batch.schema.get_field_index("t_end"), "t_end",
                                pa.array([w[1] for w in windows], pa.float64()))


def frames_url(folder: str, clip_id: str) -> str:
    """Where a clip's frames are stored (``.npy``; hashed names spread over 256 folders)."""
    digest = hashlib.sha1(clip_id.encode()).hexdigest()
    return storage.join(folder, digest[:2], f"{digest}.npy")


class StoreFrames:
    """Decoded ``frames`` → one ``.npy`` file per clip under ``folder``; the rows keep its URL."""

    def __init__(self, folder: str) -> None:
        self.folder = folder

    def __call__(self, batch: pa.Table) -> pa.Table:
        ok = pending(batch)
        urls: list[str | None] = []
        for i, (clip_id, frames) in enumerate(zip(batch["id"].to_pylist(), batch["frames"].to_pylist(), strict=True)):
            if not ok[i] or frames is None:
                urls.append(None)
                continue
            url = frames_url(self.folder, str(clip_id))
            storage.write_bytes(url, frames)
            urls.append(url)
        batch = batch.drop_columns(["frames"])
        return batch.append_column("frames_url", pa.array(urls, pa.string()))


class ChooseTrainingExamples:
    """The ``k`` in-context examples of each clip of ``splits`` (the held-out ones: training clips
    draw theirs every epoch, in the trainer) from the usable training clips (EILEV's rules, a
    generator seeded by the clip id) → ``example_urls``, ``example_texts``; other rows get none.
    The pool is read once per actor."""

    def __init__(self, clips_url: str, train_splits: list[str], k: int, strategy: str, ratio: float,
                 seed: int, splits: list[str]) -> None:
        self.clips_url, self.train_splits, self.k = clips_url, train_splits, k
        self.strategy, self.ratio, self.seed, self.splits = strategy, ratio, seed, set(splits)
        self.pool: ExamplePool | None = None

    def __call__(self, batch: pa.Table) -> pa.Table:
        ok = pending(batch)
        urls, texts = [], []
        for i, r in enumerate(batch.select(["id", "verb", "noun", "split"]).to_pylist()):
            if not ok[i] or not self.k or r["split"] not in self.splits:
                urls.append([])
                texts.append([])
                continue
            if self.pool is None:
                self.pool = load_example_pool(self.clips_url, self.train_splits)
            rng = np.random.default_rng(row_seed(self.seed, "vlm_examples", r["id"]))
            picks = self.pool.choose(r, self.k, self.strategy, self.ratio, rng)
            urls.append([self.pool.pool[j]["frames_url"] for j in picks])
            texts.append([example_text(self.pool.pool[j]) for j in picks])
        batch = batch.append_column("example_urls", pa.array(urls, pa.list_(pa.string())))
        return batch.append_column("example_texts", pa.array(texts, pa.list_(pa.string())))
