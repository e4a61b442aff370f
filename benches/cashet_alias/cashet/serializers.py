from taskvault import JsonSerializer, PickleSerializer, SafePickleSerializer  # noqa: F401

from ._standin import module_getattr

Serializer = object
__getattr__ = module_getattr("cashet.serializers")
