"""``text_features`` job: embeddings of any text table or of class names under prompt templates.

Input: a Parquet table (``id_col`` / ``text_col``; an ingest output directory reads its
``narrations/``), or a label list — ``.txt`` (one label per line; Charades ``cNNN Label`` lines
keep their code as id) or ``.json`` (Kinetics ``{name: id}`` or a list) — turned into one text per
label and template (``"The person in this video is doing {label}"``). Encoders: sentence-transformers
or an open_clip text tower, on a Ray Data actor pool. A list-of-strings ``text_col`` (rephrase's
``paraphrases``) gives one text per element, id ``<id>#<k>``. Output, keyed by id::

    storage=parquet: OUTPUT/embeddings/part-<shard>.parquet   id, text, embedding
    storage=hdf5:    OUTPUT/embeddings/part-<shard>.h5        datasets ids [N], embeddings [N, D]
                     OUTPUT/index/part-<shard>.parquet        id, file, row, dim, model
"""

from __future__ import annotations

import json
import re
import time
from typing import Any, Literal

import numpy as np
import pyarrow as pa
from pydantic import Field

from egoray import storage
from egoray.config import JobConfig
from egoray.data.raw import InputError
from egoray.features.text import TextEncoder, TextEncoderConfig
from egoray.llm.retry import collect
from egoray.runtime import ShardLedger, assign_shards, dataset_from_table, ensure_ray, finish, waves


class Config(JobConfig):
    """Config of the ``text_features`` job."""

    job: Literal["text_features"] = "text_features"
    format: Literal["auto", "parquet", "labels"] = "auto"
    id_col: str = "narration_id"
    text_col: str = "text"
    templates: list[str] = Field(default_factory=lambda: ["{label}"], description="for label lists")
    encoder: TextEncoderConfig = TextEncoderConfig()
    storage: Literal["parquet", "hdf5"] = "parquet"
    batch_size: int = Field(256, ge=1)
    num_actors: int = Field(1, ge=1)
    cpus_per_actor: float = Field(1, gt=0)
    gpus_per_actor: float = Field(0, ge=0)
    num_shards: int = Field(8, ge=1, le=4096)
    shards_per_wave: int = Field(8, ge=1)


def read_labels(url: str) -> list[tuple[str, str]]:
    """(id, label) pairs of a class list."""
    data = storage.read_bytes(url).decode("utf-8")
    if url.endswith(".json"):
        obj = json.loads(data)
        if isinstance(obj, dict):
            pairs = [(str(v), str(k)) for k, v in obj.items()]
        elif isinstance(obj, list):
            pairs = [(str(i), str(x)) for i, x in enumerate(obj)]
        else:
            raise InputError(f"{url}: expected a JSON object or list of class names")
    else:
        pairs = []
        for i, line in enumerate(x.strip() for x in data.splitlines()):
            if not line:
                continue
            m = re.match(r"^(c\d{3})\s+(.+)$", line)
            pairs.append((m.group(1), m.group(2)) if m else (str(i), line))
    return [(i, label.strip().strip('"').strip()) for i, label in pairs]


def load_texts(config: Config) -> pa.Table:
    """(id, text) rows the job embeds."""
    fmt = config.format
    if fmt == "auto":
        fmt = "labels" if config.input.endswith((".txt", ".json")) else "parquet"
    if fmt == "labels":
        rows = [(f"{cid}:{t}", template.format(label=label)) for cid, label in read_labels(config.input)
                for t, template in enumerate(config.templates)]
        return pa.table({"id": [r[0] for r in rows], "text": [r[1] for r in rows]})
    source = storage.join(config.input, "narrations")
    source = source if storage.exists(source) else config.input
    try:
        table = storage.read_parquet(source, columns=[config.id_col, config.text_col])
    except (storage.StorageError, KeyError, pa.ArrowInvalid) as e:
        raise InputError(f"cannot read {config.id_col!r}/{config.text_col!r} from {source}: {e}") from None
    texts = table[config.text_col]
    if pa.types.is_list(texts.type) or pa.types.is_large_list(texts.type):
        # e.g. rephrase's ``paraphrases``: one row per list element, id ``<id>#<k>``
        import pyarrow.compute as pc

        texts = texts.combine_chunks()
        parent = pc.list_parent_indices(texts).to_numpy()
        offsets = texts.offsets.to_numpy()
        k = np.arange(len(parent)) - offsets[parent]
        base = np.asarray(pc_str(table[config.id_col]).to_pylist(), dtype=object)[parent]
        ids = [f"{b}#{j}" for b, j in zip(base, k, strict=True)]
        return pa.table({"id": pa.array(ids, pa.string()), "text": pc_str(texts.flatten())})
    return pa.table({"id": pc_str(table[config.id_col]), "text": pc_str(texts)})


def pc_str(col: Any) -> pa.Array:
    import pyarrow.compute as pc

    return pc.cast(col, pa.string())


