"""``AsyncClient``: bulk-fetch segment properties in concurrent, retried chunks.

One call reads top to bottom in :meth:`AsyncClient.fetch_property`: validate
and chunk (``_chunking``), send each chunk under the client's limiter with
retry (``_retry``, ``_transport``), parse (``_merge``), re-fetch stale chunks
until every chunk agrees on the materialization, then merge into one result
(``_models``). The per-call state lives in :class:`_Call`.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterable
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import anyio
import httpx
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from ._chunking import normalize_segments, validate_project, validate_property
from ._config import (
    ClientConfig,
    Consistency,
    RetryPolicy,
    Secret,
    resolve_base_url,
    resolve_cave_token,
    resolve_token,
)
from ._exceptions import (
    APIConnectionError,
    APIStatusError,
    APITimeoutError,
    BrainCircuitsError,
    IncompleteResultError,
    InconsistentMaterializationError,
    MalformedResponseError,
)
from ._merge import ChunkAnswer, newest_timestamp, parse_answer, stale_chunks
from ._models import SegmentPropertyResult
from ._progress import Progress, ProgressArg, Reporter, make_reporter
from ._retry import RETRYABLE_STATUS, call_with_retry, is_fatal
from ._transport import (
    ENDPOINT,
    AuthHeaders,
    ConnectionPools,
    auth_headers,
    check_base_url,
    error_for_status,
)

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


class _Limiter:
    """anyio's CapacityLimiter, minus the trip through the scheduler when a token is free.

    At high latency each such trip lets every other ready task run first, which
    delays the next request by their work.
    """

    __slots__ = ("_limiter",)

    def __init__(self, total: int) -> None:
        self._limiter = anyio.CapacityLimiter(total)

    async def __aenter__(self) -> None:
        try:
            self._limiter.acquire_nowait()
        except anyio.WouldBlock:
            await self._limiter.acquire()

    async def __aexit__(self, *exc_info: object) -> None:
        self._limiter.release()


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
        backoff_base, backoff_max: exponential backoff with full jitter, in seconds.
        max_retry_after: longest ``Retry-After`` (seconds) the client will honour;
            a longer one fails the chunk with the server's wait in the message.
        max_refetch_rounds: rounds of re-fetching stale chunks in ``"refetch"`` mode.
        connections_per_pool: connections per httpx pool; ``max_concurrency`` is
            spread over several pools of this size, because one large httpx pool
            slows down with the square of its size (see ``docs/performance.md``).
    """

    def __init__(
        self,
        *,
        token: str | None = None,
        cave_token: str | None = None,
        base_url: str | None = None,
        project: str | None = None,
        chunk_size: int = 500,
        max_concurrency: int = 8,
        max_retries: int = 5,
        timeout: float = 30.0,
        consistency: Consistency = "refetch",
        transport: httpx.AsyncBaseTransport | None = None,
        backoff_base: float = 0.1,
        backoff_max: float = 30.0,
        max_retry_after: float = 120.0,
        max_refetch_rounds: int = 3,
        connections_per_pool: int = 8,
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
            retry=RetryPolicy(
                max_retries=max_retries,
                backoff_base=backoff_base,
                backoff_max=backoff_max,
                max_retry_after=max_retry_after,
            ),
        )
        self._token = resolve_token(token)
        self._cave_token = resolve_cave_token(cave_token)
        self._http = ConnectionPools(self._config, transport)
        self._limiter = _Limiter(self._config.max_concurrency)
        #: Running totals of requests, retries, chunks and segments.
        self.stats = ClientStats()

    @property
    def config(self) -> ClientConfig:
        """The client's settings (tokens excluded)."""
        return self._config

    def __repr__(self) -> str:
        def shown(secret: Secret | None) -> str:
            return "not set" if secret is None else f"set from {secret.source}"

        c = self._config
        return (
            f"<AsyncClient base_url={c.base_url!r} project={c.project!r} "
            f"chunk_size={c.chunk_size} max_concurrency={c.max_concurrency} "
            f"consistency={c.consistency!r} token=<{shown(self._token)}> "
            f"cave_token=<{shown(self._cave_token)}>>"
        )

    async def __aenter__(self) -> AsyncClient:
        await self._http.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connections. The client cannot be used afterwards."""
        await self._http.aclose()

    async def fetch_property(
        self,
        property: str,
        segments: Iterable[Any],
        *,
        project: str | None = None,
        progress: ProgressArg = None,
    ) -> SegmentPropertyResult:
        """Fetch one property of many segments, all from one materialization.

        Args:
            property: property name, e.g. ``"link_pre"``, ``"size"``, ``"connectivity"``.
            segments: segment ids: ints, numpy integers (or a 1-d integer array), or
                decimal strings. Duplicates are dropped, first-seen order kept.
            project: e.g. ``"fruitfly_fafb_flywire"``; default: the client's ``project``.
            progress: ``True`` for a tqdm bar counting segments (needs the ``progress``
                extra), or a callable that receives a :class:`Progress` after each chunk.

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
        prop = validate_property(property)
        proj = validate_project(project if project is not None else self._config.project)
        if self._http.is_closed:
            raise RuntimeError("this AsyncClient is closed; create a new one")
        ids = normalize_segments(segments)
        if not ids:
            return SegmentPropertyResult(
                {}, property=prop, project=proj, materialized_timestamp=None
            )
        headers = auth_headers(self._token, self._cave_token, proj)
        reporter = make_reporter(progress, len(ids), prop)
        call = _Call(self, prop, proj, ids, headers, reporter)
        try:
            return await call.run()
        finally:
            close = getattr(reporter, "close", None)
            if close is not None:
                close()


