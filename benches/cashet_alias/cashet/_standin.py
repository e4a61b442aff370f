"""Stand-ins for cashet names that TaskVault has no counterpart for (its storage classes,
executors, HTTP server, click CLI and private helpers). Importing one works, so that a test
module imports; using one raises ``NotImplementedError`` naming what it was."""

from __future__ import annotations

from typing import Any


def standin(module: str, name: str) -> Any:
    what = f"{module}.{name}"

    class StandIn:
        __qualname__ = __name__ = name

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            raise NotImplementedError(f"{what} is cashet's own machinery; TaskVault has no counterpart")

        def __init_subclass__(cls, **kwargs: Any) -> None:
            pass

        @classmethod
        def __class_getitem__(cls, item: Any) -> Any:
            return cls

    StandIn.__module__ = module
    return StandIn


def module_getattr(module: str):
    def __getattr__(name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        return standin(module, name)

    return __getattr__
