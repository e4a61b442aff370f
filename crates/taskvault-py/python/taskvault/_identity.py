"""Code identity: what a callable's result depends on besides its arguments.

For a Python function that is:

- its source, parsed and dumped as an AST (comments, docstrings, formatting and decorators
  ignored), or, when there is no source (``exec``, some notebooks), its bytecode;
- its defaults and keyword defaults;
- every user-defined function, class or global value it references by name, resolved when it is
  called (so ``module.helper = other`` is seen), recursively: helpers reached as ``name`` or as
  ``module.name``, classes by their methods, nested functions by their code;
- its closure's values.

Library code (the standard library, site-packages) and builtins count by name only. A global or
closure value that cannot be encoded raises ``UnencodableContext``: the client then runs the call
without the cache and says so in a ``KeyWarning`` (a result must never be served for a value the
key did not see).

Bound methods add their object's state; ``functools.partial`` adds its frozen arguments;
decorated callables (``__wrapped__``, ``lru_cache``) count as the function they wrap plus the
wrapper's own code.

A function's identity is remembered together with the checks that prove it still holds: every
attribute, global, module attribute, closure cell and class member it was computed from, each
compared by object identity. It is reused only while all of them still hold and only when every
value it was computed from is immutable (numbers, strings, bytes, tuples and frozensets of them,
functions, classes, modules). Anything else (a global list, a bound method's object, a
``partial``'s keywords) is encoded again on every call.
"""

from __future__ import annotations

import ast
import dis
import functools
import hashlib
import inspect
import linecache
import os
import sys
import sysconfig
import textwrap
import types
from typing import Any

from ._encode import Encoder, Unencodable

__all__ = ["KeyWarning", "UnencodableContext", "Identity", "SCHEME"]

#: Bumped whenever what goes into a code identity or an argument digest changes.
SCHEME = b"taskvault.py/3"

_MISSING = object()
#: Appended to a witness list: what was computed must not be reused.
_UNSTABLE = ("unstable",)
_FROZEN_LEAVES = frozenset((type(None), bool, int, float, complex, str, bytes))


def _frozen(v: Any) -> bool:
    """Whether ``v`` can never change: an immutable leaf, or a tuple / frozenset of them."""
    t = type(v)
    if t in _FROZEN_LEAVES:
        return True
    if t is tuple or t is frozenset:
        return all(_frozen(x) for x in v)
    return False


def _holds(checks: list) -> bool:
    """Whether every witness recorded while an identity was computed still holds."""
    for c in checks:
        kind = c[0]
        if kind == "attr":
            if getattr(c[1], c[2], _MISSING) is not c[3]:
                return False
        elif kind == "key":
            if c[1].get(c[2], _MISSING) is not c[3]:
                return False
        elif kind == "cell":
            try:
                value = c[1].cell_contents
            except ValueError:
                value = _MISSING
            if value is not c[2]:
                return False
        else:  # "items": a class's namespace, member by member
            ns, snapshot = c[1], c[2]
            if len(ns) != len(snapshot):
                return False
            for k, v in snapshot:
                if ns.get(k, _MISSING) is not v:
                    return False
    return True


class KeyWarning(UserWarning):
    """A call could not be keyed completely, so it was run without the cache."""


class UnencodableContext(Unencodable):
    """A value a function reads besides its arguments (a global, a closure cell, a module
    attribute) has no canonical encoding. The call cannot be keyed, so it is run uncached: a
    result that depends on that value must never be served for another one."""

    def __init__(self, where: str, name: str, why: str):
        super().__init__(f"it reads {name!r}, which cannot be part of the cache key ({why})")
        self.where, self.name, self.why = where, name, why


def _library_prefixes() -> tuple[str, ...]:
    paths = sysconfig.get_paths()
    roots = {paths.get(k) for k in ("stdlib", "platstdlib", "purelib", "platlib")}
    import site

    try:
        roots |= set(site.getsitepackages())
        roots.add(site.getusersitepackages())
    except AttributeError:  # pragma: no cover (virtualenv's old site.py)
        pass
    out = []
    for r in roots:
        if r:
            out.append(os.path.realpath(r) + os.sep)
    return tuple(out)


