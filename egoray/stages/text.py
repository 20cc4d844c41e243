"""Text embedding: the stage (sentence-transformers or an open_clip text tower) and its sink."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from egoray import storage
from egoray.features.text import TextEncoder, TextEncoderConfig
from egoray.stages.base import Resources, Sink, Stage, write_part


class TextEncodeStage(Stage):
    """Adds ``embedding`` to each row: one vector for a string ``text``, a list of vectors for a
    list-of-strings ``text`` (rephrase's paraphrases). Empty texts are rejected (``empty_text``)."""

    name = "encode"

    def __init__(self, encoder: TextEncoderConfig, text_col: str = "text", encode_batch: int = 256,
                 resources: Resources | None = None) -> None:
        super().__init__(resources)
        self.encoder_config = encoder
        self.text_col = text_col
        self.encode_batch = encode_batch
        self.encoder: TextEncoder | None = None

    def setup(self) -> None:
        self.encoder = TextEncoder(self.encoder_config)

    def process(self, rows: pa.Table) -> pa.Table:
        assert self.encoder is not None, "setup() first"
        col = rows[self.text_col].combine_chunks()
        value_type = pa.from_numpy_dtype(np.dtype(self.encoder_config.dtype))
        if pa.types.is_list(col.type) or pa.types.is_large_list(col.type):
            texts = [t or "" for t in col.flatten().to_pylist()]
            lengths = pc.fill_null(pc.list_value_length(col), 0).to_numpy(zero_copy_only=False)
            empty = _no_text_per_row(texts, lengths)
            mat = self._encode(texts)
            vectors = pa.ListArray.from_arrays(_offsets(mat.shape[0], mat.shape[1]), pa.array(mat.reshape(-1), value_type))
            nested = pa.ListArray.from_arrays(pa.array(np.concatenate([[0], np.cumsum(lengths)]), pa.int32()), vectors)
            rows = rows.append_column("embedding", nested)
        else:
            texts = [t or "" for t in col.to_pylist()]
            empty = np.array([not t.strip() for t in texts], dtype=bool)
            mat = self._encode(texts)
            rows = rows.append_column("embedding", pa.ListArray.from_arrays(
                _offsets(mat.shape[0], mat.shape[1]), pa.array(mat.reshape(-1), value_type)))
        return self.reject(rows, empty, "empty_text", "no text to embed")

    def _encode(self, texts: list[str]) -> np.ndarray:
        assert self.encoder is not None
        mat = self.encoder.encode(texts, self.encode_batch) if texts else np.zeros((0, 1), np.float32)
        return np.ascontiguousarray(mat.astype(self.encoder_config.dtype, copy=False))


def _offsets(n: int, dim: int) -> pa.Array:
    return pa.array(np.arange(n + 1, dtype=np.int64) * dim, pa.int32() if n * dim < 2**31 else pa.int64())


def _no_text_per_row(texts: list[str], lengths: np.ndarray) -> np.ndarray:
    """Rows of a list column whose elements are all blank (or that have none)."""
    filled = np.array([bool(t.strip()) for t in texts], dtype=np.int64)
    starts = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    per_row = np.array([filled[a:b].sum() for a, b in zip(starts[:-1], starts[1:], strict=True)], dtype=np.int64)
    return per_row == 0


@dataclass
class TextSink(Sink):
    """Embeddings keyed by id, one row per text (``<id>#<k>`` for list texts), in Parquet::

        embeddings/<base>.parquet   id, text, embedding, <kept columns>

    or HDF5 (``storage: hdf5``)::

        embeddings/<base>.h5        datasets ids [N], embeddings [N, D] (attr model)
        index/<base>.parquet        id, file, row, dim, model, <kept columns>
    """

    text_col: str = "text"
    storage_format: Literal["parquet", "hdf5"] = "parquet"
    model: str = ""
    keep: list[str] = field(default_factory=list)

    def write_rows(self, rows: pa.Table, output: str, base: str) -> dict[str, int]:
        flat = explode_texts(rows, self.id_column, self.text_col, self.keep)
        if self.storage_format == "parquet":
            write_part(output, "embeddings", base, flat)
            return {"texts": flat.num_rows}
        emb = flat["embedding"].combine_chunks()
        dim = len(emb[0]) if len(emb) else 0
        mat = emb.flatten().to_numpy(zero_copy_only=False).reshape(len(emb), dim)
        file = f"embeddings/{base}.h5"
        ids = flat["id"].to_pylist()
        storage.write_hdf5_shard(storage.join(output, file),
                                 {"ids": np.array([i.encode("utf-8") for i in ids], dtype="S"), "embeddings": mat},
                                 {"embeddings": {"model": self.model}})
        index = pa.table({"id": flat["id"], "file": pa.array([file] * len(ids), pa.string()),
                          "row": pa.array(np.arange(len(ids)), pa.int64()),
                          "dim": pa.array([dim] * len(ids), pa.int32()),
                          "model": pa.array([self.model] * len(ids), pa.string()),
                          **{c: flat[c] for c in self.keep}})
        write_part(output, "index", base, index)
        return {"texts": flat.num_rows}


def explode_texts(rows: pa.Table, id_col: str, text_col: str, keep: list[str]) -> pa.Table:
    """``id, text, embedding, <keep>``: one row per text; a list text becomes ``<id>#<k>`` rows."""
    ids = pc.cast(rows[id_col], pa.string()).combine_chunks()
    texts = rows[text_col].combine_chunks()
    emb = rows["embedding"].combine_chunks()
    if not (pa.types.is_list(texts.type) or pa.types.is_large_list(texts.type)):
        return pa.table({"id": ids, "text": pc.cast(texts, pa.string()), "embedding": emb,
                         **{c: rows[c] for c in keep}})
    parent = pc.list_parent_indices(texts).to_numpy(zero_copy_only=False)
    offsets = texts.offsets.to_numpy()
    k = np.arange(len(parent)) - offsets[parent]
    base = np.asarray(ids.to_pylist(), dtype=object)[parent]
    take = pa.array(parent, pa.int64())
    return pa.table({"id": pa.array([f"{b}#{j}" for b, j in zip(base, k, strict=True)], pa.string()),
                     "text": pc.cast(texts.flatten(), pa.string()), "embedding": emb.flatten(),
                     **{c: rows[c].take(take) for c in keep}})


def embedding_matrix(column: Any) -> np.ndarray:
    """A list<float> column as a 2-D float32 array, without a Python loop."""
    arr = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    if len(arr) == 0:
        return np.zeros((0, 0), np.float32)
    flat = arr.flatten().to_numpy(zero_copy_only=False)
    return flat.reshape(len(arr), -1).astype(np.float32, copy=False)


def load_text_embeddings(url: str) -> tuple[list[str], np.ndarray]:
    """(ids, [N, D] float32) of a whole ``text_features`` output, Parquet or HDF5 storage — for
    small sets only (class prompts); training reads embeddings through Ray Data."""
    from egoray.data.raw import InputError

    emb_url = storage.join(url, "embeddings")
    if not storage.exists(emb_url):
        raise InputError(f"{url}: not a text_features output (no embeddings/)")
    h5 = storage.listdir(emb_url, ".h5")
    if h5:
        ids: list[str] = []
        mats = []
        for file in h5:
            data = storage.read_hdf5_shard(file)
            ids.extend(x.decode("utf-8") for x in data["ids"])
            mats.append(data["embeddings"])
        return ids, np.concatenate(mats).astype(np.float32, copy=False)
    table = storage.read_parquet(emb_url, columns=["id", "embedding"])
    return table["id"].to_pylist(), embedding_matrix(table["embedding"])
