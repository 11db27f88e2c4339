"""The wire: sending one chunk and turning whatever comes back into an answer or our error.

One :class:`Wire` per client, built from narrow parts (the connection pools, the
request gate, the credentials, the stats), is handed to every call. For one chunk
it builds the request, takes a slot from the gate, sends, reads the body under a
size cap, and parses the answer. Every lower-layer error becomes one of ours in
one place, :class:`LowerLayerErrors` (as httpx's transport maps httpcore's
errors), and an error status becomes one in :func:`error_for_status`: errors are
built once, complete and with every token echo blanked, and never patched later.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import anyio
import anyio.lowlevel
import httpx

from ._chunking import not_found_hint
from ._config import ClientConfig, Secret
from ._exceptions import (
    APIConnectionError,
    APIStatusError,
    APITimeoutError,
    AuthenticationError,
    BrainCircuitsError,
    MalformedResponseError,
    RateLimitError,
    excerpt,
)
from ._json import request_body
from ._limits import RequestGate
from ._merge import ChunkAnswer, parse_answer
from ._retry import RETRYABLE_STATUS, parse_retry_after
from ._stats import ClientStats
from ._transport import (
    CAVE_TOKEN_HELP,
    ENDPOINT,
    TOKEN_HELP,
    AuthHeaders,
    ConnectionPools,
    Credentials,
    redact,
)

__all__ = ["LowerLayerErrors", "Target", "Wire", "error_for_status", "read_capped"]

logger = logging.getLogger("braincircuits_async")

#: Told the outcome of a request while the request still holds its slot (see `Wire.send`).
Judge = Callable[[ChunkAnswer | BrainCircuitsError], None]
#: What one exchange read: status, headers, the body's declared charset, the body
#: (None: longer than the cap).
Transfer = tuple[int, Mapping[str, str], str | None, bytes | None]


@dataclass(frozen=True, slots=True)
class Target:
    """Where the chunks of one call go: one property of one project, with its headers."""

    prop: str
    project: str
    url: httpx.URL
    headers: AuthHeaders
    token: Secret | None
    cave_token: Secret | None

    def redact(self, text: str) -> str:
        """``text`` with any echo of this target's tokens blanked."""
        return redact(text, (self.token, self.cave_token))


def _is_aiohttp(error: BaseException | None) -> bool:
    """Whether ``error`` is aiohttp's (without importing aiohttp)."""
    return error is not None and type(error).__module__.split(".")[0] == "aiohttp"


class LowerLayerErrors:
    """Catches the httpx (and socket, anyio) errors of one request, as ours.

    Used as ``with errors: ...`` then ``errors.caught``: the error is built in the
    handler but raised only after the ``with`` block (by ``Wire.send``), so the httpx
    error (which holds the request, whose headers carry the tokens) never rides
    along as ``__context__``. Anything else (cancellation, a bug) passes through.
    """

    __slots__ = ("caught", "describe", "redact", "timeout")

    def __init__(self, describe: str, timeout: float, redact: Callable[[str], str] = str) -> None:
        self.describe = describe
        self.timeout = timeout
        self.redact = redact
        self.caught: BrainCircuitsError | None = None

    def __enter__(self) -> LowerLayerErrors:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> bool:
        if error is None:
            return False
        self.caught = self.translate(error)
        return self.caught is not None

    def translate(self, error: BaseException) -> BrainCircuitsError | None:
        """Our error for a lower layer's ``error``, or None if it is not one.

        The aiohttp backend's errors are aiohttp's own (a timeout is a
        ``TimeoutError``); through a caller's ``httpx-aiohttp`` transport they
        arrive as httpx's, except that it calls a dropped connection a
        ``ConnectTimeout``: the aiohttp error it came from says which it was.
        Any text a lower layer quotes (a malformed header, a status line) goes
        through ``redact``.
        """
        name = type(error).__name__
        cause = error.__cause__
        from_aiohttp = _is_aiohttp(error) or _is_aiohttp(cause)
        if (
            isinstance(error, httpx.TimeoutException)
            and not (_is_aiohttp(cause) and not isinstance(cause, TimeoutError))
        ) or isinstance(error, (TimeoutError, asyncio.TimeoutError)):
            return APITimeoutError(
                f"{self.describe}: no answer within timeout={self.timeout:g} s ({name})"
            )
        if isinstance(error, httpx.DecodingError):
            return MalformedResponseError(
                f"{self.describe}: the answer could not be decoded ({self.redact(str(error))})",
                transient=True,
            )
        if from_aiohttp or isinstance(
            error, (httpx.RequestError, OSError, anyio.BrokenResourceError, anyio.EndOfStream)
        ):
            if from_aiohttp and cause is not None:
                name = type(cause).__name__
            return APIConnectionError(
                f"{self.describe}: connection failed ({name}: {self.redact(str(error))})"
            )
        return None


