"""The client: memoized calls on the engine (``taskvault._native``).

A call's key is the task name plus three labelled ingredients: the code identity of the callable
(``_identity``), the digest of its arguments bound to its signature with defaults applied
(``_encode``), and the serializer's name. ``docs/keys.md`` lists them.
"""

from __future__ import annotations

import asyncio
import atexit
import collections
import concurrent.futures as cf
import datetime as _dt
import functools
import hashlib
import inspect
import json
import os
import pathlib
import queue
import sys
import threading
import time
import traceback
import types
import warnings
import weakref
from typing import Any, Callable, Generic, Iterable, Mapping, TypeVar

from . import _native
from ._encode import Encoder, Unencodable
from ._identity import Identity, KeyWarning, SCHEME, UnencodableContext, caller_stacklevel, display_name, module_of
from ._models import Commit, ImportResult, TaskStatus, commit_from_entry
from ._serializers import PickleSerializer, SafePickleSerializer, serializer_name

__all__ = ["Client", "ResultRef", "TaskRef", "TaskError", "Entry", "HashNotFoundError", "AmbiguousHashError"]

T = TypeVar("T")


class TaskError(RuntimeError):
    """A task failed (here, or in the worker this call waited for). ``traceback`` holds the
    original traceback text; ``commit_hash`` names the failed run recorded in the vault
    (``client.show(e.commit_hash).error``), or is ``None``."""

    def __init__(self, message: str, traceback: str = "", commit_hash: str | None = None):
        super().__init__(message if not traceback else f"{message}\n\n{traceback}")
        self.traceback = traceback
        self.commit_hash = commit_hash


