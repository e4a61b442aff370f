"""What ``log``, ``show`` and ``history`` return: runs as cashet's model objects.

A run is a ``Commit``: cashet's fields (``hash``, ``task_def``, ``status``, ``output_ref``,
``parent_hash``, ``input_refs``, ``created_at``, ``expires_at``, ``error``, ``tags``), built from
the engine's entry. The entry itself stays reachable: ``commit.entry`` is the whole document the
CLI shows (key, ingredients, provenance, access counts), and ``commit["field"]`` reads it. An
attribute that does not exist raises ``AttributeError``.
"""

from __future__ import annotations

import base64
import datetime as _dt
import enum
import json
from dataclasses import dataclass, field
from typing import Any

__all__ = ["TaskStatus", "StorageTier", "ObjectRef", "TaskDef", "Commit", "ImportResult", "commit_from_entry"]


class TaskStatus(enum.Enum):
    """A run's state, with cashet's values. Stored runs are ``COMPLETED`` or ``FAILED``."""

    PENDING = "pending"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CACHED = "cached"


class StorageTier(enum.Enum):
    """Where an output's bytes live: in the metadata database or as a blob file."""

    INLINE = "inline"
    BLOB = "blob"
    EXTERNAL = "external"


@dataclass(frozen=True)
class ObjectRef:
    """A stored object by digest and size."""

    hash: str
    size: int = 0
    tier: StorageTier = StorageTier.BLOB

    def short(self) -> str:
        return self.hash[:12]


@dataclass
class TaskDef:
    """What was called: the task's name, its code and argument identities, and its options."""

    func_hash: str
    func_name: str
    func_source: str
    args_hash: str
    args_snapshot: bytes
    dep_versions: dict[str, str] = field(default_factory=dict)
    cache: bool = True
    tags: dict[str, str] = field(default_factory=dict)
    retries: int = 0
    force: bool = False
    timeout: _dt.timedelta | None = None
    ttl: _dt.timedelta | None = None

    @property
    def fingerprint(self) -> str:
        return f"{self.func_hash}:{self.args_hash}"


@dataclass(repr=False)
class Commit:
    """One run of a task."""

    hash: str
    task_def: TaskDef
    input_refs: list[ObjectRef] = field(default_factory=list)
    output_ref: ObjectRef | None = None
    parent_hash: str | None = None
    status: TaskStatus = TaskStatus.PENDING
    created_at: _dt.datetime = field(default_factory=lambda: _dt.datetime.now(_dt.timezone.utc))
    claimed_at: _dt.datetime = field(default_factory=lambda: _dt.datetime.now(_dt.timezone.utc))
    error: str | None = None
    tags: dict[str, str] = field(default_factory=dict)
    expires_at: _dt.datetime | None = None
    #: The engine's entry document (what `taskvault show --json` prints).
    entry: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def fingerprint(self) -> str:
        return self.task_def.fingerprint

    def short_hash(self) -> str:
        return self.hash[:12]

    def summary(self) -> dict[str, Any]:
        return {
            "hash": self.hash,
            "short_hash": self.short_hash(),
            "function": self.task_def.func_name,
            "status": self.status.value,
            "created_at": self.created_at.isoformat(),
            "output": self.output_ref.hash if self.output_ref else None,
            "parent": self.parent_hash[:12] if self.parent_hash else None,
            "tags": self.tags,
        }

    def __repr__(self) -> str:
        return f"Commit({self.short_hash()}, {self.task_def.func_name}, status={self.status.value})"

    # The entry document, as a read-only mapping.
    def __getitem__(self, name: str) -> Any:
        return self.entry[name]

    def __contains__(self, name: object) -> bool:
        return name in self.entry

    def get(self, name: str, default: Any = None) -> Any:
        return self.entry.get(name, default)

    def keys(self) -> Any:
        return self.entry.keys()


class ImportResult(int):
    """What ``import_archive`` did: ``imported`` and ``skipped`` counts. It is also the number
    imported (so ``client.import_archive(p) == 3`` still holds)."""

    imported: int
    skipped: int

    def __new__(cls, imported: int, skipped: int = 0) -> "ImportResult":
        self = super().__new__(cls, imported)
        self.imported = imported
        self.skipped = skipped
        return self

    def __repr__(self) -> str:
        return f"ImportResult(imported={self.imported}, skipped={self.skipped})"


_STATUS = {"live": TaskStatus.COMPLETED, "superseded": TaskStatus.COMPLETED, "failed": TaskStatus.FAILED,
           "corrupt": TaskStatus.FAILED}


def _time(ms: int | None) -> _dt.datetime | None:
    if ms is None:
        return None
    return _dt.datetime.fromtimestamp(ms / 1000, tz=_dt.timezone.utc)


def _ingredient(entry: dict[str, Any], label: str) -> str:
    for name, value in (entry.get("ingredients") or {}).get("extras", []):
        if name == label:
            return base64.b64decode(value).hex()
    return ""


def _seconds(v: Any) -> _dt.timedelta | None:
    return None if v is None else _dt.timedelta(seconds=v)


def commit_from_entry(entry: dict[str, Any]) -> Commit:
    details = entry.get("details") or {}
    if not isinstance(details, dict):
        details = {}
    options = details.get("options") or {}
    tags = dict(entry.get("tags") or {})
    args = details.get("args")
    task_def = TaskDef(
        func_hash=_ingredient(entry, "py.code") or entry.get("key", ""),
        func_name=entry.get("task", ""),
        func_source=details.get("source", ""),
        args_hash=_ingredient(entry, "py.args"),
        args_snapshot=json.dumps(args, sort_keys=True).encode() if args is not None else b"",
        cache=options.get("cache", True),
        tags=tags,
        retries=options.get("retries", 0),
        force=options.get("force", False),
        timeout=_seconds(options.get("timeout")),
        ttl=_seconds(options.get("ttl")),
    )
    outputs = entry.get("outputs") or []
    status = _STATUS.get(entry.get("status", ""), TaskStatus.FAILED)
    output_ref = None
    if outputs and status is TaskStatus.COMPLETED:
        # As `ResultRef.hash` shows it: hex, without the algorithm's prefix.
        digest = outputs[0].get("digest", "") if len(outputs) == 1 else entry.get("key", "")
        output_ref = ObjectRef(digest.rpartition(":")[2], int(entry.get("size", 0)))
    created = _time(entry.get("created_ms")) or _dt.datetime.now(_dt.timezone.utc)
    error = details.get("error")
    if entry.get("status") == "corrupt":
        error = "its stored result failed verification"
    return Commit(
        hash=entry.get("id", ""),
        task_def=task_def,
        input_refs=[ObjectRef(d) for d in details.get("inputs", [])],
        output_ref=output_ref,
        parent_hash=entry.get("parent"),
        status=status,
        created_at=created,
        claimed_at=created,
        error=error,
        tags=tags,
        expires_at=_time(entry.get("expires_ms")),
        entry=entry,
    )
