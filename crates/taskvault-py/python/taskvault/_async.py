"""``AsyncClient``: the client for asyncio. Every engine call runs in a worker thread
(``asyncio.to_thread``), so the event loop never blocks on disk or on a claim."""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import functools
import inspect
import os
import time
from typing import Any, Callable, Generic, Iterable, Mapping, TypeVar

from ._client import Client, ResultRef, TaskError, _backoff, _failure, _options, _resolve_refs

__all__ = ["AsyncClient", "AsyncResultRef"]

T = TypeVar("T")


class AsyncResultRef(Generic[T]):
    """A ``ResultRef`` whose ``load()`` is awaitable. Pass it (or its ``ref``) to another task."""

    __slots__ = ("ref",)

    def __init__(self, ref: ResultRef[T]):
        self.ref = ref

    @property
    def hash(self) -> str:
        return self.ref.hash

    @property
    def commit_hash(self) -> str:
        return self.ref.commit_hash

    @property
    def size(self) -> int:
        return self.ref.size

    @property
    def short_hash(self) -> str:
        return self.ref.short_hash

    async def load(self) -> T:
        return await asyncio.to_thread(self.ref.load)

    def __repr__(self) -> str:
        return f"Async{self.ref!r}"


def _unwrap(v: Any) -> Any:
    t = type(v)
    if t is AsyncResultRef:
        return v.ref
    if t in (list, tuple, set, frozenset):
        return t(_unwrap(x) for x in v)
    if t is dict:
        return {k: _unwrap(x) for k, x in v.items()}
    return v


class AsyncClient:
    """Mirrors ``Client`` with ``async`` methods; takes the same arguments. An ``async def``
    task is awaited on the caller's event loop; a plain function runs in a worker thread."""

    def __init__(self, store_dir: str | os.PathLike | None = None, store: Any = None, executor: Any = None,
                 serializer: Any = None, max_workers: int = 1, *, config: str | os.PathLike | None = None):
        self.sync = Client(store_dir, store, executor, serializer, max_workers, config=config)

    @property
    def store_dir(self) -> Any:
        return self.sync.store_dir

    @property
    def serializer(self) -> Any:
        return self.sync.serializer

    @property
    def _registered_tasks(self) -> dict[str, Callable]:
        return self.sync._registered_tasks

    async def __aenter__(self) -> "AsyncClient":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()

    async def close(self) -> None:
        self.sync.close()

    def task(self, fn: Callable | None = None, **options: Any) -> Any:
        """Registers ``fn``; calling it returns an awaitable ``AsyncResultRef``. The wrapper
        keeps ``fn``'s name and docstring."""

        def wrap(f: Callable) -> Any:
            registered = self.sync.task(f, **options)

            @functools.wraps(f)
            async def call(*args: Any, **kwargs: Any) -> AsyncResultRef:
                return await self.submit(registered, *args, **kwargs)

            call._cashet_wrapped_func = f  # type: ignore[attr-defined]
            call._taskvault_task = registered  # type: ignore[attr-defined]
            return call

        return wrap(fn) if fn is not None else wrap

    async def submit(self, func: Callable[..., T], *args: Any, **kwargs: Any) -> AsyncResultRef[T]:
        args, kwargs = _unwrap(args), _unwrap(kwargs)
        # A function registered with `@async_client.task` is submitted as what it registered.
        func = getattr(func, "_taskvault_task", func)
        fn, options = _options(func, kwargs)
        if inspect.iscoroutinefunction(fn):
            return AsyncResultRef(await self._submit_coroutine(fn, args, kwargs, options))
        ref = await asyncio.to_thread(self.sync._submit, fn, args, kwargs, options)
        return AsyncResultRef(ref)

    async def _submit_coroutine(self, fn: Callable, args: tuple, kwargs: dict, options: Any) -> ResultRef:
        """``Client._submit`` for an ``async def`` function: the lookup, claim and save run in
        worker threads, the function itself on this loop."""
        c = self.sync
        plan = c._plan(fn)
        bound = plan.bind(fn, args, kwargs)
        keyed = c._key_or_none(fn, plan, bound, options)
        if keyed is None:
            return c._uncached(fn, await self._attempts(fn, args, kwargs, options, True))
        key, refs = keyed
        hit, claim = await asyncio.to_thread(c._hit_or_claim, key, options)
        if hit is not None:
            return hit
        started = time.monotonic()
        try:
            value = await self._attempts(fn, args, kwargs, options, bool(refs))
        except TaskError as e:
            await asyncio.to_thread(c._record_failure, key, fn, plan, bound, options, claim, refs, e, started)
            raise
        except BaseException:
            if claim is not None:
                claim.release()
            raise
        return await asyncio.to_thread(c._store, key, fn, plan, bound, options, claim, refs, value, started)

    async def _attempts(self, fn: Callable, args: tuple, kwargs: dict, options: Any, refs: bool) -> Any:
        if refs:
            args, kwargs = await asyncio.to_thread(lambda: (_resolve_refs(args), _resolve_refs(kwargs)))
        attempt = 0
        while True:
            try:
                return await asyncio.wait_for(fn(*args, **kwargs), options.timeout)
            except Exception as e:
                attempt += 1
                if attempt > options.retries:
                    raise _failure(fn, e, attempt) from e
                await asyncio.sleep(_backoff(attempt))

    async def submit_many(self, tasks: Any, max_workers: int | None = None, executor: cf.Executor | None = None,
                          **options: Any) -> Any:
        if isinstance(tasks, Mapping):
            got = await asyncio.to_thread(self.sync.submit_many, _unwrap(dict(tasks)), max_workers, executor, **options)
            return {k: AsyncResultRef(r) for k, r in got.items()}
        refs = await asyncio.to_thread(self.sync.submit_many, _unwrap(list(tasks)), max_workers, executor, **options)
        return [AsyncResultRef(r) for r in refs]

    async def map(self, func: Callable[..., T], items: Iterable[Any], *args: Any, **kwargs: Any) -> list[AsyncResultRef[T]]:
        fn = getattr(func, "fn", func)
        if inspect.iscoroutinefunction(fn):
            opts = {k: kwargs.pop(k) for k in list(kwargs) if k in ("max_workers", "executor")}
            limit = asyncio.Semaphore(opts.get("max_workers") or self.sync.max_workers or 1)

            async def one(item: Any) -> AsyncResultRef:
                async with limit:
                    return await self.submit(func, item, *args, **dict(kwargs))

            return list(await asyncio.gather(*(one(item) for item in items)))
        refs = await asyncio.to_thread(self.sync.map, func, list(items), *_unwrap(args), **_unwrap(kwargs))
        return [AsyncResultRef(r) for r in refs]


def _mirror(name: str) -> Callable:
    method = getattr(Client, name)

    async def call(self: AsyncClient, *args: Any, **kwargs: Any) -> Any:
        return await asyncio.to_thread(getattr(self.sync, name), *args, **kwargs)

    call.__name__ = name
    call.__doc__ = method.__doc__
    return call


for _name in ("log", "show", "get", "history", "diff", "rm", "gc", "clear", "invalidate", "stats", "get_stats",
              "verify", "export", "import_archive", "cache_result", "get_cached_result"):
    setattr(AsyncClient, _name, _mirror(_name))
