from taskvault import AsyncResultRef, ResultRef, TaskRef  # noqa: F401

from ._standin import module_getattr

__getattr__ = module_getattr("cashet.dag")