class TextEncodeActor:
    def __init__(self, encoder: dict, batch_size: int, threads: int) -> None:
        import torch

        torch.set_num_threads(max(1, threads))
        self.encoder = TextEncoder(TextEncoderConfig(**encoder))
        self.batch_size = batch_size

    def __call__(self, batch: pa.Table) -> pa.Table:
        texts = [t or "" for t in batch["text"].to_pylist()]
        emb = self.encoder.encode(texts, self.batch_size)
        flat = pa.array(emb.reshape(-1), type=pa.from_numpy_dtype(emb.dtype))
        return batch.append_column("embedding", pa.FixedSizeListArray.from_arrays(flat, emb.shape[1]))


def embed(table: pa.Table, config: Config) -> pa.Table:

    ds = dataset_from_table(table, config.batch_size, config.num_actors).map_batches(
        TextEncodeActor, fn_constructor_kwargs={"encoder": config.encoder.model_dump(), "batch_size": config.batch_size,
                                                "threads": int(config.cpus_per_actor)},
        batch_size=config.batch_size, batch_format="pyarrow", concurrency=config.num_actors,
        num_cpus=config.cpus_per_actor, num_gpus=config.gpus_per_actor or None)
    return collect(ds)


def run(config: Config, overwrite: bool = False) -> dict[str, Any]:
    wall0 = time.perf_counter()
    texts = load_texts(config)
    ids = texts["id"].to_pylist()
    if len(set(ids)) != len(ids):
        raise InputError(f"{config.input}: ids in {config.id_col!r} are not unique")
    rows = texts.to_pylist()
    shard_ids, by_shard = assign_shards(rows, "id", config.num_shards)
    ledger = ShardLedger(config.output)
    ledger.prepare(config, shard_ids, overwrite=overwrite, items=ids)
    done_before = ledger.completed()
    ensure_ray(config.ray)
    model = config.encoder.model if config.encoder.kind == "sentence_transformers" else config.encoder.clip.name
    plan = waves(shard_ids, done_before, config.shards_per_wave)
    for w, wave in enumerate(plan, 1):
        todo = [r for s in wave for r in by_shard[s]]
        print(f"[text_features] wave {w}/{len(plan)}: {len(todo)} texts", flush=True)
        t0 = time.perf_counter()
        out = embed(pa.Table.from_pylist(todo), config) if todo else None
        seconds = time.perf_counter() - t0
        vectors = {}
        if out is not None and out.num_rows:
            dim = out["embedding"].type.list_size
            mat = out["embedding"].combine_chunks().flatten().to_numpy().reshape(-1, dim)
            vectors = dict(zip(out["id"].to_pylist(), mat, strict=True))
        for s in wave:
            items = by_shard[s]
            got = [r for r in items if r["id"] in vectors]
            mat = np.stack([vectors[r["id"]] for r in got]) if got else np.zeros((0, 0), np.float32)
            tables = _shard_tables(config, s, got, mat, model)
            n = len(items)
            ledger.commit(s, tables, {"encode": {"in": n, "out": len(got), "rejected": n - len(got)}},
                          {"seconds": seconds * n / max(1, len(todo)), "dim": int(mat.shape[1]) if got else 0})
    manifest = finish(config, ledger, shard_ids, done_before, wall0,
                      ["embeddings"] if config.storage == "parquet" else ["index"], {"model": model})
    manifest.write()
    return manifest.to_dict()


def _shard_tables(config: Config, shard: str, rows: list[dict], mat: np.ndarray, model: str) -> dict[str, pa.Table]:
    ids = [r["id"] for r in rows]
    if config.storage == "parquet":
        value_type = pa.from_numpy_dtype(np.dtype(config.encoder.dtype))
        dim = mat.shape[1] if rows else 0
        offsets = pa.array(np.arange(len(rows) + 1, dtype=np.int32) * dim, pa.int32())
        values = pa.array(mat.reshape(-1) if rows else np.zeros(0, config.encoder.dtype), type=value_type)
        return {"embeddings": pa.table({"id": pa.array(ids, pa.string()),
                                        "text": pa.array([r["text"] for r in rows], pa.string()),
                                        "embedding": pa.ListArray.from_arrays(offsets, values)})}
    file = f"embeddings/part-{shard}.h5"
    storage.write_hdf5_shard(storage.join(config.output, file),
                             {"ids": np.array([i.encode("utf-8") for i in ids], dtype="S"), "embeddings": mat},
                             {"embeddings": {"model": model}})
    return {"index": pa.table({"id": pa.array(ids, pa.string()), "file": pa.array([file] * len(ids), pa.string()),
                               "row": pa.array(np.arange(len(ids)), pa.int64()),
                               "dim": pa.array([int(mat.shape[1]) if rows else 0] * len(ids), pa.int32()),
                               "model": pa.array([model] * len(ids), pa.string())})}
