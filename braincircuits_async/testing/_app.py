"""`FakeBrainCircuits`: the ASGI app, its knobs, and how it handles one request."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import anyio

from .._exceptions import InvalidArgumentError
from .._fake_data import DOCUMENTED_PROPERTIES
from ._answers import AnswerEncoder
from ._checks import (
    check_float,
    check_int,
    check_projects,
    check_properties,
    check_segment,
    check_token,
)
from ._faults import FaultDraws, check_faults, send_dropped, send_error_fault, send_truncated
from ._http import (
    HTTPError,
    Receive,
    Scope,
    Send,
    lifespan,
    parse_segments,
    read_body,
    route,
    send_body,
)
from ._log import FakeLog, RequestDraft
from ._ratelimit import TokenBucket, rate_limit_bucket

__all__ = [
    "DEFAULT_CAVE_PROJECTS",
    "DEFAULT_CAVE_TOKEN",
    "DEFAULT_MATERIALIZED_TIMESTAMP",
    "DEFAULT_PROJECT",
    "DEFAULT_PROJECTS",
    "DEFAULT_TOKEN",
    "FakeBrainCircuits",
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
        InvalidArgumentError: an argument is out of range (also a ``ValueError``);
            the message names it.
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
        # The checks run in the order of the arguments, so the first bad one is named.
        self._token = check_token("token", token)
        self._cave_token = check_token("cave_token", cave_token)
        self._projects, self._cave_projects, self._default_project = check_projects(
            projects, cave_projects, default_project, preferred=DEFAULT_PROJECT
        )
        self._properties = check_properties(properties)
        self._start_timestamp = check_int("materialized_timestamp", materialized_timestamp, 0)
        self._rollover_after = (
            None if rollover_after is None else check_int("rollover_after", rollover_after, 1)
        )
        self._rollover_step = check_int("rollover_step", rollover_step, 1)
        self._max_segments = check_int("max_segments", max_segments, 1)
        fraction = check_float("unknown_fraction", unknown_fraction, 0.0, 1.0)
        self._latency = check_float("latency", latency, 0.0)
        self._latency_per_segment = check_float("latency_per_segment", latency_per_segment, 0.0)
        fault_table = check_faults(faults)
        self._retry_after = (
            None if retry_after is None else check_float("retry_after", retry_after, 0.0)
        )
        self._slow_delay = check_float("slow_delay", slow_delay, 0.0)
        # The rate limit's clock; tests may swap in a fake one, then call `reset`.
        self._clock: Callable[[], float] = time.monotonic
        self._bucket = rate_limit_bucket(rate_limit, rate_limit_retry_after, now=self._clock())
        max_consecutive = check_int("max_consecutive_faults", max_consecutive_faults, 0)
        if not isinstance(seed, int):
            raise InvalidArgumentError(f"seed must be an int, got {seed!r}")
        self._faults = FaultDraws(fault_table, max_consecutive, seed)
        cache_bytes = check_int("answer_cache_bytes", answer_cache_bytes, 0)
        self._encoder = AnswerEncoder(fraction, cache_bytes)
        # Guards the materialization, the answer count, the fault draws and the bucket.
        self._lock = threading.Lock()
        self.log = FakeLog()
        self.reset()

    def __repr__(self) -> str:
        return (
            f"<FakeBrainCircuits materialized_timestamp={self._timestamp} "
            f"projects={sorted(self._projects)} faults={dict(self._faults.table)} "
            f"rate_limit={None if self._bucket is None else self._bucket.rate}>"
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
        step = self._rollover_step if seconds is None else check_int("seconds", seconds, 1)
        with self._lock:
            self._timestamp += step
            return self._timestamp

    def reset(self) -> None:
        """Start over: first materialization, fresh fault draws, full rate bucket, empty log."""
        with self._lock:
            self._timestamp = self._start_timestamp
            self._answers = 0
            self._faults.reset()
            if self._bucket is not None:
                self._bucket.fill(self._clock())
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
        return self._encoder.value(project, prop, check_segment(segment), timestamp)

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
        ids = [check_segment(s) for s in segments]
        body, _ = self._encoder.encode(project, prop, ids, timestamp)
        results: dict[str, dict[str, Any]] = json.loads(body)["results"]
        return results

    def _check_query(
        self, prop: str, project: str | None, timestamp: int | None
    ) -> tuple[str, int]:
        if project is None:
            project = self._default_project
        if project not in self._projects:
            raise InvalidArgumentError(
                f"project must be one of {sorted(self._projects)}, got {project!r}"
            )
        if prop not in self._properties:
            raise InvalidArgumentError(
                f"property must be one of {sorted(self._properties)}, got {prop!r}"
            )
        if timestamp is None:
            timestamp = self._timestamp
        return project, check_int("materialized_timestamp", timestamp, 0)

    # --- ASGI --------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Handle one ASGI connection scope (HTTP; lifespan is accepted and ignored)."""
        if scope["type"] == "lifespan":
            await lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        request = RequestDraft(
            method=scope["method"],
            path=scope["path"],
            header_names=tuple(name.decode("latin-1") for name, _ in scope["headers"]),
        )
        self.log._enter()
        try:
            try:
                await self._handle(scope, receive, send, request)
            except HTTPError as error:
                body = json.dumps({"detail": error.detail}).encode()
                await send_body(send, error.status, body, error.headers)
                self.log._add(request, error.status)
        finally:
            self.log._leave()

    async def _handle(
        self, scope: Scope, receive: Receive, send: Send, request: RequestDraft
    ) -> None:
        """Answer one request: route and auth, body, rate limit, fault draw, latency."""
        project, prop = route(
            scope,
            request,
            token=self._token,
            cave_token=self._cave_token,
            projects=self._projects,
            cave_projects=self._cave_projects,
            properties=self._properties,
        )
        body = await read_body(receive)
        if body is None:  # the client went away
            self.log._add(request, None)
            return
        segments = parse_segments(body, self._max_segments)
        request.segments = len(segments)
        if self._bucket is not None and not self._take_token(self._bucket):
            self.log._add(request, 429, "rate_limit")
            await send_body(send, 429, self._bucket.refusal, self._bucket.refusal_headers)
            return

        fault = self._draw_fault(project, prop, segments) if self._faults.table else None
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
            payload, _ = self._encoder.encode(project, prop, segments, timestamp)
            await send_body(send, 200, payload)
            self.log._add(request, 200, fault, timestamp, len(segments))
        elif fault == "drop":
            self.log._add(request, None, fault)
            await send_dropped(send)
        elif fault == "truncate":
            with self._lock:
                timestamp = self._timestamp
            payload, _ = self._encoder.encode(project, prop, segments, timestamp)
            self.log._add(request, 200, fault, timestamp)
            await send_truncated(send, payload)
        else:
            self.log._add(request, int(fault), fault)
            await send_error_fault(send, fault, self._retry_after)

    def _take_token(self, bucket: TokenBucket) -> bool:
        """Take one request from the rate-limit bucket; False if it is empty."""
        with self._lock:
            return bucket.take(self._clock())

    def _draw_fault(self, project: str, prop: str, segments: list[int]) -> str | None:
        """Return the fault to inject into this request, or None."""
        with self._lock:
            return self._faults.draw(project, prop, segments)
