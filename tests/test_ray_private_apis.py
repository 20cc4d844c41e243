"""The Ray internals egoray leans on, by name: a Ray release that moves one fails here, with the
use site in the message, before a job fails on a cluster. pyproject caps Ray below the next
minor release; raise the cap only with this file green on it."""

import importlib
import inspect
import logging

import pytest

# (module, attribute, where egoray uses it)
PRIVATE = [
    ("ray.data._internal.planner.plan_write_op", "WRITE_UUID_KWARG_NAME",
     "egoray.executor._sink_class: the write task's file name, which checkpoint recovery deletes by"),
    ("ray.data.datasource.filename_provider", "_split_base_and_ext",
     "egoray.executor._sink_class: the base of a write task's file name"),
    ("ray.data.datasource", "BlockBasedFileDatasink", "egoray.executor._sink_class: the sink's base class"),
    ("ray.data.checkpoint", "CheckpointConfig", "egoray.executor: resume by Ray Data's checkpointing"),
    ("ray.data.context", "ShuffleStrategy", "egoray.ray_data_context.data_context"),
    ("ray.data.block", "BlockAccessor", "egoray.train.order.as_format: batches as iter_batches gives them"),
    ("ray._raylet", "Config", "egoray.submit.client: re-reading RAY_AUTH_MODE after Ray was imported"),
]


@pytest.mark.parametrize(("module", "name", "used_by"), PRIVATE, ids=[f"{m}.{n}" for m, n, _ in PRIVATE])
def test_the_ray_internals_egoray_uses_are_there(module, name, used_by):
    found = getattr(importlib.import_module(module), name, None)
    assert found is not None, f"{module}.{name} is gone from Ray; used by {used_by}"


def test_their_shapes_are_the_ones_egoray_calls():
    from ray._raylet import Config
    from ray.data.block import BlockAccessor
    from ray.data.datasource.filename_provider import _split_base_and_ext

    assert _split_base_and_ext("part-0001.parquet") == ("part-0001", ".parquet")
    assert callable(Config.initialize)
    assert "batch_format" in inspect.signature(BlockAccessor.to_batch_format).parameters
    import ray.data  # noqa: F401  (the loggers egoray quiets exist once Ray Data is imported)

    assert "ray.data" in logging.Logger.manager.loggerDict
