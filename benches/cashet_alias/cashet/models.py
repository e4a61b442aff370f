from taskvault import Commit, ObjectRef, StorageTier, TaskDef, TaskError, TaskStatus  # noqa: F401

from ._standin import module_getattr

__getattr__ = module_getattr("cashet.models")
