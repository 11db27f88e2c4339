"""Instructions executed by one CPU-bound fetch, per contender (valgrind's callgrind).

Run from the repository root (valgrind must be installed; about 40 s a contender)::

    python -m benchmarks._instructions                      # client (aiohttp) vs raw aiohttp
    python -m benchmarks._instructions -n 100000 -c 8 --contenders client aiohttp-gather

Wall and CPU times on a shared 2-core machine move by 10-50 % from run to run; an
instruction count is the same for the same code and inputs whatever else runs, so it
shows a change of a few per cent that timings cannot. Each contender runs twice in a
fresh ``benchmarks._worker`` process under callgrind, with ``n`` segments and with none
(the imports, the id list, building the client): the difference is the fetch's own.
Instructions are not time (memory-bound work executes few of them per nanosecond), so
confirm a gain with the timed benchmarks.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from ._common import FULL, log, measure, spec
from ._server import fake_server


def instructions(run: dict[str, object]) -> int:
    """Instructions callgrind counted for one ``benchmarks._worker`` run of ``run``."""
    with tempfile.TemporaryDirectory() as folder:
        out = subprocess.run(
            [
                "valgrind",
                "--tool=callgrind",
                f"--callgrind-out-file={Path(folder) / 'callgrind.out'}",
                sys.executable,
                "-m",
                "benchmarks._worker",
                json.dumps(run),
            ],
            capture_output=True,
            text=True,
            check=True,
        )
    found = re.search(r"Collected : (\d+)", out.stderr)
    if found is None:
        raise RuntimeError(f"no instruction count in valgrind's output:\n{out.stderr[-2000:]}")
    return int(found.group(1))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--contenders", nargs="+", default=["client", "aiohttp-gather"])
    parser.add_argument("--backend", default="aiohttp", help="the client's http_backend")
    parser.add_argument("-c", "--concurrency", type=int, default=8)
    parser.add_argument("-n", "--segments", type=int, default=FULL.n)
    args = parser.parse_args(argv)
    if shutil.which("valgrind") is None:
        log("valgrind is not installed (Debian: apt-get install valgrind)")
        return 1
    counts: dict[str, int] = {}
    with fake_server(latency_ms=0) as url:
        measure(spec(url, FULL, "client", n=args.segments))  # warm the server's cache up
        for name in args.contenders:
            extra = {"client": {"http_backend": args.backend}} if name.startswith("client") else {}
            both = [
                instructions(spec(url, FULL, name, n=n, concurrency=args.concurrency, **extra))
                for n in (0, args.segments)
            ]
            counts[name] = both[1] - both[0]
            log(f"  {name:22s} {counts[name] / 1e6:10.1f} M instructions")
    reference = counts.get("aiohttp-gather")
    print(f"| contender | M instructions ({args.segments:,} segments, c={args.concurrency}) |")
    print("|---|---:|")
    for name, count in counts.items():
        ratio = f" ({count / reference:.3f}x raw aiohttp)" if reference else ""
        print(f"| {name} | {count / 1e6:,.1f}{ratio} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
