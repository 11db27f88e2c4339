"""The HTTP side: building the httpx client, auth headers, token safety, status errors.

Tokens leave this process only as request headers to the configured host:
redirects are never followed (httpx keeps ``Authorization-Cave`` on a
cross-origin redirect), plain ``http://`` is refused except on loopback, and
any echo of a token in an error body is blanked before it reaches a message.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Mapping

import httpx

from ._config import CAVE_PROJECTS, DEFAULT_BASE_URL, ClientConfig, Secret
from ._exceptions import (
    APIStatusError,
    AuthenticationError,
    InvalidArgumentError,
    MalformedResponseError,
    RateLimitError,
    excerpt,
)
from ._retry import parse_retry_after
from ._version import __version__

__all__ = [
    "ENDPOINT",
    "AuthHeaders",
    "ConnectionPools",
    "auth_headers",
    "check_base_url",
    "error_for_status",
    "is_loopback",
    "scrubbed",
]

ENDPOINT = "/circuit/segment/property/{property}"
TOKEN_HELP = "get one from the Profile widget at https://braincircuits.io/app"
CAVE_TOKEN_HELP = (
    "set it in the Profile widget at https://braincircuits.io/app "
    "(CAVEclient users: client.auth.token)"
)


def is_loopback(host: str) -> bool:
    """Whether ``host`` names this machine (``localhost``, 127.0.0.0/8, ``::1``)."""
    host = host.strip("[]").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_base_url(base_url: str, *, custom_transport: bool) -> httpx.URL:
    """Parse ``base_url`` and refuse addresses that would expose the tokens.

    Plain ``http://`` is allowed only to loopback hosts, or with a caller's own
    ``transport`` (tests and in-process servers), since every request carries tokens.
    """
    try:
        url = httpx.URL(base_url)
    except (httpx.InvalidURL, TypeError) as error:
        raise InvalidArgumentError(f"base_url {base_url!r} is not a valid URL: {error}") from None
    if url.scheme not in ("http", "https") or not url.host:
        raise InvalidArgumentError(
            f"base_url must be an http(s) address such as {DEFAULT_BASE_URL!r}; got {base_url!r}"
        )
    if url.query or url.fragment:
        raise InvalidArgumentError(
            f"base_url must not contain a query or fragment; got {base_url!r}"
        )
    if url.userinfo:
        raise InvalidArgumentError("base_url must not contain a user name or password")
    if url.scheme == "http" and not custom_transport and not is_loopback(url.host):
        raise InvalidArgumentError(
            f"refusing to send tokens over plain http:// to {url.host!r}: "
            "use an https:// base_url (plain http is only allowed to loopback addresses)"
        )
    return url


class ConnectionPools:
    """Long-lived httpx clients whose connections add up to the concurrency bound.

    httpcore assigns a request to a connection by scanning every connection of
    its pool, and does so on every request and every release: the cost grows
    with the square of the pool's size (at 64 connections it dominates a bulk
    fetch). So the bound is spread over several small pools of at most
    ``connections_per_pool`` connections, and each request takes a *slot*: a
    place in one pool that is known to be free, because the client's limiter
    admits no more requests than there are slots.

    With a caller's own ``transport`` there is one client around it.
    """

    def __init__(self, config: ClientConfig, transport: httpx.AsyncBaseTransport | None) -> None:
        bound = config.max_concurrency
        size = bound if transport is not None else min(config.connections_per_pool, bound)
        count = -(-bound // size)
        # One TLS context for every pool: building one costs tens of milliseconds.
        verify = httpx.create_ssl_context() if transport is None else True
        headers = {
            "Accept": "application/json",
            "Content-Type": "application/json",
            "User-Agent": f"braincircuits-async/{__version__}",
        }
        self.clients = [
            httpx.AsyncClient(
                base_url=config.base_url,
                transport=transport,
                limits=httpx.Limits(
                    max_connections=min(size, bound - i * size),
                    max_keepalive_connections=min(size, bound - i * size),
                ),
                timeout=httpx.Timeout(config.timeout),
                follow_redirects=False,
                headers=headers,
                verify=verify,
            )
            for i in range(count)
        ]
        #: Which client each slot sends through; free slots are popped from the end.
        self._slot_client = [self.clients[slot // size] for slot in range(bound)]
        self._free = list(range(bound - 1, -1, -1))

    @property
    def headers(self) -> httpx.Headers:
        """The headers every request carries besides the tokens."""
        return self.clients[0].headers

    @property
    def is_closed(self) -> bool:
        return self.clients[0].is_closed

    def take(self) -> int:
        """A free slot: call only while holding the client's limiter, which ensures one."""
        return self._free.pop()

    def client_for(self, slot: int) -> httpx.AsyncClient:
        return self._slot_client[slot]

    def give_back(self, slot: int) -> None:
        self._free.append(slot)

    async def open(self) -> None:
        for client in self.clients:
            await client.__aenter__()

    async def aclose(self) -> None:
        for client in self.clients:
            await client.aclose()


