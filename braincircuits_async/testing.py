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

from __future__ import annotations

import builtins
import collections
import contextlib
import json
import logging
import math
import random
import re
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, MutableMapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

import anyio
import httpx

from . import _fake_data
from ._fake_data import DOCUMENTED_PROPERTIES

if TYPE_CHECKING:
    import uvicorn

__all__ = [
    "DEFAULT_CAVE_PROJECTS",
    "DEFAULT_CAVE_TOKEN",
    "DEFAULT_MATERIALIZED_TIMESTAMP",
    "DEFAULT_PROJECT",
    "DEFAULT_PROJECTS",
    "DEFAULT_TOKEN",
    "DOCUMENTED_PROPERTIES",
    "FAULT_KINDS",
    "FakeBrainCircuits",
    "FakeLog",
    "RequestRecord",
    "serve",
    "serve_in_thread",
]

#: The BrainCircuits.io token the fake accepts unless told otherwise.
DEFAULT_TOKEN = "fake-token"
#: The CAVE token the fake accepts for CAVE-managed projects unless told otherwise.
DEFAULT_CAVE_TOKEN = "fake-cave-token"
#: The project `FakeBrainCircuits.expected` uses when none is given.
DEFAULT_PROJECT = "fruitfly_fafb_flywire"
#: The projects the fake knows by default.
DEFAULT_PROJECTS: frozenset[str] = frozenset(
    {"fruitfly_fafb_flywire", "fruitfly_fanc_cave", "hemibrain"}
)
#: The projects that need a CAVE token by default (FlyWire and FANC, as on the real service).
DEFAULT_CAVE_PROJECTS: frozenset[str] = frozenset({"fruitfly_fafb_flywire", "fruitfly_fanc_cave"})
#: The materialization the fake starts at (the one in the API documentation's example).
DEFAULT_MATERIALIZED_TIMESTAMP = 1677042002
#: The faults the fake can inject, for the ``faults=`` mapping.
FAULT_KINDS: tuple[str, ...] = ("429", "500", "502", "503", "504", "drop", "truncate", "slow")

_ENDPOINT = re.compile(r"/circuit/segment/property/([A-Za-z0-9_-]+)")
_MAX_SEGMENT = 2**64
_JSON_HEADERS = [(b"content-type", b"application/json")]
_FAULT_DETAILS = {
    "429": "fake: too many requests (injected fault)",
    "500": "fake: internal server error (injected fault)",
    "502": "fake: bad gateway (injected fault)",
    "503": "fake: service unavailable (injected fault)",
    "504": "fake: gateway timeout (injected fault)",
}

# ASGI, typed loosely enough that both httpx.ASGITransport and uvicorn accept it.
Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class _InjectedFault(httpx.RemoteProtocolError):
    """Raised by the app to cut a connection on purpose ("drop", "truncate").

    In-process, httpx.ASGITransport hands it to the client as what it is, an httpx
    transport error; under uvicorn it makes the server close the socket, and
    `_QuietInjectedFaults` keeps uvicorn from logging a traceback for it.
    """


@dataclass(frozen=True, slots=True)
class RequestRecord:
    """One request the fake received, as kept in `FakeLog.records`.

    ``project`` and ``property`` are None when the request failed before they were
    read; ``n_segments`` counts the ids in the body (0 if it was not read).
    ``status`` is None when the connection was dropped (or the client left);
    ``fault`` names the injected fault, if any ("slow" and "truncate" come with
    status 200), or is ``"rate_limit"`` for a 429 from the ``rate_limit`` knob.
    ``materialized_timestamp`` is that of the answer, for 200s.
    ``header_names`` lists the request's header names (lower case), never their
    values, so no token is kept.
    """

    method: str
    path: str
    project: str | None
    property: str | None
    n_segments: int
    status: int | None
    fault: str | None
    materialized_timestamp: int | None
    header_names: tuple[str, ...]

    # `builtins.property`: the field above named `property` shadows the builtin here.
    @builtins.property
    def outcome(self) -> str:
        """The fault name if a fault was injected, else the status code as text."""
        if self.fault is not None:
            return self.fault
        return "disconnected" if self.status is None else str(self.status)