_LIBRARY = _library_prefixes()
_PACKAGE_DIR = os.path.dirname(os.path.realpath(__file__)) + os.sep
_PACKAGE_FILES = os.path.dirname(os.path.abspath(__file__)) + os.sep


def caller_stacklevel() -> int:
    """The `stacklevel` that makes a warning raised here name the user's line that called into
    this package (however deep inside it the warning is raised)."""
    level, frame = 1, sys._getframe(1)
    while frame is not None and frame.f_code.co_filename.startswith((_PACKAGE_FILES, _PACKAGE_DIR)):
        level += 1
        frame = frame.f_back
    return level


@functools.lru_cache(maxsize=1024)
def _is_library_module(name: str | None) -> bool:
    """Standard library, installed packages, builtins and this package: counted by name only."""
    if not name:
        return False
    if name in sys.builtin_module_names or name == "builtins":
        return True
    mod = sys.modules.get(name)
    f = getattr(mod, "__file__", None)
    if not f:
        # No file: frozen modules are the library; __main__ in a REPL or a notebook is user code.
        spec = getattr(mod, "__spec__", None)
        return spec is not None and spec.origin in ("built-in", "frozen")
    f = os.path.realpath(f)
    return f.startswith(_PACKAGE_DIR) or f.startswith(_LIBRARY) or os.sep + "site-packages" + os.sep in f


def _strip_docstring(body: list[ast.stmt]) -> list[ast.stmt]:
    if body and isinstance(body[0], ast.Expr) and isinstance(getattr(body[0], "value", None), ast.Constant):
        if isinstance(body[0].value.value, str):
            return body[1:] or [ast.Pass()]
    return body


class _Normalize(ast.NodeTransformer):
    def _fn(self, node: Any) -> Any:
        node.body = _strip_docstring(node.body)
        self.generic_visit(node)
        return node

    visit_FunctionDef = visit_AsyncFunctionDef = visit_ClassDef = _fn


class _Static:
    """What a code object contributes without looking at any runtime value (cached per code)."""

    __slots__ = ("digest", "source", "names", "attrs")

    def __init__(self, digest: bytes, source: str, names: tuple[str, ...], attrs: tuple[tuple[str, str], ...]):
        self.digest = digest
        self.source = source
        self.names = names  # global names referenced, sorted
        self.attrs = attrs  # (global name, attribute) pairs referenced, sorted


def _code_names(code: types.CodeType) -> tuple[set[str], set[tuple[str, str]]]:
    """Global names and `name.attr` pairs referenced by a code object and its nested code."""
    names: set[str] = set()
    attrs: set[tuple[str, str]] = set()
    prev_global: str | None = None
    for ins in dis.get_instructions(code):
        if ins.opname in ("LOAD_GLOBAL", "LOAD_NAME"):
            names.add(ins.argval)
            prev_global = ins.argval
            continue
        if prev_global is not None and ins.opname in ("LOAD_ATTR", "LOAD_METHOD"):
            attrs.add((prev_global, ins.argval))
        prev_global = None
    for c in code.co_consts:
        if isinstance(c, types.CodeType):
            n, a = _code_names(c)
            names |= n
            attrs |= a
    return names, attrs


def _bytecode_digest(code: types.CodeType, h: Any) -> None:
    """The bytecode fallback: instructions and constants, recursively, without line numbers."""
    h.update(f"py{sys.version_info[0]}.{sys.version_info[1]}".encode())
    h.update(code.co_code)
    h.update(repr((code.co_names, code.co_varnames, code.co_freevars, code.co_cellvars, code.co_argcount,
                   code.co_kwonlyargcount, code.co_flags)).encode())
    for c in code.co_consts:
        if isinstance(c, types.CodeType):
            h.update(b"<code>")
            _bytecode_digest(c, h)
        else:
            h.update(type(c).__name__.encode() + b":" + repr(c).encode() + b";")


