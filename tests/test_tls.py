"""The TLS context of a client's pools: none to build for plain HTTP."""

from __future__ import annotations

import ssl
from pathlib import Path

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


def test_the_context_for_tls_verifies_and_trusts_the_usual_authorities() -> None:
    context = tls_context(needed=True, trust_env=False)

    assert context.verify_mode is ssl.CERT_REQUIRED
    assert context.check_hostname
    assert context.cert_store_stats()["x509_ca"] > 0


def test_ssl_cert_file_is_honoured_unless_the_environment_is_ignored(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # An authorities file with none in it: a context that honours it trusts nothing.
    empty = tmp_path / "none.pem"
    empty.write_text("")
    monkeypatch.setenv("SSL_CERT_FILE", str(empty))
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)

    with pytest.raises(ssl.SSLError):
        tls_context(needed=True, trust_env=True)
    assert tls_context(needed=True, trust_env=False).cert_store_stats()["x509_ca"] > 0


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
