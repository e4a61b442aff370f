"""Serializers: how results become bytes in the vault and back.

The serializer's ``name`` is part of every key, so bytes are never read back by another format.
Any object with ``dumps(obj) -> bytes`` and ``loads(bytes) -> obj`` works; give it a ``name``
attribute to keep keys stable across processes (otherwise its class's qualified name is used).
"""

from __future__ import annotations

import io
import json
import pickle
from typing import Any, Iterable

__all__ = ["PickleSerializer", "SafePickleSerializer", "JsonSerializer", "serializer_name"]


class PickleSerializer:
    """pickle, protocol 5 (the default): any picklable object."""

    name = "pickle5"

    def dumps(self, obj: Any) -> bytes:
        return pickle.dumps(obj, protocol=5)

    def loads(self, data: bytes) -> Any:
        return pickle.loads(data)


# Builtins and standard-library types that carry no code (safe to load).
_SAFE = {
    ("builtins", n)
    for n in (
        "list", "dict", "set", "frozenset", "tuple", "str", "bytes", "bytearray", "int", "float",
        "complex", "bool", "NoneType", "range", "slice", "object",
    )
} | {
    ("collections", "OrderedDict"), ("collections", "defaultdict"), ("collections", "deque"),
    ("collections", "Counter"), ("datetime", "datetime"), ("datetime", "date"), ("datetime", "time"),
    ("datetime", "timedelta"), ("datetime", "timezone"), ("decimal", "Decimal"),
    ("fractions", "Fraction"), ("uuid", "UUID"), ("pathlib", "PurePosixPath"), ("pathlib", "PosixPath"),
    ("copyreg", "_reconstructor"),
}

# What numpy arrays need to be rebuilt (no arbitrary callables among them).
_NUMPY = {
    ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"), ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"), ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"),
}


class _Restricted(pickle.Unpickler):
    def __init__(self, f: Any, allowed: set[tuple[str, str]]):
        super().__init__(f)
        self._allowed = allowed

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self._allowed:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(
            f"{module}.{name} is not in SafePickleSerializer's allowlist "
            "(add it with extra_classes=[...] if you trust it)"
        )


class SafePickleSerializer:
    """pickle that loads only allowlisted classes: builtins, common standard-library value types,
    numpy arrays (``allow_numpy=True``, the default) and ``extra_classes``."""

    name = "pickle5-safe"

    def __init__(self, extra_classes: Iterable[type] = (), allow_numpy: bool = True):
        self._allowed = set(_SAFE)
        if allow_numpy:
            self._allowed |= _NUMPY
        for c in extra_classes:
            self._allowed.add((c.__module__, c.__qualname__))

    def dumps(self, obj: Any) -> bytes:
        return pickle.dumps(obj, protocol=5)

    def loads(self, data: bytes) -> Any:
        return _Restricted(io.BytesIO(data), self._allowed).load()


class JsonSerializer:
    """JSON (UTF-8) for dicts, lists, strings, numbers, booleans and None."""

    name = "json"

    def dumps(self, obj: Any) -> bytes:
        return json.dumps(obj, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()

    def loads(self, data: bytes) -> Any:
        return json.loads(data)


def serializer_name(s: Any) -> str:
    name = getattr(s, "name", None)
    if isinstance(name, str) and name:
        return name
    t = type(s)
    return f"{t.__module__}.{t.__qualname__}"
