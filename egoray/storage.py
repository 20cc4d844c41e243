"""URL-aware storage: local paths, ``file://`` and ``s3://`` behind one set of functions.

Every write is atomic: a reader sees either the whole object or nothing. Locally that is a
write to a hidden temporary name in the same directory followed by ``os.replace``; on S3 an
object becomes visible only when its (single or multipart) upload completes, so we upload the
finished bytes in one call and never stream a half-written object to its final key.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import tempfile
import uuid
from collections.abc import Iterator, Mapping
from typing import Any

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from egoray.errors import EgorayError

TMP_MARK = ".tmp-"


class StorageError(EgorayError, RuntimeError):
    """An I/O problem with a URL, with the URL in the message."""


def is_remote(url: str) -> bool:
    return "://" in url and not url.startswith("file://")


def _s3_options() -> dict[str, Any]:
    # Other processes (Ray workers) write shards and markers: never answer from a stale listing.
    options: dict[str, Any] = {"use_listings_cache": False}
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    if endpoint:
        options["client_kwargs"] = {"endpoint_url": endpoint}
    return options


def filesystem(url: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """The fsspec filesystem for ``url`` and the path inside it."""
    if url.startswith("s3://"):
        fs = fsspec.filesystem("s3", **_s3_options())
        return fs, url[len("s3://") :].rstrip("/")
    if url.startswith("file://"):
        url = url[len("file://") :]
    elif "://" in url:
        protocol = url.split("://", 1)[0]
        raise StorageError(f"{url}: unsupported URL scheme {protocol!r} (use a path, file:// or s3://)")
    return fsspec.filesystem("file"), os.path.abspath(os.path.expanduser(url))


def arrow_filesystem(url: str) -> tuple[Any, str]:
    """A pyarrow filesystem for ``url`` and the path inside it, for Ray Data readers and writers.

    S3 goes through the same s3fs settings as everything else here (endpoint, no listing cache),
    so Ray Data sees exactly the objects our own reads and writes see.
    """
    import pyarrow.fs as pafs

    fs, path = filesystem(url)
    if not is_remote(url):
        return pafs.LocalFileSystem(), path
    return pafs.PyFileSystem(pafs.FSSpecHandler(fs)), path


def absolute(url: str) -> str:
    """A local path made absolute (workers may run in another directory); URLs unchanged."""
    if "://" in url and not url.startswith("file://"):
        return url
    if url.startswith("file://"):
        return "file://" + os.path.abspath(os.path.expanduser(url[len("file://") :]))
    return os.path.abspath(os.path.expanduser(url))


def join(url: str, *parts: str) -> str:
    """Join path parts onto a URL with '/' whatever the backend."""
    out = url.rstrip("/")
    for part in parts:
        out = f"{out}/{part.strip('/')}"
    return out


def basename(url: str) -> str:
    return url.rstrip("/").rsplit("/", 1)[-1]


def exists(url: str) -> bool:
    fs, path = filesystem(url)
    return call(url, fs.exists, path)


def signature(url: str) -> str:
    """Size and modification stamp (ETag on S3) of a file: changes when the file changes."""
    fs, path = filesystem(url)
    if not is_remote(url):
        st = call(url, os.stat, path)
        return f"{st.st_size}:{st.st_mtime_ns}"
    info = call(url, fs.info, path)
    return f"{info.get('size')}:{info.get('ETag') or info.get('LastModified')}"


def makedirs(url: str) -> None:
    fs, path = filesystem(url)
    if not is_remote(url):  # S3 has no directories
        call(url, fs.makedirs, path, exist_ok=True)


def listdir(url: str, suffix: str = "", skip: tuple[str, ...] = (".", "_")) -> list[str]:
    """Sorted URLs of the files directly under ``url`` ending in ``suffix``, less the names that
    start with ``skip`` (hidden files, and ``_`` ones: our work and markers)."""
    fs, path = filesystem(url)
    if not call(url, fs.isdir, path):
        return []
    entries = call(url, fs.ls, path, detail=True)
    names = sorted(
        basename(e["name"]) for e in entries if e.get("type") == "file" and e["name"].endswith(suffix)
    )
    return [join(url, n) for n in names if not (skip and n.startswith(skip))]


def listdirs(url: str, skip: tuple[str, ...] = (".", "_")) -> list[str]:
    """Sorted URLs of the directories directly under ``url``, less the names that start with
    ``skip`` (hidden and ``_`` ones, as :func:`listdir`)."""
    fs, path = filesystem(url)
    if not call(url, fs.isdir, path):
        return []
    entries = call(url, fs.ls, path, detail=True)
    names = sorted(basename(e["name"]) for e in entries if e.get("type") == "directory")
    return [join(url, n) for n in names if not (skip and n.startswith(skip))]


def remove(url: str, recursive: bool = False) -> None:
    fs, path = filesystem(url)
    if call(url, fs.exists, path):
        call(url, fs.rm, path, recursive=recursive)


def remove_temporaries(url: str) -> int:
    """Delete leftover temporary files below ``url`` (from a killed writer); returns how many."""
    fs, path = filesystem(url)
    if is_remote(url) or not os.path.isdir(path):
        return 0  # S3 writes never leave temporaries behind
    removed = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            if TMP_MARK in name and name.startswith("."):
                os.remove(os.path.join(root, name))
                removed += 1
    return removed


def read_bytes(url: str) -> bytes:
    fs, path = filesystem(url)
    return call(url, fs.cat_file, path)


def write_bytes(url: str, data: bytes) -> None:
    """Write ``data`` to ``url`` atomically."""
    fs, path = filesystem(url)
    if is_remote(url):
        call(url, fs.pipe_file, path, data)
        return
    with _local_atomic(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)


def read_json(url: str) -> Any:
    return json.loads(read_bytes(url))


def write_json(url: str, obj: Any) -> None:
    write_bytes(url, (json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n").encode())


def write_parquet(url: str, table: pa.Table) -> None:
    """Write one Parquet file atomically."""
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    write_bytes(url, buf.getvalue())


def read_parquet(url: str, columns: list[str] | None = None, filters: Any = None) -> pa.Table:
    """Read a Parquet file, or every visible ``*.parquet`` file of a directory, as one table
    (``filters``: pyarrow's row filters, e.g. ``[("video_uid", "in", uids)]``)."""
    fs, path = filesystem(url)
    if call(url, fs.isdir, path):
        files = listdir(url, ".parquet")
        if not files:
            raise StorageError(f"{url}: no .parquet files")
        tables = [read_parquet(f, columns, filters) for f in files]
        return pa.concat_tables(tables, promote_options="default")
    with call(url, fs.open, path, "rb") as f:
        return pq.read_table(f, columns=columns, filters=filters)


def parquet_schema(url: str) -> pa.Schema:
    """The schema of a Parquet file or of a folder's first file: metadata only, no rows."""
    fs, path = filesystem(url)
    files = listdir(url, ".parquet") if call(url, fs.isdir, path) else [url]
    if not files:
        raise StorageError(f"{url}: no .parquet files")
    fs, path = filesystem(files[0])
    with call(files[0], fs.open, path, "rb") as f:
        return pq.read_schema(f)


def write_hdf5_shard(
    url: str,
    arrays: Mapping[str, np.ndarray],
    attrs: Mapping[str, Mapping[str, Any]] | None = None,
) -> None:
    """Write one HDF5 file holding one dataset per key, atomically.

    ``attrs`` maps a key to the attributes of its dataset (e.g. ``fps``, ``model``).
    """
    import h5py

    fs, path = filesystem(url)
    attrs = attrs or {}

    def fill(target: str) -> None:
        with h5py.File(target, "w") as h5:
            for key, array in arrays.items():
                ds = h5.create_dataset(key, data=np.asarray(array))
                for name, value in attrs.get(key, {}).items():
                    ds.attrs[name] = value

    if is_remote(url):
        with tempfile.TemporaryDirectory() as tmpdir:
            local = os.path.join(tmpdir, basename(url))
            fill(local)
            call(url, fs.put_file, local, path)
        return
    with _local_atomic(path) as tmp:
        fill(tmp)


@contextlib.contextmanager
def local_target(url: str) -> Iterator[str]:
    """A local path to write ``url``'s contents to; on success it becomes ``url`` at once (renamed
    into place, or uploaded in one request), on failure nothing appears there."""
    fs, path = filesystem(url)
    if is_remote(url):
        with tempfile.TemporaryDirectory() as tmpdir:
            local = os.path.join(tmpdir, basename(url))
            yield local
            call(url, fs.put_file, local, path)
        return
    with _local_atomic(path) as tmp:
        yield tmp


def read_hdf5_shard(url: str, keys: list[str] | None = None) -> dict[str, np.ndarray]:
    """Read datasets (all, or ``keys``) of one HDF5 file into memory."""
    import h5py

    with local_copy(url) as local, h5py.File(local, "r") as h5:
        names = list(h5.keys()) if keys is None else keys
        missing = [k for k in names if k not in h5]
        if missing:
            raise StorageError(f"{url}: no dataset(s) {missing[:5]}")
        return {k: h5[k][()] for k in names}


class LocalFiles:
    """Local paths for files that are read again and again (HDF5 shards, the videos a VLM actor
    narrates clips of): a local file is itself;
    a remote one is downloaded once and kept, the ``keep`` most recently used at most."""

    def __init__(self, keep: int = 4) -> None:
        self.keep = keep
        self._paths: dict[str, str] = {}
        self._tmp: tempfile.TemporaryDirectory | None = None

    def path(self, url: str) -> str:
        if not is_remote(url):
            return filesystem(url)[1]
        if url in self._paths:
            self._paths[url] = self._paths.pop(url)  # most recently used last
            return self._paths[url]
        if self._tmp is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="egoray-")
        local = os.path.join(self._tmp.name, f"{uuid.uuid4().hex[:8]}-{basename(url)}")
        fs, path = filesystem(url)
        call(url, fs.get_file, path, local)
        self._paths[url] = local
        while len(self._paths) > self.keep:
            os.remove(self._paths.pop(next(iter(self._paths))))
        return local