def _find_code(code: types.CodeType, name: str, line: int | None = None) -> types.CodeType | None:
    """The code object nested in ``code`` named ``name`` (and starting at ``line``, if given)."""
    for c in code.co_consts:
        if isinstance(c, types.CodeType):
            if c.co_name == name and (line is None or c.co_firstlineno == line):
                return c
            found = _find_code(c, name, line)
            if found is not None:
                return found
    return None


@functools.lru_cache(maxsize=64)
def _compiled_file(filename: str, text: str) -> types.CodeType | None:
    try:
        return compile(text, filename, "exec", dont_inherit=True, optimize=sys.flags.optimize)
    except (SyntaxError, ValueError):
        return None


def _same_code(source: str, code: types.CodeType) -> bool:
    """Whether the source found for ``code`` is what runs.

    The whole file is compiled, as Python compiled it, and the code object starting on the same
    line compared instruction by instruction: a function compiled on its own can differ from the
    same text inside its module (a name bound by a module-level import compiles to other
    instructions), so that comparison is the fallback, for text that is not a whole file."""
    filename = code.co_filename
    lines = linecache.getlines(filename)
    if lines:
        whole = _compiled_file(filename, "".join(lines))
        if whole is not None:
            found = _find_code(whole, code.co_name, code.co_firstlineno)
            if found is not None:
                return found.co_code == code.co_code
    try:
        compiled = compile(source, "<source>", "exec")
    except (SyntaxError, ValueError):
        return False
    # Nested definitions compile with their free variables as globals; compare instructions
    # only where that cannot differ (module-level and methods); otherwise trust the source.
    found = _find_code(compiled, code.co_name)
    if found is None:
        return False
    if code.co_freevars or found.co_freevars != code.co_freevars:
        return True
    return found.co_code == code.co_code


@functools.lru_cache(maxsize=4096)
def _static(code: types.CodeType) -> _Static:
    h = hashlib.blake2b(digest_size=32)
    source = ""
    tree = None
    try:
        source = textwrap.dedent(inspect.getsource(code))
        parsed = ast.parse(source)
        # The first definition whose name matches the code (a lambda's line may hold more).
        for node in ast.walk(parsed):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name == code.co_name:
                node.decorator_list = []
                tree = node
                break
    except (OSError, TypeError, SyntaxError, IndentationError):
        tree = None
    if tree is not None and not _same_code(source, code):
        # The file changed since the function was defined (an edited module not yet reloaded):
        # the source on disk is not what runs, so the bytecode decides.
        tree, source = None, ""
    if tree is not None:
        tree = _Normalize().visit(tree)
        h.update(b"ast:")
        h.update(ast.dump(tree, annotate_fields=False, include_attributes=False).encode())
    else:
        h.update(b"bytecode:")
        _bytecode_digest(code, h)
        if not source:
            source = f"<no source: bytecode of {code.co_qualname}>"
    names, attrs = _code_names(code)
    return _Static(h.digest(), source, tuple(sorted(names)), tuple(sorted(attrs)))


