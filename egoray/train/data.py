"""Training and evaluation inputs as Ray Datasets: pairs built per video, read by Ray Train workers.

The pair-building pass (:func:`egoray.train.pairs.build_pairs`) reads the items (narrations with their text
embeddings, or narrations alone for the narrator), groups them by video and, per video, reads
that video's features once (:class:`egoray.stages.pairs.PoolPairs`); it writes the pairs to
``OUTPUT/_work/<name>`` once, with a completion marker, so a resumed training run reads the same
pairs. Every Ray Train worker reads the pairs with ``get_dataset_shard`` and trains on its share
of each epoch's seeded global order (:class:`OrderedShard`). The driver only ever sees counts.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from egoray import storage
from egoray.data.raw import InputError
from egoray.data.seeds import row_seed
from egoray.plans import Source
from egoray.ray_data_context import read
from egoray.stages.pairs import AttachEmbeddings

TEXT_COLUMNS = ["video_uid", "t_start", "t_end"]


def text_features_source(url: str, splits: list[str] | None = None) -> tuple[Callable[[], Any], list[str]]:
    """A builder of the dataset of a ``text_features`` output's rows with their embeddings
    (Parquet, or the HDF5 index with embeddings attached), and the URLs to watch for changes."""
    from egoray.data.narrations import split_filter

    parquet, index = storage.join(url, "embeddings"), storage.join(url, "index")
    if storage.listdir(parquet, ".parquet"):
        table_url, hdf5 = parquet, False
    elif storage.listdir(index, ".parquet"):
        table_url, hdf5 = index, True
    else:
        raise InputError(f"{url}: not a text_features output (no embeddings/ or index/ tables)")
    names = storage.parquet_schema(table_url).names
    missing = [c for c in TEXT_COLUMNS if c not in names]
    if missing:
        raise InputError(f"{url}: its rows carry no {missing}: run text_features over a narrations table "
                         "(it keeps each narration's video and times next to its embedding)")
    if splits and "split" not in names:
        raise InputError(f"{url}: its rows carry no split; run text_features over an ingest output")
    wanted = ["id", "text", "split", "verb", "noun", *TEXT_COLUMNS] + (["file", "row"] if hdf5 else ["embedding"])
    columns = [c for c in wanted if c in names]

    def build() -> Any:
        ds = read(Source(table_url, columns=columns, where=split_filter(splits)))
        return ds.map_batches(AttachEmbeddings(url), batch_format="pyarrow") if hdf5 else ds

    return build, [table_url]


NARRATION_COLUMNS = ("narration_id", "text", "video_uid", "t_start", "t_end", "split", "verb", "noun")


def narrations_dataset(url: str, splits: list[str] | None, extra: tuple[str, ...] = ()
                       ) -> tuple[Callable[[], Any], list[str]]:
    """A builder of the dataset of an ingest output's narrations (``id`` = narration id), with the
    ``extra`` columns it has."""
    from egoray.data.narrations import check_narrations, split_filter

    source = check_narrations(url)
    names = storage.parquet_schema(source).names
    columns = [c for c in (*NARRATION_COLUMNS, *extra) if c in names]

    def build() -> Any:
        return read(Source(source, columns=columns, where=split_filter(splits))).map_batches(
            _rename_id, batch_format="pyarrow")

    return build, [source]


def _rename_id(batch: pa.Table) -> pa.Table:
    return batch.rename_columns({"narration_id": "id"})


PARAPHRASES = "paraphrases"


def with_paraphrases(build: Callable[[], Any], narrations_url: str, url: str) -> tuple[Callable[[], Any], list[str]]:
    """``build``'s narrations with a ``paraphrases`` list column from a ``rephrase`` output (null
    where it has none), and the URLs to watch. Both go through one ``groupby("video_uid")``
    (Ray Data's shuffle: no lookup table in the driver or in a worker), and each video's
    paraphrases are attached to its narrations by id."""
    from egoray.data.narrations import check_narrations

    source = storage.join(url, "paraphrases")
    if not storage.listdir(source, ".parquet"):
        raise InputError(f"{url}: not a rephrase output (no paraphrases/ Parquet files)")
    missing = {"narration_id", "video_uid", PARAPHRASES} - set(storage.parquet_schema(source).names)
    if missing:
        raise InputError(f"{source}: no {sorted(missing)} column (a rephrase output has them)")
    schema = storage.parquet_schema(check_narrations(narrations_url))
    fields = [pa.field("id" if f.name == "narration_id" else f.name, f.type) for f in schema
              if f.name in NARRATION_COLUMNS]
    joined_schema = pa.schema([*fields, pa.field(PARAPHRASES, pa.list_(pa.string())), pa.field("_para", pa.bool_())])

    def joined() -> Any:
        narrations = build().map_batches(_AsJoinRows(joined_schema, False), batch_format="pyarrow")
        para = read(Source(source, columns=["narration_id", "video_uid", PARAPHRASES])).map_batches(
            _AsJoinRows(joined_schema, True), batch_format="pyarrow")
        return narrations.union(para).groupby("video_uid").map_groups(_attach_paraphrases, batch_format="pyarrow")

    return joined, [source]


class _AsJoinRows:
    """Narration rows or paraphrase rows in one schema (the other side's columns null)."""

    def __init__(self, schema: pa.Schema, paraphrase_rows: bool) -> None:
        self.schema, self.paraphrase_rows = schema, paraphrase_rows

    def __call__(self, batch: pa.Table) -> pa.Table:
        if "narration_id" in batch.column_names:
            batch = batch.rename_columns({"narration_id": "id"})
        n = batch.num_rows
        columns = {}
        for f in self.schema:
            if f.name == "_para":
                columns[f.name] = pa.array([self.paraphrase_rows] * n, pa.bool_())
            elif f.name in batch.column_names:
                columns[f.name] = pc.cast(batch[f.name], f.type)
            else:
                columns[f.name] = pa.nulls(n, f.type)
        return pa.table(columns, schema=self.schema)


def _attach_paraphrases(group: pa.Table) -> pa.Table:
    """One video's narrations, each with the paraphrases of its id (the paraphrase rows dropped)."""
    is_para = group["_para"].to_numpy(zero_copy_only=False)
    para = group.filter(pa.array(is_para))
    found = dict(zip(para["id"].to_pylist(), para[PARAPHRASES].to_pylist(), strict=True))
    rows = group.filter(pa.array(~is_para)).drop_columns(["_para"])
    attached = pa.array([found.get(i) for i in rows["id"].to_pylist()], pa.list_(pa.string()))
    return rows.set_column(rows.schema.get_field_index(PARAPHRASES), PARAPHRASES, attached)


def choose_texts(rows: dict[str, Any], seed: int, epoch: int) -> dict[str, Any]:
    """Each row's text for this epoch: one of ``[text, *paraphrases]`` drawn uniformly with a
    generator seeded by (seed, epoch, id) — LaViLa's ``random.choice`` over the rephraser's list
    (original first) per clip per epoch, the same in any run, on any worker, after any resume."""
    if PARAPHRASES not in rows:
        return rows
    texts = []
    for row_id, text, more in zip(rows["id"], rows["text"], rows[PARAPHRASES], strict=True):
        options = [str(text), *[str(t) for t in (list(more) if more is not None else [])]]
        rng = np.random.default_rng(row_seed(seed, "paraphrase", epoch, str(row_id)))
        texts.append(options[int(rng.integers(len(options)))])
    return {**rows, "text": np.asarray(texts, dtype=object)}


WINDOW_TEXT_SOURCES = (("captions", "caption_id", "text", "pseudo"),  # a narrate output
                       ("paraphrases", "narration_id", "paraphrases", "human"))  # a rephrase output


def window_texts_dataset(url: str) -> tuple[Callable[[], Any], list[str], str]:
    """A builder of ``id, text, video_uid, t_start, t_end`` rows of the texts of windows — a
    ``narrate`` output's captions, a ``rephrase`` output's paraphrases (one row per paraphrase,
    id ``<narration_id>#<k>``) or a table with ``id``/``narration_id``/``caption_id`` and ``text`` —
    the URLs to watch, and the kind of text by default (narrator captions are ``pseudo``,
    paraphrases of people's narrations ``human``, as LaViLa counts them)."""
    from egoray.data.tables import table_columns

    found = next(((storage.join(url, folder), id_col, text_col, kind)
                  for folder, id_col, text_col, kind in WINDOW_TEXT_SOURCES
                  if storage.listdir(storage.join(url, folder), ".parquet")), None)
    if found is not None:
        source, id_col, text_col, kind = found
    else:
        source, names = table_columns(url, ("text", *TEXT_COLUMNS), "table of window texts")
        id_col = next((c for c in ("id", "narration_id", "caption_id") if c in names), "")
        if not id_col:
            raise InputError(f"{source}: no id column (id, narration_id or caption_id)")
        text_col, kind = "text", "pseudo"
    flatten = FlattenTexts(id_col, text_col)

    def build() -> Any:
        return read(Source(source, columns=[id_col, text_col, *TEXT_COLUMNS])).map_batches(
            flatten, batch_format="pyarrow")

    return build, [source], kind


class FlattenTexts:
    """Rows with one text or a list of them → one row per text (``id``, ``text``, the window)."""

    def __init__(self, id_col: str, text_col: str) -> None:
        self.id_col, self.text_col = id_col, text_col

    def __call__(self, batch: pa.Table) -> pa.Table:
        ids = [str(x) for x in batch[self.id_col].to_pylist()]
        texts = batch[self.text_col].to_pylist()
        window = {c: batch[c].to_pylist() for c in TEXT_COLUMNS}
        rows: dict[str, list] = {"id": [], "text": [], **{c: [] for c in TEXT_COLUMNS}}
        for i, text in enumerate(texts):
            many = isinstance(text, list)
            for k, t in enumerate(text if many else [text]):
                if t is None or not str(t).strip():
                    continue
                rows["id"].append(f"{ids[i]}#{k}" if many else ids[i])
                rows["text"].append(str(t))
                for c in TEXT_COLUMNS:
                    rows[c].append(window[c][i])
        return pa.table({"id": pa.array(rows["id"], pa.string()), "text": pa.array(rows["text"], pa.string()),
                         "video_uid": pa.array(rows["video_uid"], pa.string()),
                         "t_start": pa.array(rows["t_start"], pa.float64()),
                         "t_end": pa.array(rows["t_end"], pa.float64())})


KEEP_BYTES = 256 * 2**20  # a worker keeps a training stream this small in memory


class OrderedShard:
    """One worker's rows of a training stream, every epoch in the seeded global order
    (:mod:`egoray.train.order`). ``shard`` is the whole stream (a Ray Train dataset shard that is
    not split): each epoch the worker reads it and keeps its share. A stream of at most
    ``keep_bytes`` is read once and kept in the worker (a dataset execution per epoch costs about
    a second whatever its size: most of a small run's epoch)."""

    def __init__(self, shard: Any, seed: int, rank: int, world: int, stream: str = "train",
                 keep_bytes: int = KEEP_BYTES) -> None:
        from egoray.train.order import EpochOrder, ids_of

        self.shard, self.rank, self.world = shard, rank, world
        kept: list[pa.Table] = []
        ids: list[str] = []
        size = 0
        for block in self._stream():
            ids += ids_of([block])
            size += block.nbytes
            if size <= keep_bytes:
                kept.append(block)
        self.kept = kept if size <= keep_bytes else None
        self.order = EpochOrder(ids, seed, stream)

    def __len__(self) -> int:
        return len(self.order)

    def _stream(self) -> Iterator[pa.Table]:
        return self.shard.iter_batches(batch_size=None, batch_format="pyarrow")

    def _blocks(self) -> Iterator[pa.Table]:
        return iter(self.kept) if self.kept is not None else self._stream()

    def rows(self, epoch: int, cycle: int = 0) -> pa.Table:
        """This worker's rows of ``epoch`` (``cycle``: a further pass in it), in training order."""
        from egoray.train.order import pick

        return pick(self._blocks(), self.order.share(epoch, self.rank, self.world, cycle))

    def batches(self, epoch: int, batch: int, batch_format: str = "numpy") -> Iterator[Any]:
        """Full batches of ``batch`` rows of ``epoch``, in order."""
        from egoray.train.order import as_format, slices

        return as_format(slices(self.rows(epoch), batch), batch_format)


def ordered_shard(name: str, seed: int) -> OrderedShard:
    """The Ray Train dataset ``name`` as this worker's :class:`OrderedShard`."""
    import ray.train

    ctx = ray.train.get_context()
    return OrderedShard(ray.train.get_dataset_shard(name), seed, ctx.get_world_rank(), ctx.get_world_size(), name)


def held_out_batches(name: str, batch: int, batch_format: str = "numpy") -> Iterator[Any]:
    """The whole held-out dataset ``name`` (every worker reads all of it) in id order, in batches:
    the same evaluation in every run whatever order the blocks arrive in."""
    import ray.train

    from egoray.train.order import in_id_order

    shard = ray.train.get_dataset_shard(name)
    return in_id_order(shard.iter_batches(batch_size=None, batch_format="pyarrow"), batch, batch_format)


def aux_batches(aux: OrderedShard, n_aux: int, batch: int, world: int, epoch: int) -> Iterator[Any] | None:
    """Aux (pseudo / rephrased) pairs to join each training batch, cycled (aux sets are smaller or
    larger than the main one) in their own seeded order, or None when there are too few to mix
    in: each worker takes up to ``batch`` from its equal share of them."""
    aux_batch = max(1, min(batch, n_aux // max(1, world))) if n_aux else 0
    if n_aux < 2 * max(1, world) or aux_batch < 2:
        return None
    return _cycle(aux, aux_batch, epoch)


def batches_with_aux(train: OrderedShard, aux: OrderedShard | None, n_aux: int, batch: int, epoch: int,
                     world: int) -> Iterator[tuple[Any, Any]]:
    """An epoch of (training batch, aux batch or None), both in their seeded global order."""
    extra = aux_batches(aux, n_aux, batch, world, epoch) if aux is not None and n_aux else None
    for b in train.batches(epoch, batch):
        yield b, (next(extra, None) if extra is not None else None)


def _cycle(aux: OrderedShard, batch: int, epoch: int) -> Iterator[Any]:
    from egoray.train.order import as_format, slices

    cycle = 0
    while True:
        yielded = False
        for b in as_format(slices(aux.rows(epoch, cycle), batch), "numpy"):
            yielded = True
            yield b
        if not yielded:
            return
        cycle += 1
