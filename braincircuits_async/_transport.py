"""The HTTP side: building the httpx client, auth headers, token safety, status errors.

Tokens leave this process only as request headers to the configured host:
redirects are never followed (httpx keeps ``Authorization-Cave`` on a
cross-origin redirect), plain ``http://`` is refused except on loopback, and
any echo of a token in an error body is blanked before it reaches a message.
"""

from __future__ import annotations

import http
import importlib.util
import ipaddress
import json
import logging
import re
import ssl
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import httpx

from ._backends import (
    AIOHTTP_NEEDS,
    Backend,
    aiohttp_installed,
    aiohttp_session,
    choose_backend,
    env_proxy,
    respx_is_mocking,
)
from ._config import (
    CAVE_PROJECTS,
    DEFAULT_BASE_URL,
    ClientConfig,
    Secret,
    cave_token_from_files,
)
from ._exceptions import AuthenticationError, InvalidArgumentError, MissingDependencyError
from ._version import __version__

__all__ = [
    "CAVE_TOKEN_HELP",
    "ENDPOINT",
    "TOKEN_HELP",
    "AuthHeaders",
    "ConnectionPools",
    "Credentials",
    "auth_headers",
    "check_base_url",
    "is_loopback",
    "redact",
    "uses_env_proxies",
]

ENDPOINT = "/circuit/segment/property/{property}"
TOKEN_HELP = "get one from the Profile widget at https://braincircuits.io/app"
CAVE_TOKEN_HELP = (
    "set it in the Profile widget at https://braincircuits.io/app "
    "(CAVEclient users: client.auth.token)"
)


def is_loopback(host: str) -> bool:
    """Whether ``host`` names this machine (``localhost``, 127.0.0.0/8, ``::1``).

    Not ``*.localhost``: RFC 6761 says such names should resolve to loopback, but a
    resolver that does not honour it sends them to DNS, so ``evil.localhost`` could
    be anywhere, and tokens would travel there over plain http.
    """
    host = host.strip("[]").lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def uses_env_proxies(host: str, *, trust_env: bool) -> bool:
    """Whether requests to ``host`` may go through the environment's proxies.

    Never for loopback: a proxy between this machine and itself would see both
    tokens in clear text over plain http, and could answer in the server's place.
    """
    return trust_env and not is_loopback(host)


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


def needs_tls(scheme: str, proxy: str | None) -> bool:
    """Whether a client's connections may use TLS: to an ``https`` base URL or proxy.

    Redirects are never followed, so the base URL and the proxy chosen for it are
    the only places a client connects to.
    """
    return scheme == "https" or (proxy is not None and proxy.lower().startswith("https"))


def tls_context(*, needed: bool, trust_env: bool) -> ssl.SSLContext:
    """The TLS context of a client's pools (one for all of them: building one costs 30-40 ms).

    Where no TLS is used (plain HTTP: the fake, a local mirror), a context that
    trusts no certificate at all: 1.5 ms, and any TLS it were ever used for would
    fail. Not shared between clients: httpcore sets its ALPN protocols on every TLS
    connection, which is not safe while another thread's client uses it, and the
    environment (``SSL_CERT_FILE``, ``SSLKEYLOGFILE``) is read anew for each client.
    """
    if not needed:
        return ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # verifies, and trusts nothing
    return httpx.create_ssl_context(trust_env=trust_env)