class HashNotFoundError(_native.NotFoundError, KeyError):
    """No run matches the hash given (a ``KeyError``, as in cashet)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class AmbiguousHashError(_native.AmbiguousError, ValueError):
    """A hash prefix names more than one run (a ``ValueError``, as in cashet)."""


class TaskRef:
    """In ``submit_many``: the result of another task of the same batch, by its index (a list
    batch) or its name (a dict batch)."""

    __slots__ = ("key",)

    def __init__(self, key: int | str):
        self.key = key

    @property
    def index(self) -> int | str:
        return self.key

    def __repr__(self) -> str:
        return f"TaskRef({self.key!r})"


class ResultRef(Generic[T]):
    """A stored result. ``load()`` deserializes it; pass the ref itself to another task to chain
    them (the key then depends on this result's content, and the chain is recorded)."""

    __slots__ = ("hash", "commit_hash", "size", "task", "_client", "_data", "_raw")

    def __init__(self, client: "Client", commit_hash: str, digest: str, size: int, task: str, data: bytes | None,
                 raw: bool = False):
        self._client = client
        self.commit_hash = commit_hash
        self.hash = digest
        self.size = size
        self.task = task
        self._data = data
        self._raw = raw  # `data` is the result itself (a `bytes` result), not its serialization

    def load(self) -> T:
        data = self._data
        if data is None:
            got = self._client._vault.run_bytes(self.commit_hash)
            if got is None:
                raise TaskError(f"the stored result of {self.task} (run {self.commit_hash[:12]}) failed verification")
            data, self._raw = got
            self._data = data
        if self._raw:
            return data  # type: ignore[return-value]
        return self._client._serializer.loads(data)

    @property
    def short_hash(self) -> str:
        """The first 12 hex digits of the output's digest."""
        return self.hash[:12]

    def __repr__(self) -> str:
        return f"ResultRef(task={self.task!r}, commit_hash={self.commit_hash[:12]!r}, size={self.size})"

    def __reduce__(self) -> Any:
        # Refs travel to other processes (process pools, Dask, Ray) by vault and run id: the run
        # must be committed before another process looks for it.
        c = self._client
        c._vault.flush()
        return (_rebuild_ref, (os.fspath(c.store_dir), c._serializer, self.commit_hash, self.hash, self.size, self.task,
                               c._store_url))


_clients: dict[tuple[str, str], "Client"] = {}

# Hits are counted and audited in batches; whatever is buffered is written at exit.
_open_vaults: "weakref.WeakSet[Any]" = weakref.WeakSet()


@atexit.register
def _flush_all() -> None:
    for v in list(_open_vaults):
        try:
            v.flush()
        except Exception:  # noqa: BLE001 - exiting; the counts are all that is lost
            pass


_clients_alive: "weakref.WeakSet[Client]" = weakref.WeakSet()
# A forked child never touches the native vaults it inherited: their locks may be held by
# threads of the parent that the child does not have (their commit thread, say). It keeps them
# (dropping one would wait on those locks) and gives each client a vault of its own.
_inherited: list[Any] = []


def _reopen_after_fork() -> None:
    for c in list(_clients_alive):
        old = c._vault
        _inherited.append(old)
        _open_vaults.discard(old)
        c._vault = _native.Vault(os.fspath(old.dir), c._config, c._store_url)
        _open_vaults.add(c._vault)


os.register_at_fork(after_in_child=_reopen_after_fork)


def _client_for(store_dir: str, serializer: Any, store: str | None = None) -> "Client":
    k = (store_dir, serializer_name(serializer), store)
    c = _clients.get(k)
    if c is None:
        c = _clients[k] = Client(store_dir=store_dir, store=store, serializer=serializer)
    return c


def _rebuild_ref(store_dir: str, serializer: Any, commit_hash: str, digest: str, size: int, task: str,
                 store: str | None = None) -> "ResultRef":
    return ResultRef(_client_for(store_dir, serializer, store), commit_hash, digest, size, task, None)


#: A run as ``log`` / ``show`` / ``history`` return it (cashet's ``Commit``, with the entry
#: document at ``.entry`` and by item access).
Entry = Commit


def _entries(text: str) -> list[Commit]:
    return [commit_from_entry(e) for e in json.loads(text)]


class _TaskOptions:
    __slots__ = ("name", "cache", "force", "tags", "retries", "timeout", "ttl", "on_unencodable")

    def __init__(self, name=None, cache=True, force=False, tags=None, retries=0, timeout=None, ttl=None,
                 on_unencodable="raise"):
        if on_unencodable not in ("raise", "skip"):
            raise ValueError("on_unencodable must be 'raise' or 'skip'")
        retries = max(0, retries)  # as cashet: a negative count means no retries
        if timeout is not None and timeout <= 0:
            raise ValueError("timeout must be positive (seconds)")
        if ttl is not None and ttl < 0:
            raise ValueError("ttl must not be negative (seconds; 0 = never expires)")
        self.name, self.cache, self.force, self.tags = name, cache, force, dict(tags or {})
        self.retries, self.timeout, self.ttl, self.on_unencodable = retries, timeout, ttl, on_unencodable

    def merged(self, over: Mapping[str, Any]) -> "_TaskOptions":
        o = _TaskOptions(**{k: getattr(self, k) for k in self.__slots__})
        for k, v in over.items():
            if k == "tags":
                o.tags = {**o.tags, **dict(v or {})}
            else:
                setattr(o, k, v)
        _TaskOptions(**{k: getattr(o, k) for k in o.__slots__})  # validate
        return o


_CALL_OPTIONS = {"_cache": "cache", "_force": "force", "_tags": "tags", "_retries": "retries",
                 "_timeout": "timeout", "_ttl": "ttl", "_on_unencodable": "on_unencodable"}


class _Task:
    """A function registered with ``@client.task``: calling it submits it."""

    def __init__(self, client: "Client", fn: Callable, options: _TaskOptions):
        self._client = client
        self.fn = fn
        self.options = options
        functools.update_wrapper(self, fn)
        self._cashet_wrapped_func = fn

    def __call__(self, *args: Any, **kwargs: Any) -> ResultRef:
        return self._client.submit(self, *args, **kwargs)


def _resolve_refs(v: Any) -> Any:
    """Replaces ResultRefs (also inside lists, tuples, dicts and sets) by their values."""
    t = type(v)
    if t is ResultRef:
        return v.load()
    if t is list:
        return [_resolve_refs(x) for x in v]
    if t is tuple:
        return tuple(_resolve_refs(x) for x in v)
    if t is dict:
        return {k: _resolve_refs(x) for k, x in v.items()}
    if t is set or t is frozenset:
        try:
            return t(_resolve_refs(x) for x in v)
        except TypeError:  # a result that cannot be a set member: the set keeps its refs
            return v
    return v


def _short(v: Any, limit: int = 200) -> str:
    try:
        r = repr(v)
    except Exception as e:  # noqa: BLE001 - display only
        r = f"<unrepresentable {type(v).__name__}: {e}>"
    return r if len(r) <= limit else r[: limit - 1] + "…"


def _resolve_location(path: str | os.PathLike | None, config: str | os.PathLike | None) -> tuple[str | None, str | None]:
    """(vault directory, config file) from ``Client``'s first argument: a YAML file is the
    config (the vault is its ``cache_dir``), anything else a vault directory (made if missing).
    Without either: ``TASKVAULT_DIR``, then cashet's ``CASHET_DIR``, then the config found here."""
    if path is None:
        if config is None and not os.environ.get("TASKVAULT_DIR") and os.environ.get("CASHET_DIR"):
            return os.environ["CASHET_DIR"], None
        return None, os.fspath(config) if config is not None else None
    p = os.fspath(path)
    is_yaml = p.lower().endswith((".yaml", ".yml"))
    if os.path.isfile(p) or is_yaml:
        if not is_yaml:
            raise ValueError(f"{p} is a file: Client() expects a config file (.yaml or .yml) or a vault directory")
        if not os.path.isfile(p):
            raise FileNotFoundError(f"{p}: no such config file (Client() expects a config file or a vault directory)")
        if config is not None:
            raise ValueError(f"give the config once: {p} and config={os.fspath(config)!r}")
        return None, p
    if os.path.exists(p) and not os.path.isdir(p):
        raise ValueError(f"{p} is neither a config file (.yaml) nor a vault directory")
    return p, os.fspath(config) if config is not None else None


class Client:
    """Memoizes calls in a TaskVault vault: the same vault the ``taskvault`` command uses here.

    ``Client(path)``: a path to a YAML file is the config to use (the vault is its
    ``cache_dir``); any other path is the vault directory (cashet's ``store_dir``, made if
    missing). Without one: ``TASKVAULT_DIR``, then ``CASHET_DIR``, then ``.taskvault/config.yaml``
    found from here up. ``store`` is where the metadata lives when not in the vault directory: a
    PostgreSQL URL (``postgres://user@host/db?schema=name``) or a Redis URL
    (``redis://host:6379/0?prefix=name``: results and their bytes in Redis, as cashet's
    ``RedisStore`` keeps them), shared by every process on every machine that uses it (results
    then count as coming from the network: the default serializer is ``SafePickleSerializer``);
    it overrides ``storage.metadata`` of the config. ``executor`` is a
    ``concurrent.futures.Executor`` for ``submit_many`` and ``map``."""

    def __init__(self, store_dir: str | os.PathLike | None = None, store: Any = None, executor: Any = None,
                 serializer: Any = None, max_workers: int = 1, *, config: str | os.PathLike | None = None):
        if not isinstance(max_workers, int) or max_workers < 1:
            raise ValueError(f"max_workers must be at least 1, got {max_workers!r}")
        if store is not None and not isinstance(store, str):
            raise TypeError("store must be a URL string (postgres://... or redis://...), or None for the "
                            "vault directory's own database")
        self._store_url = store
        if executor is not None and not isinstance(executor, cf.Executor):
            raise TypeError("executor must be a concurrent.futures.Executor (a thread or process pool, "
                            "Dask's or Ray's)")
        self._executor = executor
        vault_dir, self._config = _resolve_location(store_dir, config)
        self._vault = _native.Vault(vault_dir, self._config, store)
        _open_vaults.add(self._vault)
        _clients_alive.add(self)
        # Results from a remote came over the network: by default they are loaded by the
        # restricted unpickler, never by plain pickle (pass serializer=PickleSerializer() to
        # trust the team's server with arbitrary objects).
        if serializer is None:
            shared = self._vault.remote_url or self._vault.store_url
            serializer = SafePickleSerializer() if shared else PickleSerializer()
        self._serializer = serializer
        for m in ("dumps", "loads"):
            if not callable(getattr(self._serializer, m, None)):
                raise TypeError(f"serializer must have a {m}() method")
        self._serializer_name = serializer_name(self._serializer).encode()
        self.max_workers = max_workers
        self._identity = Identity(ResultRef)
        self._plans: dict[Any, _Plan] = {}
        #: Functions registered with ``@client.task``, by task name.
        self._registered_tasks: dict[str, Callable] = {}

    # -- context manager -------------------------------------------------------------------
    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        """Writes the hit counts and audit lines buffered so far (they are also written at
        exit). The client stays usable."""
        self._vault.flush()

    @property
    def store_dir(self) -> pathlib.Path:
        """The vault directory."""
        return pathlib.Path(self._vault.dir)

    @property
    def serializer(self) -> Any:
        return self._serializer

    # -- tasks ------------------------------------------------------------------------------
    def task(self, fn: Callable | None = None, *, name: str | None = None, cache: bool = True, force: bool = False,
             tags: Mapping[str, str] | None = None, retries: int = 0, timeout: float | None = None,
             ttl: float | None = None, on_unencodable: str = "raise") -> Any:
        """Registers ``fn``; calling it returns a ``ResultRef`` (as ``client.submit(fn, ...)``).
        The wrapper keeps ``fn``'s name and docstring."""
        options = _TaskOptions(name, cache, force, tags, retries, timeout, ttl, on_unencodable)

        def wrap(f: Callable) -> _Task:
            task = _Task(self, f, options)
            self._registered_tasks[name or display_name(f)] = f
            return task

        return wrap(fn) if fn is not None else wrap

    def submit(self, func: Callable[..., T], *args: Any, **kwargs: Any) -> ResultRef[T]:
        """Runs ``func(*args, **kwargs)``, or returns its stored result if an equal call ran
        before. ``_cache``, ``_force``, ``_tags``, ``_retries``, ``_timeout``, ``_ttl`` and
        ``_on_unencodable`` are options, not arguments."""
        func, options = _options(func, kwargs)
        return self._submit(func, args, kwargs, options)

    def _plan(self, func: Callable) -> "_Plan":
        try:
            plan = self._plans.get(func)
        except TypeError:  # an unhashable callable object
            return _Plan(func)
        if plan is None or not plan.current(func):
            if len(self._plans) >= 4096:
                self._plans.clear()
            plan = self._plans[func] = _Plan(func)
        return plan

    def _key(self, func: Callable, plan: "_Plan", bound: Any, options: _TaskOptions) -> tuple[Any, list]:
        """The call's key, and the ``ResultRef``s its arguments hold (anywhere, once each)."""
        task = options.name or plan.name
        h = hashlib.blake2b(digest_size=32, person=b"tv-args")
        enc = Encoder(h.update, ResultRef, self._identity.of)
        if type(bound) is dict:
            enc.encode_arguments(bound)
        else:
            enc.encode(bound)
        ingredients = [
            ("py.scheme", SCHEME),
            ("py.code", self._identity.of(func)),
            ("py.args", h.digest()),
            ("py.serializer", self._serializer_name),
        ]
        return self._vault.key(task, ingredients), enc.refs

    def _key_or_none(self, func: Callable, plan: "_Plan", bound: Any, options: _TaskOptions) -> tuple[Any, list] | None:
        """``_key``, or ``None`` when the call cannot be keyed and must run uncached.

        An argument that cannot be keyed raises unless the call asked to skip; a value the
        function reads besides its arguments always makes the call run uncached (the warning
        says which). Either way no stored result is served for it."""
        try:
            return self._key(func, plan, bound, options)
        except Unencodable as e:
            if options.on_unencodable == "raise" and not isinstance(e, UnencodableContext):
                raise
            how = "pass the value as an argument" if isinstance(e, UnencodableContext) else "pass encodable arguments"
            warnings.warn(f"{display_name(func)}: not cached: {e}; {how} to cache this call", KeyWarning,
                          stacklevel=caller_stacklevel())
            return None

    def _uncached(self, func: Callable, value: Any) -> ResultRef:
        """A result that was computed but not stored."""
        data = self._serializer.dumps(value)
        return ResultRef(self, "", "", len(data), display_name(func), data)

    def _submit(self, func: Callable, args: tuple, kwargs: dict, options: _TaskOptions) -> ResultRef:
        plan = self._plan(func)
        bound = plan.bind(func, args, kwargs)
        keyed = self._key_or_none(func, plan, bound, options)
        if keyed is None:
            return self._uncached(func, self._attempts(func, args, kwargs, options, True))
        key, refs = keyed
        hit, claim = self._hit_or_claim(key, options)
        if hit is not None:
            return hit
        return self._compute(key, func, plan, args, kwargs, bound, options, claim, refs)

    def _hit_or_claim(self, key: Any, options: _TaskOptions) -> tuple[ResultRef | None, Any]:
        """The stored result of ``key`` and no claim, or no result and the claim to compute it
        (``None`` with ``_force`` or ``_cache=False``: such a run replaces the key's entry, the
        old one staying as its history, so a later cached call gets the newest result). Raises
        ``TaskError`` if the worker this call waited for failed."""
        if options.force or not options.cache:
            return None, None
        status, payload = self._vault.get_or_claim(key)
        if status == "hit":
            return self._served(key, payload), None
        if status == "failed":
            msg, _, tb = payload.partition("\n\n")
            raise TaskError(msg, tb)
        return None, payload

    def _served(self, key: Any, hit: tuple) -> ResultRef:
        """The ``ResultRef`` of a hit as the engine gives it: (run id, digest, size, bytes, raw)."""
        return ResultRef(self, hit[0], hit[1], hit[2], key.task, hit[3], hit[4])

    def _attempts(self, func: Callable, args: tuple, kwargs: dict, options: _TaskOptions, refs: bool) -> Any:
        call_args = _resolve_refs(args) if refs else args
        call_kwargs = _resolve_refs(kwargs) if refs else kwargs
        attempt = 0
        while True:
            try:
                return _call(func, call_args, call_kwargs, options.timeout)
            except Exception as e:
                attempt += 1
                if attempt > options.retries:
                    raise _failure(func, e, attempt) from e
                time.sleep(_backoff(attempt))

    def _details(self, func: Callable, plan: "_Plan", bound: Any, options: _TaskOptions, refs: list,
                 extra: str = "") -> str:
        """The run's provenance as JSON text: code, arguments shown, parents (each once),
        their outputs' digests, options."""
        parents: list[str] = []
        inputs: list[str] = []
        for r in refs:
            if r.commit_hash and r.commit_hash not in parents:
                parents.append(r.commit_hash)
            if r.hash and r.hash not in inputs:
                inputs.append(r.hash)
        args_shown = {k: _short(v) for k, v in _display_args(bound).items()}
        opts = {"cache": options.cache, "force": options.force, "retries": options.retries,
                "timeout": options.timeout, "ttl": options.ttl}
        return (plan.details_head(func, self) + ',"args":' + json.dumps(args_shown)
                + ',"parents":' + json.dumps(parents) + ',"inputs":' + json.dumps(inputs)
                + ',"options":' + json.dumps(opts) + extra + "}")

    def _compute(self, key: Any, func: Callable, plan: "_Plan", args: tuple, kwargs: dict, bound: Any,
                 options: _TaskOptions, claim: Any, refs: list) -> ResultRef:
        started = time.monotonic()
        try:
            value = self._attempts(func, args, kwargs, options, bool(refs))
        except TaskError as e:
            self._record_failure(key, func, plan, bound, options, claim, refs, e, started)
            raise
        except BaseException:
            if claim is not None:
                claim.release()
            raise
        return self._store(key, func, plan, bound, options, claim, refs, value, started)

    def _record_failure(self, key: Any, func: Callable, plan: "_Plan", bound: Any, options: _TaskOptions, claim: Any,
                        refs: list, e: TaskError, started: float) -> None:
        """Records ``e`` as a failed run (history, never served); waiters get the failure."""
        duration_ms = int((time.monotonic() - started) * 1000)
        message = e.args[0].partition("\n\n")[0]
        error = f"{message}\n\n{e.traceback}" if e.traceback else message
        try:
            run = json.loads(self._vault.record_failure(
                key, error, tags=options.tags or None, duration_ms=duration_ms, claim=claim,
                details=self._details(func, plan, bound, options, refs),
            ))
            e.commit_hash = run["id"]
        except _native.TaskVaultError as record_error:
            warnings.warn(f"{key.task}: the failure could not be recorded: {record_error}",
                          stacklevel=caller_stacklevel())
        finally:
            if claim is not None:
                claim.release()

    def _store(self, key: Any, func: Callable, plan: "_Plan", bound: Any, options: _TaskOptions, claim: Any,
               refs: list, value: Any, started: float) -> ResultRef:
        """Saves ``value`` as the result of ``key`` (then releases ``claim``)."""
        try:
            # A `bytes` result is stored as it is under the pickle serializers (their `loads`
            # would give the same bytes back): no pickling, and a hit is the bytes read once.
            raw = type(value) is bytes and type(self._serializer) in _RAW_BYTES_SERIALIZERS
            data = value if raw else self._serializer.dumps(value)
            duration_ms = int((time.monotonic() - started) * 1000)
            details = self._details(func, plan, bound, options, refs, ',"result":"bytes"' if raw else "")
            try:
                # With the claim: a small result is committed in a batch shortly after, and the
                # claim released then (waiters elsewhere get it from the vault).
                run_id, digest, size = self._vault.save(
                    key, data, ttl=None if options.ttl is None else float(options.ttl), tags=options.tags or None,
                    details=details, duration_ms=duration_ms, claim=claim,
                )
            except _native.TooLargeError as e:
                # The work is done; losing its result to a policy would be worse than not caching it.
                warnings.warn(f"{key.task}: result not cached: {e}", stacklevel=caller_stacklevel())
                return ResultRef(self, "", "", len(data), key.task, data, raw)
        finally:
            if claim is not None:
                claim.release()
        return ResultRef(self, run_id, digest, size, key.task, data, raw)

    def submit_many(self, tasks: Iterable[Any] | Mapping[str, Any], max_workers: int | None = None,
                    executor: cf.Executor | None = None, **options: Any) -> Any:
        """Submits a batch in dependency order. ``tasks`` is a list (``TaskRef(i)`` in an
        item's arguments stands for the result of item ``i``; returns a list) or a dict of
        named items (``TaskRef("name")``; returns a dict). Items are ``func``, ``(func,)``,
        ``(func, args)`` or ``(func, args, kwargs)``; ``_cache``, ``_force``, ``_tags``,
        ``_retries``, ``_timeout`` and ``_ttl`` apply to every item. Independent items run in
        parallel on ``executor`` (any ``concurrent.futures.Executor``) or on ``max_workers``
        threads."""
        unknown = sorted(set(options) - set(_CALL_OPTIONS))
        if unknown:
            raise TypeError(f"submit_many() got unexpected keyword arguments: {', '.join(unknown)}")
        if max_workers is not None and (not isinstance(max_workers, int) or max_workers < 1):
            raise ValueError(f"max_workers must be at least 1, got {max_workers!r}")
        named = isinstance(tasks, Mapping)
        names: list[Any] = list(tasks.keys()) if named else []
        raw = list(tasks.values()) if named else list(tasks)
        items = [_normalize_item(t, names[i] if named else i) for i, t in enumerate(raw)]
        if options:
            items = [(f, a, {**k, **options}) for f, a, k in items]
        index = {n: i for i, n in enumerate(names)} if named else None
        deps = []
        n = len(items)
        for i, (_, a, k) in enumerate(items):
            d = set()
            for ref in _task_refs((a, k)):
                j = index.get(ref) if index is not None else ref
                me = names[i] if named else i
                if j is None or not isinstance(j, int) or not 0 <= j < n:
                    what = f"{n} tasks" if index is None else f"tasks {', '.join(map(repr, names))}"
                    raise ValueError(f"task {me!r}: TaskRef({ref!r}) not found (the batch has {what})")
                if j == i:
                    raise ValueError(f"task {me!r} cannot depend on itself")
                d.add(j)
            deps.append(d)
        order = _topological(deps)
        results: list[ResultRef | None] = [None] * n
        workers = max_workers or self.max_workers
        executor = executor or self._executor
        own = executor is None
        ex = executor or cf.ThreadPoolExecutor(max_workers=workers)
        remote = not own and not isinstance(ex, cf.ThreadPoolExecutor)
        by_key = (lambda key: results[index[key]]) if index is not None else (lambda key: results[key])
        # Each item is submitted once its last dependency is done (in topological order among
        # those ready together); finished futures report through a queue, so a batch of n items
        # costs O(n), not a scan of everything still waiting per completion.
        dependents: list[list[int]] = [[] for _ in range(n)]
        blocked = [len(d) for d in deps]
        for i, d in enumerate(deps):
            for j in d:
                dependents[j].append(i)
        ready = collections.deque(i for i in order if not blocked[i])
        finished: queue.SimpleQueue = queue.SimpleQueue()
        try:
            pending: dict[cf.Future, int] = {}
            while ready or pending:
                while ready:
                    i = ready.popleft()
                    f, a, k = items[i]
                    a, k = _substitute((a, k), by_key)
                    if remote:
                        fut = ex.submit(_remote_submit, os.fspath(self.store_dir), self._serializer, f, a, k,
                                        self._store_url)
                    else:
                        fut = ex.submit(self.submit, f, *a, **k)
                    pending[fut] = i
                    fut.add_done_callback(finished.put)
                if not pending:
                    break
                fut = finished.get()
                i = pending.pop(fut)
                r = fut.result()
                if remote:
                    r = ResultRef(self, r[0], r[1], r[2], r[3], None)
                results[i] = r
                for j in dependents[i]:
                    blocked[j] -= 1
                    if not blocked[j]:
                        ready.append(j)
        finally:
            if own:
                ex.shutdown(wait=True)
        if named:
            return {name: results[i] for i, name in enumerate(names)}
        return results

    def map(self, func: Callable[..., T], items: Iterable[Any], *args: Any, executor: cf.Executor | None = None,
            max_workers: int | None = None, **kwargs: Any) -> list[ResultRef[T]]:
        """``submit(func, item, *args, **kwargs)`` for each item, cached per item. The stored
        results are looked up first, all in one call into the engine; only the items without
        one are submitted (in parallel on ``executor`` or ``max_workers`` threads)."""
        items = list(items)
        call_kwargs = dict(kwargs)  # _options takes the option arguments out of it
        fn, options = _options(func, call_kwargs)
        results: list[ResultRef | None] = self._stored_results(fn, options, items, args, call_kwargs)
        rest = [i for i, r in enumerate(results) if r is None]
        if not rest:
            return results  # type: ignore[return-value]
        if executor is None and (max_workers or self.max_workers) == 1:
            for i in rest:
                results[i] = self._submit(fn, (items[i], *args), dict(call_kwargs), options)
        else:
            batch = [(func, (items[i], *args), kwargs) for i in rest]
            for i, r in zip(rest, self.submit_many(batch, max_workers=max_workers, executor=executor)):
                results[i] = r
        return results  # type: ignore[return-value]

    def _stored_results(self, fn: Callable, options: _TaskOptions, items: list, args: tuple,
                        call_kwargs: dict) -> list[ResultRef | None]:
        """For ``map``: the stored result of each call, or ``None`` where there is none (or it
        cannot be looked up here: the call then goes the way of ``submit``, which warns, claims
        and counts the miss). ``call_kwargs`` holds no option arguments."""
        found: list[ResultRef | None] = [None] * len(items)
        if options.force or not options.cache or not items:
            return found
        plan = self._plan(fn)
        keys, where = [], []
        for i, item in enumerate(items):
            try:
                bound = plan.bind(fn, (item, *args), call_kwargs)
                key, _ = self._key(fn, plan, bound, options)
            except Exception:  # noqa: BLE001 - unkeyable or a bad call: submit says why
                continue
            keys.append(key)
            where.append(i)
        for i, key, h in zip(where, keys, self._vault.fetch_present(keys)):
            if h is not None:
                found[i] = self._served(key, h)
        return found

    # -- inspection and maintenance (the CLI's commands) ------------------------------------
    def log(self, func_name: str | None = None, limit: int | None = 50, status: TaskStatus | str | None = None,
            tags: Mapping[str, str | None] | None = None, all: bool = True) -> list[Commit]:
        """Runs, newest first, as cashet lists its commits: every run (live entries, the runs
        they replaced, failed runs), or with ``status`` the runs in that state (cashet's
        ``TaskStatus`` or its value, or ``"live"`` / ``"superseded"`` / ``"corrupt"``);
        ``all=False`` lists live entries only (as ``taskvault log``). ``limit=None`` lists
        them all."""
        engine_status, all = _engine_status(status, all)
        if engine_status == "none":
            return []
        if tags and len(tags) > 1:
            out: dict[str, Commit] | None = None
            for k, v in tags.items():
                got = {c.hash: c for c in self.log(func_name, None, status, {k: v}, all)}
                out = got if out is None else {h: c for h, c in out.items() if h in got}
            res = sorted((out or {}).values(), key=lambda c: c["created_ms"], reverse=True)
            return res[:limit] if limit else res
        tag = next(iter(tags.items())) if tags else None
        if engine_status == "completed":
            # Live entries and the runs they replaced: each through the status index, then
            # merged newest first.
            runs = [c for s in ("live", "superseded") for c in _entries(self._vault.list(func_name, tag, s, None, limit, True))]
            runs.sort(key=lambda c: c["created_ms"], reverse=True)
            return runs[:limit] if limit else runs
        return _entries(self._vault.list(func_name, tag, engine_status, None, limit, all))

    def _resolve(self, hash: str) -> Commit | None:
        """The run ``hash`` names (a prefix of a run id or key), or ``None``; an ambiguous
        prefix raises ``AmbiguousHashError`` (a ``ValueError``)."""
        if not hash or not isinstance(hash, str) or any(ch not in _HEX for ch in hash.lower()):
            return None
        try:
            return commit_from_entry(json.loads(self._vault.show(hash)))
        except _native.AmbiguousError as e:
            raise AmbiguousHashError(f"Ambiguous prefix {hash!r}: {e}") from None
        except _native.NotFoundError:
            return None

    def show(self, hash: str) -> Commit | None:
        """The run ``hash`` names, or ``None`` if there is none."""
        return self._resolve(hash)

    def get(self, hash: str) -> Any:
        """The result of the run ``hash`` names. ``KeyError`` if there is no such run,
        ``ValueError`` if it has no result (it failed, or its result was removed)."""
        run = self._resolve(hash)
        if run is None:
            raise HashNotFoundError(f"run {hash!r} not found")
        if run.status is not TaskStatus.COMPLETED or run.output_ref is None:
            raise ValueError(f"run {run.short_hash()} of {run.task_def.func_name} has no result "
                             f"({run.error or run['status']})")
        got = self._vault.run_bytes(run.hash)
        if got is None:
            raise TaskError(f"the stored result of {hash} failed verification")
        data, raw = got
        return data if raw else self._serializer.loads(data)

    def history(self, hash: str) -> list[Commit]:
        """Every run of the key of the run ``hash`` names, oldest first (``[]`` if none)."""
        if self._resolve(hash) is None:
            return []
        return _entries(self._vault.history(hash))

    def diff(self, hash_a: str, hash_b: str) -> dict[str, Any]:
        """What differs between two runs: code, arguments and outputs (``KeyError`` if either
        is missing). Outputs up to 10 MiB are loaded and compared; their reprs are included."""
        runs = []
        for h in (hash_a, hash_b):
            run = self._resolve(h)
            if run is None:
                raise HashNotFoundError(f"run {h!r} not found")
            runs.append(run)
        a, b = runs
        out: dict[str, Any] = {
            "a": {"hash": a.hash[:12], "func": a.task_def.func_name, "time": a.created_at.isoformat()},
            "b": {"hash": b.hash[:12], "func": b.task_def.func_name, "time": b.created_at.isoformat()},
            "func_changed": a.task_def.func_hash != b.task_def.func_hash or a.task_def.func_name != b.task_def.func_name,
            "args_changed": a.task_def.args_hash != b.task_def.args_hash,
            "key_changed": a["key"] != b["key"],
            "size": (a["size"], b["size"]),
            "duration_ms": (a.get("duration_ms"), b.get("duration_ms")),
        }
        if a.task_def.func_source != b.task_def.func_source:
            out["source_diff"] = {"a_source": a.task_def.func_source, "b_source": b.task_def.func_source}
        if a.task_def.args_snapshot != b.task_def.args_snapshot:
            out["args_diff"] = {"a_args": a.task_def.args_snapshot.decode("utf-8", "replace"),
                                "b_args": b.task_def.args_snapshot.decode("utf-8", "replace")}
        if max(a["size"], b["size"]) > _DIFF_LOAD_LIMIT:
            out["output_changed"] = "skipped_large_output"
            out["a_output_size"], out["b_output_size"] = a["size"], b["size"]
            return out
        try:
            va = self.get(a.hash) if a.output_ref else None
            vb = self.get(b.hash) if b.output_ref else None
            changed = bool(va != vb) if a.output_ref and b.output_ref else a.output_ref != b.output_ref
        except Exception:  # noqa: BLE001 - an output that cannot be loaded or compared
            out["output_changed"] = "unable_to_compare"
            return out
        out["output_changed"] = changed
        if changed:
            out["a_output_repr"], out["b_output_repr"] = _short(va, 1000), _short(vb, 1000)
        return out

    def rm(self, hash: str) -> bool:
        """Removes exactly the run ``hash`` names (the live one takes its key's entry with it;
        an older run only leaves the history); ``False`` if there was none."""
        run = self._resolve(hash)
        if run is None:
            return False
        return self._vault.remove_runs([run.hash]) > 0

    def gc(self, older_than: _dt.timedelta | None = None, max_size_bytes: int | None = None) -> int:
        """Removes expired entries, entries unused for ``older_than`` (cashet's default: 30
        days) and, with ``max_size_bytes``, the least recently used beyond it. Returns how many
        entries went."""
        if older_than is None:
            older_than = _dt.timedelta(days=30)
        before = json.loads(self._vault.stats())["runs"]
        self._vault.gc(older_than.total_seconds(), max_size_bytes)
        return max(0, before - json.loads(self._vault.stats())["runs"])

    def clear(self) -> int:
        """Removes every entry; returns how many there were."""
        return self._vault.clear()

    def invalidate(self, tags: Mapping[str, str | None]) -> int:
        return sum(self._vault.invalidate(k, v) for k, v in tags.items())

    def stats(self) -> dict[str, Any]:
        """The vault's counters, under TaskVault's names and cashet's."""
        s = json.loads(self._vault.stats())
        s.update({
            "total_commits": s["runs"],
            "completed_commits": s["runs"] - s["failed_runs"],
            # Outputs of up to 64 bytes live in their run's own row: objects of their own.
            "stored_objects": s["blobs"] + s["small_outputs"],
            "disk_bytes": s["stored_bytes"],
            "blob_objects": s["blobs"] - s["inline_blobs"],
            "blob_bytes": s["stored_bytes"] - s["inline_bytes"] - s["small_bytes"],
            "inline_objects": s["inline_blobs"] + s["small_outputs"],
            "inline_bytes": s["inline_bytes"] + s["small_bytes"],
        })
        return s

    def get_stats(self) -> dict[str, Any]:
        """The first seed's SDK name for ``stats()``."""
        return self.stats()

    def verify(self) -> dict[str, Any]:
        return json.loads(self._vault.verify())

    def export(self, path: str | os.PathLike, func_name: str | None = None) -> dict[str, Any]:
        return json.loads(self._vault.export(os.fspath(path), func_name))

    def import_archive(self, path: str | os.PathLike) -> ImportResult:
        report = json.loads(self._vault.import_archive(os.fspath(path)))
        return ImportResult(int(report.get("imported", 0)), int(report.get("skipped", 0)))

    # -- the first seed's SDK ---------------------------------------------------------------
    def cache_result(self, task: str, input_bytes: bytes, output_bytes: bytes) -> str:
        """Stores ``output_bytes`` as the result of ``task`` on ``input_bytes``; returns the
        run id."""
        return self._vault.cache_result(task, bytes(input_bytes), bytes(output_bytes))

    def get_cached_result(self, task: str, input_bytes: bytes) -> tuple[bytes | None, bool]:
        """``(output_bytes, True)`` on a hit, ``(None, False)`` on a miss."""
        return self._vault.get_cached_result(task, bytes(input_bytes))


_DIFF_LOAD_LIMIT = 10 * 1024 * 1024
_HEX = frozenset("0123456789abcdef")

_STATUS_NAMES = {"completed": "completed", "failed": "failed", "pending": "none", "running": "none",
                 "cached": "none", "live": "live", "superseded": "superseded", "corrupt": "corrupt"}


def _engine_status(status: TaskStatus | str | None, all: bool) -> tuple[str | None, bool]:
    if status is None:
        return None, all
    name = status.value if isinstance(status, TaskStatus) else status
    try:
        return _STATUS_NAMES[name], True
    except (KeyError, TypeError):
        valid = ", ".join(s.value for s in TaskStatus)
        raise ValueError(f"Invalid status {status!r}: one of {valid} (or live, superseded, corrupt)") from None


_DEFAULT_OPTIONS = _TaskOptions()


def _options(func: Callable, kwargs: dict) -> tuple[Callable, _TaskOptions]:
    """The function to call and its options: a registered task's, overridden by the call's
    option arguments (removed from `kwargs`)."""
    over = {}
    if kwargs:
        for k in [k for k in kwargs if k in _CALL_OPTIONS]:
            over[_CALL_OPTIONS[k]] = kwargs.pop(k)
    if isinstance(func, _Task):
        return func.fn, func.options.merged(over) if over else func.options
    return func, _TaskOptions().merged(over) if over else _DEFAULT_OPTIONS


_RAW_BYTES_SERIALIZERS = (PickleSerializer, SafePickleSerializer)

_STAR_ARGS = inspect.CO_VARARGS | inspect.CO_VARKEYWORDS


class _Plan:
    """What every call of one callable shares: how its arguments bind to its signature, and the
    part of a run's recorded details that does not depend on the arguments."""

    __slots__ = ("sig", "names", "name", "_state", "_head")

    def __init__(self, func: Callable):
        # A function's code and defaults can be reassigned: the plan holds only while they
        # are the ones it was made from.
        self._state = _function_state(func)
        self.name = display_name(func)
        try:
            self.sig: inspect.Signature | None = inspect.signature(func)
        except (TypeError, ValueError):
            self.sig = None
        # A plain function whose parameters are all positional-or-keyword binds positional
        # calls without `Signature.bind` (the same result: names in order, defaults applied).
        self.names: tuple[str, ...] | None = None
        code = getattr(func, "__code__", None)
        custom = hasattr(func, "__wrapped__") or hasattr(func, "__signature__")  # what `signature` follows
        if type(func) is types.FunctionType and code is not None and self.sig is not None and not custom:
            plain = code.co_posonlyargcount == 0 and code.co_kwonlyargcount == 0 and not code.co_flags & _STAR_ARGS
            if plain:
                self.names = tuple(code.co_varnames[: code.co_argcount])
        self._head: str | None = None

    def current(self, func: Callable) -> bool:
        state = self._state
        if state is None:
            return True
        code, defaults, kwdefaults = state
        return func.__code__ is code and func.__defaults__ is defaults and func.__kwdefaults__ is kwdefaults

    def bind(self, func: Callable, args: tuple, kwargs: dict) -> Any:
        names = self.names
        if names is not None and not kwargs:
            missing = len(names) - len(args)
            if missing == 0:
                return dict(zip(names, args))
            defaults = func.__defaults__ or ()
            if 0 < missing <= len(defaults):
                return dict(zip(names, args + defaults[len(defaults) - missing:]))
        if self.sig is None:
            return (args, kwargs)
        try:
            ba = self.sig.bind(*args, **kwargs)
        except TypeError as e:
            raise TypeError(f"{display_name(func)}(): {e}") from None
        ba.apply_defaults()
        return ba.arguments

    def details_head(self, func: Callable, client: "Client") -> str:
        """The recorded details up to the arguments: JSON text without its closing brace."""
        if self._head is None or self._state is None:
            head = {
                "kind": "python",
                "function": display_name(func),
                "module": module_of(func),
                "source": client._identity.source(func),
                "serializer": client._serializer_name.decode(),
                "python": sys.version.split()[0],
            }
            self._head = json.dumps(head)[:-1]
        return self._head


def _function_state(func: Callable) -> tuple | None:
    if type(func) is not types.FunctionType:
        return None
    return (func.__code__, func.__defaults__, func.__kwdefaults__)


def _display_args(bound: Any) -> dict[str, Any]:
    if isinstance(bound, dict):
        return bound
    args, kwargs = bound
    return {**{f"arg{i}": a for i, a in enumerate(args)}, **kwargs}


def _failure(func: Callable, e: BaseException, attempts: int) -> TaskError:
    tb = "".join(traceback.format_exception(e))
    tries = f" after {attempts} attempts" if attempts > 1 else ""
    if isinstance(e, (TimeoutError, asyncio.TimeoutError)) and not str(e):
        e = TimeoutError("timed out")
    return TaskError(f"{display_name(func)} failed{tries}: {type(e).__name__}: {e}", tb)


def _backoff(attempt: int) -> float:
    return min(0.1 * 2 ** (attempt - 1), 2.0)


def _run_coroutine(coro: Any) -> Any:
    """Runs an ``async def`` function's coroutine to completion from synchronous code (on a
    thread of its own if this thread already runs an event loop)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    with cf.ThreadPoolExecutor(max_workers=1) as ex:
        return ex.submit(asyncio.run, coro).result()


def _call(func: Callable, args: tuple, kwargs: dict, timeout: float | None) -> Any:
    if inspect.iscoroutinefunction(func):
        async def bounded() -> Any:
            return await asyncio.wait_for(func(*args, **kwargs), timeout)

        return _run_coroutine(bounded())
    if timeout is None:
        return func(*args, **kwargs)
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["value"] = func(*args, **kwargs)
        except BaseException as e:  # noqa: BLE001 - handed to the caller
            box["error"] = e

    t = threading.Thread(target=run, daemon=True, name=f"taskvault:{display_name(func)}")
    t.start()
    t.join(timeout)
    if t.is_alive():
        # Python cannot stop a thread: we stop waiting, and the attempt counts as failed.
        raise TimeoutError(f"{display_name(func)} did not finish within {timeout} s")
    if "error" in box:
        raise box["error"]
    return box["value"]


def _normalize_item(t: Any, i: Any) -> tuple[Callable, tuple, dict]:
    if callable(t):
        return t, (), {}
    if isinstance(t, tuple) and 1 <= len(t) <= 3 and callable(t[0]):
        f = t[0]
        if len(t) > 1 and not isinstance(t[1], tuple):
            raise TypeError(f"task {i!r}: expected args as tuple, got {type(t[1]).__name__}")
        if len(t) > 2 and not isinstance(t[2], Mapping):
            raise TypeError(f"task {i!r}: expected kwargs as dict, got {type(t[2]).__name__}")
        a = t[1] if len(t) > 1 else ()
        k = dict(t[2]) if len(t) > 2 else {}
        return f, a, k
    raise TypeError(f"task {i!r}: expected callable, (callable, args) or (callable, args, kwargs), got {t!r}")


def _task_refs(v: Any) -> set[Any]:
    out: set[Any] = set()

    def walk(x: Any) -> None:
        if isinstance(x, TaskRef):
            out.add(x.key)
        elif isinstance(x, (list, tuple, set, frozenset)):
            for y in x:
                walk(y)
        elif isinstance(x, dict):
            for y in x.values():
                walk(y)

    walk(v)
    return out


def _substitute(v: Any, result_of: Callable[[Any], Any]) -> Any:
    if isinstance(v, TaskRef):
        return result_of(v.key)
    t = type(v)
    if t in (list, tuple):
        return t(_substitute(x, result_of) for x in v)
    if t in (set, frozenset):
        return t(_substitute(x, result_of) for x in v)
    if t is dict:
        return {k: _substitute(x, result_of) for k, x in v.items()}
    return v


def _topological(deps: list[set[int]]) -> list[int]:
    order: list[int] = []
    state = [0] * len(deps)  # 0 new, 1 visiting, 2 done

    for root in range(len(deps)):
        if state[root]:
            continue
        stack = [(root, iter(sorted(deps[root])))]
        state[root] = 1
        while stack:
            node, it = stack[-1]
            nxt = next(it, None)
            if nxt is None:
                stack.pop()
                state[node] = 2
                order.append(node)
            elif state[nxt] == 1:
                raise ValueError(f"Circular dependency in the batch, through task {nxt}")
            elif state[nxt] == 0:
                state[nxt] = 1
                stack.append((nxt, iter(sorted(deps[nxt]))))
    return order


def _remote_submit(store_dir: str, serializer: Any, func: Callable, args: tuple, kwargs: dict,
                   store: str | None = None) -> tuple:
    """Runs one submit in another process (a process pool, Dask, Ray) on the same vault."""
    c = _client_for(store_dir, serializer, store)
    r = c.submit(func, *args, **kwargs)
    # The caller looks the run up by id: commit it before answering.
    c._vault.flush()
    return (r.commit_hash, r.hash, r.size, r.task)