class Identity:
    """Computes code identities (raising ``UnencodableContext`` for a value it cannot key)."""

    def __init__(self, ref_type: type):
        self.ref_type = ref_type
        # Plain functions: (digest, checks) while the checks hold.
        self._known: dict[Any, tuple[bytes, list]] = {}

    def of(self, fn: Any) -> bytes:
        """The identity digest of a callable."""
        plain = type(fn) is types.FunctionType
        if plain:
            known = self._known.get(fn)
            if known is not None and _holds(known[1]):
                return known[0]
        h = hashlib.blake2b(digest_size=32, person=b"tv-code")
        h.update(SCHEME)
        checks: list = []
        self._callable(fn, h, set(), checks)
        digest = h.digest()
        if plain and _UNSTABLE not in checks:
            if len(self._known) >= 4096:
                self._known.clear()
            self._known[fn] = (digest, checks)
        return digest

    def source(self, fn: Any) -> str:
        fn = _unwrap(fn)
        code = getattr(fn, "__code__", None)
        if code is None:
            return f"<{type(fn).__name__} {getattr(fn, '__qualname__', fn)!r}>"
        return _static(code).source

    def _encoder(self, h: Any, w: list) -> Encoder:
        def nested(fn: Any) -> bytes:
            w.append(_UNSTABLE)  # its own checks are not collected here
            return self.of(fn)

        return Encoder(h.update, self.ref_type, nested)

    def _encode_value(self, h: Any, w: list, v: Any) -> None:
        if not _frozen(v):
            w.append(_UNSTABLE)
        self._encoder(h, w).encode(v)

    # Each step below appends to `w` the witnesses of what it read (see `_holds`), or
    # `_UNSTABLE` when what it read may change without any of them changing.

    def _callable(self, fn: Any, h: Any, seen: set[int], w: list) -> None:
        if isinstance(fn, functools.partial):
            h.update(b"partial")
            w.append(_UNSTABLE)
            self._callable(fn.func, h, seen, w)
            enc = self._encoder(h, w)
            enc.encode(tuple(fn.args))
            enc.encode(dict(fn.keywords))
            return
        if isinstance(fn, types.MethodType):
            h.update(b"method")
            w.append(_UNSTABLE)
            self._callable(fn.__func__, h, seen, w)
            self._encoder(h, w).encode(fn.__self__)
            return
        if isinstance(fn, types.FunctionType):
            self._function(fn, h, seen, w)
            return
        wrapped = getattr(fn, "__wrapped__", None)
        if wrapped is not None:
            # A C wrapper (lru_cache, cache): only the wrapped function matters.
            h.update(b"wrapped")
            w.append(("attr", fn, "__wrapped__", wrapped))
            self._callable(wrapped, h, seen, w)
            return
        if isinstance(fn, type):
            self._class(fn, h, seen, w)
            return
        if isinstance(fn, (types.BuiltinFunctionType, types.BuiltinMethodType)) or not hasattr(fn, "__dict__"):
            h.update(b"builtin:")
            self_obj = getattr(fn, "__self__", None)
            h.update(f"{getattr(fn, '__module__', None)}.{getattr(fn, '__qualname__', repr(fn))}".encode())
            if self_obj is not None and not isinstance(self_obj, types.ModuleType):
                w.append(_UNSTABLE)
                self._encoder(h, w).encode(self_obj)
            return
        # A callable object: its class's __call__ and its state.
        h.update(b"object")
        w.append(_UNSTABLE)
        self._class(type(fn), h, seen, w)
        self._encoder(h, w).encode(fn)

    def _class(self, cls: type, h: Any, seen: set[int], w: list) -> None:
        h.update(f"class:{cls.__module__}.{cls.__qualname__}".encode())
        w.append(("attr", cls, "__module__", cls.__module__))
        w.append(("attr", cls, "__qualname__", cls.__qualname__))
        if _is_library_module(cls.__module__) or id(cls) in seen:
            return
        seen.add(id(cls))
        ns = vars(cls)
        w.append(("items", ns, tuple(ns.items())))
        w.append(("attr", cls, "__bases__", cls.__bases__))
        for name in sorted(ns):
            attr = ns[name]
            fn = attr.__func__ if isinstance(attr, (staticmethod, classmethod)) else attr
            if isinstance(fn, property):
                fn = fn.fget
            if isinstance(fn, types.FunctionType):
                h.update(b"m:" + name.encode())
                self._function(fn, h, seen, w)
        for base in cls.__bases__:
            if base is not object:
                self._class(base, h, seen, w)

    def _function(self, fn: types.FunctionType, h: Any, seen: set[int], w: list) -> None:
        wrapped = getattr(fn, "__wrapped__", _MISSING)
        w.append(("attr", fn, "__wrapped__", wrapped))
        if wrapped is not _MISSING and wrapped is not None:
            # A Python decorator's wrapper: its own code (below), and the function it wraps.
            h.update(b"decorated")
            self._callable(wrapped, h, seen, w)
        mod = fn.__module__
        w.append(("attr", fn, "__module__", mod))
        w.append(("attr", fn, "__qualname__", fn.__qualname__))
        h.update(f"fn:{mod}.{fn.__qualname__}".encode())
        if _is_library_module(mod) or id(fn) in seen:
            return
        seen.add(id(fn))
        code = fn.__code__
        w.append(("attr", fn, "__code__", code))
        st = _static(code)
        h.update(st.digest)
        where = fn.__qualname__
        defaults, kwdefaults = fn.__defaults__, fn.__kwdefaults__
        w.append(("attr", fn, "__defaults__", defaults))
        w.append(("attr", fn, "__kwdefaults__", kwdefaults))
        try:
            self._encode_value(h, w, defaults)
            self._encode_value(h, w, kwdefaults)
        except Unencodable as e:
            raise UnencodableContext(where, "its default arguments", str(e)) from None
        if fn.__closure__:
            for name, cell in zip(code.co_freevars, fn.__closure__):
                try:
                    value = cell.cell_contents
                except ValueError:  # an empty cell (the function refers to itself, say)
                    w.append(("cell", cell, _MISSING))
                    continue
                w.append(("cell", cell, value))
                h.update(b"cell:" + name.encode())
                self._value(value, h, seen, where, name, w)
        g = fn.__globals__
        for name in st.names:
            value = g.get(name, _MISSING)
            w.append(("key", g, name, value))
            if value is not _MISSING:
                h.update(b"global:" + name.encode())
                self._value(value, h, seen, where, name, w)
        for name, attr in st.attrs:
            mod_obj = g.get(name)
            if isinstance(mod_obj, types.ModuleType) and not _is_library_module(mod_obj.__name__):
                h.update(b"attr:" + name.encode() + b"." + attr.encode())
                value = getattr(mod_obj, attr, _MISSING)
                w.append(("attr", mod_obj, attr, value))
                if value is not _MISSING:
                    self._value(value, h, seen, where, f"{name}.{attr}", w)

    def _value(self, v: Any, h: Any, seen: set[int], where: str, name: str, w: list) -> None:
        if isinstance(v, types.ModuleType):
            h.update(b"module:" + v.__name__.encode())
            return
        if isinstance(v, (types.FunctionType, types.MethodType, functools.partial, type)) or (
            callable(v) and (not hasattr(v, "__dict__") or getattr(v, "__wrapped__", None) is not None)
        ):
            self._callable(v, h, seen, w)
            return
        if type(v).__module__ == "typing" or isinstance(v, type(Any)):
            # Type annotations (`Optional[int]`, a `TypeVar`): by their text.
            h.update(b"typing:" + repr(v).encode())
            return
        if not _frozen(v):
            w.append(_UNSTABLE)
        try:
            self._encoder(h, w).encode(v)
        except RecursionError:
            raise UnencodableContext(where, name, "it is nested too deeply to encode") from None
        except UnencodableContext:
            raise
        except Unencodable as e:
            raise UnencodableContext(where, name, str(e)) from None


def _unwrap(fn: Any) -> Any:
    while True:
        if isinstance(fn, functools.partial):
            fn = fn.func
        elif isinstance(fn, types.MethodType):
            fn = fn.__func__
        elif getattr(fn, "__wrapped__", None) is not None:
            fn = fn.__wrapped__
        else:
            return fn


def display_name(fn: Any) -> str:
    """The default task name: the function's qualified name."""
    base = _unwrap(fn)
    name = getattr(base, "__qualname__", None) or getattr(type(base), "__qualname__", "callable")
    return name


def module_of(fn: Any) -> str:
    return getattr(_unwrap(fn), "__module__", None) or ""

