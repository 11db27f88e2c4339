"""The fake server in its own process, so client and server do not share one event loop."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextlib.contextmanager
def fake_server(
    *,
    latency_ms: float = 0.0,
    latency_per_segment_us: float = 0.0,
    faults: str | None = None,
    retry_after: float = 0.1,
) -> Iterator[str]:
    """Run ``braincircuits-async fake-server`` on a free loopback port; yield its URL."""
    port = free_port()
    command = [
        sys.executable, "-m", "braincircuits_async", "fake-server",
        "--port", str(port),
        "--latency-ms", str(latency_ms),
        "--latency-per-segment-us", str(latency_per_segment_us),
        "--max-segments", "100000",
        "--retry-after", str(retry_after),
        # Repeated requests are served pre-encoded (after a warm-up run), so the fake's
        # own CPU time stays out of the client's figures, as the ideal assumes.
        "--cache-mb", "1024",
    ]  # fmt: skip
    if faults:
        command += ["--faults", faults]
    process = subprocess.Popen(
        command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=dict(os.environ)
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                    break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    err = process.stderr.read().decode() if process.stderr else ""
                    raise RuntimeError(f"fake server did not start: {err}") from None
                time.sleep(0.05)
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(timeout=10)
