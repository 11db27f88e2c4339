"""The HTTP stack: aiohttp on asyncio when installed, httpx's own elsewhere (issue 14, 1)."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

import braincircuits_async as bca
from braincircuits_async import testing
from braincircuits_async._backends import choose_backend, env_proxy

from .conftest import ON_EVERY_HTTP_BACKEND, PROJECT, connections_open

pytestmark = pytest.mark.anyio

HTTP = "http://proxy.example:3128"
SOCKS = "socks5://proxy.example:1080"


@pytest.mark.parametrize(
    ("requested", "custom", "on_asyncio", "installed", "proxy", "chosen"),
    [
        ("auto", False, True, True, None, "aiohttp"),
        ("auto-mocked", False, True, True, None, "httpx"),  # respx only mocks httpx's stack
        ("auto", False, False, True, None, "httpx"),  # trio
        ("auto", False, True, False, None, "httpx"),  # not installed
        ("auto", False, True, True, HTTP, "httpx"),  # httpx handles every proxy
        ("auto", True, True, True, None, "transport"),
        ("httpx", False, True, True, None, "httpx"),
        ("httpx", True, True, True, None, "transport"),
        ("aiohttp", False, True, True, None, "aiohttp"),
        ("aiohttp", False, True, True, HTTP, "aiohttp"),
        ("aiohttp", False, False, True, None, bca.UsageError),
        ("aiohttp", False, True, False, None, bca.MissingDependencyError),
        ("aiohttp", False, True, True, SOCKS, bca.UsageError),
        ("aiohttp", True, True, True, None, bca.InvalidArgumentError),
    ],
)
def test_choose_backend(
    requested: str, custom: bool, on_asyncio: bool, installed: bool, proxy: str | None, chosen: Any
) -> None:
    def choose() -> str:
        return choose_backend(
            requested.removesuffix("-mocked"),
            mocked=requested.endswith("-mocked"),
            custom_transport=custom,
            on_asyncio=on_asyncio,
            installed=installed,
            proxy=proxy,
        )

    if isinstance(chosen, str):
        assert choose() == chosen
    else:
        with pytest.raises(chosen, match=r"http_backend|SOCKS"):
            choose()


@pytest.mark.parametrize(
    ("env", "url", "loopback", "trust_env", "proxy"),
    [
        ({"HTTPS_PROXY": HTTP}, "https://api.braincircuits.io", False, True, HTTP),
        ({"ALL_PROXY": SOCKS}, "https://api.braincircuits.io", False, True, SOCKS),
        ({"HTTPS_PROXY": HTTP, "ALL_PROXY": SOCKS}, "https://a.io", False, True, HTTP),
        ({"HTTP_PROXY": HTTP}, "https://api.braincircuits.io", False, True, None),
        ({"HTTPS_PROXY": HTTP, "NO_PROXY": "braincircuits.io"}, "https://api.braincircuits.io",
         False, True, None),
        ({"HTTPS_PROXY": HTTP}, "https://api.braincircuits.io", False, False, None),
        ({"HTTP_PROXY": HTTP}, "http://127.0.0.1:8000", True, True, None),
    ],
)  # fmt: skip
def test_env_proxy_is_httpxs_choice_and_never_for_loopback(
    monkeypatch: pytest.MonkeyPatch,
    env: dict[str, str],
    url: str,
    loopback: bool,
    trust_env: bool,
    proxy: str | None,
) -> None:
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert env_proxy(httpx.URL(url), trust_env=trust_env, loopback=loopback) == proxy


def test_an_unknown_backend_is_refused() -> None:
    with pytest.raises(bca.InvalidArgumentError, match="http_backend must be"):
        bca.AsyncClient(token="t", base_url="https://api.test", http_backend="curl")  # type: ignore[arg-type]


@ON_EVERY_HTTP_BACKEND
async def test_each_backend_fetches_the_same_values_and_closes_its_connections(
    http_backend: str,
) -> None:
    fake = testing.FakeBrainCircuits()
    ids = [720575940600000000 + 11 * i for i in range(3000)]
    with testing.serve_in_thread(fake) as url:
        client = bca.AsyncClient(
            token=testing.DEFAULT_TOKEN,
            cave_token=testing.DEFAULT_CAVE_TOKEN,
            base_url=url,
            project=PROJECT,
            chunk_size=100,
            http_backend=http_backend,  # type: ignore[arg-type]
        )
        async with client:
            result = await client.fetch_property("link_pre", ids)
            assert client.http_backend == http_backend
            assert connections_open(client) > 0
        assert connections_open(client) == 0
    assert len(result) + len(result.missing) == len(ids)
    for segment in ids[:50]:
        if segment in result:
            assert result[segment] == fake.expected("link_pre", segment)


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_auto_is_aiohttp_on_asyncio_and_httpx_with_a_proxy(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async with bca.AsyncClient(token="t", base_url="https://api.test") as client:
        assert client.http_backend == "aiohttp"
    monkeypatch.setenv("HTTPS_PROXY", HTTP)
    async with bca.AsyncClient(token="t", base_url="https://api.test") as client:
        assert client.http_backend == "httpx"


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_a_respx_mock_keeps_auto_on_httpx_so_the_mock_sees_every_request() -> None:
    import respx

    with respx.mock(base_url="https://api.test", assert_all_called=False) as api:
        route = api.post(path__regex=r"/circuit/segment/property/size").respond(
            200, json={"materialized_timestamp": 1, "results": {"1": {"size": 3}}}
        )
        async with bca.AsyncClient(token="t", base_url="https://api.test") as client:
            result = await client.fetch_property("size", [1], project="hemibrain")
            assert client.http_backend == "httpx"
    assert route.called
    assert result[1] == {"size": 3}


@pytest.mark.parametrize("anyio_backend", ["trio"])
async def test_auto_is_httpx_on_trio_and_aiohttp_is_refused_there() -> None:
    async with bca.AsyncClient(token="t", base_url="https://api.test") as client:
        assert client.http_backend == "httpx"
    client = bca.AsyncClient(token="t", base_url="https://api.test", http_backend="aiohttp")
    with pytest.raises(bca.UsageError, match="asyncio only"):
        await client.__aenter__()
