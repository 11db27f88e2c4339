"""``AsyncClient``: bulk-fetch segment properties in concurrent, retried chunks.

Every fetch reads top to bottom in this module, and every fetch method runs
through one orchestration, :meth:`AsyncClient._fetch`:

1. validate the names and ids before any request (``_chunking``);
2. with a store, look up what it holds (``_store``, in a worker thread) and plan
   to fetch only the rest (``_resume``);
3. one :class:`~braincircuits_async._scheduler.Call` per property, sending its
   chunks through the client's :class:`~braincircuits_async._wire.Wire` (the gate,
   the pools, the request, the answer) with retry (``_retry``), each answer
   committed to the store as it arrives;
4. the first pass, then rounds of re-fetching chunks (fetched or stored) older
   than the newest materialization across all calls, under the call's deadline;
5. settle (``_policy.settle``): merge, or the one error that says why not, which
   carries what was fetched either way.

``fetch_property`` is that with one call, ``fetch_properties`` with several,
``iter_property`` with one whose answers go to a stream (``_stream``).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import os
import warnings
from collections.abc import Callable, Iterable, Sequence
from types import TracebackType
from typing import Any, TypeVar

import anyio
import anyio.lowlevel
import httpx

from ._backends import HttpBackend
from ._background import BackgroundTasks
from ._chunking import (
    normalize_segments,
    normalize_segments_async,
    validate_project,
    validate_properties,
)
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
    DEFAULT_REQUEST_TIMEOUT,
    DEFAULT_TIMEOUT,
    ClientConfig,
    Consistency,
    RetryPolicy,
    cave_secrets_folder,
    check_seconds,
    resolve_base_url,
    resolve_cave_token,
    resolve_token,
)
from ._exceptions import BrainCircuitsError, ClientClosedError, UsageError
from ._interrupts import cancelled_with_note, interrupted_note
from ._models import SegmentPropertyResult
from ._policy import Outcome, refetch_target, settle, stale_slices, with_partial
from ._progress import CombinedProgress, ProgressArg, Reporter, close_reporter, make_reporter
from ._recording import Committer, Loader
from ._resume import Held, Plan, plan_call
from ._scheduler import Call, Reference, Sink, StrictStop, run_all
from ._stats import ClientStats
from ._store import ResultStore, open_store
from ._stream import PropertyStream
from ._transport import Credentials, check_base_url
from ._wire import Target, Wire

__all__ = ["AsyncClient", "ClientStats"]

logger = logging.getLogger("braincircuits_async")

T = TypeVar("T")

#: Ids looked up in the store per worker-thread call (about 10 ms of work each).
LOOKUP_BATCH = 10_000


class AsyncClient:
    """An async client for BrainCircuits.io segment properties.

    Use it as an async context manager so its connections are closed::

        import braincircuits_async as bca

        async with bca.AsyncClient(project="fruitfly_fafb_flywire") as client:
            result = await client.fetch_property("link_pre", segment_ids)
        result[720575940634474894]   # {'nr_pre': 3847, 'nr_downstream_partner': 1772}

    Or, in a notebook, as one client for the whole session: create it in one cell,
    ``await`` its methods in any later cell, and ``await client.aclose()`` when
    done. It opens its connections on first use, and any task of that event loop
    may close it; a client left unclosed warns (``ResourceWarning``) when it is
    garbage-collected. It belongs to the event loop that first used it: from any
    other it raises :class:`UsageError`.

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
        request_timeout: seconds one request may take in all, from sending it to
            the last byte of its answer (default 300); a server that trickles its
            answer gets a timeout like any other, retried and then split. None: no
            bound beyond ``timeout`` per operation.
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
            256 MiB); a larger one fails its chunk instead of exhausting memory. It
            bounds each answer: up to ``max_concurrency`` are read at once.
        deadline: default total time limit, in seconds, for each call (see
            :meth:`fetch_property`); None for no limit.
        store: a :class:`ResultStore`, or the path of one (opened here, closed with
            the client): every chunk's answer is committed to it as it arrives, and
            a fetch asks the server only for what it does not hold yet (see
            ``docs/store.md``). Default: no store.
        trust_env: honour the environment's proxies (``HTTPS_PROXY``, ``ALL_PROXY``,
            ``NO_PROXY``) and ``SSL_CERT_FILE`` as httpx does (default True); a
            loopback ``base_url`` never goes through a proxy. A SOCKS proxy needs
            the ``socks`` extra.
        http_backend: the HTTP stack: ``"auto"`` (the default) uses aiohttp
            directly on asyncio when it is installed (the ``fast`` extra) and no
            proxy or respx mock is in play, else httpx's own; ``"httpx"`` or
            ``"aiohttp"`` force one (aiohttp runs on asyncio only). Every guarantee
            (timeouts, the body cap, no redirects, no cookies, no proxy for
            loopback, no token in any text) holds on both; ``client.http_backend``
            says which one a client uses, from its first request on.
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
        store: ResultStore | str | os.PathLike[str] | None = None,
        request_timeout: float | None = DEFAULT_REQUEST_TIMEOUT,
        trust_env: bool = True,
        http_backend: HttpBackend = "auto",
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
            request_timeout=request_timeout,
            trust_env=trust_env,
            http_backend=http_backend,
            retry=RetryPolicy(
                max_retries=max_retries,
                backoff_base=backoff_base,
                backoff_max=backoff_max,
                max_retry_after=max_retry_after,
            ),
        )
        self._credentials = Credentials(
            resolve_token(token), resolve_cave_token(cave_token), cave_secrets_folder()
        )
        #: Running totals of requests, retries, chunks and segments.
        self.stats = ClientStats()
        # Built once, from narrow parts: nothing below the client sees the client.
        self._wire = Wire.for_config(self._config, transport, self._credentials, self.stats)
        self._http = self._wire.pools
        # The producers of iter_property streams: they must outlive a `break`, and
        # any task of the loop may close the client (a notebook's next cell).
        self._tasks = BackgroundTasks()
        # The event loop of the first use: connections and tasks belong to it.
        self._loop: object | None = None
        # Opened last: nothing above can fail and leave it open.
        self._store, self._owns_store = open_store(store)
        if self._store is not None:
            try:
                self._store._check_server(url)  # one store file per server
            except BaseException:
                if self._owns_store:
                    self._store.close()
                raise

    @property
    def store(self) -> ResultStore | None:
        """The client's :class:`ResultStore`, or ``None``."""
        return self._store

    @property
    def http_backend(self) -> str:
        """The HTTP stack the requests go through: ``"aiohttp"``, ``"httpx"``, or
        ``"transport"`` (a caller's own); settled on the first use, on its event loop."""
        return self._http.backend

    @property
    def config(self) -> ClientConfig:
        """The client's settings (tokens excluded)."""
        return self._config

    def __repr__(self) -> str:
        token, cave = self._credentials.describe()
        c = self._config
        return (
            f"<AsyncClient base_url={c.base_url!r} project={c.project!r} "
            f"chunk_size={c.chunk_size} max_concurrency={c.max_concurrency} "
            f"consistency={c.consistency!r} token=<{token}> "
            f"cave_token=<{cave}>"
            + ("" if self._store is None else f" store={str(self._store.path)!r}")
            + ">"
        )

    async def __aenter__(self) -> AsyncClient:
        self._on_its_loop()
        await self._ready()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connections and stop any stream. The client cannot be used afterwards.

        Any task of the event loop the client was used on may close it (in a
        notebook: a later cell); ``async with`` does it for you.
        """
        self._on_its_loop()
        try:
            await self._tasks.aclose()
        finally:
            try:
                await self._http.aclose()
            finally:
                if self._owns_store and self._store is not None:
                    # Closing checkpoints the write-ahead log: file work, off the loop.
                    with anyio.CancelScope(shield=True):
                        await anyio.to_thread.run_sync(self._store.close)

    def __del__(self) -> None:
        # As an unclosed file does: the connections (and a store) stay open until then.
        http = getattr(self, "_http", None)
        if http is not None and http.built and not http.is_closed:
            warnings.warn(
                f"unclosed {self!r}: close it with `await client.aclose()`, or use "
                "`async with bca.AsyncClient(...) as client:`",
                ResourceWarning,
                stacklevel=2,
            )

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
        results = await self.fetch_properties(
            [property], segments, project=project, progress=progress, deadline=deadline
        )
        return results[property]

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
                disagreeing on the materialization; its ``results`` hold every
                property's result.
            BrainCircuitsError: the other errors of :meth:`fetch_property`, the same
                for one property as for several: when every chunk of every property
                failed, that chunk's own error.
        """
        props, proj = self._prepare(properties, project)
        ids = await self._segment_ids(segments)
        limit = self._deadline(deadline)
        started = anyio.current_time()  # the deadline counts the store's lookup too
        if not ids:
            return {p: _empty(p, proj) for p in props}
        # The targets first: a missing token must fail before a progress bar is drawn.
        targets = [self._wire.target(p, proj) for p in props]
        total = len(ids) * len(props)
        reporter = make_reporter(progress, total, ",".join(props))
        # Several calls report their sum; a single one reports as it is.
        combined = (
            CombinedProgress(reporter, total) if reporter is not None and len(props) > 1 else None
        )
        reference = Reference()
        calls: list[Call] = []
        try:
            for i, target in enumerate(targets):
                plan = await self._plan(target, ids)
                calls.append(
                    self._call(
                        target,
                        plan,
                        reference,
                        reporter=combined.reporter_for(i) if combined else reporter,
                    )
                )
            return await self._fetch(calls, limit, started)
        except anyio.get_cancelled_exc_class() as cancelled:
            raise self._interrupted(cancelled, props, calls, total) from None
        finally:
            close_reporter(reporter)

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
        :class:`IncompleteResultError` at the end, after every other chunk (or,
        when no chunk at all could be fetched, that chunk's own error).

        The stream's requests run in a task of the client's own, which outlives a
        ``break`` in the loop; closing the client stops it. Up to 20,000 ids are
        checked here; more are checked as the stream starts, off the loop, and a bad
        one among them is raised by the first step of the ``async for``.
        """
        (prop,), proj = self._prepare([property], project)
        # Many ids are checked off the loop, as the stream starts: an error in them is
        # raised by the first step of the `async for`, not here.
        known = _sized(segments)
        ids = normalize_segments(segments) if known is not None and known < OFF_LOOP else None
        limit = self._deadline(deadline)
        # As many buffered results as workers: a worker whose chunk is done need not
        # wait for the reader, and results fetched before an error reach it first.
        stream = PropertyStream(buffer=2 * self._config.max_concurrency)
        producer = stream.producer
        if ids is not None and not ids:
            producer.finish()
            return stream
        target = self._wire.target(prop, proj)  # a missing token fails before any bar
        reporters: list[Reporter | None] = []

        async def run() -> None:
            started = anyio.current_time()
            checked = ids if ids is not None else await self._segment_ids(segments)
            reporters.append(make_reporter(progress, len(checked), prop))
            if not checked:
                return
            plan = await self._plan(target, checked, values=False)  # memory: values as handed on
            call = self._call(target, plan, Reference(), reporter=reporters[0], sink=producer.put)
            await self._fetch([call], limit, started, streaming=True)

        def done() -> None:
            for reporter in reporters:
                close_reporter(reporter)

        self._tasks.start(functools.partial(producer.run, run, done))
        return stream

    # --- the one orchestration -------------------------------------------------------

    async def _fetch(
        self,
        calls: Sequence[Call],
        deadline: float | None,
        started: float,
        *,
        streaming: bool = False,
    ) -> dict[str, SegmentPropertyResult]:
        """Run ``calls`` to the end and settle them: the path of every fetch.

        The first pass fetches every chunk; with ``consistency="refetch"``, rounds
        re-fetch the chunks older than the newest materialization seen across all
        calls (a stream keeps no answers, so it has no rounds: it re-fetches as it
        goes). A deadline (counted from ``started``) cancels whatever is in flight and
        records what it cut off.
        """
        config = self._config
        how: dict[str, Any] = {"consistency": config.consistency, "streaming": streaming}
        await self._ready()

        def outcomes() -> list[Outcome]:
            return [c.outcome() for c in calls]

        left = math.inf if deadline is None else deadline - (anyio.current_time() - started)
        with anyio.move_on_after(max(left, 0.0)) as scope:
            try:
                await run_all([functools.partial(c.fetch, c.first_pass) for c in calls])
                if streaming:
                    await self._deliver_stored(calls)
                elif config.consistency == "refetch":
                    await self._refetch_rounds(calls)
            except StrictStop:
                pass  # settling raises InconsistentMaterializationError, with everything
            except BrainCircuitsError as error:
                # A fatal answer (401, 404, ...) or a store that cannot be written:
                # still fail fast, but with everything fetched so far.
                raise await self._settled(with_partial, calls, error, outcomes(), **how) from None
        if scope.cancelled_caught:
            # A fatal error the deadline cut short of being raised is still the answer.
            fatal = next((c.fatal for c in calls if c.fatal is not None), None)
            if fatal is not None:
                raise await self._settled(with_partial, calls, fatal, outcomes(), **how)
            for call in calls:
                call.deadline_passed(deadline or 0.0)
        rounds = config.max_refetch_rounds
        return await self._settled(settle, calls, outcomes(), max_refetch_rounds=rounds, **how)

    async def _settled(
        self, settling: Callable[..., T], calls: Sequence[Call], *args: Any, **kwargs: Any
    ) -> T:
        """``settling(*args, **kwargs)``: merging a million segments takes a quarter of
        a second, so a large call's merge runs in a worker thread (shielded: it is
        bounded work, and a cancellation lands right after it)."""
        if sum(len(c.ids) for c in calls) < OFF_LOOP:
            return settling(*args, **kwargs)
        with anyio.CancelScope(shield=True):
            settled = await off_loop(functools.partial(settling, *args, **kwargs))
        return settled

    async def _deliver_stored(self, calls: Sequence[Call]) -> None:
        """Streams: hand on what the store held, then fetch again what is stale."""
        for call in calls:
            again = await call.deliver_stored()
            if again:
                # `fetch`, not `refetch`: these were never handed on, nor counted.
                await call.fetch(again)

    async def _refetch_rounds(self, calls: Sequence[Call]) -> None:
        """Re-fetch chunks not from the newest materialization across ``calls``."""
        for round_number in range(1, self._config.max_refetch_rounds + 1):
            target = refetch_target(a for c in calls for a in c.answers.values())
            stale = [(c, s) for c in calls if (s := stale_slices(c.answers.values(), target))]
            if not stale:
                return
            for call, slices in stale:
                logger.info(
                    "%s: %d chunk(s) are not from materialization %s; re-fetching (round %d)",
                    call.target.prop,
                    len(slices),
                    target,
                    round_number,
                )
                self.stats.refetches += len(slices)
            await run_all([functools.partial(c.refetch, s) for c, s in stale])

    async def _plan(self, target: Target, ids: list[int], *, values: bool = True) -> Plan:
        """What to fetch: every chunk, or with a store only what it does not hold.

        ``values=False`` (streams) plans with the stored timestamps only; the values
        are read chunk by chunk as they are handed on.
        """
        store = self._store
        chunk_size = self._config.chunk_size
        if store is None or not await anyio.to_thread.run_sync(
            store._holds_any, target.prop, target.project
        ):
            return plan_call(ids, None, chunk_size)

        # Large work, so in worker threads, off the event loop, and in pieces: a
        # cancellation (a deadline, Ctrl-C) lands between two of them.
        held: list[Held | None] = []
        for start in range(0, len(ids), LOOKUP_BATCH):
            held += await anyio.to_thread.run_sync(
                functools.partial(
                    store._lookup,
                    target.prop,
                    target.project,
                    ids[start : start + LOOKUP_BATCH],
                    values=values,
                )
            )
        plan = await anyio.to_thread.run_sync(plan_call, ids, held, chunk_size)
        stored = sum(a.end - a.start for a in plan.stored)
        logger.info("%s: the store holds %d of %d segment(s)", target.prop, stored, len(ids))
        return plan

    def _call(
        self,
        target: Target,
        plan: Plan,
        reference: Reference,
        *,
        reporter: Reporter | None = None,
        sink: Sink | None = None,
    ) -> Call:
        store = self._store
        record = (
            None
            if store is None
            else Committer(store, target.prop, target.project, self._config.base_url)
        )
        return Call(
            self._wire,
            target,
            plan,
            self._config,
            self.stats,
            reference=reference,
            reporter=reporter,
            sink=sink,
            record=record,
            load_stored=(
                None
                if store is None or sink is None
                else Loader(store, target.prop, target.project)
            ),
        )

    # --- before any request -----------------------------------------------------------

    def _interrupted(
        self, cancelled: BaseException, props: list[str], calls: list[Call], total: int
    ) -> BaseException:
        """A notebook's interrupt: one line saying what was fetched, not anyio's frames."""
        fetched = sum(a.end - a.start for c in calls for a in c.answers.values() if not a.stored)
        store = None if self._store is None else str(self._store.path)
        what = (
            f"fetch_properties({','.join(props)})"
            if len(props) > 1
            else f"fetch_property({props[0]!r})"
        )
        return cancelled_with_note(cancelled, interrupted_note(what, fetched, total, store))

    def _deadline(self, deadline: float | None) -> float | None:
        if deadline is None:
            return self._config.deadline
        check_seconds("deadline", deadline)
        return float(deadline)

    def _prepare(self, properties: Iterable[str], project: str | None) -> tuple[list[str], str]:
        """Validate the names, and that the client is open on this loop, before any request."""
        props = validate_properties(properties)
        proj = validate_project(project if project is not None else self._config.project)
        if self._http.is_closed:
            raise ClientClosedError("this AsyncClient is closed; create a new one")
        self._on_its_loop()
        return props, proj

    async def _segment_ids(self, segments: Iterable[Any]) -> list[int]:
        """The ids, validated and de-duplicated, in slices that let the caller's loop run."""
        return await normalize_segments_async(segments)

    async def _ready(self) -> None:
        """The connection pools, built on the first use (on the loop now known)."""
        await self._http.ready(on_asyncio=isinstance(self._loop, asyncio.AbstractEventLoop))

    def _on_its_loop(self) -> None:
        """Bind the client to the running event loop on first use; refuse any other.

        Its connections, its gate and its task group belong to one event loop: used
        from a second one (a second ``asyncio.run``, a loop in another thread) they
        fail deep inside anyio or leave connections that no ``aclose`` can close.
        """
        token = anyio.lowlevel.current_token()
        loop = getattr(token, "native_token", token)  # the loop (a wrapper since anyio 4.11)
        if self._loop is None:
            self._loop = loop
        elif loop is not self._loop:
            raise UsageError(
                "this AsyncClient was first used on another event loop, and its "
                "connections belong to that loop: use (and close) it there, or create "
                "one client per event loop (each asyncio.run() starts a new loop)"
            )


#: From this many ids on, a call's merge runs in a worker thread, and a stream checks its
#: ids as it starts rather than when it is made (below: ~3 ms of work on the loop).
OFF_LOOP = 20_000


def _sized(segments: Iterable[Any]) -> int | None:
    """How many ids ``segments`` holds, if it says without being read."""
    try:
        return len(segments)  # type: ignore[arg-type]
    except TypeError:
        return None


async def off_loop(work: Callable[..., T], *args: Any) -> T:
    """``work(*args)`` in a worker thread, so the caller's event loop keeps running."""
    return await anyio.to_thread.run_sync(work, *args)


def _empty(prop: str, project: str) -> SegmentPropertyResult:
    return SegmentPropertyResult({}, property=prop, project=project, materialized_timestamp=None)
