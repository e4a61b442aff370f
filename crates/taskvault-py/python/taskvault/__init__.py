"""TaskVault for Python: memoize functions and pipelines on TaskVault's content-addressed cache.

>>> from taskvault import Client
>>> client = Client()                                    # the vault `taskvault` uses here
>>> ref = client.submit(expensive_transform, data, scale=2.0)
>>> ref.load()                                           # equal arguments next time: instant

A call's key is its code identity (AST-normalized source, defaults, referenced helpers and
values), its arguments bound to the signature with defaults applied (a typed, canonical
encoding, never ``repr``) and the serializer. ``docs/keys.md`` in the repository lists it all.
"""

from __future__ import annotations

from ._native import AmbiguousError, ConfigError, NotFoundError, TaskVaultError, TooLargeError
from ._native import Vault as _Vault
from ._async import AsyncClient, AsyncResultRef
from ._client import AmbiguousHashError, Client, Entry, HashNotFoundError, ResultRef, TaskError, TaskRef
from ._encode import Unencodable
from ._identity import KeyWarning
from ._models import Commit, ImportResult, ObjectRef, StorageTier, TaskDef, TaskStatus
from ._serializers import JsonSerializer, PickleSerializer, SafePickleSerializer

#: cashet's name for the warning about a value that could not be part of a key.
ClosureWarning = KeyWarning

__all__ = [
    "Client", "AsyncClient", "ResultRef", "AsyncResultRef", "TaskRef", "TaskError", "Entry",
    "Commit", "TaskDef", "TaskStatus", "ObjectRef", "StorageTier", "ImportResult",
    "PickleSerializer", "SafePickleSerializer", "JsonSerializer", "Unencodable", "KeyWarning", "ClosureWarning",
    "TaskVaultError", "NotFoundError", "AmbiguousError", "HashNotFoundError", "AmbiguousHashError",
    "ConfigError", "TooLargeError", "cache_result", "get_cached_result",
]

_default: dict[str, _Vault] = {}


def _vault(store_dir: str | None) -> _Vault:
    v = _default.get(store_dir or "")
    if v is None:
        v = _default[store_dir or ""] = _Vault(store_dir, None)
    return v


def cache_result(task: str, input_bytes: bytes, output_bytes: bytes, store_dir: str | None = None) -> str:
    """The first seed's SDK: stores ``output_bytes`` as the result of ``task`` on ``input_bytes``;
    returns the run id."""
    return _vault(store_dir).cache_result(task, bytes(input_bytes), bytes(output_bytes))


def get_cached_result(task: str, input_bytes: bytes, store_dir: str | None = None) -> tuple[bytes | None, bool]:
    """The first seed's SDK: ``(output_bytes, True)`` on a hit, ``(None, False)`` on a miss."""
    return _vault(store_dir).get_cached_result(task, bytes(input_bytes))
