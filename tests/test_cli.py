"""The command line: the demo main job over real sockets, and the fake-server command."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from typing import Any

import anyio
import pytest

import braincircuits_async as bca
from braincircuits_async import _cli, testing


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


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def test_fake_server_command_serves_the_client_over_http() -> None:
    port = free_port()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(
        [sys.executable, "-m", "braincircuits_async", "fake-server", "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                    break
            except OSError:
                assert process.poll() is None, process.stderr.read() if process.stderr else ""
                assert time.monotonic() < deadline, "fake-server did not start"
                time.sleep(0.05)

        async def fetch() -> bca.SegmentPropertyResult:
            async with bca.AsyncClient(
                token=testing.DEFAULT_TOKEN,
                cave_token=testing.DEFAULT_CAVE_TOKEN,
                base_url=f"http://127.0.0.1:{port}",
                project="fruitfly_fafb_flywire",
            ) as client:
                return await client.fetch_property("size", range(1, 1001))

        result = anyio.run(fetch)
        truth = testing.FakeBrainCircuits().expected_results("size", range(1, 1001))
        assert {str(k): v for k, v in result.items()} == truth
    finally:
        process.terminate()
        _, err = process.communicate(timeout=10)
    assert testing.DEFAULT_TOKEN.encode() not in err  # the command never prints a token
