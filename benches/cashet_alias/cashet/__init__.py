"""An alias of TaskVault under cashet's name, for running cashet's own test suite against
TaskVault (benches/cashet_suite.sh). The public names map onto TaskVault's; the rest are
stand-ins that raise when used (see _standin.py)."""

from taskvault import (  # noqa: F401
    AsyncClient,
    AsyncResultRef,
    Client,
    ClosureWarning,
    Commit,
    JsonSerializer,
    ObjectRef,
    PickleSerializer,
    ResultRef,
    SafePickleSerializer,
    TaskDef,
    TaskError,
    TaskRef,
    TaskStatus,
)

from ._standin import module_getattr, standin

Serializer = object
Store = AsyncStore = Executor = object
LocalExecutor = standin("cashet", "LocalExecutor")
SQLiteStore = standin("cashet", "SQLiteStore")
AsyncSQLiteStore = standin("cashet", "AsyncSQLiteStore")
RedisStore = standin("cashet", "RedisStore")
AsyncRedisStore = standin("cashet", "AsyncRedisStore")

__getattr__ = module_getattr("cashet")