class FakeLog:
    """What a `FakeBrainCircuits` has seen: counters for assertions, and every request.

    Attributes:
        requests: HTTP requests received (any path, any outcome).
        in_flight: requests being handled right now.
        max_in_flight: the most requests handled at once since the last `reset`; more
            than 1 means the client really sent requests concurrently.
        segments_served: ids requested in complete 200 answers (unknown ids included,
            so it adds up to what the client asked for).
        statuses: how many responses had each status code.
        faults: how many times each fault kind was injected, and how many requests
            the ``rate_limit`` knob turned away (as ``"rate_limit"``).
        records: one `RequestRecord` per finished request, in finishing order.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.in_flight = 0
        self.reset()

    def reset(self) -> None:
        """Forget everything recorded so far (``in_flight`` stays: it is the present)."""
        with self._lock:
            self.requests = 0
            self.max_in_flight = self.in_flight
            self.segments_served = 0
            self.statuses: collections.Counter[int] = collections.Counter()
            self.faults: collections.Counter[str] = collections.Counter()
            self.records: list[RequestRecord] = []

    def __repr__(self) -> str:
        return (
            f"<FakeLog requests={self.requests} max_in_flight={self.max_in_flight} "
            f"segments_served={self.segments_served} statuses={dict(self.statuses)} "
            f"faults={dict(self.faults)}>"
        )

    def _enter(self) -> None:
        with self._lock:
            self.requests += 1
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)

    def _leave(self) -> None:
        with self._lock:
            self.in_flight -= 1

    def _add(self, record: RequestRecord, served: int) -> None:
        with self._lock:
            self.records.append(record)
            if record.status is not None:
                self.statuses[record.status] += 1
            if record.fault is not None:
                self.faults[record.fault] += 1
            self.segments_served += served


class _HTTPError(Exception):
    """An error answer: raised inside request handling, sent by `__call__`."""

    def __init__(self, status: int, detail: str, headers: Iterable[tuple[bytes, bytes]] = ()):
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.headers = list(headers)


@dataclass(slots=True)
class _Request:
    """What the log needs to know about a request, filled in as handling goes."""

    method: str
    path: str
    header_names: tuple[str, ...]
    project: str | None = None
    prop: str | None = None
    segments: int = 0


class FakeBrainCircuits:
    """A fake BrainCircuits.io segment-property server, as a plain ASGI app.

    It answers ``POST /circuit/segment/property/{property}?project=...`` with body
    ``{"segments": [id, ...]}`` like the real API::

        {"materialized_timestamp": 1677042002,
         "results": {"720575940634474894": {"nr_pre": 1880, "nr_downstream_partner": 848}}}

    Shapes per property (counts are integers; coordinates in nanometres):

    * ``link_pre``: ``{"nr_pre", "nr_downstream_partner"}``
    * ``link_post``: ``{"nr_post", "nr_upstream_partner"}``
    * ``size``: ``{"size"}`` in voxels
    * ``neurotransmitter``: probabilities ``{"gaba", "acetylcholine", "glutamate",
      "octopamine", "serotonin", "dopamine"}`` (4 decimals, summing to about 1) and
      ``"top_nt"``, the most likely one
    * ``connectivity``: ``{"upstream": [...], "downstream": [...]}``, 0-5 partners
      each as ``{"segmentid": "<id as string>", "synaptic_count": int}``, sorted by
      ``synaptic_count``, largest first
    * ``nucleus``: ``{"nucleus_id", "position": [x, y, z]}``
    * ``soma``: ``{"soma_x", "soma_y", "soma_z", "soma_radius"}`` (radius a float)
    * ``mitochondria``: ``{"nr_mitochondria", "total_volume"}`` (cubic micrometres)
    * ``dcv``: ``{"nr_dcv"}`` (dense-core vesicles)
    * any other name you list in ``properties=``: ``{"value": int}``

    Every argument is keyword-only and checked here, so a typo fails at once:

    Args:
        token: the BrainCircuits.io token required as ``Authorization: Bearer ...``;
            None accepts any request without it.
        cave_token: the token required as ``Authorization-Cave: Bearer ...`` for
            ``cave_projects``; None turns that check off.
        projects: the projects the fake knows; others get 404.
        cave_projects: the projects that need the CAVE token (a subset of ``projects``).
        default_project: the project `expected` uses when none is given; defaults to
            ``"fruitfly_fafb_flywire"`` if known, else the first project by name.
        properties: the property names the fake answers; others get 404.
        materialized_timestamp: the starting materialization (UNIX seconds).
        rollover_after: after this many complete 200 answers, the materialization
            moves on by ``rollover_step`` (None: only when you call `rollover`).
        rollover_step: seconds the materialization advances per rollover.
        max_segments: the most ids one request may carry; more get 413.
        unknown_fraction: the share of ids that are unknown, in [0, 1].
        latency: seconds every valid request waits before its answer.
        latency_per_segment: extra seconds per id in the request.
        faults: fault kind -> probability per valid request, kinds from `FAULT_KINDS`:
            ``"429"`` (with a Retry-After header), ``"500"``, ``"502"``, ``"503"``,
            ``"504"`` (JSON ``detail``), ``"drop"`` (the connection is cut after the
            status line), ``"truncate"`` (a 200 whose body stops halfway), ``"slow"``
            (a normal answer after ``slow_delay`` more seconds). Probabilities add up
            to at most 1.
        retry_after: seconds sent in the Retry-After header of a 429, as text
            (``"1"``, ``"0.01"``); fractions are not standard HTTP but keep tests fast.
            None sends no header.
        slow_delay: extra seconds of a ``"slow"`` fault.
        rate_limit: requests per second the fake accepts, across all clients; None
            for no limit. A token bucket that holds ``max(1, rate_limit)`` requests and
            refills continuously at ``rate_limit`` per second: a burst up to the
            bucket's size passes, then requests get 429 with a JSON ``detail``
            (logged with ``fault="rate_limit"``). Checked after authentication and
            request validation, before latency and injected faults; unlike injected
            faults it has no ``max_consecutive_faults`` escape, so a client that
            keeps sending too fast keeps getting 429.
        rate_limit_retry_after: seconds sent in the Retry-After header of those 429s;
            None (the default) sends no header, as many real rate limiters do. Needs
            ``rate_limit``.
        max_consecutive_faults: the most faults in a row for one request (same
            project, property and ids); the next try always succeeds.
        seed: seeds the fault draws, so a run's faults repeat for a repeated sequence
            of requests.
        answer_cache_bytes: keep up to this many bytes of encoded answers and serve a
            repeated request (same project, property, ids and materialization) from
            them. Off (0) by default; benchmarks turn it on so that the fake's own
            CPU time stays out of the client's measurements.

    Raises:
        ValueError: an argument is out of range; the message names it.
    """

    def __init__(
        self,
        *,
        token: str | None = DEFAULT_TOKEN,
        cave_token: str | None = DEFAULT_CAVE_TOKEN,
        projects: Iterable[str] = DEFAULT_PROJECTS,
        cave_projects: Iterable[str] = DEFAULT_CAVE_PROJECTS,
        default_project: str | None = None,
        properties: Iterable[str] = DOCUMENTED_PROPERTIES,
        materialized_timestamp: int = DEFAULT_MATERIALIZED_TIMESTAMP,
        rollover_after: int | None = None,
        rollover_step: int = 3600,
        max_segments: int = 10_000,
        unknown_fraction: float = 0.02,
        latency: float = 0.0,
        latency_per_segment: float = 0.0,
        faults: Mapping[str, float] | None = None,
        retry_after: float | None = 1,
        slow_delay: float = 1.0,
        rate_limit: float | None = None,
        rate_limit_retry_after: float | None = None,
        max_consecutive_faults: int = 2,
        seed: int = 0,
        answer_cache_bytes: int = 0,
    ) -> None:
        self._token = _check_token("token", token)
        self._cave_token = _check_token("cave_token", cave_token)
        self._projects = _check_names("projects", projects)
        self._cave_projects = _check_names("cave_projects", cave_projects, empty_ok=True)
        if not self._cave_projects <= self._projects:
            extra = sorted(self._cave_projects - self._projects)
            raise ValueError(
                f"cave_projects must be a subset of projects; not in projects: {extra}"
            )
        if default_project is None:
            default_project = (
                DEFAULT_PROJECT if DEFAULT_PROJECT in self._projects else min(self._projects)
            )
        elif default_project not in self._projects:
            raise ValueError(f"default_project must be one of projects, got {default_project!r}")
        self._default_project = default_project
        self._properties = _check_names("properties", properties)
        bad = sorted(p for p in self._properties if not _ENDPOINT.fullmatch(_path_for(p)))
        if bad:
            raise ValueError(f"properties must match [A-Za-z0-9_-]+, got {bad}")
        self._start_timestamp = _check_int("materialized_timestamp", materialized_timestamp, 0)
        self._rollover_after = (
            None if rollover_after is None else _check_int("rollover_after", rollover_after, 1)
        )
        self._rollover_step = _check_int("rollover_step", rollover_step, 1)
        self._max_segments = _check_int("max_segments", max_segments, 1)
        self._unknown_fraction = _check_float("unknown_fraction", unknown_fraction, 0.0, 1.0)
        self._latency = _check_float("latency", latency, 0.0)
        self._latency_per_segment = _check_float("latency_per_segment", latency_per_segment, 0.0)
        self._fault_table = _check_faults(faults)
        self._retry_after = (
            None if retry_after is None else _check_float("retry_after", retry_after, 0.0)
        )
        self._slow_delay = _check_float("slow_delay", slow_delay, 0.0)
        self._rate_limit = None if rate_limit is None else _check_positive("rate_limit", rate_limit)
        if rate_limit_retry_after is not None and rate_limit is None:
            raise ValueError(
                "rate_limit_retry_after needs rate_limit (requests per second) to be set"
            )
        self._rate_limit_retry_after = (
            None
            if rate_limit_retry_after is None
            else _check_float("rate_limit_retry_after", rate_limit_retry_after, 0.0)
        )
        self._bucket_size = 1.0 if self._rate_limit is None else max(1.0, self._rate_limit)
        limit = f"{self._rate_limit:g}" if self._rate_limit is not None else "none"
        self._rate_limit_body = json.dumps(
            {"detail": f"fake: too many requests (rate limit: {limit} requests/s)"}
        ).encode()
        self._rate_limit_headers = (
            []
            if self._rate_limit_retry_after is None
            else [(b"retry-after", _format_seconds(self._rate_limit_retry_after).encode())]
        )
        # The rate limit's clock; tests may swap in a fake one, then call `reset`.
        self._clock: Callable[[], float] = time.monotonic
        self._max_consecutive_faults = _check_int(
            "max_consecutive_faults", max_consecutive_faults, 0
        )
        if not isinstance(seed, int):
            raise ValueError(f"seed must be an int, got {seed!r}")
        self._seed = seed
        self._threshold = _fake_data.unknown_threshold(self._unknown_fraction)
        self._cache_limit = _check_int("answer_cache_bytes", answer_cache_bytes, 0)
        self._cache: collections.OrderedDict[tuple[Any, ...], tuple[bytes, int]] = (
            collections.OrderedDict()
        )
        self._cache_bytes = 0
        self._lock = threading.Lock()
        self.log = FakeLog()
        self.reset()

    def __repr__(self) -> str:
        return (
            f"<FakeBrainCircuits materialized_timestamp={self._timestamp} "
            f"projects={sorted(self._projects)} faults={dict(self._fault_table)} "
            f"rate_limit={self._rate_limit}>"
        )

    # --- what tests read and steer ---------------------------------------------------

    @property
    def token(self) -> str | None:
        """The BrainCircuits.io token the fake accepts (None: no check)."""
        return self._token

    @property
    def cave_token(self) -> str | None:
        """The CAVE token the fake accepts for CAVE projects (None: no check)."""
        return self._cave_token

    @property
    def default_project(self) -> str:
        """The project `expected` uses when none is given."""
        return self._default_project

    @property
    def materialized_timestamp(self) -> int:
        """The current materialization, in UNIX seconds, as the next answer will carry it."""
        return self._timestamp

    def rollover(self, seconds: int | None = None) -> int:
        """Move to a new materialization and return its timestamp.

        Every value changes (known and unknown ids stay the same), as after the
        hourly update of the real service. ``seconds`` defaults to ``rollover_step``.
        """
        step = self._rollover_step if seconds is None else _check_int("seconds", seconds, 1)
        with self._lock:
            self._timestamp += step
            return self._timestamp

    def reset(self) -> None:
        """Start over: first materialization, fresh fault draws, full rate bucket, empty log."""
        with self._lock:
            self._timestamp = self._start_timestamp
            self._answers = 0
            self._rng = random.Random(self._seed)
            self._streaks: dict[tuple[str, str, tuple[int, ...]], int] = {}
            self._bucket = self._bucket_size
            self._bucket_time = self._clock()
        self.log.reset()

    def expected(
        self,
        prop: str,
        segment: int,
        /,
        *,
        project: str | None = None,
        materialized_timestamp: int | None = None,
    ) -> dict[str, Any] | None:
        """Return the value the fake serves for one segment, or None if it is unknown.

        Use it to check what your pipeline got::

            assert result["720575940634474894"] == fake.expected("link_pre", 720575940634474894)

        ``project`` defaults to `default_project`; ``materialized_timestamp`` to the
        current one (pass an older one to get the values from before a rollover).
        """
        project, timestamp = self._check_query(prop, project, materialized_timestamp)
        segment = _check_segment(segment)
        salt = _fake_data.presence_salt(project)
        if not _fake_data.is_known(segment, salt, self._threshold):
            return None
        generator = _fake_data.generator_for(prop)
        value_salt = _fake_data.property_salt(project, prop, timestamp)
        value: dict[str, Any] = json.loads(_fake_data.fragment_for(generator, value_salt, segment))
        return value

    def expected_results(
        self,
        prop: str,
        segments: Iterable[int],
        /,
        *,
        project: str | None = None,
        materialized_timestamp: int | None = None,
    ) -> dict[str, dict[str, Any]]:
        """Return the ``results`` object the fake would serve for these ids, keyed by
        decimal id, unknown ids left out: the whole answer to compare at once.
        """
        project, timestamp = self._check_query(prop, project, materialized_timestamp)
        body, _ = self._encode(project, prop, [_check_segment(s) for s in segments], timestamp)
        results: dict[str, dict[str, Any]] = json.loads(body)["results"]
        return results

    def _check_query(
        self, prop: str, project: str | None, timestamp: int | None
    ) -> tuple[str, int]:
        if project is None:
            project = self._default_project
        if project not in self._projects:
            raise ValueError(f"project must be one of {sorted(self._projects)}, got {project!r}")
        if prop not in self._properties:
            raise ValueError(f"property must be one of {sorted(self._properties)}, got {prop!r}")
        if timestamp is None:
            timestamp = self._timestamp
        return project, _check_int("materialized_timestamp", timestamp, 0)

    def _encode(
        self, project: str, prop: str, segments: list[int], timestamp: int
    ) -> tuple[bytes, int]:
        if len(set(segments)) != len(segments):
            # A JSON object cannot repeat a key; the real API answers each id once.
            segments = list(dict.fromkeys(segments))
        if not self._cache_limit:
            return self._encode_fresh(project, prop, segments, timestamp)
        key = (project, prop, timestamp, tuple(segments))
        with self._lock:
            hit = self._cache.get(key)
            if hit is not None:
                self._cache.move_to_end(key)
                return hit
        answer = self._encode_fresh(project, prop, segments, timestamp)
        with self._lock:
            self._cache[key] = answer
            self._cache_bytes += len(answer[0])
            while self._cache_bytes > self._cache_limit and self._cache:
                _, (old, _) = self._cache.popitem(last=False)
                self._cache_bytes -= len(old)
        return answer

    def _encode_fresh(
        self, project: str, prop: str, segments: list[int], timestamp: int
    ) -> tuple[bytes, int]:
        return _fake_data.encode_answer(
            segments,
            timestamp,
            _fake_data.generator_for(prop),
            _fake_data.property_salt(project, prop, timestamp),
            _fake_data.presence_salt(project),
            self._threshold,
        )

    # --- ASGI --------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Handle one ASGI connection scope (HTTP; lifespan is accepted and ignored)."""
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        request = _Request(
            method=scope["method"],
            path=scope["path"],
            header_names=tuple(name.decode("latin-1") for name, _ in scope["headers"]),
        )
        self.log._enter()
        try:
            try:
                await self._handle(scope, receive, send, request)
            except _HTTPError as error:
                body = json.dumps({"detail": error.detail}).encode()
                await _send_body(send, error.status, body, error.headers)
                self._record(request, error.status)
        finally:
            self.log._leave()

    def _record(
        self,
        request: _Request,
        status: int | None,
        fault: str | None = None,
        timestamp: int | None = None,
        served: int = 0,
    ) -> None:
        record = RequestRecord(
            method=request.method,
            path=request.path,
            project=request.project,
            property=request.prop,
            n_segments=request.segments,
            status=status,
            fault=fault,
            materialized_timestamp=timestamp,
            header_names=request.header_names,
        )
        self.log._add(record, served)

    async def _handle(self, scope: Scope, receive: Receive, send: Send, request: _Request) -> None:
        match = _ENDPOINT.fullmatch(request.path)
        if match is None:
            raise _HTTPError(404, "Not Found")
        prop = request.prop = match.group(1)
        if request.method != "POST":
            raise _HTTPError(405, "Method Not Allowed", [(b"allow", b"POST")])

        headers: dict[bytes, bytes] = {}
        for name, value in scope["headers"]:
            headers.setdefault(name, value)
        _check_bearer(headers.get(b"authorization"), self._token, "Authorization", "")

        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        project = query.get("project", [""])[0]
        if not project:
            raise _HTTPError(422, "missing query parameter 'project'")
        if project not in self._projects:
            raise _HTTPError(404, f"unknown project {project!r}")
        request.project = project
        if project in self._cave_projects:
            _check_bearer(
                headers.get(b"authorization-cave"), self._cave_token, "Authorization-Cave", "CAVE "
            )
        if prop not in self._properties:
            raise _HTTPError(404, f"unknown property {prop!r} in project {project!r}")

        body = await _read_body(receive)
        if body is None:  # the client went away
            self._record(request, None)
            return
        segments = self._parse_segments(body)
        request.segments = len(segments)
        if self._rate_limit is not None and not self._take_token(self._rate_limit):
            self._record(request, 429, "rate_limit")
            await _send_body(send, 429, self._rate_limit_body, self._rate_limit_headers)
            return

        fault = self._draw_fault(project, prop, segments) if self._fault_table else None
        delay = self._latency + self._latency_per_segment * len(segments)
        if fault == "slow":
            delay += self._slow_delay
        if delay > 0:
            await anyio.sleep(delay)

        if fault is None or fault == "slow":
            with self._lock:
                timestamp = self._timestamp
                self._answers += 1
                if self._rollover_after is not None and self._answers % self._rollover_after == 0:
                    self._timestamp += self._rollover_step
            payload, _ = self._encode(project, prop, segments, timestamp)
            await _send_body(send, 200, payload)
            self._record(request, 200, fault, timestamp, len(segments))
        elif fault == "drop":
            self._record(request, None, fault)
            await send({"type": "http.response.start", "status": 200, "headers": _JSON_HEADERS})
            raise _InjectedFault("fake: connection dropped (injected fault)")
        elif fault == "truncate":
            with self._lock:
                timestamp = self._timestamp
            payload, _ = self._encode(project, prop, segments, timestamp)
            self._record(request, 200, fault, timestamp)
            await _send_truncated(send, payload)
        else:
            status = int(fault)
            extra = []
            if status == 429 and self._retry_after is not None:
                extra.append((b"retry-after", _format_seconds(self._retry_after).encode()))
            body = json.dumps({"detail": _FAULT_DETAILS[fault]}).encode()
            self._record(request, status, fault)
            await _send_body(send, status, body, extra)

    def _parse_segments(self, body: bytes) -> list[int]:
        try:
            payload = json.loads(body)
        except ValueError:
            raise _HTTPError(422, "request body is not valid JSON") from None
        segments = payload.get("segments") if isinstance(payload, dict) else None
        if not isinstance(segments, list):
            raise _HTTPError(
                422, 'request body must be a JSON object {"segments": [segment id, ...]}'
            )
        if len(segments) > self._max_segments:
            raise _HTTPError(
                413,
                f"too many segments: {len(segments)} in one request, at most "
                f"{self._max_segments}; split the request",
            )
        # `type(...) is int` also rejects JSON true/false, which json gives as bools.
        if not all(type(s) is int and 0 <= s < _MAX_SEGMENT for s in segments):
            i, bad = next(
                (i, s)
                for i, s in enumerate(segments)
                if not (type(s) is int and 0 <= s < _MAX_SEGMENT)
            )
            raise _HTTPError(
                422,
                f"segments[{i}] = {json.dumps(bad)[:40]} is not a segment id "
                "(an integer in [0, 2**64))",
            )
        return segments

    def _take_token(self, rate: float) -> bool:
        """Take one request from the rate-limit bucket; False if it is empty."""
        with self._lock:
            now = self._clock()
            # max(): a clock that steps back (a test's fake clock) must not drain it.
            elapsed = max(0.0, now - self._bucket_time)
            self._bucket = min(self._bucket_size, self._bucket + elapsed * rate)
            self._bucket_time = now
            if self._bucket < 1.0:
                return False
            self._bucket -= 1.0
            return True

    def _draw_fault(self, project: str, prop: str, segments: list[int]) -> str | None:
        key = (project, prop, tuple(segments))
        with self._lock:
            streak = self._streaks.get(key, 0)
            fault = None
            if streak < self._max_consecutive_faults:
                draw = self._rng.random()
                for name, cumulative in self._fault_table:
                    if draw < cumulative:
                        fault = name
                        break
            if fault is None:
                self._streaks.pop(key, None)
            else:
                self._streaks[key] = streak + 1
            return fault