@contextlib.contextmanager
def local_copy(url: str) -> Iterator[str]:
    """A local path with the contents of ``url`` (the file itself when it is already local)."""
    fs, path = filesystem(url)
    if not is_remote(url):
        if not os.path.exists(path):
            raise StorageError(f"{url}: no such file")
        yield path
        return
    with tempfile.TemporaryDirectory() as tmpdir:
        local = os.path.join(tmpdir, basename(url))
        call(url, fs.get_file, path, local)
        yield local


@contextlib.contextmanager
def _local_atomic(path: str) -> Iterator[str]:
    directory = os.path.dirname(path)
    os.makedirs(directory, exist_ok=True)
    tmp = os.path.join(directory, f".{os.path.basename(path)}{TMP_MARK}{uuid.uuid4().hex[:8]}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def call(url: str, fn, *args, **kwargs):
    """Run a filesystem call, turning backend exceptions into one StorageError naming the URL."""
    try:
        return fn(*args, **kwargs)
    except StorageError:
        raise
    except FileNotFoundError as e:
        raise StorageError(f"{url}: not found ({_short(e)})") from e
    except PermissionError as e:
        raise StorageError(f"{url}: permission denied ({_short(e)})") from e
    except OSError as e:
        raise StorageError(f"{url}: {_short(e)}") from e
    except Exception as e:  # botocore / aiohttp errors surface with many types
        if type(e).__module__.split(".")[0] in {"botocore", "aiobotocore", "aiohttp", "s3fs"}:
            raise StorageError(f"{url}: {_short(e)}") from e
        raise


def _short(e: BaseException) -> str:
    text = str(e) or type(e).__name__
    return text if len(text) < 300 else text[:300] + "..."