class _Call:
    """The state of one ``fetch_property`` call: chunk answers and failures by position.

    A chunk is the slice ``ids[start:end]``; answers and failures are keyed by
    ``start``, so 413 splits and re-fetches simply replace or add slices, and
    merging in ``start`` order gives the request order back. A fixed pool of at
    most ``max_concurrency`` workers takes slices from a queue, so memory does not
    grow with the number of chunks.
    """

    def __init__(
        self,
        client: AsyncClient,
        prop: str,
        project: str,
        ids: list[int],
        headers: AuthHeaders,
        reporter: Reporter | None = None,
    ) -> None:
        self.client = client
        self.prop = prop
        self.project = project
        self.ids = ids
        self.reporter = reporter
        path = ENDPOINT.format(property=prop)
        self.url = httpx.URL(client._config.base_url + path, params={"project": project})
        self.headers = AuthHeaders({**client._http.headers, **headers})
        self.answers: dict[int, ChunkAnswer] = {}
        self.failures: dict[int, tuple[int, BrainCircuitsError]] = {}
        self.fatal: Exception | None = None
        self.first_timestamp: int | None = None
        self.inconsistent = False
        self.refetching = False
        self.done = 0
        self.retries = 0
        self.failed = 0
        self._group: anyio.abc.TaskGroup | None = None
        self._queue: MemoryObjectSendStream[tuple[int, int]] | None = None
        self._outstanding = 0

    async def run(self) -> SegmentPropertyResult:
        config = self.client._config
        size = config.chunk_size
        await self._fetch(
            [(s, min(s + size, len(self.ids))) for s in range(0, len(self.ids), size)]
        )
        if config.consistency == "refetch":
            for round_number in range(1, config.max_refetch_rounds + 1):
                stale = stale_chunks(self.answers.values())
                if not stale:
                    break
                logger.info(
                    "%s: %d chunk(s) are older than materialization %s; re-fetching (round %d)",
                    self.prop,
                    len(stale),
                    newest_timestamp(self.answers.values()),
                    round_number,
                )
                self.client.stats.refetches += len(stale)
                self.refetching = True
                await self._fetch([(a.start, a.end) for a in stale])
        return self._finish()

    async def _fetch(self, chunks: list[tuple[int, int]]) -> None:
        """Fetch ``chunks`` (and the halves of any that get a 413) with a worker pool."""
        send, receive = anyio.create_memory_object_stream[tuple[int, int]](math.inf)
        self._queue = send
        self._outstanding = len(chunks)
        for chunk in chunks:
            send.send_nowait(chunk)
        # Twice the bound: a worker waiting out a retry's backoff holds no slot, and
        # another worker should use it meanwhile. The limiter still bounds requests.
        workers = min(2 * self.client._config.max_concurrency, len(chunks))
        with send, receive:
            async with anyio.create_task_group() as group:
                self._group = group
                for _ in range(workers):
                    group.start_soon(self._worker, receive.clone())
        self._group = self._queue = None
        if self.fatal is not None:
            raise self.fatal
        if self.inconsistent:
            raise self._inconsistent(
                "consistency='strict' and chunks came from different materializations"
            )

    async def _worker(self, receive: MemoryObjectReceiveStream[tuple[int, int]]) -> None:
        async with receive:
            while True:
                # Take queued work without a trip through the scheduler when there is
                # some: at high latency every such trip delays the next request.
                try:
                    start, end = receive.receive_nowait()
                except anyio.WouldBlock:
                    try:
                        start, end = await receive.receive()
                    except anyio.EndOfStream:
                        return
                except anyio.EndOfStream:
                    return
                try:
                    await self._chunk(start, end)
                except Exception as error:
                    # A bug, or the user's progress callback failing: stop the call and
                    # raise that error as it is, not wrapped in an exception group.
                    self._abort(error)
                    return
                self._outstanding -= 1
                if self._outstanding == 0 and self._queue is not None:
                    self._queue.close()  # every slice is done: let the workers finish

    def _describe(self, start: int, end: int) -> str:
        return (
            f"{self.prop} (project {self.project!r}) chunk ids[{start}:{end}] "
            f"of {end - start} segment(s) from {self.ids[start]}"
        )

    async def _chunk(self, start: int, end: int) -> None:
        """Fetch ``ids[start:end]`` with retries; record its answer or why it failed."""
        client = self.client
        client.stats.chunks += 1
        describe = self._describe(start, end)
        try:
            answer = await call_with_retry(
                lambda: self._send(start, end, describe),
                client._config.retry,
                describe=describe,
                on_retry=self._count_retry,
            )
        except APIStatusError as error:
            if error.status_code == 413 and end - start > 1:
                self._split(start, end)
                return
            self._fail(start, end, error)
        except BrainCircuitsError as error:
            self._fail(start, end, error)
        else:
            self.answers[start] = answer
            client.stats.segments += end - start
        self._report(end - start)

    def _report(self, segments: int) -> None:
        if self.refetching:
            return  # re-fetched segments were already counted once
        self.done += segments
        if self.reporter is not None:
            self.reporter(Progress(self.prop, self.done, len(self.ids), self.retries, self.failed))

    def _count_retry(self, error: BaseException, wait: float) -> None:
        self.client.stats.retries += 1
        self.retries += 1

    def _split(self, start: int, end: int) -> None:
        """Answer a 413 by queueing both halves of the chunk as chunks of their own."""
        middle = (start + end) // 2
        logger.info("%s: too large (413); splitting in two", self._describe(start, end))
        self.client.stats.splits += 1
        self.answers.pop(start, None)
        assert self._queue is not None
        self._outstanding += 2
        self._queue.send_nowait((start, middle))
        self._queue.send_nowait((middle, end))

    def _abort(self, error: Exception) -> None:
        """Stop the whole call with ``error``; in-flight requests are cancelled."""
        if self.fatal is None:
            self.fatal = error
        if self._group is not None:
            self._group.cancel_scope.cancel()

    def _fail(self, start: int, end: int, error: BrainCircuitsError) -> None:
        if is_fatal(error):
            # 401/403/404/422 or a redirect would fail every other chunk alike.
            self._abort(error)
            return
        if isinstance(error, APIStatusError) and error.status_code in RETRYABLE_STATUS:
            limit = self.client._config.retry.max_retry_after
            if error.retry_after is not None and error.retry_after > limit:
                error.args = (
                    f"{error.args[0]}; the server asked to wait {error.retry_after:g} s, longer "
                    f"than max_retry_after={limit:g} s, so the chunk was not retried",
                )
        logger.warning("%s failed for good: %s", self._describe(start, end), error)
        self.failed += end - start
        self.answers.pop(start, None)
        self.failures[start] = (end, error)

    async def _send(self, start: int, end: int, describe: str) -> ChunkAnswer:
        """One request for ``ids[start:end]``: lower-layer errors become ours here."""
        client = self.client
        ids = self.ids[start:end]
        keys = list(map(str, ids))
        request = httpx.Request(
            "POST",
            self.url,
            headers=self.headers,
            content=('{"segments":[' + ",".join(keys) + "]}").encode(),
        )
        async with client._limiter:
            # Everything up to the verdict happens while holding the slot, so a fatal
            # error or a strict-mode disagreement cancels the rest before another
            # request can start. (Parsing here costs no concurrency: the event loop
            # is busy with it either way.)
            # The fast paths above may not have passed a checkpoint: make sure a call
            # that was stopped meanwhile (fatal error, strict mode) sends nothing more.
            await anyio.lowlevel.checkpoint_if_cancelled()
            client.stats.requests += 1
            began = time.perf_counter()
            failure: BrainCircuitsError | None = None
            pools = client._http
            slot = pools.take()
            try:
                response = await pools.client_for(slot).send(request)
            except httpx.TimeoutException as error:
                failure = APITimeoutError(
                    f"{describe}: no answer within timeout={client._config.timeout:g} s "
                    f"({type(error).__name__})"
                )
            except httpx.DecodingError as error:
                failure = MalformedResponseError(
                    f"{describe}: the answer could not be decoded ({error})", transient=True
                )
            except httpx.RequestError as error:
                failure = APIConnectionError(
                    f"{describe}: connection failed ({type(error).__name__}: {error})"
                )
            finally:
                pools.give_back(slot)
            if failure is not None:
                # Raised outside the except block: the httpx error holds the request,
                # whose headers carry the tokens, so it must not ride along as context.
                raise failure
            if logger.isEnabledFor(logging.DEBUG):
                logger.debug(
                    "POST %s %s -> %d in %.3fs",
                    self.url.path,
                    describe,
                    response.status_code,
                    time.perf_counter() - began,
                )
            if response.status_code != 200:
                failure = error_for_status(
                    response, describe=describe, token=client._token, cave_token=client._cave_token
                )
                if is_fatal(failure):
                    self._abort(failure)
                raise failure
            answer = parse_answer(response.content, ids, keys, start=start, describe=describe)
            self._observe(answer)
            return answer

    def _observe(self, answer: ChunkAnswer) -> None:
        """In strict mode, stop everything at the first answer from another materialization."""
        if self.first_timestamp is None:
            self.first_timestamp = answer.timestamp
        elif (
            answer.timestamp != self.first_timestamp and self.client._config.consistency == "strict"
        ):
            self.answers[answer.start] = answer  # keep it: the error reports what was fetched
            self.inconsistent = True
            if self._group is not None:
                self._group.cancel_scope.cancel()

    def _merged(self) -> tuple[dict[int, dict[str, Any]], list[int]]:
        data: dict[int, dict[str, Any]] = {}
        missing: list[int] = []
        for start in sorted(self.answers):
            answer = self.answers[start]
            data.update(answer.items())
            missing.extend(answer.missing)
        return data, missing

    def _result(self) -> SegmentPropertyResult:
        data, missing = self._merged()
        return SegmentPropertyResult(
            data,
            property=self.prop,
            project=self.project,
            materialized_timestamp=newest_timestamp(self.answers.values()),
            missing=tuple(missing),
        )

    def _failure_reasons(self) -> tuple[dict[int, str], list[BrainCircuitsError]]:
        errors: list[BrainCircuitsError] = []
        failures: dict[int, str] = {}
        for start in sorted(self.failures):
            end, error = self.failures[start]
            if error not in errors:
                errors.append(error)
            failures.update(dict.fromkeys(self.ids[start:end], str(error)))
        return failures, errors

    def _inconsistent(self, why: str) -> InconsistentMaterializationError:
        timestamps = tuple(sorted({a.timestamp for a in self.answers.values()}))
        segment_timestamps = {
            segment: answer.timestamp
            for answer in self.answers.values()
            for segment, _ in answer.items()
        }
        failures, _ = self._failure_reasons()
        advice = (
            "raise max_refetch_rounds, or fetch again later"
            if self.client._config.consistency == "refetch"
            else "fetch again, or use consistency='refetch' to re-fetch stale chunks"
        )
        return InconsistentMaterializationError(
            f"{self.prop} (project {self.project!r}): {why}: timestamps {list(timestamps)}. "
            f"The dataset was re-materialized during the fetch; {advice}",
            timestamps=timestamps,
            result=self._result(),
            segment_timestamps=segment_timestamps,
            failures=failures,
        )

    def _finish(self) -> SegmentPropertyResult:
        timestamps = {answer.timestamp for answer in self.answers.values()}
        if len(timestamps) > 1:
            if self.client._config.consistency != "ignore":
                raise self._inconsistent(
                    f"chunks still disagree after {self.client._config.max_refetch_rounds} "
                    "re-fetch round(s)"
                )
            logger.warning(
                "%s (project %r): chunks came from different materializations %s; "
                "consistency='ignore' keeps them all and reports the newest",
                self.prop,
                self.project,
                sorted(timestamps),
            )
        if not self.failures:
            return self._result()
        failures, errors = self._failure_reasons()
        if not self.answers:
            # Nothing succeeded, so nothing is lost by raising the error itself.
            raise errors[0]
        result = self._result()
        raise IncompleteResultError(
            f"{self.prop} (project {self.project!r}): {len(failures)} of {len(self.ids)} "
            f"segment(s) could not be fetched ({len(self.failures)} chunk(s) failed; first: "
            f"{errors[0]}). The {len(result) + len(result.missing)} fetched are in .result, "
            "the failed ones in .failures",
            result=result,
            failures=failures,
            errors=tuple(errors),
        ) from errors[0]
