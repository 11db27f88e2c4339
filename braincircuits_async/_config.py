"""Settings of the client: small frozen dataclasses, validated once at construction.

Defaults live here and nowhere else. Tokens are not settings: they live in
:class:`Secret` so that no ``repr`` can show them.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from ._exceptions import InvalidArgumentError

__all__ = [
    "CAVE_PROJECTS",
    "DEFAULT_BASE_URL",
    "DOCUMENTED_PROJECTS",
    "DOCUMENTED_PROPERTIES",
    "ClientConfig",
    "Consistency",
    "RetryPolicy",
    "Secret",
    "cave_secrets_folder",
    "cave_token_from_files",
    "check_int",
    "check_seconds",
    "resolve_base_url",
    "resolve_cave_token",
    "resolve_token",
]

DEFAULT_BASE_URL = "https://api.braincircuits.io"

# The defaults of every setting, named once: the dataclasses below, AsyncClient's
# signature, the CLI's options and the docs all read these (as httpx's _config does).
DEFAULT_CHUNK_SIZE = 500
DEFAULT_MAX_CONCURRENCY = 8
DEFAULT_MAX_RETRIES = 5
DEFAULT_TIMEOUT = 30.0
#: One request's whole exchange (send, headers, body), on top of `DEFAULT_TIMEOUT` per
#: network operation: a server that trickles its answer a byte at a time never ends one.
DEFAULT_REQUEST_TIMEOUT = 300.0
DEFAULT_BACKOFF_BASE = 0.1
DEFAULT_BACKOFF_MAX = 30.0
DEFAULT_MAX_RETRY_AFTER = 120.0
DEFAULT_MAX_REFETCH_ROUNDS = 3
DEFAULT_CONNECTIONS_PER_POOL = 8
DEFAULT_MAX_RESPONSE_BYTES = 256 * 2**20

#: Projects managed by CAVE, for which the server wants the CAVE token too.
CAVE_PROJECTS = frozenset({"fruitfly_fafb_flywire", "fruitfly_fanc_cave"})

#: The properties the API documents (a project may serve more, or fewer).
DOCUMENTED_PROPERTIES = (
    "size",
    "link_pre",
    "link_post",
    "neurotransmitter",
    "connectivity",
    "nucleus",
    "soma",
    "mitochondria",
    "dcv",
)
#: The projects the API documents (the server may know more).
DOCUMENTED_PROJECTS = ("fruitfly_fafb_flywire", "fruitfly_fanc_cave")

#: The CAVE server of each CAVE-managed project, to find CAVEclient's secret file.
CAVE_SERVERS = {
    "fruitfly_fafb_flywire": "global.daf-apis.com",
    "fruitfly_fanc_cave": "cave.fanc-fly.com",
}

logger = logging.getLogger("braincircuits_async")

Consistency = Literal["refetch", "strict", "ignore"]
CONSISTENCY_MODES: tuple[str, ...] = ("refetch", "strict", "ignore")
DEFAULT_CONSISTENCY: Consistency = "refetch"

TOKEN_ENV = ("BRAINCIRCUITS_TOKEN",)
CAVE_TOKEN_ENV = ("BRAINCIRCUITS_CAVE_TOKEN", "CAVE_TOKEN")
BASE_URL_ENV = ("BRAINCIRCUITS_URL", "BRAINCIRCUITS_ENDPOINT")


class Secret:
    """A token that never shows itself in ``repr``, ``str`` or f-strings."""

    __slots__ = ("_value", "source")

    def __init__(self, value: str, source: str) -> None:
        self._value = value
        #: Where the token came from ("token=" or an environment variable), for messages.
        self.source = source

    def reveal(self) -> str:
        """The token itself: only for building a request header."""
        return self._value

    def __repr__(self) -> str:
        return f"Secret(<hidden>, source={self.source!r})"

    __str__ = __repr__

    def __format__(self, spec: str) -> str:
        return repr(self)

    def __reduce__(self) -> tuple[object, ...]:
        raise TypeError("a Secret (token) cannot be pickled")


def _from_env(names: tuple[str, ...], environ: Mapping[str, str]) -> tuple[str, str] | None:
    for name in names:
        value = environ.get(name, "").strip()
        if value:
            return value, name
    return None


def _secret(
    value: str | None, argument: str, names: tuple[str, ...], environ: Mapping[str, str] | None
) -> Secret | None:
    if value is not None:
        if not isinstance(value, str):
            raise InvalidArgumentError(f"{argument} must be a string, not {type(value).__name__}")
        value = value.strip()
        if not value:
            raise InvalidArgumentError(f"{argument} is empty; pass the token or leave it as None")
        _check_token_text(value, argument)
        return Secret(value, f"{argument}=")
    found = _from_env(names, os.environ if environ is None else environ)
    if found is None:
        return None
    _check_token_text(found[0], f"the environment variable {found[1]}")
    return Secret(found[0], found[1])


def _check_token_text(value: str, where: str) -> None:
    # A header value must be printable ASCII; say so here, naming where the token came
    # from, instead of failing deep in httpx with the token inside the error.
    if not (value.isascii() and value.isprintable()) or " " in value:
        raise InvalidArgumentError(
            f"{where} holds characters a token cannot have (spaces, line breaks or "
            "non-ASCII); paste the token alone"
        )


def resolve_token(value: str | None, environ: Mapping[str, str] | None = None) -> Secret | None:
    """The BrainCircuits token: ``token=``, else ``BRAINCIRCUITS_TOKEN``."""
    return _secret(value, "token", TOKEN_ENV, environ)


def resolve_cave_token(
    value: str | None, environ: Mapping[str, str] | None = None
) -> Secret | None:
    """The CAVE token given explicitly: ``cave_token=``, else ``BRAINCIRCUITS_CAVE_TOKEN``,
    else ``CAVE_TOKEN``. Such a token is sent with every request, whatever the project.
    """
    return _secret(value, "cave_token", CAVE_TOKEN_ENV, environ)


def cave_token_from_files(project: str, folder: Path) -> Secret | None:
    """The CAVE token that CAVEclient saved for ``project``'s CAVE server, if any.

    Only for CAVE-managed projects, and only the file of that project's server
    (``global.daf-apis.com-cave-secret.json`` for FlyWire, ...), then CAVEclient's
    default ``cave-secret.json``: a token saved for another server is never sent.
    Unreadable files are skipped with a warning that names the file, not its content.
    """
    server = CAVE_SERVERS.get(project)
    if server is None:
        return None
    for path in (folder / f"{server}-cave-secret.json", folder / "cave-secret.json"):
        try:
            token = json.loads(path.read_text(encoding="utf-8")).get("token")
        except (FileNotFoundError, NotADirectoryError):
            continue
        except (OSError, ValueError, AttributeError):
            logger.warning("skipping CAVE secret file %s: not a JSON object with a token", path)
            continue
        if isinstance(token, str) and token.strip():
            _check_token_text(token.strip(), f"the CAVE secret file {path}")
            return Secret(token.strip(), str(path))
    return None


def cave_secrets_folder() -> Path:
    """Where CAVEclient keeps its secret files: ``~/.cloudvolume/secrets``."""
    return Path.home() / ".cloudvolume" / "secrets"


def resolve_base_url(value: str | None, environ: Mapping[str, str] | None = None) -> str:
    """``base_url=``, else ``BRAINCIRCUITS_URL`` or ``BRAINCIRCUITS_ENDPOINT``, else the API."""
    if value is None:
        found = _from_env(BASE_URL_ENV, os.environ if environ is None else environ)
        value = DEFAULT_BASE_URL if found is None else found[0]
    if not isinstance(value, str):
        raise InvalidArgumentError(f"base_url must be a string, not {type(value).__name__}")
    return value.rstrip("/")


def check_int(name: str, value: object, low: int, high: int | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidArgumentError(f"{name} must be an int, not {type(value).__name__}")
    if value < low or (high is not None and value > high):
        upper = "" if high is None else f" and at most {high}"
        raise InvalidArgumentError(f"{name} must be at least {low}{upper}; got {value}")


def check_seconds(name: str, value: object, *, allow_zero: bool = False) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidArgumentError(
            f"{name} must be a number of seconds, not {type(value).__name__}"
        )
    if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise InvalidArgumentError(
            f"{name} must be a finite number of seconds {bound}; got {value!r}"
        )


@dataclass(frozen=True, kw_only=True)
class RetryPolicy:
    """How failed requests are retried.

    Waits are exponential with full jitter: before retry ``n`` (1-based) the
    client sleeps a random time in ``[0, min(backoff_max, backoff_base * 2**(n-1))]``,
    or at least the server's ``Retry-After`` when it sends one: on a 429 up to
    ``max_retry_after`` (a longer one fails the chunk at once instead of waiting), on
    a 5xx up to ``backoff_max`` (a guess at downtime, not an allowance). A fetch whose
    last ``max_concurrency x (max_retries + 1)`` requests all found the server down
    stops (see ``_policy.brake``).
    """

    max_retries: int = DEFAULT_MAX_RETRIES
    backoff_base: float = DEFAULT_BACKOFF_BASE
    backoff_max: float = DEFAULT_BACKOFF_MAX
    max_retry_after: float = DEFAULT_MAX_RETRY_AFTER

    def __post_init__(self) -> None:
        check_int("max_retries", self.max_retries, 0, 100)
        check_seconds("backoff_base", self.backoff_base, allow_zero=True)
        check_seconds("backoff_max", self.backoff_max, allow_zero=True)
        check_seconds("max_retry_after", self.max_retry_after, allow_zero=True)


@dataclass(frozen=True, kw_only=True)
class ClientConfig:
    """Everything an :class:`~braincircuits_async.AsyncClient` needs but its tokens."""

    base_url: str = DEFAULT_BASE_URL
    project: str | None = None
    chunk_size: int = DEFAULT_CHUNK_SIZE
    max_concurrency: int = DEFAULT_MAX_CONCURRENCY
    timeout: float = DEFAULT_TIMEOUT
    consistency: Consistency = DEFAULT_CONSISTENCY
    #: How many rounds of re-fetching stale chunks ``consistency="refetch"`` tries.
    max_refetch_rounds: int = DEFAULT_MAX_REFETCH_ROUNDS
    #: Connections per httpx pool; the bound is spread over several pools (see
    #: ``_transport.ConnectionPools``: one big pool costs time quadratic in its size).
    connections_per_pool: int = DEFAULT_CONNECTIONS_PER_POOL
    #: Halve the concurrency on a 429 and grow it back slowly (see ``_limits``).
    adaptive_concurrency: bool = True
    #: Start at most this many requests per second (None: no limit).
    max_requests_per_second: float | None = None
    #: The largest answer body read, in bytes; a larger one is an error, not a crash.
    max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES
    #: Seconds a whole call may take (None: no limit); see ``fetch_property``.
    deadline: float | None = None
    #: Seconds one request may take from sending to the last byte of its answer (None:
    #: no bound but ``timeout`` per network operation).
    request_timeout: float | None = DEFAULT_REQUEST_TIMEOUT
    #: The HTTP stack: "auto" (aiohttp on asyncio when installed, else httpx's own),
    #: "httpx" or "aiohttp" (see ``_backends``).
    http_backend: str = "auto"
    #: Honour the environment's proxies (``HTTPS_PROXY``, ``ALL_PROXY``, ``NO_PROXY``)
    #: and ``SSL_CERT_FILE``, as httpx does; loopback addresses never go through a proxy.
    trust_env: bool = True
    retry: RetryPolicy = field(default_factory=RetryPolicy)

    def __post_init__(self) -> None:
        check_int("chunk_size", self.chunk_size, 1, 100_000)
        check_int("max_concurrency", self.max_concurrency, 1, 1024)
        check_int("max_refetch_rounds", self.max_refetch_rounds, 0, 100)
        check_int("connections_per_pool", self.connections_per_pool, 1, 1024)
        check_int("max_response_bytes", self.max_response_bytes, 1)
        if self.max_requests_per_second is not None:
            check_seconds("max_requests_per_second", self.max_requests_per_second)
        if self.deadline is not None:
            check_seconds("deadline", self.deadline)
        if self.request_timeout is not None:
            check_seconds("request_timeout", self.request_timeout)
        if self.http_backend not in ("auto", "httpx", "aiohttp"):
            raise InvalidArgumentError(
                f"http_backend must be 'auto', 'httpx' or 'aiohttp'; got {self.http_backend!r}"
            )
        if not isinstance(self.trust_env, bool):
            raise InvalidArgumentError(
                f"trust_env must be True or False, not {type(self.trust_env).__name__}"
            )
        check_seconds("timeout", self.timeout)
        if self.consistency not in CONSISTENCY_MODES:
            raise InvalidArgumentError(
                f"consistency must be one of {', '.join(map(repr, CONSISTENCY_MODES))}; "
                f"got {self.consistency!r}"
            )
        if self.project is not None and not isinstance(self.project, str):
            raise InvalidArgumentError(
                f"project must be a string, not {type(self.project).__name__}"
            )