class Wire:
    """Sends chunks: one request each, under the client's gate, through its pools."""

    __slots__ = (
        "base_url",
        "credentials",
        "gate",
        "max_response_bytes",
        "max_retry_after",
        "pools",
        "request_timeout",
        "stats",
        "timeout",
    )

    def __init__(
        self,
        *,
        pools: ConnectionPools,
        gate: RequestGate,
        credentials: Credentials,
        stats: ClientStats,
        base_url: str,
        timeout: float,
        max_response_bytes: int,
        max_retry_after: float,
        request_timeout: float | None = None,
    ) -> None:
        self.pools = pools
        self.gate = gate
        self.credentials = credentials
        self.stats = stats
        self.base_url = base_url
        #: For messages: the pools enforce it.
        self.timeout = timeout
        self.max_response_bytes = max_response_bytes
        #: For messages: a longer Retry-After is not waited for (see `_retry`).
        self.max_retry_after = max_retry_after
        #: Seconds one request's whole exchange may take (`math.inf`: no bound).
        self.request_timeout = math.inf if request_timeout is None else request_timeout

    @classmethod
    def for_config(
        cls,
        config: ClientConfig,
        transport: httpx.AsyncBaseTransport | None,
        credentials: Credentials,
        stats: ClientStats,
    ) -> Wire:
        """The wire of a client with ``config``: its pools and its gate, built once."""
        return cls(
            pools=ConnectionPools(config, transport),
            gate=RequestGate(
                config.max_concurrency,
                adaptive=config.adaptive_concurrency,
                rate=config.max_requests_per_second,
            ),
            credentials=credentials,
            stats=stats,
            base_url=config.base_url,
            timeout=config.timeout,
            max_response_bytes=config.max_response_bytes,
            max_retry_after=config.retry.max_retry_after,
            request_timeout=config.request_timeout,
        )

    def target(self, prop: str, project: str) -> Target:
        """The target of ``prop`` in ``project``; raises AuthenticationError without a token."""
        headers = self.credentials.headers_for(project)
        return Target(
            prop=prop,
            project=project,
            url=httpx.URL(
                self.base_url + ENDPOINT.format(property=prop), params={"project": project}
            ),
            headers=AuthHeaders({**self.pools.headers, **headers}),
            token=self.credentials.token,
            cave_token=self.credentials.cave_for(project),
        )

    async def send(
        self,
        target: Target,
        ids: Sequence[int],
        *,
        start: int,
        describe: str,
        judge: Judge,
    ) -> ChunkAnswer:
        """One request for the chunk ``ids`` (at ``start`` in the call's id list).

        Returns the parsed answer or raises our error for it. ``judge`` is told the
        outcome while the request still holds its slot, so a verdict that ends the
        call (a refused token, a strict-mode disagreement) cancels the rest before
        another request can start.
        """
        content, keys = request_body(ids)
        async with self.gate as sent_at:
            # The gate's fast path may not have passed a checkpoint: a call stopped
            # meanwhile must send nothing more.
            await anyio.lowlevel.checkpoint_if_cancelled()
            self.stats.requests += 1
            outcome = await self._exchange(target, content, sent_at, ids, keys, start, describe)
            judge(outcome)
        # Raised here, where no local holds the answer's body: a traceback that shows
        # local variables (IPython, rich, Sentry) must not show what a server echoed.
        if isinstance(outcome, BrainCircuitsError):
            raise outcome
        return outcome

    async def _exchange(
        self,
        target: Target,
        content: bytes,
        sent_at: float,
        ids: Sequence[int],
        keys: list[str],
        start: int,
        describe: str,
    ) -> ChunkAnswer | BrainCircuitsError:
        """Send the chunk and read its answer, within ``request_timeout``.

        Returns the outcome rather than raising it, so the frame that holds the raw
        body is never part of a traceback.
        """
        transfer = self._transfer if self.pools.session is None else self._transfer_aiohttp
        errors = LowerLayerErrors(describe, self.timeout, target.redact)
        with anyio.move_on_after(self.request_timeout) as bound, errors:
            status, headers, encoding, body = await transfer(target, content)
        if errors.caught is not None:
            return errors.caught
        if bound.cancelled_caught:
            return APITimeoutError(
                f"{describe}: no complete answer within request_timeout="
                f"{self.request_timeout:g} s (the server sent too slowly)"
            )
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug(
                "POST %s %s -> %d in %.3fs",
                target.url.path,
                describe,
                status,
                anyio.current_time() - sent_at,
            )
        return self._outcome(
            target, status, headers, encoding, body, sent_at, ids, keys, start, describe
        )

    async def _transfer(self, target: Target, content: bytes) -> Transfer:
        """One exchange through httpx, on a free slot of the pools."""
        request = httpx.Request("POST", target.url, headers=target.headers, content=content)
        request.stream = OneShotBody(content)
        slot = self.pools.take()
        try:
            response = await self.pools.client_for(slot).send(request, stream=True)
            try:
                body = await read_capped(response, self.max_response_bytes)
            finally:
                await response.aclose()
        finally:
            self.pools.give_back(slot)
        return response.status_code, response.headers, response.encoding, body

    async def _transfer_aiohttp(self, target: Target, content: bytes) -> Transfer:
        """One exchange through aiohttp's own API, without httpx's models.

        httpx's ``Request``/``Response`` and an adapter between them cost about as
        much again as aiohttp's own work per request. The guarantees are the
        same: the per-operation ``timeout`` (the session's), the body cap, no
        redirects followed, the proxy chosen for the host (never for loopback), no
        cookies (the session's jar keeps none).
        """
        async with self.pools.session.post(
            str(target.url),
            data=content,
            headers=target.headers,
            allow_redirects=False,
            proxy=self.pools.proxy,
        ) as response:
            body = await read_capped_aiohttp(response, self.max_response_bytes)
            return response.status, response.headers, response.charset, body

    def _outcome(
        self,
        target: Target,
        status: int,
        headers: Mapping[str, str],
        encoding: str | None,
        body: bytes | None,
        sent_at: float,
        ids: Sequence[int],
        keys: list[str],
        start: int,
        describe: str,
    ) -> ChunkAnswer | BrainCircuitsError:
        """The answer, or the error that says why there is none (returned, not raised)."""
        if body is None:
            return MalformedResponseError(
                f"{describe}: the answer is larger than max_response_bytes="
                f"{self.max_response_bytes:,}; lower chunk_size, or raise the cap"
            )
        if status != 200:
            if status == 429:
                self.gate.throttled(sent_at)
            return error_for_status(
                status,
                headers,
                body,
                encoding=encoding,
                describe=describe,
                target=target,
                max_retry_after=self.max_retry_after,
            )
        self.gate.succeeded()
        try:
            return parse_answer(
                body, ids, keys, start=start, describe=describe, redact=target.redact
            )
        except MalformedResponseError as error:
            # Without the parser's frames (their locals hold the body) and without
            # the JSON error it replaced (which holds the whole body as ``doc``).
            error.__context__ = None
            return error.with_traceback(None)


