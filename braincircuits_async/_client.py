"""``AsyncClient``: bulk-fetch segment properties in concurrent, retried chunks.

One call reads top to bottom in :meth:`AsyncClient.fetch_property`: validate
and chunk (``_chunking``), resolve the auth headers (``_transport``), then a
:class:`~braincircuits_async._call.Call` sends each chunk under the client's
limiter with retry (``_retry``), parses the answers (``_merge``), re-fetches
stale chunks until every chunk agrees on the materialization, and merges them
into one result (``_models``).
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import anyio
import httpx

from ._call import Call, Reference, run_all
from ._chunking import normalize_segments, validate_project, validate_property
from ._config import (
    DEFAULT_BACKOFF_BASE,
    DEFAULT_BACKOFF_MAX,
    DEFAULT_CHUNK_SIZE,
    DEFAULT_CONNECTIONS_PER_POOL,
    DEFAULT_CONSISTENCY,
    DEFAULT_MAX_CONCURRENCY,
    DEFAULT_MAX_REFETCH_ROUNDS,
    DEFAULT_MAX_RESPONSE_BYTES,
    DEFAULT_MAX_RETRIES,
    DEFAULT_MAX_RETRY_AFTER,
    DEFAULT_TIMEOUT,
    ClientConfig,
    Consistency,
    RetryPolicy,
    Secret,
    cave_secrets_folder,
    cave_token_from_files,
    resolve_base_url,
    resolve_cave_token,
    resolve_token,
)
from ._exceptions import (
    BrainCircuitsError,
    ClientClosedError,
    IncompleteResultError,
    InvalidArgumentError,
)
from ._limits import RequestGate
from ._models import SegmentPropertyResult
from ._progress import Progress, ProgressArg, Reporter, make_reporter
from ._stream import PropertyStream
from ._transport import AuthHeaders, ConnectionPools, auth_headers, check_base_url

__all__ = ["AsyncClient", "ClientStats"]

logger = logging.getLogger("braincircuits_async")


@dataclass
class ClientStats:
    """Running totals of what a client has done, for summaries and tests.

    ``requests``: HTTP requests sent; ``retries``: of those, retries;
    ``chunks``: chunks attempted (413 halves count as chunks); ``segments``: ids
    covered by successful answers (unknown ids included); ``splits``: 413 splits;
    ``refetches``: chunks re-fetched because they were from an older materialization.
    """

    requests: int = 0
    retries: int = 0
    chunks: int = 0
    segments: int = 0
    splits: int = 0
    refetches: int = 0


class AsyncClient:
    """An async client for BrainCircuits.io segment properties.

    Use it as an async context manager so its connections are closed::

        import braincircuits_async as bca

        async with bca.AsyncClient(project="fruitfly_fafb_flywire") as client:
            result = await client.fetch_property("link_pre", segment_ids)
        result[720575940634474894]   # {'nr_pre': 3847, 'nr_downstream_partner': 1772}

    Args:
        token: BrainCircuits.io access token; default: env ``BRAINCIRCUITS_TOKEN``.
        cave_token: CAVE token, needed for CAVE-managed projects such as
            ``fruitfly_fafb_flywire``; default: env ``BRAINCIRCUITS_CAVE_TOKEN``,
            then ``CAVE_TOKEN``. When given it is sent with every request.
        base_url: API address; default: env ``BRAINCIRCUITS_URL`` (or
            ``BRAINCIRCUITS_ENDPOINT``), else ``https://api.braincircuits.io``.
        project: default project for calls that do not name one.
        chunk_size: segments per request (1 to 100,000).
        max_concurrency: requests in flight at once, across all calls on this client.
        max_retries: retries per request for transient failures (429, 5xx,
            dropped connections, timeouts, unreadable answers).
        timeout: seconds to wait for any one network operation of a request.
        consistency: what to do when chunks come from different materializations:
            ``"refetch"`` re-fetches the stale chunks (a few rounds) and raises
            :class:`InconsistentMaterializationError` if they still disagree;
            ``"strict"`` raises at once; ``"ignore"`` keeps every value, reports
            the newest timestamp and logs a warning.
        transport: an ``httpx.AsyncBaseTransport`` (e.g. ``httpx.ASGITransport``
            around the fake server) instead of the network.
        backoff_base: the first retry waits up to this many seconds (full jitter);
            each further retry doubles the bound.
        backoff_max: the longest backoff wait, in seconds.
        max_retry_after: longest ``Retry-After`` (seconds) the client will honour;
            a longer one fails the chunk with the server's wait in the message.
        max_refetch_rounds: rounds of re-fetching stale chunks in ``"refetch"`` mode.
        connections_per_pool: connections per httpx pool; ``max_concurrency`` is
            spread over several pools of this size, because one large httpx pool
            slows down with the square of its size (see ``docs/performance.md``).
        adaptive_concurrency: on a 429, halve the number of requests in flight for
            the whole client (at most once per round of requests), then grow it back
            slowly while answers succeed; between 1 and ``max_concurrency``.
        max_requests_per_second: start at most this many requests per second
            (client-side rate limit; default: none).
        max_response_bytes: the largest answer body the client reads (default
            256 MiB); a larger one fails its chunk instead of exhausting memory.
        deadline: default total time limit, in seconds, for each call (see
            :meth:`fetch_property`); None for no limit.
    """

    def __init__(
        self,
        *,
        token: str | None = None,
        cave_token: str | None = None,
        base_url: str | None = None,
        project: str | None = None,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        max_concurrency: int = DEFAULT_MAX_CONCURRENCY,
        max_retries: int = DEFAULT_MAX_RETRIES,
        timeout: float = DEFAULT_TIMEOUT,
        consistency: Consistency = DEFAULT_CONSISTENCY,
        transport: httpx.AsyncBaseTransport | None = None,
        backoff_base: float = DEFAULT_BACKOFF_BASE,
        backoff_max: float = DEFAULT_BACKOFF_MAX,
        max_retry_after: float = DEFAULT_MAX_RETRY_AFTER,
        max_refetch_rounds: int = DEFAULT_MAX_REFETCH_ROUNDS,
        connections_per_pool: int = DEFAULT_CONNECTIONS_PER_POOL,
        adaptive_concurrency: bool = True,
        max_requests_per_second: float | None = None,
        max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
        deadline: float | None = None,
    ) -> None:
        url = resolve_base_url(base_url)
        check_base_url(url, custom_transport=transport is not None)
        if project is not None:
            validate_project(project)
        self._config = ClientConfig(
            base_url=url,
            project=project,
            chunk_size=chunk_size,
            max_concurrency=max_concurrency,
            timeout=timeout,
            consistency=consistency,
            max_refetch_rounds=max_refetch_rounds,
            connections_per_pool=connections_per_pool,
            adaptive_concurrency=adaptive_concurrency,
            max_requests_per_second=max_requests_per_second,
            max_response_bytes=max_response_bytes,
            deadline=deadline,
            retry=RetryPolicy(
                max_retries=max_retries,
                backoff_base=backoff_base,
                backoff_max=backoff_max,
                max_retry_after=max_retry_after,
            ),
        )
        self._token = resolve_token(token)
        self._cave_token = resolve_cave_token(cave_token)
        self._cave_secrets = cave_secrets_folder()
        self._cave_files: dict[str, Secret | None] = {}
        self._http = ConnectionPools(self._config, transport)
        self._limiter = RequestGate(
            self._config.max_concurrency,
            adaptive=self._config.adaptive_concurrency,
            rate=self._config.max_requests_per_second,
        )
        # Hosts the producers of iter_property streams: they must outlive a `break`.
        self._tasks: anyio.abc.TaskGroup | None = None
        #: Running totals of requests, retries, chunks and segments.
        self.stats = ClientStats()

    @property
    def config(self) -> ClientConfig:
        """The client's settings (tokens excluded)."""
        return self._config

    def __repr__(self) -> str:
        def shown(secret: Secret | None) -> str:
            return "not set" if secret is None else f"set from {secret.source}"

        cave = shown(self._cave_token)
        if self._cave_token is None and any(self._cave_files.values()):
            cave = "from CAVEclient's secret files, for CAVE projects"

        c = self._config
        return (
            f"<AsyncClient base_url={c.base_url!r} project={c.project!r} "
            f"chunk_size={c.chunk_size} max_concurrency={c.max_concurrency} "
            f"consistency={c.consistency!r} token=<{shown(self._token)}> "
            f"cave_token=<{cave}>>"
        )

    async def __aenter__(self) -> AsyncClient:
        await self._http.open()
        tasks = anyio.create_task_group()
        await tasks.__aenter__()
        self._tasks = tasks
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connections and stop any stream. The client cannot be used afterwards."""
        tasks, self._tasks = self._tasks, None
        try:
            if tasks is not None:
                # Must run in the task that opened the client (anyio task groups are
                # bound to it): open and close it with one `async with`.
                tasks.cancel_scope.cancel()
                await tasks.__aexit__(None, None, None)
        finally:
            await self._http.aclose()

    async def fetch_property(
        self,
        property: str,
        segments: Iterable[Any],
        *,
        project: str | None = None,
        progress: ProgressArg = None,
        deadline: float | None = None,
    ) -> SegmentPropertyResult:
        """Fetch one property of many segments, all from one materialization.

        Args:
            property: property name, e.g. ``"link_pre"``, ``"size"``, ``"connectivity"``.
            segments: segment ids: ints, numpy integers (or a 1-d integer array), or
                decimal strings. Duplicates are dropped, first-seen order kept.
            project: e.g. ``"fruitfly_fafb_flywire"``; default: the client's ``project``.
            progress: ``True`` for a tqdm bar counting segments (needs the ``progress``
                extra), or a callable that receives a :class:`Progress` after each chunk.
            deadline: seconds the whole call may take (default: the client's
                ``deadline``, else none). When it passes, requests in flight are
                cancelled and :class:`IncompleteResultError` holds what was fetched;
                the segments cut off are in its ``failures``.

        Returns:
            A read-only mapping ``{segment_id: {field: value}}`` in request order, with
            ``.materialized_timestamp``, ``.property``, ``.project`` and ``.missing``
            (requested ids the server does not know).

        Raises:
            InvalidSegmentError: a bad id (also a ``ValueError``/``TypeError``), before
                any request.
            AuthenticationError: a token is missing or refused.
            IncompleteResultError: some chunks failed for good; ``.result`` holds the rest.
            InconsistentMaterializationError: chunks kept disagreeing on the materialization.
            APIStatusError, RateLimitError, APIConnectionError, MalformedResponseError:
                every chunk failed, with this error.
        """
        (prop,), proj, ids = self._prepare([property], segments, project)
        if not ids:
            return SegmentPropertyResult(
                {}, property=prop, project=proj, materialized_timestamp=None
            )
        headers = auth_headers(self._token, self._cave_for(proj), proj)
        reporter = make_reporter(progress, len(ids), prop)
        call = Call(
            self, prop, proj, ids, headers, reporter=reporter, deadline=self._deadline(deadline)
        )
        try:
            return await call.run()
        finally:
            _close(reporter)

    async def fetch_properties(
        self,
        properties: Iterable[str],
        segments: Iterable[Any],
        *,
        project: str | None = None,
        progress: ProgressArg = None,
        deadline: float | None = None,
    ) -> dict[str, SegmentPropertyResult]:
        """Fetch several properties of the same segments, all from one materialization.

        All properties are fetched concurrently, under the same ``max_concurrency``
        bound as everything else on this client, and checked against one
        materialization: with ``consistency="refetch"`` the chunks of every
        property that are older than the newest one seen are fetched again.

        Example::

            results = await client.fetch_properties(["size", "link_pre"], ids)
            sizes = results["size"]  # a SegmentPropertyResult

        Returns:
            ``{property: result}`` in the order the properties were given, every
            result from the same ``materialized_timestamp``.

        Raises:
            IncompleteResultError: some chunks of some property failed for good; its
                ``results`` hold every property's result, and each reason in
                ``failures`` starts with the property's name.
            InconsistentMaterializationError: the properties (or chunks) kept
                disagreeing on the materialization.
            BrainCircuitsError: the other errors of :meth:`fetch_property`.
        """
        props, proj, ids = self._prepare(properties, segments, project)
        if not ids:
            return {
                p: SegmentPropertyResult({}, property=p, project=proj, materialized_timestamp=None)
                for p in props
            }
        headers = auth_headers(self._token, self._cave_for(proj), proj)
        reporter = make_reporter(progress, len(ids) * len(props), ",".join(props))
        combined = _CombinedProgress(reporter, len(ids) * len(props)) if reporter else None
        reference = Reference()
        calls = [
            Call(
                self,
                p,
                proj,
                ids,
                headers,
                reporter=combined.reporter_for(i) if combined else None,
                reference=reference,
            )
            for i, p in enumerate(props)
        ]
        limit = self._deadline(deadline)
        try:
            with anyio.move_on_after(math.inf if limit is None else limit) as scope:
                await run_all([call.first_pass for call in calls])
                if self._config.consistency == "refetch":
                    for round_number in range(1, self._config.max_refetch_rounds + 1):
                        target = max(
                            (t for c in calls if (t := c.newest()) is not None), default=None
                        )
                        stale = [
                            c
                            for c in calls
                            if any(a.timestamp != target for a in c.answers.values())
                        ]
                        if not stale:
                            break
                        await run_all(
                            [
                                functools.partial(c.refetch_stale, target, round_number)
                                for c in stale
                            ]
                        )
            if scope.cancelled_caught:
                for call in calls:
                    call.deadline_passed(limit or 0.0)
            return _settle(calls, self._config.consistency)
        finally:
            _close(reporter)

    def iter_property(
        self,
        property: str,
        segments: Iterable[Any],
        *,
        project: str | None = None,
        progress: ProgressArg = None,
        deadline: float | None = None,
    ) -> PropertyStream:
        """Stream one property chunk by chunk, as each chunk's answer arrives.

        Memory stays bounded by the chunks in flight, not by the number of
        segments, so a pipeline can process millions of segments::

            async with bca.AsyncClient(project="fruitfly_fafb_flywire") as client:
                async for part in client.iter_property("link_pre", segment_ids):
                    write(part)   # a SegmentPropertyResult for one chunk

        Each item is a :class:`SegmentPropertyResult` covering one chunk, with its
        own ``materialized_timestamp`` and ``missing``; chunks arrive in the order
        they complete, not in request order. Breaking out of the loop cancels the
        rest at once: no request is sent after it.

        Consistency in a stream: the first chunk's materialization is the
        reference, since chunks already handed on cannot be taken back.
        ``"refetch"`` fetches an older chunk again (a lagging replica catches up)
        and raises :class:`InconsistentMaterializationError` when a newer one shows
        up (the chunks already yielded are stale); ``"strict"`` raises at any
        other timestamp; ``"ignore"`` yields every chunk with its own timestamp
        and logs the first disagreement. Chunks that fail for good raise
        :class:`IncompleteResultError` at the end, after every other chunk.

        The client must be open (``async with AsyncClient(...) as client``): the
        stream's requests run in the client's own task group, which outlives a
        ``break`` in the loop.
        """
        (prop,), proj, ids = self._prepare([property], segments, project)
        if self._tasks is None:
            raise ClientClosedError(
                "iter_property needs an open client: use it inside "
                "`async with AsyncClient(...) as client:`"
            )
        headers = auth_headers(self._token, self._cave_for(proj), proj) if ids else AuthHeaders()
        reporter = make_reporter(progress, len(ids), prop) if ids else None
        # As many buffered results as workers: a worker whose chunk is done need not
        # wait for the reader, and results fetched before an error reach it first.
        stream = PropertyStream(buffer=2 * self._config.max_concurrency)
        producer = stream.producer
        if ids:
            call = Call(
                self,
                prop,
                proj,
                ids,
                headers,
                reporter=reporter,
                sink=producer.put,
                deadline=self._deadline(deadline),
            )
            self._tasks.start_soon(producer.run, call.run, lambda: _close(reporter))
        else:
            producer.finish()
        return stream

    def _cave_for(self, project: str) -> Secret | None:
        """The CAVE token for ``project``: the explicit one, else CAVEclient's file."""
        if self._cave_token is not None:
            return self._cave_token
        if project not in self._cave_files:
            self._cave_files[project] = cave_token_from_files(project, self._cave_secrets)
        return self._cave_files[project]

    def _deadline(self, deadline: float | None) -> float | None:
        if deadline is None:
            return self._config.deadline
        if isinstance(deadline, bool) or not isinstance(deadline, (int, float)) or deadline <= 0:
            raise InvalidArgumentError(
                f"deadline must be a number of seconds > 0; got {deadline!r}"
            )
        return float(deadline)

    def _prepare(
        self, properties: Iterable[str], segments: Iterable[Any], project: str | None
    ) -> tuple[list[str], str, list[int]]:
        """Validate everything before any request: names, project, ids, an open client."""
        if isinstance(properties, str):
            raise InvalidArgumentError(
                "properties must be a list of property names such as ['size', 'link_pre'], "
                "not a single string"
            )
        props = list(dict.fromkeys(validate_property(p) for p in properties))
        if not props:
            raise InvalidArgumentError("no property given: pass at least one, e.g. ['link_pre']")
        proj = validate_project(project if project is not None else self._config.project)
        if self._http.is_closed:
            raise ClientClosedError("this AsyncClient is closed; create a new one")
        return props, proj, normalize_segments(segments)


