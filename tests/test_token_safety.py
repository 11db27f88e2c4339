"""Tokens never show up in reprs, errors or logs, and never travel to another host."""

from __future__ import annotations

import logging
import pickle
import traceback
from typing import Any

import httpx
import pytest

import braincircuits_async as bca

from .conftest import CAVE_TOKEN, PROJECT, TOKEN, ScriptedServer

pytestmark = pytest.mark.anyio

SECRETS = (TOKEN, CAVE_TOKEN)


def assert_no_secret(text: str) -> None:
    for secret in SECRETS:
        assert secret not in text
        assert secret[-8:] not in text  # not even a tail of it


def full_text(error: BaseException) -> str:
    """Everything a traceback would print, chained causes and contexts included."""
    return "".join(traceback.format_exception(error)) + repr(error) + repr(vars(error))


async def test_tokens_are_absent_from_the_clients_repr_and_str(make_client: Any) -> None:
    async with make_client(transport=ScriptedServer()) as client:
        assert_no_secret(repr(client))
        assert_no_secret(str(client))
        assert_no_secret(repr(vars(client)))
        assert "token=<set from token=>" in repr(client)
        # The headers a call sends carry both tokens, and show neither.
        headers = client._wire.target("link_pre", PROJECT).headers
        assert headers["Authorization"] == f"Bearer {TOKEN}"
        assert headers["Authorization-Cave"] == f"Bearer {CAVE_TOKEN}"
        assert_no_secret(repr(headers))
        assert_no_secret(str(headers))


