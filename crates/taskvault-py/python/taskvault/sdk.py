"""The first seed's Python SDK, as its README shows it::

    from taskvault.sdk import Client

    client = Client(".taskvault/config.yaml")      # a config file, or a vault directory
    cached, hit = client.get_cached_result("aggregate", input_bytes)
    if not hit:
        client.cache_result("aggregate", input_bytes, output_bytes)
    client.get_stats()

``Client`` is TaskVault's client (``submit``, ``task``, ``map`` and the rest work too).
"""

from __future__ import annotations

from . import cache_result, get_cached_result
from ._client import Client

__all__ = ["Client", "cache_result", "get_cached_result"]
