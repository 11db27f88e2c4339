"""braincircuits-async: bulk-fetch segment properties from BrainCircuits.io, fast and safely.

>>> import braincircuits_async as bca
>>> async with bca.AsyncClient(project="fruitfly_fafb_flywire") as client:  # doctest: +SKIP
...     result = await client.fetch_property("link_pre", [720575940634474894])

See :class:`AsyncClient` for the settings and :mod:`braincircuits_async.testing`
for the fake server to test pipelines offline.
"""

from ._client import AsyncClient
from ._config import ClientConfig, RetryPolicy
from ._exceptions import (
    APIConnectionError,
    APIError,
    APIStatusError,
    APITimeoutError,
    AuthenticationError,
    BrainCircuitsError,
    ClientClosedError,
    DeadlineExceededError,
    IncompleteResultError,
    InconsistentMaterializationError,
    InvalidArgumentError,
    InvalidSegmentError,
    MalformedResponseError,
    MissingDependencyError,
    RateLimitError,
    StoreError,
    UsageError,
)
from ._models import SegmentPropertyResult
from ._progress import Progress
from ._stats import ClientStats
from ._store import ResultStore
from ._stream import PropertyStream
from ._sync import fetch_properties, fetch_property
from ._version import __version__

__all__ = [
    "APIConnectionError",
    "APIError",
    "APIStatusError",
    "APITimeoutError",
    "AsyncClient",
    "AuthenticationError",
    "BrainCircuitsError",
    "ClientClosedError",
    "ClientConfig",
    "ClientStats",
    "DeadlineExceededError",
    "IncompleteResultError",
    "InconsistentMaterializationError",
    "InvalidArgumentError",
    "InvalidSegmentError",
    "MalformedResponseError",
    "MissingDependencyError",
    "Progress",
    "PropertyStream",
    "RateLimitError",
    "ResultStore",
    "RetryPolicy",
    "SegmentPropertyResult",
    "StoreError",
    "UsageError",
    "__version__",
    "fetch_properties",
    "fetch_property",
]

# Public names say where users import them from, as httpx does.
for _name in __all__:
    _obj = globals()[_name]
    if hasattr(_obj, "__module__") and not isinstance(_obj, str):
        _obj.__module__ = __name__
del _name, _obj
