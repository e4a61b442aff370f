"""``AsyncClient``: the client for asyncio. Every engine call runs in a worker thread
(``asyncio.to_thread``), so the event loop never blocks on disk or on a claim."""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import os
from typing import Any, Callable, Generic, Iterable, TypeVar

from ._client import Client, ResultRef

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
    """Mirrors ``Client`` with ``async`` methods; takes the same arguments."""

    def __init__(self, store_dir: str | os.PathLike | None = None, serializer: Any = None, max_workers: int = 1,
                 config: str | os.PathLike | None = None):
        self.sync = Client(store_dir=store_dir, serializer=serializer, max_workers=max_workers, config=config)

    async def __aenter__(self) -> "AsyncClient":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()

    async def close(self) -> None:
        self.sync.close()

    def task(self, fn: Callable | None = None, **options: Any) -> Any:
        """Registers ``fn``; calling it returns an awaitable ``AsyncResultRef``."""

        def wrap(f: Callable) -> Any:
            registered = self.sync.task(f, **options)

            async def call(*args: Any, **kwargs: Any) -> AsyncResultRef:
                return await self.submit(registered, *args, **kwargs)

            call.__wrapped__ = f  # type: ignore[attr-defined]
            return call

        return wrap(fn) if fn is not None else wrap

    async def submit(self, func: Callable[..., T], *args: Any, **kwargs: Any) -> AsyncResultRef[T]:
        ref = await asyncio.to_thread(self.sync.submit, func, *_unwrap(args), **_unwrap(kwargs))
        return AsyncResultRef(ref)

    async def submit_many(self, tasks: Iterable[Any], max_workers: int | None = None,
                          executor: cf.Executor | None = None) -> list[AsyncResultRef]:
        refs = await asyncio.to_thread(self.sync.submit_many, _unwrap(list(tasks)), max_workers, executor)
        return [AsyncResultRef(r) for r in refs]

    async def map(self, func: Callable[..., T], items: Iterable[Any], *args: Any, **kwargs: Any) -> list[AsyncResultRef[T]]:
        refs = await asyncio.to_thread(self.sync.map, func, list(items), *_unwrap(args), **_unwrap(kwargs))
        return [AsyncResultRef(r) for r in refs]


def _mirror(name: str) -> Callable:
    method = getattr(Client, name)

    async def call(self: AsyncClient, *args: Any, **kwargs: Any) -> Any:
        return await asyncio.to_thread(getattr(self.sync, name), *args, **kwargs)

    call.__name__ = name
    call.__doc__ = method.__doc__
    return call


for _name in ("log", "show", "get", "history", "diff", "rm", "gc", "clear", "invalidate", "stats", "verify",
              "export", "import_archive"):
    setattr(AsyncClient, _name, _mirror(_name))