def _close(reporter: object) -> None:
    close = getattr(reporter, "close", None)
    if close is not None:
        close()


class _CombinedProgress:
    """One progress report for several concurrent calls (``fetch_properties``)."""

    def __init__(self, reporter: Reporter, total: int) -> None:
        self.reporter = reporter
        self.total = total
        self.parts: dict[int, Progress] = {}

    def reporter_for(self, index: int) -> Reporter:
        def report(progress: Progress) -> None:
            self.parts[index] = progress
            parts = self.parts.values()
            self.reporter(
                Progress(
                    ",".join(p.property for p in parts),
                    sum(p.done for p in parts),
                    self.total,
                    sum(p.retries for p in parts),
                    sum(p.failed for p in parts),
                )
            )

        return report


def _settle(calls: Sequence[Call], consistency: Consistency) -> dict[str, SegmentPropertyResult]:
    """The results of several calls, checked against one materialization."""
    timestamps = {a.timestamp for c in calls for a in c.answers.values()}
    if len(timestamps) > 1:
        if consistency != "ignore":
            worst = next(
                c
                for c in calls
                if len({a.timestamp for a in c.answers.values()}) > 1
                or c.newest() != max(timestamps)
            )
            raise worst.inconsistent_error(
                f"the properties {[c.prop for c in calls]} came from materializations "
                f"{sorted(timestamps)}"
            )
        logger.warning(
            "properties %s came from different materializations %s; consistency='ignore' "
            "keeps them all",
            [c.prop for c in calls],
            sorted(timestamps),
        )
    failing = [c for c in calls if c.failures]
    if not failing:
        return {c.prop: c.result() for c in calls}
    results = {c.prop: c.result() for c in calls}
    failures: dict[int, str] = {}
    errors: list[BrainCircuitsError] = []
    for call in failing:
        reasons, call_errors = call.failure_reasons()
        for segment, reason in reasons.items():
            failures[segment] = (
                f"{failures[segment]}; {call.prop}: {reason}"
                if segment in failures
                else f"{call.prop}: {reason}"
            )
        errors.extend(e for e in call_errors if e not in errors)
    first = failing[0]
    raise IncompleteResultError(
        f"{len(failures)} segment(s) could not be fetched for "
        f"{[c.prop for c in failing]} (first: {errors[0]}); everything else is in .results",
        result=results[first.prop],
        failures=failures,
        errors=tuple(errors),
        results=results,
    ) from errors[0]