class OneShotBody(httpx.AsyncByteStream):
    """A request body sent as one piece, iterated without an async generator.

    httpx's own body stream iterates with an async generator, which httpcore
    leaves open when a cancellation lands while the body is being sent (a call
    stopped by a 401, a deadline, an interrupt); on trio, collecting it later
    prints "Exception ignored in ... ByteStream.__aiter__".
    """

    __slots__ = ("_body",)

    def __init__(self, body: bytes) -> None:
        self._body = body

    def __aiter__(self) -> AsyncIterator[bytes]:
        return _Once(self._body)


class _Once:
    __slots__ = ("_piece",)

    def __init__(self, piece: bytes) -> None:
        self._piece: bytes | None = piece

    def __aiter__(self) -> _Once:
        return self

    async def __anext__(self) -> bytes:
        piece, self._piece = self._piece, None
        if piece is None:
            raise StopAsyncIteration
        return piece


async def read_capped_aiohttp(response: Any, cap: int) -> bytes | None:
    """:func:`read_capped` for an aiohttp response (decompressed as aiohttp reads it)."""
    declared = response.content_length
    if declared is not None and declared > cap:
        return None
    pieces = []
    size = 0
    async for piece in response.content.iter_any():
        size += len(piece)
        if size > cap:
            return None
        pieces.append(piece)
    return b"".join(pieces)


