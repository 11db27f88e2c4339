"""What a command-line user reads: the library's messages in the CLI's words, and ``-v``.

The library's messages name Python arguments (``pass token= to AsyncClient``,
``lower chunk_size``), which is right for Python users and wrong in a shell,
where the same setting is an option or an environment variable. They stay as
they are; :func:`cli_message` rewords them when the CLI prints them (errors,
failure reasons, log lines), from one table, :data:`REWORDINGS`.

``-v`` and ``-vv`` (:func:`log_levels`, :func:`cli_logging`): by default only the
library's warnings (a chunk given up, the server looking down); ``-v`` adds its
INFO lines (each retry with its backoff, each split, re-fetch rounds, what a
store held); ``-vv`` also one line per request, the client's own (``POST ... ->
200 in 0.050s``) and httpx's.
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Iterator
from typing import TextIO

__all__ = ["REWORDINGS", "CliFormatter", "cli_logging", "cli_message", "log_levels"]

#: Python wording -> CLI wording, applied in order: the specific before the general.
REWORDINGS: tuple[tuple[str, str], ...] = (
    # Tokens: the CLI takes them from the environment only.
    (r"pass token= to AsyncClient or set BRAINCIRCUITS_TOKEN", "set BRAINCIRCUITS_TOKEN"),
    (
        r"pass cave_token= to AsyncClient or set BRAINCIRCUITS_CAVE_TOKEN",
        "set BRAINCIRCUITS_CAVE_TOKEN",
    ),
    (r"check token= / BRAINCIRCUITS_TOKEN", "check BRAINCIRCUITS_TOKEN"),
    (r"check cave_token= / BRAINCIRCUITS_CAVE_TOKEN", "check BRAINCIRCUITS_CAVE_TOKEN"),
    # The address.
    (r"pass it as base_url=", "give it with --base-url (or BRAINCIRCUITS_URL)"),
    (r"\bbase_url\b", "--base-url (or BRAINCIRCUITS_URL)"),
    # The project: the CLI's --project is required, but say it its way all the same.
    (
        r"pass project= to fetch_property\(\) or to AsyncClient\(\) "
        r"\(for example project='([\w.-]+)'\)",
        r"give --project (for example --project \1)",
    ),
    # Settings the CLI has no option for: say the value, not the argument.
    (r"; or pass trust_env=False to ignore the environment's proxies", "; or unset it"),
    (
        r"max_response_bytes=([\d,]+); lower chunk_size, or raise the cap",
        r"the cap of \1 bytes; lower --chunk-size",
    ),
    (r"max_retry_after=(\S+) s", r"the longest wait the command accepts (\1 s)"),
    (r"\btimeout=(\S+) s", r"\1 s"),
    (r"raise max_refetch_rounds, or fetch again later", "run the same command again later"),
    (r" \(\.result; a stream yielded it already\)", ""),
    # Settings with an option: its name (``request_timeout=300 s`` -> ``--request-timeout
    # 300 s``, ``lower chunk_size`` -> ``lower --chunk-size``).
    (r"\brequest_timeout=", "--request-timeout "),
    (r"\brequest_timeout\b", "--request-timeout"),
    (r"\bdeadline=", "--deadline "),
    (r"^deadline must", "--deadline must"),
    (r"\bchunk_size=", "--chunk-size "),
    (r"\bchunk_size\b", "--chunk-size"),
    (r"\bmax_concurrency=", "--concurrency "),
    (r"\bmax_concurrency\b", "--concurrency"),
    (r"\bmax_retries=", "--max-retries "),
    (r"\bmax_retries\b", "--max-retries"),
)

_COMPILED = tuple((re.compile(pattern), replacement) for pattern, replacement in REWORDINGS)


def cli_message(text: str) -> str:
    """``text`` (a library message) with the CLI's options and environment variables
    in place of Python arguments: ``lower chunk_size`` -> ``lower --chunk-size``."""
    for pattern, replacement in _COMPILED:
        text = pattern.sub(replacement, text)
    return text


class CliFormatter(logging.Formatter):
    """Log lines as bare messages, in the CLI's words (:func:`cli_message`)."""

    def __init__(self) -> None:
        super().__init__("%(message)s")

    def format(self, record: logging.LogRecord) -> str:
        return cli_message(super().format(record))


def log_levels(verbosity: int) -> tuple[int, int]:
    """The levels of the ``braincircuits_async`` and ``httpx`` loggers, for ``-v`` given
    ``verbosity`` times."""
    if verbosity <= 0:
        return logging.WARNING, logging.WARNING
    if verbosity == 1:
        return logging.INFO, logging.WARNING
    return logging.DEBUG, logging.INFO


@contextlib.contextmanager
def cli_logging(verbosity: int, stream: TextIO) -> Iterator[None]:
    """Send the library's log lines (and, at ``-vv``, httpx's) to ``stream`` while
    the block runs, at :func:`log_levels`; the loggers are as they were afterwards."""
    ours_level, http_level = log_levels(verbosity)
    handler = logging.StreamHandler(stream)
    handler.setFormatter(CliFormatter())
    ours, http = logging.getLogger("braincircuits_async"), logging.getLogger("httpx")
    saved = ours.level, http.level
    ours.setLevel(ours_level)
    http.setLevel(http_level)
    ours.addHandler(handler)
    if http_level < logging.WARNING:
        http.addHandler(handler)
    try:
        yield
    finally:
        ours.removeHandler(handler)
        http.removeHandler(handler)
        ours.setLevel(saved[0])
        http.setLevel(saved[1])