class NoCookies(httpx.Cookies):
    """A cookie jar that keeps nothing: the API uses none, and a server's must not stick."""

    def extract_cookies(self, response: httpx.Response) -> None:
        return None


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

    Proxies: the environment's (``HTTPS_PROXY``, ``ALL_PROXY``, ``NO_PROXY``) are
    honoured as httpx does, since institutions need them, unless ``trust_env`` is
    off; a loopback base URL never goes through one (:func:`uses_env_proxies`).
    """

    def __init__(self, config: ClientConfig, transport: httpx.AsyncBaseTransport | None) -> None:
        hide_server_text_in_http_logs()
        self._config = config
        self._transport = transport
        url = self._url = httpx.URL(config.base_url)
        self._loopback = is_loopback(url.host)
        #: The environment's proxy for the base URL (None: none, or not used).
        self.proxy = env_proxy(url, trust_env=config.trust_env, loopback=self._loopback)
        # What cannot work is said now, not at the first request.
        if config.http_backend == "aiohttp" and transport is None and not aiohttp_installed():
            raise MissingDependencyError(AIOHTTP_NEEDS)
        if (
            transport is None
            and self.proxy is not None
            and self.proxy.lower().startswith("socks")
            and importlib.util.find_spec("socksio") is None
        ):
            # The proxy's address is not quoted: it may carry a user name and password.
            raise MissingDependencyError(
                "the environment names a SOCKS proxy (ALL_PROXY or HTTPS_PROXY), which "
                "needs the socks extra: pip install 'braincircuits-async[socks]'; or pass "
                "trust_env=False to ignore the environment's proxies"
            )
        #: The headers every request carries besides the tokens.
        self.headers = httpx.Headers(
            {
                "Accept": "application/json",
                "Content-Type": "application/json",
                "User-Agent": f"braincircuits-async/{__version__}",
            }
        )
        #: What the requests go through, settled by :meth:`ready` on the first use.
        self.backend: Backend = "transport" if transport is not None else "httpx"
        self.clients: list[httpx.AsyncClient] = []
        #: The aiohttp backend's session (its requests bypass httpx's models).
        self.session: Any = None
        self._built = False
        self._slot_client: list[httpx.AsyncClient] = []
        self._free: list[int] = []
        self._building: anyio.Event | None = None
        self._closed = False

    async def ready(self, *, on_asyncio: bool) -> None:
        """Build the pools on the first use, once the event loop is known.

        Off the loop: a TLS context costs tens of milliseconds, and importing
        aiohttp a few hundred, which would stall the caller's other tasks.
        """
        if self._built:
            return
        if self._building is not None:  # another call of this client is building them
            await self._building.wait()
            return
        backend = choose_backend(
            self._config.http_backend,
            custom_transport=self._transport is not None,
            on_asyncio=on_asyncio,
            installed=aiohttp_installed(),
            proxy=self.proxy,
            mocked=respx_is_mocking(),
        )
        self._building = building = anyio.Event()
        try:
            with anyio.CancelScope(shield=True):  # bounded work: finish it once started
                verify = await anyio.to_thread.run_sync(self._build, backend)
                if backend == "aiohttp":
                    # In the loop: an aiohttp session belongs to the loop it is made in.
                    self.session = aiohttp_session(
                        verify=verify,
                        limit=self._config.max_concurrency,
                        timeout=self._config.timeout,
                    )
                    self.backend = backend
                self._built = True
        finally:
            self._building = None
            building.set()

    def _build(self, backend: Backend) -> ssl.SSLContext | bool:
        """The clients and their slots: small httpcore pools, or one around a transport."""
        config, transport = self._config, self._transport
        verify: ssl.SSLContext | bool = True
        if transport is None:
            # One TLS context for every pool: building one costs tens of milliseconds.
            verify = tls_context(
                needed=needs_tls(self._url.scheme, self.proxy), trust_env=config.trust_env
            )
        bound = config.max_concurrency
        if backend == "aiohttp":  # its session is made in the loop; it needs no slots
            import aiohttp as _imported  # noqa: F401 - the import's cost, off the loop

            return verify
        # A caller's transport has no cost quadratic in its pool's size.
        size = bound if transport is not None else min(config.connections_per_pool, bound)
        count = -(-bound // size)

        def limits(i: int) -> httpx.Limits:
            n = min(size, bound - i * size)
            return httpx.Limits(max_connections=n, max_keepalive_connections=n)

        try:
            clients = [
                httpx.AsyncClient(
                    base_url=config.base_url,
                    transport=transport,
                    limits=limits(i),
                    timeout=httpx.Timeout(config.timeout),
                    follow_redirects=False,
                    headers=self.headers,
                    verify=verify,
                    trust_env=uses_env_proxies(self._url.host, trust_env=config.trust_env),
                )
                for i in range(count)
            ]
        except ImportError:  # pragma: no cover - found in __init__ (socksio missing)
            raise MissingDependencyError(
                "the environment names a SOCKS proxy, which needs the socks extra: "
                "pip install 'braincircuits-async[socks]'"
            ) from None
        for client in clients:
            # No cookie jar: a server's cookies are never kept nor sent back (and
            # httpx's jar costs ~140 us an answer, a tenth of the client's own time).
            client._cookies = NoCookies()
        self._slot_client = [clients[slot // size] for slot in range(bound)]
        self._free = list(range(bound - 1, -1, -1))
        self.backend = backend
        self.clients = clients
        return verify

    @property
    def is_closed(self) -> bool:
        return self._closed

    def take(self) -> int:
        """A free slot: call only while holding the client's limiter, which ensures one."""
        return self._free.pop()

    def client_for(self, slot: int) -> httpx.AsyncClient:
        return self._slot_client[slot]

    def give_back(self, slot: int) -> None:
        self._free.append(slot)

    @property
    def built(self) -> bool:
        """Whether there are connections to close (the pools were built)."""
        return self._built

    async def aclose(self) -> None:
        self._closed = True
        if self.session is not None:
            await self.session.close()
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


