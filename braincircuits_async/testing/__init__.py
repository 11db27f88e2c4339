"""A fake BrainCircuits.io server, to test pipelines offline and fast.

`FakeBrainCircuits` is a small ASGI app that answers the segment-property endpoint
like the real service: same URL, same tokens, same JSON shapes, with synthetic values
that are deterministic. It can also misbehave on purpose (rate limits, 5xx errors,
dropped connections, truncated bodies, slow answers, a materialization that moves on
mid-download), so you can check that your code copes before it meets the real thing.

Run it in-process, without a network, through ``httpx.ASGITransport``::

    import anyio
    import httpx

    from braincircuits_async.testing import FakeBrainCircuits

    async def main() -> None:
        fake = FakeBrainCircuits()
        transport = httpx.ASGITransport(app=fake)
        async with httpx.AsyncClient(transport=transport, base_url="http://fake.test") as http:
            response = await http.post(
                "/circuit/segment/property/link_pre",
                params={"project": "fruitfly_fafb_flywire"},
                headers={
                    "Authorization": f"Bearer {fake.token}",
                    "Authorization-Cave": f"Bearer {fake.cave_token}",
                },
                json={"segments": [720575940634474894, 720575940630280234]},
            )
        answer = response.json()
        print(answer["materialized_timestamp"])  # 1677042002
        print(answer["results"]["720575940634474894"])  # {'nr_pre': ..., ...}
        # The fake knows what it served, so a test can check every value:
        assert answer["results"]["720575940634474894"] == fake.expected(
            "link_pre", 720575940634474894
        )
        print(fake.log.requests, fake.log.statuses)  # 1 Counter({200: 1})

    anyio.run(main)

or on a real loopback port (needs ``pip install "braincircuits-async[fake]"``)::

    from braincircuits_async.testing import FakeBrainCircuits, serve_in_thread

    fake = FakeBrainCircuits(latency=0.05, faults={"503": 0.1, "drop": 0.02})
    with serve_in_thread(fake) as base_url:  # e.g. "http://127.0.0.1:53127"
        ...  # point your client at base_url

What the fake promises:

* Values depend only on (project, property, segment id, materialized timestamp), so
  two runs give the same numbers, and `FakeBrainCircuits.rollover` changes them.
* About ``unknown_fraction`` of the ids (and id 0, always) are unknown: they are left
  out of ``results``, as the real API leaves out ids it does not know. Which ids are
  unknown depends only on the project and the id.
* Injected faults never hit the same request (same project, property and ids) more
  than ``max_consecutive_faults`` times in a row, so a client that retries correctly
  always finishes.
* Tokens are checked but never echoed and never logged: `FakeLog` keeps header
  names, not values.
"""

# The parts live in private modules, one job each (docs/design.md draws the request
# path through them); uvicorn is imported by `_runner` only when a server starts.

from .._fake_data import DOCUMENTED_PROPERTIES
from ._app import (
    DEFAULT_CAVE_PROJECTS,
    DEFAULT_CAVE_TOKEN,
    DEFAULT_MATERIALIZED_TIMESTAMP,
    DEFAULT_PROJECT,
    DEFAULT_PROJECTS,
    DEFAULT_TOKEN,
    FakeBrainCircuits,
)
from ._faults import FAULT_KINDS
from ._log import FakeLog, RequestRecord
from ._runner import BackgroundServer, serve, serve_in_background, serve_in_thread

__all__ = [
    "DEFAULT_CAVE_PROJECTS",
    "DEFAULT_CAVE_TOKEN",
    "DEFAULT_MATERIALIZED_TIMESTAMP",
    "DEFAULT_PROJECT",
    "DEFAULT_PROJECTS",
    "DEFAULT_TOKEN",
    "DOCUMENTED_PROPERTIES",
    "FAULT_KINDS",
    "BackgroundServer",
    "FakeBrainCircuits",
    "FakeLog",
    "RequestRecord",
    "serve",
    "serve_in_background",
    "serve_in_thread",
]

# Public names say where users import them from, as `braincircuits_async` does.
for _name in __all__:
    _obj = globals()[_name]
    if hasattr(_obj, "__module__") and not isinstance(_obj, str):
        _obj.__module__ = __name__
del _name, _obj
