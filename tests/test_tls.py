"""The TLS context of a client's pools: shared across clients, and none to build for plain HTTP."""

from __future__ import annotations

import ssl

import certifi
import pytest

from braincircuits_async._config import ClientConfig
from braincircuits_async._transport import ConnectionPools, needs_tls, tls_context


@pytest.mark.parametrize(
    ("scheme", "proxy", "needed"),
    [
        ("https", None, True),
        ("http", None, False),
        ("http", "http://proxy.example:3128", False),
        ("http", "https://proxy.example:3128", True),
        ("http", "HTTPS://proxy.example:3128", True),
        ("http", "socks5://proxy.example:1080", False),
        ("https", "http://proxy.example:3128", True),
    ],
)
def test_tls_is_needed_for_an_https_base_url_or_proxy_only(
    scheme: str, proxy: str | None, needed: bool
) -> None:
    assert needs_tls(scheme, proxy) is needed


def test_where_no_tls_is_used_the_context_verifies_and_trusts_no_certificate() -> None:
    context = tls_context(needed=False, trust_env=True)

    assert context.verify_mode is ssl.CERT_REQUIRED
    assert context.check_hostname
    assert context.cert_store_stats()["x509_ca"] == 0


def test_the_context_for_tls_is_built_once_per_process_and_trusts_the_usual_authorities(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)

    first = tls_context(needed=True, trust_env=True)

    assert tls_context(needed=True, trust_env=True) is first
    assert first.verify_mode is ssl.CERT_REQUIRED
    assert first.cert_store_stats()["x509_ca"] > 0


def test_ssl_cert_file_gets_a_context_of_its_own_unless_the_environment_is_ignored(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)
    usual = tls_context(needed=True, trust_env=True)
    ignoring = tls_context(needed=True, trust_env=False)

    monkeypatch.setenv("SSL_CERT_FILE", certifi.where())

    assert tls_context(needed=True, trust_env=True) is not usual
    assert tls_context(needed=True, trust_env=False) is ignoring


@pytest.mark.parametrize(
    ("base_url", "trusts_authorities"),
    [("https://api.example.org", True), ("http://127.0.0.1:9", False)],
)
def test_the_pools_build_a_tls_context_only_for_an_https_base_url(
    base_url: str, trusts_authorities: bool
) -> None:
    pools = ConnectionPools(ClientConfig(base_url=base_url), None)

    verify = pools._build("httpx")

    assert isinstance(verify, ssl.SSLContext)
    assert (verify.cert_store_stats()["x509_ca"] > 0) is trusts_authorities