class Credentials:
    """A client's tokens, and which of them go to which project.

    The explicit CAVE token (``cave_token=`` or the environment) goes to every
    project; without one, a CAVE-managed project gets the token CAVEclient saved
    for that project's server, read once per project.
    """

    __slots__ = ("_cave_files", "_cave_secrets", "cave_token", "token")

    def __init__(self, token: Secret | None, cave_token: Secret | None, cave_secrets: Path) -> None:
        self.token = token
        self.cave_token = cave_token
        self._cave_secrets = cave_secrets
        self._cave_files: dict[str, Secret | None] = {}

    def cave_for(self, project: str) -> Secret | None:
        """The CAVE token for ``project``: the explicit one, else CAVEclient's file."""
        if self.cave_token is not None:
            return self.cave_token
        if project not in self._cave_files:
            self._cave_files[project] = cave_token_from_files(project, self._cave_secrets)
        return self._cave_files[project]

    def headers_for(self, project: str) -> AuthHeaders:
        """The auth headers for ``project`` (see :func:`auth_headers`)."""
        return auth_headers(self.token, self.cave_for(project), project)

    def describe(self) -> tuple[str, str]:
        """Where each token came from, for a repr: never the tokens themselves."""

        def shown(secret: Secret | None) -> str:
            return "not set" if secret is None else f"set from {secret.source}"

        cave = shown(self.cave_token)
        if self.cave_token is None and any(self._cave_files.values()):
            cave = "from CAVEclient's secret files, for CAVE projects"
        return shown(self.token), cave


def _standard_reason(status: int, reason: str) -> str:
    """``reason`` if it is the standard phrase of ``status``, else a placeholder."""
    try:
        standard = http.HTTPStatus(status).phrase
    except ValueError:
        standard = ""
    return reason if reason == standard else "<reason hidden>"


class HideResponseHeaders(logging.Filter):
    """Blanks what a server controls in httpx's and httpcore's log lines.

    httpcore's DEBUG log prints every answer's headers in full
    (``receive_response_headers.complete return_value=(b'HTTP/1.1', 302, b'Found',
    [(b'Location', ...), ...])``) and httpx's INFO line the reason phrase, so a
    server that echoes a token into a header (a redirect's ``Location``, a cookie)
    or its status line would get it into the log. The status stays; the headers,
    and a reason phrase other than the standard one, become placeholders.
    """

    _HEADERS = re.compile(r"^receive_response_headers\.complete return_value=\((b'[^']*'), (\d+), ")

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.msg
        if not isinstance(message, str):
            return True
        if message.startswith("receive_response_headers.complete"):
            found = self._HEADERS.match(message)
            record.msg = (
                f"receive_response_headers.complete return_value=({found[1]}, {found[2]}, "
                "<reason and headers hidden by braincircuits-async>)"
                if found
                else "receive_response_headers.complete"
            )
            record.args = ()
        elif message.startswith("HTTP Request:") and isinstance(record.args, tuple):
            args = record.args
            if len(args) == 5 and isinstance(args[3], int) and isinstance(args[4], str):
                record.args = (*args[:4], _standard_reason(args[3], args[4]))
        return True


_HIDE_RESPONSE_HEADERS = HideResponseHeaders()


def hide_server_text_in_http_logs() -> None:
    """Install :class:`HideResponseHeaders` on httpx's and httpcore's loggers (once)."""
    for name in ("httpx", "httpcore.http11", "httpcore.http2", "httpcore.proxy"):
        log = logging.getLogger(name)
        if _HIDE_RESPONSE_HEADERS not in log.filters:
            log.addFilter(_HIDE_RESPONSE_HEADERS)


def redact(text: str, secrets: Iterable[Secret | None]) -> str:
    """Blank every token in ``text``, and a token's start cut off by an excerpt's "…".

    A misbehaving server may echo request headers into an answer, and answers
    are quoted in error messages.
    """
    for secret in secrets:
        if secret is None:
            continue
        value = secret.reveal()
        # As sent, and as a JSON encoder may echo it: "/" as "\/", other escapes.
        for form in dict.fromkeys((value, value.replace("/", "\\/"), json.dumps(value)[1:-1])):
            text = text.replace(form, "<hidden>")
        if text.endswith("…"):
            for size in range(len(value) - 1, 3, -1):
                if text[:-1].endswith(value[:size]):
                    text = text[: -1 - size] + "<hidden>…"
                    break
    return text