class AuthHeaders(dict[str, str]):
    """Request headers that carry tokens: their repr hides every value.

    Keeps the tokens out of tracebacks that show local variables (IPython,
    rich, Sentry) and out of any accidental print.
    """

    def __repr__(self) -> str:
        return f"AuthHeaders({sorted(self)}, values hidden)"

    __str__ = __repr__


def auth_headers(token: Secret | None, cave_token: Secret | None, project: str) -> AuthHeaders:
    """The auth headers for ``project``, or an error naming the token to set.

    The CAVE token is sent for CAVE-managed projects (where it is required) and
    for any project when the user supplied one.
    """
    if token is None:
        raise AuthenticationError(
            "no BrainCircuits token: pass token= to AsyncClient or set BRAINCIRCUITS_TOKEN "
            f"({TOKEN_HELP})"
        )
    headers = AuthHeaders(Authorization=f"Bearer {token.reveal()}")
    if cave_token is not None:
        headers["Authorization-Cave"] = f"Bearer {cave_token.reveal()}"
    elif project in CAVE_PROJECTS:
        raise AuthenticationError(
            f"project {project!r} is managed by CAVE and needs a CAVE token: pass cave_token= "
            f"to AsyncClient or set BRAINCIRCUITS_CAVE_TOKEN (or CAVE_TOKEN); {CAVE_TOKEN_HELP}"
        )
    return headers


def scrubbed(
    error: MalformedResponseError, token: Secret | None, cave_token: Secret | None
) -> MalformedResponseError:
    """``error`` with any echo of a token blanked from its message and body excerpt.

    A 200 answer's body is quoted in the error when it is not the documented
    shape, and a misbehaving server may echo request headers into it.
    """
    secrets = (token, cave_token)
    error.args = tuple(_scrub(a, secrets) if isinstance(a, str) else a for a in error.args)
    error.body = _scrub(error.body, secrets)
    return error


def _scrub(text: str, secrets: tuple[Secret | None, ...]) -> str:
    """Blank every token in ``text``, and a token's start cut off by an excerpt's "…"."""
    for secret in secrets:
        if secret is None:
            continue
        value = secret.reveal()
        text = text.replace(value, "<hidden>")
        if text.endswith("…"):
            for size in range(len(value) - 1, 3, -1):
                if text[:-1].endswith(value[:size]):
                    text = text[: -1 - size] + "<hidden>…"
                    break
    return text


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
    response: httpx.Response,
    body: bytes,
    *,
    describe: str,
    token: Secret | None,
    cave_token: Secret | None,
) -> APIStatusError:
    """Translate a non-200 answer into the matching exception (returned, not raised).

    ``body`` is the answer's body as read (the client reads bodies itself, with a
    size cap), decoded leniently: an error page need not be valid UTF-8.
    """
    status = response.status_code
    # Blank any echo of a token before cutting, so no piece of one survives the cut.
    text = _scrub(body.decode(response.encoding or "utf-8", "replace"), (token, cave_token))
    shown = excerpt(text)
    detail = _detail(text)
    retry_after = parse_retry_after(response.headers.get("Retry-After"))
    if 300 <= status < 400:
        location = response.headers.get("Location", "<no Location header>")
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
    if status == 429:
        return RateLimitError(
            f"{describe}: rate limited by the server (429){wait}: {detail}",
            status_code=status,
            body=shown,
            retry_after=retry_after,
        )
    hint = {
        404: " (check the property and project names, and base_url)",
        413: " (too many segments in one request; lower chunk_size)",
        422: " (the server could not use the request; check the project name)",
    }.get(status, "")
    return APIStatusError(
        f"{describe}: the server answered {status}{hint}{wait}: {detail}",
        status_code=status,
        body=shown,
        retry_after=retry_after,
    )