async def read_capped(response: httpx.Response, cap: int) -> bytes | None:
    """The body, or None if it is longer than ``cap`` bytes (a runaway answer)."""
    declared = response.headers.get("Content-Length", "")
    if declared.isdigit() and int(declared) > cap:
        return None
    pieces = []
    size = 0
    # aclosing: stopping early must close httpx's body generators now, not at GC.
    body: Any = response.aiter_bytes()  # an async generator: it has aclose()
    async with contextlib.aclosing(body):
        async for piece in body:
            size += len(piece)
            if size > cap:
                return None
            pieces.append(piece)
    return b"".join(pieces)


def _detail(body: str) -> str:
    """The server's own explanation: JSON ``detail`` when there is one, else the text."""
    try:
        data = json.loads(body)
    except ValueError:
        return excerpt(body)
    if isinstance(data, Mapping) and "detail" in data:
        detail = data["detail"]
        return excerpt(detail if isinstance(detail, str) else json.dumps(detail))
    return excerpt(body)


def error_for_status(
    status: int,
    headers: Mapping[str, str],
    body: bytes,
    *,
    encoding: str | None,
    describe: str,
    target: Target,
    max_retry_after: float,
) -> APIStatusError:
    """Our error for a non-200 answer (returned, not raised).

    ``body`` is the answer's body as read (capped), decoded leniently: an error
    page need not be valid UTF-8. Token echoes are blanked before the text is cut.
    """
    text = target.redact(body.decode(encoding or "utf-8", "replace"))
    shown = excerpt(text)
    detail = _detail(text)
    retry_after = parse_retry_after(headers.get("Retry-After"))
    token, cave_token = target.token, target.cave_token
    if 300 <= status < 400:
        # Quoted, but blanked first: a server may put the token in the address (?t=...).
        location = excerpt(target.redact(headers.get("Location", "<no Location header>")))
        return APIStatusError(
            f"{describe}: the server answered {status} redirecting to {location!r}. Redirects "
            "are not followed, so tokens never travel to another host; if that address is "
            "right and trusted, pass it as base_url=",
            status_code=status,
            body=shown,
        )
    if status in (401, 403):
        refused = "refused" if status == 403 else "not accepted (401)"
        if "cave" in detail.lower():
            which = (
                f"the CAVE token ({cave_token.source if cave_token else 'none sent'}) was "
                f"{refused}; check cave_token= / BRAINCIRCUITS_CAVE_TOKEN and {CAVE_TOKEN_HELP}"
            )
        else:
            which = (
                f"the BrainCircuits token ({token.source if token else 'none sent'}) was "
                f"{refused}; check token= / BRAINCIRCUITS_TOKEN and {TOKEN_HELP}"
            )
            if cave_token is not None:
                which += " (a CAVE token was sent too and may be the one at fault)"
        return AuthenticationError(
            f"{describe}: {which}. Server said: {detail}", status_code=status, body=shown
        )
    wait = "" if retry_after is None else f" (Retry-After: {retry_after:g} s)"
    if status in RETRYABLE_STATUS and retry_after is not None and retry_after > max_retry_after:
        wait += (
            f"; the server asked to wait {retry_after:g} s, longer than "
            f"max_retry_after={max_retry_after:g} s, so the chunk was not retried"
        )
    if status == 429:
        return RateLimitError(
            f"{describe}: rate limited by the server (429){wait}: {detail}",
            status_code=status,
            body=shown,
            retry_after=retry_after,
        )
    hint = {
        404: not_found_hint(target.prop, target.project, detail),
        413: " (too many segments in one request; lower chunk_size)",
        422: " (the server could not use the request; check the project name)",
    }.get(status, "")
    return APIStatusError(
        f"{describe}: the server answered {status}{hint}{wait}: {detail}",
        status_code=status,
        body=shown,
        retry_after=retry_after,
    )
