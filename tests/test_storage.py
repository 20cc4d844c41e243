import os

import numpy as np
import pyarrow as pa
import pytest

from egoray import storage


def _table(n=5):
    return pa.table({"id": [f"r{i}" for i in range(n)], "x": np.arange(n, dtype=np.float32)})


@pytest.fixture(params=["path", "file"])
def local_root(request, tmp_path):
    return str(tmp_path) if request.param == "path" else f"file://{tmp_path}"


def test_parquet_roundtrip_and_directory_read(local_root):
    storage.write_parquet(storage.join(local_root, "t", "part-0.parquet"), _table(3))
    storage.write_parquet(storage.join(local_root, "t", "part-1.parquet"), _table(2))
    assert storage.read_parquet(storage.join(local_root, "t", "part-0.parquet")).equals(_table(3))
    both = storage.read_parquet(storage.join(local_root, "t"))
    assert both.num_rows == 5
    assert [storage.basename(u) for u in storage.listdir(storage.join(local_root, "t"), ".parquet")] == [
        "part-0.parquet", "part-1.parquet"]


def test_hdf5_shard_roundtrip(local_root):
    arrays = {"vid-a": np.random.default_rng(0).normal(size=(7, 4)).astype(np.float32),
              "vid-b": np.zeros((2, 4), np.float16)}
    url = storage.join(local_root, "f", "shard-0.h5")
    storage.write_hdf5_shard(url, arrays, {"vid-a": {"fps": 1.875, "model": "m"}})
    back = storage.read_hdf5_shard(url)
    assert set(back) == set(arrays)
    np.testing.assert_array_equal(back["vid-a"], arrays["vid-a"])
    assert back["vid-b"].dtype == np.float16
    import h5py

    with storage.local_copy(url) as p, h5py.File(p) as h5:
        assert h5["vid-a"].attrs["fps"] == 1.875 and h5["vid-a"].attrs["model"] == "m"
    with pytest.raises(storage.StorageError, match="no dataset"):
        storage.read_hdf5_shard(url, ["vid-zzz"])


def test_failed_write_leaves_nothing(tmp_path, monkeypatch):
    url = str(tmp_path / "d" / "x.h5")

    class Boom(RuntimeError):
        pass

    def bad_array():
        raise Boom

    class Exploding(dict):
        def items(self):
            yield "a", np.zeros(3)
            bad_array()

    with pytest.raises(Boom):
        storage.write_hdf5_shard(url, Exploding())
    assert os.listdir(tmp_path / "d") == []  # neither the final name nor a temporary


def test_write_replaces_atomically(tmp_path):
    url = str(tmp_path / "a.json")
    storage.write_json(url, {"v": 1})
    storage.write_json(url, {"v": 2})
    assert storage.read_json(url) == {"v": 2}
    assert os.listdir(tmp_path) == ["a.json"]


def test_remove_temporaries_and_hidden_files(tmp_path):
    (tmp_path / "t").mkdir()
    (tmp_path / "t" / ".part-0.parquet.tmp-abcd1234").write_bytes(b"half")
    (tmp_path / "t" / "part-0.parquet").write_bytes(b"")
    assert storage.remove_temporaries(str(tmp_path)) == 1
    assert os.listdir(tmp_path / "t") == ["part-0.parquet"]


def test_errors_name_the_url(tmp_path):
    with pytest.raises(storage.StorageError, match="nope.parquet"):
        storage.read_parquet(str(tmp_path / "nope.parquet"))
    with pytest.raises(storage.StorageError, match="unsupported URL scheme 'gs'"):
        storage.read_bytes("gs://bucket/x")
    with pytest.raises(storage.StorageError, match="no .parquet files"):
        storage.read_parquet(str(tmp_path))


def test_s3_roundtrip(s3_server):
    root = "s3://egoray-test/storage-test"
    storage.write_parquet(storage.join(root, "t", "part-0.parquet"), _table(4))
    storage.write_parquet(storage.join(root, "t", "part-1.parquet"), _table(1))
    assert storage.read_parquet(storage.join(root, "t")).num_rows == 5
    arrays = {"v": np.arange(12, dtype=np.float32).reshape(3, 4)}
    storage.write_hdf5_shard(storage.join(root, "f", "s.h5"), arrays, {"v": {"fps": 2.0}})
    np.testing.assert_array_equal(storage.read_hdf5_shard(storage.join(root, "f", "s.h5"))["v"], arrays["v"])
    storage.write_json(storage.join(root, "run.json"), {"ok": True})
    assert storage.read_json(storage.join(root, "run.json")) == {"ok": True}
    assert storage.exists(storage.join(root, "run.json"))
    storage.remove(root, recursive=True)
    assert not storage.exists(storage.join(root, "run.json"))


def test_s3_missing_bucket_is_a_clear_error(s3_server):
    with pytest.raises(storage.StorageError, match="s3://no-such-bucket/x.json"):
        storage.read_json("s3://no-such-bucket/x.json")


def test_listdir_of_a_file_or_nothing(tmp_path):
    f = tmp_path / "a.parquet"
    storage.write_parquet(str(f), _table(1))
    assert storage.listdir(str(f), ".parquet") == []
    assert storage.listdir(str(tmp_path / "missing")) == []


def test_parquet_extent_counts_files_and_estimates_rows_from_one_footer(tmp_path):
    import pyarrow.parquet as pq

    from egoray.ray_data_context import parquet_extent

    for name, n in (("a.parquet", 4000), ("b.parquet", 4000), ("c.parquet", 2000), ("_work.parquet", 9000)):
        pq.write_table(_table(n), tmp_path / name)
    files, rows = parquet_extent([str(tmp_path)])
    assert files == 3  # "_" files are ours (work, markers), not input
    assert abs(rows - 10_000) <= 500  # bytes scale rows closely for rows of one shape
    assert parquet_extent([str(tmp_path / "c.parquet")]) == (1, 2000)
    with pytest.raises(storage.StorageError, match="none: not found"):
        parquet_extent([str(tmp_path / "none")])
    (tmp_path / "empty").mkdir()
    assert parquet_extent([str(tmp_path / "empty")]) == (0, 0)


def test_read_blocks_are_cut_by_rows_as_well_as_by_file():
    from egoray.ray_data_context import MAX_BLOCK_ROWS, read_blocks

    assert read_blocks(8, 250_000, at_least=4) == 8
    assert read_blocks(8, 2_000_000, at_least=4) == -(-2_000_000 // MAX_BLOCK_ROWS) > 8
    assert read_blocks(1, 10, at_least=8) == 8
    assert read_blocks(0, 0) == 1
