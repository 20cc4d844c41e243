"""egoray's errors: the ones a user acts on (bad config or input, storage, a failing stage, a
refused resume), shown as one line, never as a traceback — and the one place that finds them
again inside the wrappers Ray puts around an exception raised in a worker."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator


class EgorayError(Exception):
    """The base of every error egoray raises for a user to act on."""


def ours(e: BaseException) -> EgorayError | None:
    """The first of our errors in ``e``'s chain: Ray's ``RayTaskError`` (``.cause``), Ray Data's
    wrappers (``__cause__``) and anything raised while handling it (``__context__``).

    A wrapper is looked into before it is taken as ours: Ray re-raises a worker's error as a class
    deriving from both ``RayTaskError`` and the error's own class, an instance of ours whose message
    is Ray's remote traceback."""
    seen: set[int] = set()
    cause: BaseException | None = e
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        inner = getattr(cause, "cause", None)
        if isinstance(inner, BaseException):
            cause = inner
            continue
        if isinstance(cause, EgorayError):
            return cause
        cause = cause.__cause__ or cause.__context__
    return None


@contextlib.contextmanager
def ray_errors() -> Iterator[None]:
    """Around a call into Ray (a pass, a ``ray.get``): one of our errors raised in a worker leaves
    as itself, without Ray's remote traceback; anything else leaves as Ray raised it."""
    try:
        yield
    except Exception as e:
        found = ours(e)
        if found is None or found is e:
            raise
        raise found from None
