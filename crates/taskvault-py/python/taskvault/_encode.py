"""Argument identity: a typed, canonical, length-prefixed encoding of Python values.

Never ``repr``: two values get the same encoding only if they are equal by type and content.
Every value starts with a one-byte type tag; variable-length parts are prefixed by their length,
so no two different values can run together into the same bytes. Containers are encoded by their
elements (dicts and sets order-independently), objects by class and state, numpy arrays by dtype,
shape and data, pandas objects by index, columns, dtypes and data. numpy and pandas are only
looked at when the user has imported them: encoding never imports them.

The encoding is streamed into a hash (``hashlib.blake2b``); the key holds the digest.
``docs/keys.md`` lists what each type contributes.
"""

from __future__ import annotations

import datetime as _dt
import decimal
import enum
import fractions
import pathlib
import re
import struct
import sys
import threading
import uuid
from typing import Any, Callable

__all__ = ["Unencodable", "Encoder"]

_pack_len = struct.Struct("<Q").pack
_pack_f64 = struct.Struct("<d").pack
_LEAVES = (type(None), bool, int, float, str, bytes)
#: Locks hold no value a result can depend on (only whether some thread holds them right
#: now): they count by type, so a function that guards its work with one stays cacheable.
_LOCKS = (type(threading.Lock()), type(threading.RLock()))


class Unencodable(TypeError):
    """A value that has no canonical encoding (so it cannot be part of a cache key)."""