# --- HTTP plumbing -----------------------------------------------------------------


def _path_for(prop: str) -> str:
    return f"/circuit/segment/property/{prop}"


def _check_bearer(header: bytes | None, token: str | None, name: str, what: str) -> None:
    """Raise 401 if the header is missing, 403 if it holds the wrong token."""
    if token is None:
        return
    if header is None:
        raise _HTTPError(401, f"missing {name} header: send '{name}: Bearer <{what}token>'")
    scheme, _, value = header.decode("latin-1").partition(" ")
    if scheme.lower() != "bearer" or value.strip() != token:
        raise _HTTPError(403, f"invalid {what}token in the {name} header")


async def _read_body(receive: Receive) -> bytes | None:
    chunks = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


async def _send_body(
    send: Send, status: int, body: bytes, headers: Iterable[tuple[bytes, bytes]] = ()
) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [*_JSON_HEADERS, (b"content-length", b"%d" % len(body)), *headers],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def _send_truncated(send: Send, payload: bytes) -> None:
    """Announce the full Content-Length, then send only half of the body.

    In-process, httpx.ASGITransport delivers the short body as a 200 whose JSON does
    not parse. Under uvicorn, h11 refuses to end a message short of its
    Content-Length; we turn that refusal into `_InjectedFault`, uvicorn closes the
    socket, and the client's httpx sees the body end early (RemoteProtocolError).
    """
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [*_JSON_HEADERS, (b"content-length", b"%d" % len(payload))],
        }
    )
    try:
        await send({"type": "http.response.body", "body": payload[: len(payload) // 2]})
    except Exception as exc:
        raise _InjectedFault("fake: response truncated (injected fault)") from exc


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


def _format_seconds(seconds: float) -> str:
    return str(int(seconds)) if float(seconds).is_integer() else repr(float(seconds))


# --- argument checks ---------------------------------------------------------------


def _check_token(name: str, token: str | None) -> str | None:
    if token is not None and (not isinstance(token, str) or not token or token != token.strip()):
        raise ValueError(
            f"{name} must be a non-empty string without surrounding spaces, or None to "
            "turn the check off"
        )
    return token


def _check_names(name: str, names: Iterable[str], *, empty_ok: bool = False) -> frozenset[str]:
    if isinstance(names, str):
        raise ValueError(f"{name} must be a collection of names, not one string: {names!r}")
    result = frozenset(names)
    if not all(isinstance(n, str) and n for n in result):
        raise ValueError(f"{name} must hold non-empty strings, got {sorted(map(repr, result))}")
    if not result and not empty_ok:
        raise ValueError(f"{name} must name at least one")
    return result


def _check_int(name: str, value: int, minimum: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return value


def _check_float(name: str, value: float, minimum: float, maximum: float | None = None) -> float:
    ok = (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and math.isfinite(value)
        and value >= minimum
        and (maximum is None or value <= maximum)
    )
    if not ok:
        accepted = f"in [{minimum}, {maximum}]" if maximum is not None else f">= {minimum}"
        raise ValueError(f"{name} must be a finite number {accepted}, got {value!r}")
    return float(value)


def _check_positive(name: str, value: float) -> float:
    ok = (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and math.isfinite(value)
        and value > 0
    )
    if not ok:
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return float(value)


def _check_faults(faults: Mapping[str, float] | None) -> tuple[tuple[str, float], ...]:
    """Return (kind, cumulative probability) pairs, kinds in `FAULT_KINDS` order."""
    if faults is None:
        return ()
    unknown = sorted(str(k) for k in faults if k not in FAULT_KINDS)
    if unknown:
        raise ValueError(f"faults has unknown kinds {unknown}; known kinds: {list(FAULT_KINDS)}")
    table = []
    total = 0.0
    for kind in FAULT_KINDS:
        if kind in faults:
            probability = _check_float(f"faults[{kind!r}]", faults[kind], 0.0, 1.0)
            if probability > 0:
                total += probability
                table.append((kind, total))
    if total > 1.0 + 1e-9:
        raise ValueError(f"faults probabilities must add up to at most 1, got {total:g}")
    return tuple(table)


def _check_segment(segment: int) -> int:
    if type(segment) is not int or not 0 <= segment < _MAX_SEGMENT:
        raise ValueError(f"segment must be an int in [0, 2**64), got {segment!r}")
    return segment


# --- running on a loopback port ----------------------------------------------------


class _QuietInjectedFaults(logging.Filter):
    """Drop uvicorn's error log for connections the fake cut on purpose."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and isinstance(record.exc_info[1], _InjectedFault))


@contextlib.contextmanager
def _quiet_injected_faults() -> Iterator[None]:
    logger = logging.getLogger("uvicorn.error")
    quiet = _QuietInjectedFaults()
    logger.addFilter(quiet)
    try:
        yield
    finally:
        logger.removeFilter(quiet)


def _make_server(
    app: ASGIApp, *, host: str, port: int, log_level: str, access_log: bool
) -> uvicorn.Server:
    try:
        import uvicorn
    except ImportError as exc:
        raise ImportError(
            'the loopback fake server needs uvicorn: pip install "braincircuits-async[fake]"'
        ) from exc
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        loop="asyncio",
        # h11 on purpose: its strict Content-Length check is what turns "truncate"
        # into a visible transport error; other protocols would differ.
        http="h11",
        ws="none",
        lifespan="off",
        access_log=access_log,
        log_level=log_level,
    )
    return uvicorn.Server(config)


@contextlib.contextmanager
def serve_in_thread(
    app: ASGIApp,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    log_level: str = "warning",
    startup_timeout: float = 10.0,
) -> Iterator[str]:
    """Serve ``app`` on a loopback port from a background thread; yield its base URL.

    ``port=0`` picks a free port; the URL carries the port actually bound, e.g.
    ``"http://127.0.0.1:53127"``. The server stops when the ``with`` block ends::

        with serve_in_thread(FakeBrainCircuits()) as base_url:
            ...  # httpx.AsyncClient(base_url=base_url), or your own client

    Give ``host`` as an IP address: a name such as ``localhost`` may bind several
    sockets, each on its own free port. Connections the fake cuts on purpose are
    not logged; other uvicorn messages at ``log_level`` and above are.

    Raises:
        ImportError: uvicorn is not installed.
        OSError: the server did not start (e.g. the port is taken) within
            ``startup_timeout`` seconds.
    """
    server = _make_server(app, host=host, port=port, log_level=log_level, access_log=False)
    thread = threading.Thread(target=server.run, name="braincircuits-fake-server", daemon=True)
    with _quiet_injected_faults():
        thread.start()
        deadline = time.monotonic() + startup_timeout
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                server.should_exit = True
                thread.join(startup_timeout)
                raise OSError(
                    f"the fake server did not start on {host}:{port} (see the uvicorn log)"
                )
            time.sleep(0.002)
        try:
            yield _base_url(server)
        finally:
            server.should_exit = True
            thread.join()


def serve(
    app: ASGIApp,
    host: str = "127.0.0.1",
    port: int = 8000,
    *,
    log_level: str = "info",
    access_log: bool = False,
) -> None:
    """Serve ``app`` on ``host:port`` until interrupted (Ctrl+C); blocks.

    For a fake server in its own terminal, e.g. to point a notebook at::

        serve(FakeBrainCircuits(latency=0.05))

    Raises:
        ImportError: uvicorn is not installed.
    """
    server = _make_server(app, host=host, port=port, log_level=log_level, access_log=access_log)
    with _quiet_injected_faults():
        server.run()


def _base_url(server: uvicorn.Server) -> str:
    host, port = server.servers[0].sockets[0].getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"
