"""The command line: the demo main job over real sockets, and the fake-server command."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import anyio
import pytest

import braincircuits_async as bca
from braincircuits_async import _cli, _cli_fake, testing


def run_demo(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = _cli.main(["demo", "--no-progress", "--latency-ms", "1", *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_demo_fetches_over_loopback_and_checks_every_value(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, out, err = run_demo(capsys, "--segments", "3000", "--fault-rate", "0.3")
    assert code == 0, out + err
    assert "3,000 requested" in out
    assert "check         OK" in out
    assert "retries" in out
    assert "http://127.0.0.1:" in err  # a real loopback server, not an in-process mock
    assert "materialized  1677042002" in out


def test_demo_exits_non_zero_when_a_value_is_wrong(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    real = testing.FakeBrainCircuits.expected_results

    def corrupted(self: Any, *args: Any, **kwargs: Any) -> dict[str, Any]:
        truth = real(self, *args, **kwargs)
        first = next(iter(truth))
        truth[first] = {"nr_pre": -1}
        return truth

    monkeypatch.setattr(testing.FakeBrainCircuits, "expected_results", corrupted)
    code, out, _ = run_demo(capsys, "--segments", "200", "--fault-rate", "0")
    assert code == 1
    assert "FAILED: 1 wrong" in out


def test_demo_rejects_a_fault_rate_above_one(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_demo(capsys, "--fault-rate", "1.5")
    assert code == 2
    assert "--fault-rate must be between 0 and 1" in err


def test_help_explains_every_demo_option(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        _cli.main(["demo", "--help"])
    assert exited.value.code == 0
    out = capsys.readouterr().out
    for option in ("--segments", "--property", "--fault-rate", "--latency-ms", "--seed"):
        assert option in out


def test_fake_server_prints_the_export_lines_a_client_needs_and_serves_it_over_http() -> None:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(
        [sys.executable, "-m", "braincircuits_async", "fake-server", "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        text=True,
    )
    try:
        stdout = process.stdout
        assert stdout is not None
        banner: list[str] = []
        reader = threading.Thread(
            target=lambda: banner.extend(stdout.readline() for _ in range(5)), daemon=True
        )
        reader.start()
        reader.join(15)
        assert len(banner) == 5, "fake-server printed no banner on standard output"
        # The printed text is a shell snippet: comments, then the exports to paste.
        assert all(line.startswith(("# ", "export ")) for line in banner), banner
        exports = dict(
            line.removeprefix("export ").strip().split("=", 1)
            for line in banner
            if line.startswith("export ")
        )
        assert exports["BRAINCIRCUITS_TOKEN"] == testing.DEFAULT_TOKEN
        assert exports["BRAINCIRCUITS_CAVE_TOKEN"] == testing.DEFAULT_CAVE_TOKEN
        assert exports["BRAINCIRCUITS_URL"].startswith("http://127.0.0.1:")  # the port bound
        assert "DEFAULT_TOKEN" not in "".join(banner)

        async def fetch() -> bca.SegmentPropertyResult:
            async with bca.AsyncClient(
                token=exports["BRAINCIRCUITS_TOKEN"],
                cave_token=exports["BRAINCIRCUITS_CAVE_TOKEN"],
                base_url=exports["BRAINCIRCUITS_URL"],
                project="fruitfly_fafb_flywire",
            ) as client:
                return await client.fetch_property("size", range(1, 1001))

        result = anyio.run(fetch)
        truth = testing.FakeBrainCircuits().expected_results("size", range(1, 1001))
        assert {str(k): v for k, v in result.items()} == truth
    finally:
        process.terminate()
        process.communicate(timeout=10)


def test_the_banner_is_a_shell_snippet_that_quotes_what_it_exports() -> None:
    text = _cli_fake.banner("http://127.0.0.1:8000", "fake-token", "it's")
    assert text.splitlines()[2:] == [
        "export BRAINCIRCUITS_URL=http://127.0.0.1:8000",
        "export BRAINCIRCUITS_TOKEN=fake-token",
        "export BRAINCIRCUITS_CAVE_TOKEN='it'\"'\"'s'",
    ]
    assert "BRAINCIRCUITS_TOKEN" not in _cli_fake.banner("http://h:1", None, None)


def test_the_banner_in_the_docs_is_the_one_printed() -> None:
    page = (Path(__file__).resolve().parent.parent / "docs" / "cli.md").read_text()
    banner = _cli_fake.banner(
        "http://127.0.0.1:8000", testing.DEFAULT_TOKEN, testing.DEFAULT_CAVE_TOKEN
    )
    assert f"$ braincircuits-async fake-server --port 8000\n{banner}\n```" in page
