"""What the command line prints names its own options and environment variables, never
a Python argument: the library's messages reworded (a table), then real errors of real
fetches checked for every argument name a CLI user could meet."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from braincircuits_async import _cli, testing
from braincircuits_async._cli_messages import cli_message

from .conftest import ServeOnLoopback

PROJECT = "fruitfly_fafb_flywire"
IDS = [720575940600000000 + 7919 * i for i in range(200)]

#: Every AsyncClient argument, as a Python user writes it (``chunk_size``, ``token=``).
ARGUMENTS = (
    "token", "cave_token", "base_url", "project", "chunk_size", "max_concurrency",
    "max_retries", "timeout", "consistency", "transport", "backoff_base", "backoff_max",
    "max_retry_after", "max_refetch_rounds", "connections_per_pool", "adaptive_concurrency",
    "max_requests_per_second", "max_response_bytes", "deadline", "store", "request_timeout",
    "trust_env", "progress", "http_backend",
)  # fmt: skip
PYTHON = re.compile(
    r"\b(?:" + "|".join(ARGUMENTS) + r")="  # an argument passed: chunk_size=500
    r"|\b(?:" + "|".join(a for a in ARGUMENTS if "_" in a) + r")\b"  # named: lower chunk_size
    r"|AsyncClient|fetch_propert|\.results?\b|\.failures\b"
)


def python_names(text: str) -> list[str]:
    """The Python argument (or API) names in ``text``."""
    return PYTHON.findall(text)


#: (Python wording, CLI wording), each from a message of the library.
WORDINGS = [
    (
        "no BrainCircuits token: pass token= to AsyncClient or set BRAINCIRCUITS_TOKEN (get)",
        "no BrainCircuits token: set BRAINCIRCUITS_TOKEN (get)",
    ),
    (
        "a CAVE token: pass cave_token= to AsyncClient or set BRAINCIRCUITS_CAVE_TOKEN (or",
        "a CAVE token: set BRAINCIRCUITS_CAVE_TOKEN (or",
    ),
    ("refused; check token= / BRAINCIRCUITS_TOKEN and", "refused; check BRAINCIRCUITS_TOKEN and"),
    (
        "refused; check cave_token= / BRAINCIRCUITS_CAVE_TOKEN and",
        "refused; check BRAINCIRCUITS_CAVE_TOKEN and",
    ),
    (
        "answered 413 (too many segments in one request; lower chunk_size)",
        "answered 413 (too many segments in one request; lower --chunk-size)",
    ),
    ("Lowering chunk_size will not help", "Lowering --chunk-size will not help"),
    ("chunk_size must be at least 1 and at most", "--chunk-size must be at least 1 and at most"),
    ("max_concurrency must be at least 1", "--concurrency must be at least 1"),
    ("a larger max_retries rides out", "a larger --max-retries rides out"),
    (
        "if that address is right and trusted, pass it as base_url=",
        "if that address is right and trusted, give it with --base-url (or BRAINCIRCUITS_URL)",
    ),
    (
        "(check the property and project names, and base_url)",
        "(check the property and project names, and --base-url (or BRAINCIRCUITS_URL))",
    ),
    (
        "base_url must be an http(s) address",
        "--base-url (or BRAINCIRCUITS_URL) must be an http(s) address",
    ),
    (
        "no complete answer within request_timeout=0.05 s (the server",
        "no complete answer within --request-timeout 0.05 s (the server",
    ),
    ("request_timeout must be a finite", "--request-timeout must be a finite"),
    ("size: deadline=5 s passed before", "size: --deadline 5 s passed before"),
    ("deadline must be a finite number", "--deadline must be a finite number"),
    ("no answer within timeout=30 s (ReadTimeout)", "no answer within 30 s (ReadTimeout)"),
    (
        "larger than max_response_bytes=268,435,456; lower chunk_size, or raise the cap",
        "larger than the cap of 268,435,456 bytes; lower --chunk-size",
    ),
    (
        "longer than max_retry_after=120 s, so the chunk was not retried",
        "longer than the longest wait the command accepts (120 s), so the chunk was not retried",
    ),
    (
        "re-materialized during the fetch; raise max_refetch_rounds, or fetch again later",
        "re-materialized during the fetch; run the same command again later",
    ),
    (
        "What was fetched before is kept (.result; a stream yielded it already). Try",
        "What was fetched before is kept. Try",
    ),
    (
        "pip install 'braincircuits-async[socks]'; or pass trust_env=False to ignore the "
        "environment's proxies",
        "pip install 'braincircuits-async[socks]'; or unset it",
    ),
    (
        "no project given: pass project= to fetch_property() or to AsyncClient() "
        "(for example project='fruitfly_fafb_flywire')",
        "no project given: give --project (for example --project fruitfly_fafb_flywire)",
    ),
    # What is not an argument stays as it is.
    ("a deadline passed; 3 chunk(s) failed", "a deadline passed; 3 chunk(s) failed"),
    ("materialized_timestamp 1677042002", "materialized_timestamp 1677042002"),
]


@pytest.mark.parametrize(("python", "cli"), WORDINGS)
def test_library_wording_becomes_the_clis(python: str, cli: str) -> None:
    assert cli_message(python) == cli
    assert python_names(cli) == []


# --- real errors from real fetches --------------------------------------------------------


@pytest.fixture
def ids_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("BRAINCIRCUITS_TOKEN", testing.DEFAULT_TOKEN)
    monkeypatch.setenv("BRAINCIRCUITS_CAVE_TOKEN", testing.DEFAULT_CAVE_TOKEN)
    path = tmp_path / "ids.txt"
    path.write_text("".join(f"{i}\n" for i in IDS))
    return path


class RollOverAlways:
    """The fake, moving to a new materialization after every answer: chunks never agree."""

    def __init__(self, fake: testing.FakeBrainCircuits) -> None:
        self.fake = fake

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await self.fake(scope, receive, send)
        if scope["type"] == "http":
            self.fake.rollover()


#: (case, the fake's settings, environment changes, extra arguments, exit status, CLI wording)
CASES: list[tuple[str, dict[str, Any], dict[str, str | None], list[str], int, str]] = [
    ("no-token", {}, {"BRAINCIRCUITS_TOKEN": None}, [], 2, "set BRAINCIRCUITS_TOKEN"),
    ("no-cave-token", {}, {"BRAINCIRCUITS_CAVE_TOKEN": None}, [], 2,
     "set BRAINCIRCUITS_CAVE_TOKEN"),
    ("token-refused", {}, {"BRAINCIRCUITS_TOKEN": "wrong"}, [], 2, "check BRAINCIRCUITS_TOKEN"),
    ("cave-token-refused", {}, {"BRAINCIRCUITS_CAVE_TOKEN": "wrong"}, [], 2,
     "check BRAINCIRCUITS_CAVE_TOKEN"),
    ("413-split", {"max_segments": 30}, {}, ["-v", "--chunk-size", "100"], 0, "lower --chunk-size"),
    ("unknown-project", {}, {}, ["--project", "hemibrain2"], 2, "the documented projects are"),
    ("retry-after-too-long", {"faults": {"429": 1.0}, "retry_after": 500,
     "max_consecutive_faults": 100}, {}, [], 1, "the longest wait the command accepts (120 s)"),
    ("request-timeout", {"latency": 0.3}, {}, ["--request-timeout", "0.05", "--max-retries", "0",
     "--chunk-size", "200"], 1, "--request-timeout 0.05 s"),
    ("deadline", {"latency": 0.3}, {}, ["--deadline", "0.05"], 1, "--deadline 0.05 s passed"),
    ("server-down", {"faults": {"503": 1.0}, "max_consecutive_faults": 1000}, {},
     ["--max-retries", "1", "--chunk-size", "10", "--concurrency", "2"], 1,
     "a larger --max-retries"),
    ("values-disagree", {"rollover": True}, {}, ["--chunk-size", "50"], 1,
     "run the same command again later"),
    ("chunk-size-too-large", {}, {}, ["--chunk-size", "200000"], 2,
     "--chunk-size must be at least 1 and at most"),
    ("concurrency-too-large", {}, {}, ["--concurrency", "5000"], 2, "--concurrency must be at"),
    ("max-retries-too-large", {}, {}, ["--max-retries", "500"], 2, "--max-retries must be at"),
    ("bad-url", {}, {"BRAINCIRCUITS_URL": "ftp://example.com"}, [], 2,
     "--base-url (or BRAINCIRCUITS_URL) must be an http(s) address"),
    ("plain-http", {}, {}, ["--base-url", "http://example.com"], 2, "use an https:// --base-url"),
]  # fmt: skip


@pytest.mark.usefixtures("sleeps")  # retry waits take no time
@pytest.mark.parametrize(
    ("case", "settings", "environ", "extra", "status", "wording"), CASES, ids=[c[0] for c in CASES]
)
def test_a_real_error_reaches_the_cli_user_in_the_clis_words(
    case: str,
    settings: dict[str, Any],
    environ: dict[str, str | None],
    extra: list[str],
    status: int,
    wording: str,
    ids_file: Path,
    capsys: Any,
    monkeypatch: pytest.MonkeyPatch,
    serve_on_loopback: ServeOnLoopback,
) -> None:
    settings = dict(settings)
    rollover = settings.pop("rollover", False)
    fake = testing.FakeBrainCircuits(**settings)
    monkeypatch.setenv(
        "BRAINCIRCUITS_URL", serve_on_loopback(RollOverAlways(fake) if rollover else fake)
    )
    for name, value in environ.items():
        if value is None:
            monkeypatch.delenv(name)
        else:
            monkeypatch.setenv(name, value)
    code = _cli.main(
        ["fetch", "size", "--project", PROJECT, "--ids", str(ids_file), *extra, "-o",
         str(ids_file.with_name("out.jsonl"))]
    )  # fmt: skip
    err = capsys.readouterr().err
    assert code == status, err
    assert wording in err
    assert python_names(err) == [], err
    assert testing.DEFAULT_TOKEN not in err
