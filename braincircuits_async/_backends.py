"""Which HTTP stack carries the requests: httpx's own (httpcore), or aiohttp under httpx.

On asyncio, aiohttp's connection handling costs less per request than
httpcore's (see ``docs/performance.md``), and ``httpx-aiohttp`` (the adapter
openai-python ships as its aiohttp option) puts it under httpx's interface, so
the rest of the client does not change. ``http_backend="auto"`` uses it when it
is installed (the ``fast`` extra) and the loop is asyncio; under trio (aiohttp
is asyncio's) and with a proxy in play, httpx's own stack stays, since it handles
every kind of proxy the environment may name.
"""

from __future__ import annotations

import importlib.util
import ssl
import sys
import urllib.request
from typing import Literal

import httpx

from ._exceptions import InvalidArgumentError, MissingDependencyError, UsageError

__all__ = [
    "HTTP_BACKENDS",
    "Backend",
    "HttpBackend",
    "aiohttp_installed",
    "aiohttp_transport",
    "choose_backend",
    "env_proxy",
    "respx_is_mocking",
]

HttpBackend = Literal["auto", "httpx", "aiohttp"]
HTTP_BACKENDS: tuple[str, ...] = ("auto", "httpx", "aiohttp")
#: What a client ends up sending through: a caller's own transport, or one of the two.
Backend = Literal["transport", "httpx", "aiohttp"]

AIOHTTP_NEEDS = (
    "http_backend='aiohttp' needs httpx-aiohttp: pip install 'braincircuits-async[fast]'"
)


def aiohttp_installed() -> bool:
    """Whether the aiohttp backend can be used (``httpx-aiohttp`` and ``aiohttp``)."""
    return all(importlib.util.find_spec(name) is not None for name in ("httpx_aiohttp", "aiohttp"))


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


def aiohttp_transport(
    *, verify: ssl.SSLContext, limits: httpx.Limits, proxy: str | None
) -> httpx.AsyncBaseTransport:
    """An aiohttp-backed httpx transport (its session is made on first use, in the loop)."""
    from httpx_aiohttp import AiohttpTransport

    return AiohttpTransport(
        verify=verify, limits=limits, proxy=None if proxy is None else httpx.Proxy(proxy)
    )
