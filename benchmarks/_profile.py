"""A cProfile of one contender against the fake: the functions by their own time.

Run from the repository root::

    python -m benchmarks._profile                          # client, aiohttp, c=64, 50 ms
    python -m benchmarks._profile --backend httpx -c 8 --latency-ms 0 --top 25
    python -m benchmarks._profile --contender aiohttp-gather

The fake runs in its own process as for the benchmarks, warmed up by one run; the
profiled run is a fresh worker process (``benchmarks._worker --profile``), the
profile covering the measurement only (the HTTP stacks are imported before it).
cProfile slows every Python call, so compare the functions' shares, not the totals
with the benchmarks' wall times.
"""

from __future__ import annotations

import argparse
import io
import json
import pstats
import subprocess
import sys
import tempfile
from pathlib import Path

from ._common import FULL, log, measure, spec
from ._server import fake_server


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--contender", default="client", help="a benchmarks._worker contender")
    parser.add_argument("--backend", default="aiohttp", help="the client's http_backend")
    parser.add_argument("-c", "--concurrency", type=int, default=64)
    parser.add_argument("-n", "--segments", type=int, default=FULL.n)
    parser.add_argument("--latency-ms", type=float, default=FULL.latency_ms)
    parser.add_argument("--top", type=int, default=15, help="functions shown")
    parser.add_argument("--sort", default="tottime", help="a pstats sort key (tottime, cumtime)")
    parser.add_argument("--save", type=Path, default=None, help="keep the profile here")
    args = parser.parse_args(argv)
    with fake_server(latency_ms=args.latency_ms) as url:
        measure(spec(url, FULL, "client", n=args.segments))  # warm the server's cache up
        overrides = {"n": args.segments, "concurrency": args.concurrency}
        if args.contender.startswith("client"):
            overrides["client"] = {"http_backend": args.backend}
        run = spec(url, FULL, args.contender, **overrides)
        with tempfile.TemporaryDirectory() as folder:
            path = args.save or Path(folder) / "profile.out"
            out = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "benchmarks._worker",
                    "--profile",
                    str(path),
                    json.dumps(run),
                ],
                capture_output=True,
                text=True,
                check=False,
            )
            if out.returncode != 0:
                raise RuntimeError(f"{args.contender} failed:\n{out.stderr[-3000:]}")
            result = json.loads(out.stdout)
            text = io.StringIO()
            stats = pstats.Stats(str(path), stream=text)
            stats.sort_stats(args.sort).print_stats(args.top)
    log(
        f"{args.contender} ({args.backend if args.contender.startswith('client') else '-'}), "
        f"c={args.concurrency}, {args.segments:,} segments, {args.latency_ms:g} ms: wall "
        f"{result['wall']:.3f} s under the profiler, {result['requests']} requests"
    )
    print(text.getvalue())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
