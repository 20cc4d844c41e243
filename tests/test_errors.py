"""Our errors found inside the wrappers Ray puts around a worker's exception, and every error
egoray raises for a user being one of them (the CLI shows those as one line)."""

import pytest

from egoray.config import ConfigError
from egoray.data.raw import InputError
from egoray.errors import EgorayError, ours, ray_errors
from egoray.runtime import OutputConflict
from egoray.stages.guard import StageFailing
from egoray.storage import StorageError
from egoray.submit import SubmitError
from egoray.video.decode import VideoError


class RemoteWrapper(Exception):
    """Ray's RayTaskError keeps the worker's exception as ``.cause``."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__(f"remote: {cause!r}")
        self.cause = cause


def test_every_error_for_a_user_is_ours_and_keeps_its_builtin_base():
    for kind in (ConfigError, InputError, OutputConflict, StageFailing, StorageError, SubmitError, VideoError):
        assert issubclass(kind, EgorayError), kind
    assert issubclass(InputError, ValueError) and issubclass(StorageError, RuntimeError)  # callers catch these


def test_ours_is_found_through_causes_contexts_and_remote_wrappers():
    bad = InputError("narrations.json: no videos")
    try:
        try:
            raise bad
        except InputError as e:
            raise RuntimeError("Ray Data: task failed") from e
    except RuntimeError as wrapped:
        assert ours(RemoteWrapper(wrapped)) is bad
    assert ours(RemoteWrapper(ValueError("a bug"))) is None
    loop = RuntimeError("a")
    loop.__context__ = RuntimeError("b")
    loop.__context__.__context__ = loop
    assert ours(loop) is None  # a cycle ends


def test_ray_errors_raises_ours_as_itself_and_anything_else_as_it_came():
    bad = StorageError("s3://bucket/x: access denied")
    with pytest.raises(StorageError) as e, ray_errors():
        raise RemoteWrapper(bad)
    assert e.value is bad and e.value.__suppress_context__  # no remote traceback on the way
    with pytest.raises(RemoteWrapper), ray_errors():
        raise RemoteWrapper(KeyError("a bug stays a bug, with its wrapper"))
    with pytest.raises(VideoError), ray_errors():
        raise VideoError("unreadable", "x.mp4")


def test_a_worker_error_comes_back_from_ray_as_itself(ray_session):
    """Ray re-raises it as a class deriving from RayTaskError and ours, whose text is Ray's
    remote traceback: ray_errors gives the worker's own error, with its own message."""
    import ray

    @ray.remote
    def fails() -> None:
        raise StageFailing("stage 'upper' raised on 8 of 8 rows")

    with pytest.raises(ray.exceptions.RayTaskError) as wrapped:
        ray.get(fails.remote())
    assert isinstance(wrapped.value, StageFailing)  # why isinstance alone is not enough
    with pytest.raises(StageFailing) as e, ray_errors():
        ray.get(fails.remote())
    assert not isinstance(e.value, ray.exceptions.RayTaskError)
    assert str(e.value) == "stage 'upper' raised on 8 of 8 rows"
