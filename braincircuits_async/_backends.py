"""Which HTTP stack carries the requests: httpx's own (httpcore), or aiohttp directly.

On asyncio, aiohttp's connection handling costs less per request than
httpcore's, and going to aiohttp's own API, not through httpx's ``Request`` and
``Response`` models (as the ``httpx-aiohttp`` adapter does), halves what is left
(see ``docs/performance.md``). ``http_backend="auto"`` uses it when aiohttp is
installed (the ``fast`` extra) and the loop is asyncio; under trio (aiohttp is
asyncio's), with a proxy in play (httpx handles every kind the environment may
name) and while a respx mock is active, httpx's own stack stays.
"""

from __future__ import annotations

import importlib.util
import ssl
import sys
import urllib.request
from typing import Any, Literal

import httpx

from ._exceptions import InvalidArgumentError, MissingDependencyError, UsageError

__all__ = [
    "HTTP_BACKENDS",
    "Backend",
    "HttpBackend",
    "aiohttp_installed",
    "aiohttp_session",
    "choose_backend",
    "env_proxy",
    "respx_is_mocking",
]

HttpBackend = Literal["auto", "httpx", "aiohttp"]
HTTP_BACKENDS: tuple[str, ...] = ("auto", "httpx", "aiohttp")
#: What a client ends up sending through: a caller's own transport, or one of the two.
Backend = Literal["transport", "httpx", "aiohttp"]

AIOHTTP_NEEDS = "http_backend='aiohttp' needs aiohttp: pip install 'braincircuits-async[fast]'"


def aiohttp_installed() -> bool:
    """Whether the aiohttp backend can be used (aiohttp is installed)."""
    return importlib.util.find_spec("aiohttp") is not None


def respx_is_mocking() -> bool:
    """Whether a respx mock is active: it intercepts httpx's own stack, not aiohttp.

    A test that mocks the API with respx must not have its requests go round the
    mock to the real server (with real tokens), as they would through aiohttp.
    """
    mocks = sys.modules.get("respx.mocks")
    mocker = getattr(mocks, "Mocker", None)
    registry = getattr(mocker, "registry", None) or {}
    return any(getattr(kind, "routers", None) for kind in registry.values())


def env_proxy(url: httpx.URL, *, trust_env: bool, loopback: bool) -> str | None:
    """The environment's proxy for ``url``, as httpx would pick it (None: none, or ignored).

    ``HTTPS_PROXY``/``HTTP_PROXY`` by scheme, else ``ALL_PROXY``, unless ``NO_PROXY``
    excludes the host; never for loopback (see ``_transport.uses_env_proxies``).
    """
    if not trust_env or loopback:
        return None
    proxies = urllib.request.getproxies()
    if proxies.get("no") and urllib.request.proxy_bypass(url.host):
        return None
    return proxies.get(url.scheme) or proxies.get("all") or None


def choose_backend(
    requested: str,
    *,
    custom_transport: bool,
    on_asyncio: bool,
    installed: bool,
    proxy: str | None,
    mocked: bool = False,
) -> Backend:
    """The stack a client uses, decided on its first use (when the loop is known).

    ``"auto"`` is aiohttp on asyncio when it is installed, unless a proxy is in play
    or a respx mock is active (``mocked``), which only httpx's own stack honours.
    """
    if custom_transport:
        if requested == "aiohttp":
            raise InvalidArgumentError(
                "http_backend='aiohttp' and transport= exclude each other: the transport "
                "is what sends the requests"
            )
        return "transport"
    if requested == "httpx":
        return "httpx"
    if requested == "aiohttp":
        if not on_asyncio:
            raise UsageError(
                "http_backend='aiohttp' runs on asyncio only (aiohttp is built on it); "
                "under trio, use http_backend='httpx' or 'auto'"
            )
        if not installed:
            raise MissingDependencyError(AIOHTTP_NEEDS)
        if proxy is not None and not proxy.lower().startswith(("http://", "https://")):
            raise UsageError(
                "the environment names a SOCKS proxy, which the aiohttp backend cannot "
                "use: pass http_backend='httpx' (with the socks extra) or trust_env=False"
            )
        return "aiohttp"
    return "aiohttp" if on_asyncio and installed and proxy is None and not mocked else "httpx"


def aiohttp_session(*, verify: ssl.SSLContext | bool, limit: int, timeout: float) -> Any:
    """An aiohttp session for the direct aiohttp wire: make it in the running loop.

    No cookie jar (a server's cookies are never kept nor sent back), no proxies of
    its own (the client passes the one it chose), ``timeout`` for connecting and
    for each read, as httpx applies it to each network operation.
    """
    import aiohttp

    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(
            limit=limit, ssl=verify if isinstance(verify, ssl.SSLContext) else True
        ),
        cookie_jar=aiohttp.DummyCookieJar(),
        timeout=aiohttp.ClientTimeout(total=None, sock_connect=timeout, sock_read=timeout),
        trust_env=False,
    )
