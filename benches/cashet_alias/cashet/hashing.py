from taskvault import KeyWarning as ClosureWarning  # noqa: F401
from taskvault import KeyWarning as UnhashableArgWarning  # noqa: F401

from ._standin import module_getattr

__getattr__ = module_getattr("cashet.hashing")
