"""`fetch -v` shows the retries, splits and give-ups and the summary; `-vv` adds a line per
request; without either, only warnings. Run against a fake that injects faults."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest

from braincircuits_async import _cli, testing
from braincircuits_async._cli_messages import log_levels

from .conftest import ServeOnLoopback

PROJECT = "fruitfly_fafb_flywire"
IDS = [720575940600000000 + 7919 * i for i in range(200)]


@pytest.mark.parametrize(
    ("verbosity", "ours", "httpx"),
    [
        (0, logging.WARNING, logging.WARNING),
        (1, logging.INFO, logging.WARNING),
        (2, logging.DEBUG, logging.INFO),
        (3, logging.DEBUG, logging.INFO),
    ],
)
def test_log_levels_for_each_v(verbosity: int, ours: int, httpx: int) -> None:
    assert log_levels(verbosity) == (ours, httpx)


def fetch_with_faults(
    serve: ServeOnLoopback,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: Any,
    *flags: str,
) -> str:
    """stderr of a fetch from a fake that answers 503 half the time and 413 to chunks
    over 60 ids (the client retries the first, splits the second)."""
    fake = testing.FakeBrainCircuits(faults={"503": 0.5}, max_segments=60, seed=7)
    ids = tmp_path / "ids.txt"
    ids.write_text("".join(f"{i}\n" for i in IDS))
    monkeypatch.setenv("BRAINCIRCUITS_TOKEN", testing.DEFAULT_TOKEN)
    monkeypatch.setenv("BRAINCIRCUITS_CAVE_TOKEN", testing.DEFAULT_CAVE_TOKEN)
    monkeypatch.setenv("BRAINCIRCUITS_URL", serve(fake))
    out = str(tmp_path / "out.jsonl")
    code = _cli.main(["fetch", "size", "--project", PROJECT, "--ids", str(ids),
                      "--chunk-size", "100", "-o", out, *flags])  # fmt: skip
    err: str = capsys.readouterr().err
    assert code == 0, err
    assert fake.log.faults.get("503", 0) > 0
    return err


@pytest.mark.usefixtures("sleeps")
def test_v_shows_retries_with_their_backoff_and_splits_but_not_each_request(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: Any,
    serve_on_loopback: ServeOnLoopback,
) -> None:
    err = fetch_with_faults(serve_on_loopback, tmp_path, monkeypatch, capsys, "-v")
    assert "retrying in " in err
    assert "(retry 1 of 5) after:" in err
    assert "503" in err
    assert "413 (too many segments in one request; lower --chunk-size)" in err
    assert "splitting it" in err
    assert "segment(s) written" in err
    assert "retried" in err
    assert "HTTP Request:" not in err  # httpx's line per request
    assert " -> 200 in " not in err  # the client's


@pytest.mark.usefixtures("sleeps")
def test_vv_adds_a_line_per_request(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: Any,
    serve_on_loopback: ServeOnLoopback,
) -> None:
    err = fetch_with_faults(serve_on_loopback, tmp_path, monkeypatch, capsys, "-vv")
    assert "retrying in " in err
    assert "splitting it" in err
    # The client's own line per request (httpx writes one too, on httpx's stack only).
    assert "POST /circuit/segment/property/size size (project" in err
    assert " -> 503 in " in err
    assert " -> 200 in " in err
    assert testing.DEFAULT_TOKEN not in err


@pytest.mark.usefixtures("sleeps")
def test_without_v_only_the_summary(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: Any,
    serve_on_loopback: ServeOnLoopback,
) -> None:
    err = fetch_with_faults(serve_on_loopback, tmp_path, monkeypatch, capsys)
    assert "retrying in " not in err
    assert "splitting it" not in err
    assert "HTTP Request:" not in err
    assert err.count("\n") == 1
    assert "segment(s) written" in err


@pytest.mark.usefixtures("sleeps")
def test_the_loggers_are_left_as_they_were(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: Any,
    serve_on_loopback: ServeOnLoopback,
) -> None:
    ours, httpx = logging.getLogger("braincircuits_async"), logging.getLogger("httpx")
    before = (ours.level, list(ours.handlers), httpx.level, list(httpx.handlers))
    fetch_with_faults(serve_on_loopback, tmp_path, monkeypatch, capsys, "-vv")
    assert (ours.level, list(ours.handlers), httpx.level, list(httpx.handlers)) == before
    # So a second run in the same process prints each line once, not twice.
    err = fetch_with_faults(serve_on_loopback, tmp_path, monkeypatch, capsys, "-v", "--force")
    lines = [line for line in err.splitlines() if line.startswith("retrying in")]
    assert len(lines) == len(set(lines))