class Encoder:
    """Streams canonical encodings of values into ``update`` (a hash's ``update``).

    ``ref_digest`` maps a ``ResultRef`` to its output digest; ``fn_identity`` maps a callable to
    its code identity (bytes). Both are supplied by the client, which owns those concepts.
    """

    __slots__ = ("update", "ref_type", "fn_identity", "_active", "refs")

    def __init__(self, update: Callable[[bytes], Any], ref_type: type, fn_identity: Callable[[Any], bytes]):
        self.update = update
        self.ref_type = ref_type
        self.fn_identity = fn_identity
        # The containers being encoded, outermost first: id -> depth (a value met again inside
        # itself is encoded as a back-reference to its depth).
        self._active: dict[int, int] = {}
        #: The ``ResultRef``s encoded, in order (the call's parents, wherever they were held).
        self.refs: list = []

    def encode_arguments(self, arguments: dict[str, Any]) -> None:
        """A call's arguments bound to its signature: (name, value) pairs in the signature's
        order (fixed by the function's code, which is part of the key too)."""
        self.update(b"A" + _pack_len(len(arguments)))
        for name, value in arguments.items():
            self._bytes(b"n", name.encode("utf-8", "surrogatepass"))
            self.encode(value)

    def _bytes(self, tag: bytes, data: bytes | memoryview) -> None:
        self.update(tag + _pack_len(len(data)))
        self.update(data)

    def encode(self, v: Any) -> None:
        t = type(v)
        # The common leaves first, by exact type (subclasses are objects, below).
        if t is str:
            self._bytes(b"s", v.encode("utf-8", "surrogatepass"))
        elif t is int:
            self._bytes(b"i", str(v).encode())
        elif t is float:
            self.update(b"f" + _pack_f64(v))
        elif v is None:
            self.update(b"N")
        elif t is bool:
            self.update(b"T" if v else b"F")
        elif t is bytes:
            self._bytes(b"b", v)
        elif t is tuple or t is list:
            self._seq(b"(" if t is tuple else b"[", v)
        elif t is dict:
            self._mapping(b"{", v)
        elif t is set or t is frozenset:
            self._set(b"<" if t is set else b">", v)
        elif isinstance(v, self.ref_type):
            self.refs.append(v)
            self._bytes(b"R", v.hash.encode())
        else:
            self._other(v, t)

    def _enter(self, v: Any) -> bool:
        """Marks ``v`` as being encoded; if it already is (it contains itself), writes a
        back-reference to the depth where it started instead and returns ``False``."""
        depth = self._active.get(id(v))
        if depth is not None:
            self.update(b"@" + _pack_len(depth))
            return False
        self._active[id(v)] = len(self._active)
        return True

    def _leave(self, v: Any) -> None:
        del self._active[id(v)]

    def _seq(self, tag: bytes, v: Any) -> None:
        if not self._enter(v):
            return
        self.update(tag + _pack_len(len(v)))
        for x in v:
            self.encode(x)
        self._leave(v)

    def _sub(self, v: Any) -> bytes:
        """The encoding of ``v`` on its own (to sort the elements of sets and dicts)."""
        parts: list[bytes] = []
        sub = Encoder(parts.append, self.ref_type, self.fn_identity)
        sub._active = self._active
        sub.encode(v)
        self.refs.extend(sub.refs)
        return b"".join(parts)

    def _set(self, tag: bytes, v: Any) -> None:
        if not self._enter(v):
            return
        items = sorted(self._sub(x) for x in v)
        self.update(tag + _pack_len(len(items)))
        for x in items:
            self._bytes(b"e", x)
        self._leave(v)

    def _mapping(self, tag: bytes, v: Any) -> None:
        if not self._enter(v):
            return
        items = sorted((self._sub(k), self._sub(x)) for k, x in v.items())
        self.update(tag + _pack_len(len(items)))
        for k, x in items:
            self._bytes(b"k", k)
            self._bytes(b"v", x)
        self._leave(v)

    def _name(self, tag: bytes, cls: type) -> None:
        self._bytes(tag, f"{cls.__module__}.{cls.__qualname__}".encode())

    def _other(self, v: Any, t: type) -> None:
        np = sys.modules.get("numpy")
        if np is not None and isinstance(v, (np.ndarray, np.generic)):
            return self._numpy(np, v)
        pd = sys.modules.get("pandas")
        if pd is not None and isinstance(v, (pd.DataFrame, pd.Series, pd.Index)):
            return self._pandas(pd, v)
        if t in _LOCKS:
            self._name(b"L", t)
        elif t is bytearray:
            self._bytes(b"B", bytes(v))
        elif t is memoryview:
            # Its items' format and shape, then its bytes (two views of the same bytes that
            # differ in format are different values).
            self._bytes(b"M", v.format.encode())
            self.update(_pack_len(v.ndim) + b"".join(_pack_len(n) for n in v.shape or ()))
            self._bytes(b"b", v.tobytes())
        elif t is range:
            self.update(b"r")
            for n in (v.start, v.stop, v.step):
                self._bytes(b"i", str(n).encode())
        elif t is slice:
            self.update(b"l")
            self.encode(v.start)
            self.encode(v.stop)
            self.encode(v.step)
        elif v is Ellipsis:
            self.update(b".")
        elif v is NotImplemented:
            self.update(b"!")
        elif t is re.Pattern:
            self.update(b"p" + _pack_len(v.flags))
            self.encode(v.pattern)
        elif t is complex:
            self.update(b"c" + _pack_f64(v.real) + _pack_f64(v.imag))
        elif isinstance(v, enum.Enum):
            self._name(b"E", t)
            self.encode(v.value)
        elif t in (_dt.datetime, _dt.date, _dt.time):
            self._name(b"D", t)
            self._bytes(b"s", v.isoformat().encode())
            # Two equal wall-clock times in different zones are different values.
            self._bytes(b"z", str(getattr(v, "tzinfo", None)).encode())
        elif t is _dt.timedelta:
            self.update(b"d" + _pack_len(v.days & 0xFFFFFFFFFFFFFFFF) + _pack_len(v.seconds) + _pack_len(v.microseconds))
        elif t is decimal.Decimal:
            self._bytes(b"m", str(v).encode())
        elif t is fractions.Fraction:
            self._bytes(b"q", f"{v.numerator}/{v.denominator}".encode())
        elif t is uuid.UUID:
            self._bytes(b"u", v.bytes)
        elif isinstance(v, pathlib.PurePath):
            self._name(b"P", t)
            self._bytes(b"s", str(v).encode("utf-8", "surrogateescape"))
        elif isinstance(v, type):
            self._name(b"t", v)
        elif callable(v) and (hasattr(v, "__code__") or hasattr(v, "__func__") or not hasattr(v, "__dict__")):
            self._bytes(b"C", self.fn_identity(v))
        elif isinstance(v, _LEAVES + (tuple, list, dict, set, frozenset)):
            # A subclass of a builtin: its class, then its builtin value, then any state.
            if not self._enter(v):
                return
            self._name(b"S", t)
            base = next(b for b in t.__mro__ if b in _LEAVES + (tuple, list, dict, set, frozenset))
            self.encode(base(v))
            state = getattr(v, "__dict__", None)
            self.encode(state or None)
            self._leave(v)
        else:
            self._object(v, t)

    def _object(self, v: Any, t: type) -> None:
        """An object: its class and its state (``__getstate__``, as pickle sees it). An object
        pickle refuses (an open file, a socket, a generator) is refused too: what it stands
        for is not in its state (a file object's state is its mode, not its path)."""
        try:
            v.__reduce_ex__(4)
            state = v.__getstate__()
        except TypeError as e:
            raise Unencodable(f"cannot encode a {t.__module__}.{t.__qualname__} for the cache key: {e}") from None
        if state is None and not hasattr(v, "__dict__") and not hasattr(t, "__slots__"):
            # No state that Python can see (a C object with opaque internals): refuse rather than
            # let every instance share one key.
            raise Unencodable(
                f"cannot encode a {t.__module__}.{t.__qualname__} for the cache key: it exposes no state "
                "(pass the values it is built from instead)"
            )
        if not self._enter(v):
            return
        self._name(b"O", t)
        self.encode(state)
        self._leave(v)

    def _numpy(self, np: Any, v: Any) -> None:
        if isinstance(v, np.generic):
            self._bytes(b"a", v.dtype.str.encode())
            self._bytes(b"v", v.tobytes())
            return
        self._bytes(b"A", v.dtype.str.encode())
        self.update(_pack_len(v.ndim) + b"".join(_pack_len(n) for n in v.shape))
        if v.dtype.hasobject:
            self.encode(v.tolist())
        elif v.dtype.fields is not None or v.dtype.kind == "V":
            self._bytes(b"x", np.ascontiguousarray(v).tobytes())
            self._bytes(b"y", str(v.dtype.descr).encode())
        else:
            self._bytes(b"x", memoryview(np.ascontiguousarray(v)).cast("B"))

    def _pandas(self, pd: Any, v: Any) -> None:
        if isinstance(v, pd.Index):
            self._name(b"I", type(v))
            self.encode(v.name if not isinstance(v, pd.MultiIndex) else list(v.names))
            self._bytes(b"t", str(v.dtype).encode())
            self._values(v)
        elif isinstance(v, pd.Series):
            self._bytes(b"W", b"Series")
            self.encode(v.name)
            self._pandas(pd, v.index)
            self._bytes(b"t", str(v.dtype).encode())
            self._values(v)
        else:
            self._bytes(b"W", b"DataFrame")
            self._pandas(pd, v.index)
            self._pandas(pd, v.columns)
            self.update(_pack_len(v.shape[1]))
            for i in range(v.shape[1]):
                col = v.iloc[:, i]
                self._bytes(b"t", str(col.dtype).encode())
                self._values(col)
            self.encode(dict(v.attrs) if v.attrs else None)

    def _values(self, v: Any) -> None:
        arr = v.to_numpy() if hasattr(v, "to_numpy") else v
        np = sys.modules["numpy"]
        if isinstance(arr, np.ndarray) and not arr.dtype.hasobject:
            self._numpy(np, arr)
        else:
            self.encode(list(arr))
