"""A ``video_features`` output as one HDF5 file keyed by video uid: what CLEP's and GroundVQA's
feature loaders open (``h5py.File(path)[video_uid][:]``).

Each key's dataset is copied from its shard with its attributes (``fps``, ``model``, ``t_start``,
``t_end``) by HDF5 itself, one shard open at a time: the export never holds more than one
dataset in memory, whatever the size of the output.
"""

from __future__ import annotations

from egoray import storage
from egoray.data.raw import InputError


def export_hdf5(features: str, out: str) -> int:
    """Write every key of ``features`` into the single HDF5 file ``out``; returns how many."""
    import h5py

    index_url = storage.join(features, "index")
    if not storage.listdir(index_url, ".parquet"):
        raise InputError(f"{features}: not a video_features output (no index/ table)")
    index = storage.read_parquet(index_url, columns=["key", "file"])
    by_file: dict[str, list[str]] = {}
    for key, file in zip(index["key"].to_pylist(), index["file"].to_pylist(), strict=True):
        by_file.setdefault(file, []).append(key)
    if len(index) != len(set(index["key"].to_pylist())):
        raise InputError(f"{features}: a key appears twice in the index")
    with storage.local_target(out) as target, h5py.File(target, "w") as dest:
        for file, keys in sorted(by_file.items()):
            with storage.local_copy(storage.join(features, file)) as local, h5py.File(local, "r") as src:
                for key in keys:
                    src.copy(src[key], dest, name=key)
    return len(index)