def test_tokens_from_the_environment_are_hidden_too(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BRAINCIRCUITS_TOKEN", TOKEN)
    client = bca.AsyncClient(base_url="https://api.test")
    assert_no_secret(repr(client))
    assert "set from BRAINCIRCUITS_TOKEN" in repr(client)
    with pytest.raises(TypeError):
        pickle.dumps(client._credentials.token)


async def test_a_server_that_echoes_the_token_in_an_error_does_not_leak_it(
    make_client: Any,
) -> None:
    async def handler(request: httpx.Request, number: int) -> httpx.Response:
        return httpx.Response(403, json={"detail": f"token {request.headers['authorization']}"})

    async with make_client(transport=ScriptedServer(handler=handler)) as client:
        with pytest.raises(bca.AuthenticationError) as caught:
            await client.fetch_property("link_pre", [1])
    assert_no_secret(full_text(caught.value))
    assert "<hidden>" in str(caught.value)


@pytest.mark.parametrize(
    "failure",
    [
        httpx.Response(500, text="boom"),
        httpx.Response(429, headers={"Retry-After": "0"}),
        httpx.Response(200, content=b"not json"),
        httpx.ConnectError("refused"),
    ],
)
async def test_errors_and_their_causes_never_contain_a_token(
    make_client: Any, failure: Any, caplog: pytest.LogCaptureFixture
) -> None:
    async def handler(request: httpx.Request, number: int) -> httpx.Response:
        if isinstance(failure, Exception):
            raise failure
        return failure

    with caplog.at_level(logging.DEBUG):
        async with make_client(
            transport=ScriptedServer(handler=handler), max_retries=1, chunk_size=1
        ) as client:
            with pytest.raises(bca.BrainCircuitsError) as caught:
                await client.fetch_property("link_pre", [1, 2])
    assert_no_secret(full_text(caught.value))
    assert caplog.records  # the retries and requests were logged...
    for record in caplog.records:  # ...without a token at any level
        assert_no_secret(record.getMessage())
        assert_no_secret(repr(record.args))


async def test_missing_token_errors_name_the_variable_not_a_value(make_client: Any) -> None:
    async with make_client(transport=ScriptedServer(), cave_token=None) as client:
        with pytest.raises(bca.AuthenticationError) as caught:
            await client.fetch_property("link_pre", [1])
    assert "BRAINCIRCUITS_CAVE_TOKEN" in str(caught.value)
    assert_no_secret(full_text(caught.value))


async def test_redirects_are_not_followed_and_name_the_location(make_client: Any) -> None:
    other_host: list[httpx.Request] = []

    async def handler(request: httpx.Request, number: int) -> httpx.Response:
        if request.url.host != "api.test":
            other_host.append(request)
            return httpx.Response(200, json={"materialized_timestamp": 1, "results": {}})
        return httpx.Response(302, headers={"Location": "https://evil.example/steal"})

    server = ScriptedServer(handler=handler)
    async with make_client(transport=server) as client:
        with pytest.raises(bca.APIStatusError, match=r"evil\.example/steal") as caught:
            await client.fetch_property("link_pre", range(100))
    assert caught.value.status_code == 302
    assert other_host == []
    assert len(server.requests) == 1  # a redirect ends the call like any fatal answer


@pytest.mark.parametrize(
    "base_url", ["http://api.braincircuits.io", "http://10.0.0.5:8000", "http://example.org"]
)
def test_plain_http_to_a_remote_host_is_refused(base_url: str) -> None:
    with pytest.raises(ValueError, match="refusing to send tokens over plain http"):
        bca.AsyncClient(token="t", base_url=base_url)


@pytest.mark.parametrize(
    "base_url", ["http://127.0.0.1:8000", "http://localhost:9000", "http://[::1]:8000"]
)
def test_plain_http_to_loopback_is_allowed(base_url: str) -> None:
    assert bca.AsyncClient(token="t", base_url=base_url).config.base_url == base_url


def test_plain_http_is_allowed_with_an_own_transport() -> None:
    client = bca.AsyncClient(token="t", base_url="http://fake.test", transport=ScriptedServer())
    assert client.config.base_url == "http://fake.test"


async def test_no_piece_of_an_echoed_token_survives_the_cut_of_a_long_body(
    make_client: Any,
) -> None:
    async def handler(request: httpx.Request, number: int) -> httpx.Response:
        # The token straddles the 300-character cut of the body excerpt.
        return httpx.Response(500, text="x" * 290 + request.headers["authorization"] + "y" * 50)

    async with make_client(transport=ScriptedServer(handler=handler), max_retries=0) as client:
        with pytest.raises(bca.APIStatusError) as caught:
            await client.fetch_property("link_pre", [1])
    for secret in SECRETS:
        for start in range(len(secret) - 5):
            assert secret[start : start + 6] not in full_text(caught.value)


async def test_tracebacks_that_show_local_variables_show_no_token(make_client: Any) -> None:
    async def handler(request: httpx.Request, number: int) -> httpx.Response:
        return httpx.Response(401, json={"detail": "bad token"})

    async with make_client(transport=ScriptedServer(handler=handler)) as client:
        with pytest.raises(bca.AuthenticationError) as caught:
            await client.fetch_property("link_pre", [1])
    # What IPython's verbose mode, rich's show_locals or Sentry would print.
    shown = "".join(
        traceback.TracebackException.from_exception(caught.value, capture_locals=True).format()
    )
    assert "headers" in shown
    assert_no_secret(shown)


@pytest.mark.parametrize("bad", ["abcé-token", "two words", "line\nbreak"])
def test_a_token_with_impossible_characters_is_refused_naming_the_argument(bad: str) -> None:
    with pytest.raises(ValueError, match="token holds characters") as caught:
        bca.AsyncClient(token=bad, base_url="https://api.test")
    assert bad not in str(caught.value)


def test_a_bad_token_in_the_environment_names_the_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CAVE_TOKEN", "naïve-token")
    with pytest.raises(ValueError, match="environment variable CAVE_TOKEN") as caught:
        bca.AsyncClient(token="t", base_url="https://api.test")
    assert "naïve" not in str(caught.value)


@pytest.mark.parametrize("cut", [0, 280, 295])
async def test_a_200_answer_echoing_a_token_does_not_leak_it_through_the_error(
    make_client: Any, cut: int
) -> None:
    async def handler(request: httpx.Request, number: int) -> httpx.Response:
        page = "x" * cut + f"<html>{request.headers['authorization-cave']}</html>"
        return httpx.Response(200, text=page)

    async with make_client(transport=ScriptedServer(handler=handler), max_retries=0) as client:
        with pytest.raises(bca.MalformedResponseError) as caught:
            await client.fetch_property("link_pre", [1])
    for secret in SECRETS:
        for start in range(len(secret) - 5):
            assert secret[start : start + 6] not in full_text(caught.value)


# Tokens with the characters JSON encoders and excerpts treat specially (issue 12).
AWKWARD = "bc/SECRET+tok=en-0123456789abcdef/0123456789abcdef+xyz="


def awkward_client(handler: Any, **kwargs: Any) -> bca.AsyncClient:
    return bca.AsyncClient(
        token=AWKWARD,
        cave_token=CAVE_TOKEN,
        project=PROJECT,
        base_url="https://api.test",
        transport=ScriptedServer(handler=handler),
        max_retries=0,
        **kwargs,
    )


def assert_no_piece(text: str, secret: str = AWKWARD) -> None:
    for start in range(len(secret) - 5):
        assert secret[start : start + 6] not in text, secret[start : start + 6]


async def test_a_json_escaped_echo_of_the_token_is_blanked_in_errors_and_logs(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def handler(request: httpx.Request, number: int) -> httpx.Response:
        escaped = AWKWARD.replace("/", "\\/")  # as many JSON encoders write "/"
        return httpx.Response(
            500,
            content=b'{"detail": "refused ' + escaped.encode() + b'"}',
            headers={"content-type": "application/json"},
        )

    with caplog.at_level(logging.DEBUG, logger="braincircuits_async"):
        async with awkward_client(handler) as client:
            with pytest.raises(bca.APIStatusError) as caught:
                await client.fetch_property("link_pre", [1])
    assert "<hidden>" in str(caught.value)
    assert_no_piece(full_text(caught.value))
    assert_no_piece(caplog.text)


async def test_a_token_used_as_a_result_key_is_not_quoted() -> None:
    async def handler(request: httpx.Request, number: int) -> httpx.Response:
        return httpx.Response(
            200, json={"materialized_timestamp": 1, "results": {AWKWARD: {"nr_pre": 1}}}
        )

    async with awkward_client(handler) as client:
        with pytest.raises(bca.MalformedResponseError, match="is not a decimal") as caught:
            await client.fetch_property("link_pre", [1])
    assert_no_piece(full_text(caught.value))


async def test_a_token_at_the_first_cut_of_a_long_page_leaves_no_start() -> None:
    async def handler(request: httpx.Request, number: int) -> httpx.Response:
        # Mostly whitespace: the 2,000-byte cut lands inside the token, and the excerpt
        # that follows collapses the spaces, so the cut would show without a mark.
        return httpx.Response(200, text=" " * 1980 + AWKWARD + "</html>")

    async with awkward_client(handler) as client:
        with pytest.raises(bca.MalformedResponseError) as caught:
            await client.fetch_property("link_pre", [1])
    assert_no_piece(full_text(caught.value))


async def test_a_redirect_that_carries_the_token_in_its_location_is_quoted_blanked(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def handler(request: httpx.Request, number: int) -> httpx.Response:
        token = request.headers["authorization"].removeprefix("Bearer ")
        return httpx.Response(302, headers={"Location": f"https://evil.example/?t={token}"})

    with caplog.at_level(logging.DEBUG, logger="braincircuits_async"):
        async with awkward_client(handler) as client:
            with pytest.raises(bca.APIStatusError, match=r"evil\.example/\?t=<hidden>") as caught:
                await client.fetch_property("link_pre", [1])
    assert_no_piece(full_text(caught.value))
    assert_no_piece(caplog.text)


@pytest.mark.parametrize("host", ["evil.localhost", "localhost.evil.example", "127.0.0.1.nip.io"])
def test_only_real_loopback_names_may_take_tokens_over_plain_http(host: str) -> None:
    # A resolver that does not honour RFC 6761 sends *.localhost to DNS: anywhere.
    with pytest.raises(ValueError, match="refusing to send tokens over plain http"):
        bca.AsyncClient(token="t", base_url=f"http://{host}:8000")


@pytest.mark.parametrize("host", ["localhost", "127.0.0.1", "127.5.6.7", "[::1]"])
def test_loopback_may_take_tokens_over_plain_http(host: str) -> None:
    assert bca.AsyncClient(token="t", base_url=f"http://{host}:8000").config.base_url
