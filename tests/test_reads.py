"""Reads are cut into blocks by rows as well as by file: a stage actor holds its block and what it
makes of it until the block is done (benchmarks/README.md, scale), so one big file must not
become one big block."""

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq


def test_a_big_file_is_read_in_blocks_of_at_most_max_block_rows(ray_session, tmp_path):
    import ray

    from egoray.plans import Source
    from egoray.ray_data_context import MAX_BLOCK_ROWS, data_context, read

    n = 2 * MAX_BLOCK_ROWS + 1000
    pq.write_table(pa.table({"id": [f"r{i:06d}" for i in range(n)], "x": np.arange(n, dtype=np.float32)}),
                   tmp_path / "part-0.parquet")
    with data_context(None):
        blocks = [t for t in ray.get(read(Source(str(tmp_path))).to_arrow_refs()) if t.num_rows]
    assert len(blocks) >= 3 and max(t.num_rows for t in blocks) <= MAX_BLOCK_ROWS
    assert sorted(i for t in blocks for i in t["id"].to_pylist()) == [f"r{i:06d}" for i in range(n)]
