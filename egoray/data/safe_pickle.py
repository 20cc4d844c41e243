"""A pickle reader that runs no code: what every pickle egoray reads goes through.

Pickle can run arbitrary code through the globals it imports. This unpickler imports nothing
but: builtin containers and scalars (pickle opcodes, no import), a few harmless builtins (set,
frozenset, complex, ...), and — only when asked, for array pickles such as EK-100's relevancy
matrix — numpy's array and dtype reconstructors, which build arrays from bytes and nothing else.
Any other global becomes an inert :class:`ForeignObject` that only remembers its name; nothing
foreign is ever constructed or called.
"""

from __future__ import annotations

import io
import pickle
from typing import Any

from egoray.data.raw import InputError

_SAFE_BUILTINS = {"set", "frozenset", "complex", "bytearray", "slice", "range"}


class ForeignObject:
    """Stand-in for an instance of a class the file referenced but we refuse to import."""

    qualname = "?"

    def __init__(self, *args: Any, **kwargs: Any) -> None:  # REDUCE calls the "class"
        pass

    def __setstate__(self, state: Any) -> None:  # BUILD: drop the state, run nothing
        pass

    def __repr__(self) -> str:
        return f"<foreign {self.qualname}>"


_NUMPY_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"), ("numpy", "dtype"),
}


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file: Any, numpy_arrays: bool = False) -> None:
        super().__init__(file)
        self.numpy_arrays = numpy_arrays

    def find_class(self, module: str, name: str) -> Any:
        if self.numpy_arrays and (module, name) in _NUMPY_GLOBALS:
            import importlib

            return getattr(importlib.import_module(module), name)
        if module in ("builtins", "__builtin__") and name in _SAFE_BUILTINS:
            import builtins

            return getattr(builtins, name)
        if (module, name) == ("_codecs", "encode"):  # how protocol 2 spells bytes
            import codecs

            return codecs.encode
        return type("Foreign", (ForeignObject,), {"qualname": f"{module}.{name}"})

    def persistent_load(self, pid: Any) -> Any:
        raise pickle.UnpicklingError("persistent ids are not allowed")


def safe_load(data: bytes, name: str = "pickle", numpy_arrays: bool = False) -> Any:
    """Unpickle with the restricted unpickler; a broken file raises :class:`InputError`.

    ``numpy_arrays``: also rebuild numpy arrays (their dtypes and scalars), nothing else.
    """
    try:
        return _RestrictedUnpickler(io.BytesIO(data), numpy_arrays).load()
    except Exception as e:  # any unpickling failure: truncated, garbage, bad opcode
        raise InputError(f"{name}: not a readable pickle ({type(e).__name__}: {e})") from None
