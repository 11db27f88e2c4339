"""The ``braincircuits-async`` command: ``fetch``, ``export``, ``demo`` and ``fake-server``.

This module holds every command's parser and :func:`main`; ``_cli_fetch`` runs
``fetch`` and ``export`` (reading ids with ``_cli_ids``, writing with ``_export``),
``_cli_fake`` the two commands of the fake server, and ``_cli_messages`` words
what the user reads in the CLI's terms (options, environment variables, ``-v``).
The CLI never prints a real token and takes none on its command line (where shell
history would keep it): tokens come from the environment, as for the library.
(``fake-server`` prints the fake's own test tokens: public values, printed so
that a shell can be pointed at it.)
Exit codes: 0 success, 1 some segments failed (the rest are written), 2 bad
usage, bad input, a token problem or a store that cannot be used, 130 Ctrl-C,
143 SIGTERM.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from ._cli_fake import demo as _demo
from ._cli_fake import fake_server as _fake_server
from ._cli_fetch import export as _export
from ._cli_fetch import fetch as _fetch
from ._cli_messages import cli_message
from ._config import (
    DEFAULT_BASE_URL,
    DEFAULT_CHUNK_SIZE,
    DEFAULT_MAX_CONCURRENCY,
    DEFAULT_MAX_RETRIES,
    DEFAULT_REQUEST_TIMEOUT,
)
from ._exceptions import AuthenticationError, StoreError
from ._export import FORMATS
from ._version import __version__

__all__ = ["main"]


def _fault_spec(text: str) -> dict[str, float]:
    """``"429=0.05,drop=0.02"`` -> ``{"429": 0.05, "drop": 0.02}``."""
    table: dict[str, float] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        kind, sep, value = item.partition("=")
        try:
            if not sep:
                raise ValueError(item)
            table[kind.strip()] = float(value)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected KIND=PROBABILITY items such as 429=0.05,drop=0.02; got {item!r}"
            ) from None
    return table


def _non_negative_float(text: str) -> float:
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be a number >= 0, got {text}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a number of seconds > 0, got {text}")
    return value


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 1, got {text}")
    return value


def _add_client_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--chunk-size",
        type=_positive_int,
        default=DEFAULT_CHUNK_SIZE,
        help="ids per request (default: %(default)s)",
    )
    parser.add_argument(
        "--concurrency",
        type=_positive_int,
        default=DEFAULT_MAX_CONCURRENCY,
        help="requests in flight at once (default: %(default)s)",
    )


def _add_fake_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--latency-ms",
        type=_non_negative_float,
        default=50.0,
        help="server latency per request, in milliseconds (default: %(default)s)",
    )
    parser.add_argument(
        "--fault-rate",
        type=_non_negative_float,
        default=0.1,
        help="share of requests that fail on purpose, spread evenly over 429 (with "
        "Retry-After), 500, 502, 503, 504, dropped connections and truncated bodies "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--faults",
        type=_fault_spec,
        default=None,
        metavar="KIND=P,...",
        help="exact fault probabilities instead of --fault-rate, e.g. "
        "429=0.04,503=0.03,drop=0.03 (kinds: 429 500 502 503 504 drop truncate slow)",
    )
    parser.add_argument(
        "--retry-after",
        type=_non_negative_float,
        default=0.1,
        help="seconds the fake asks for in the Retry-After header of a 429 (default: 0.1)",
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="seed for the ids and the faults (default: 0)"
    )


def _add_output_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-o",
        "--output",
        metavar="OUT",
        help="file to write (default, or '-': standard output); an existing file is "
        "kept unless --force is given",
    )
    parser.add_argument(
        "--format",
        choices=FORMATS,
        help="jsonl: one JSON object per segment; csv: one column per field, nested "
        "values as JSON text; tsv: the same, tab-separated; parquet: needs -o and the "
        "'parquet' extra (default: the extension of OUT, which must then be .jsonl, "
        ".csv, .tsv or .parquet; jsonl on standard output)",
    )
    parser.add_argument("--force", action="store_true", help="overwrite OUT if it exists")


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="braincircuits-async",
        description="Bulk-fetch segment properties from BrainCircuits.io, and a fake "
        "server to try it offline.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    fetch = commands.add_parser(
        "fetch",
        help="fetch properties of the segment ids in a file, to JSON lines, CSV, TSV or Parquet",
        description="Fetch each PROPERTY for every segment id in the --ids file (one id "
        "per line, or a column of a CSV/TSV file; blank lines and # comments are skipped) "
        "and write one record per segment: several properties come from one "
        "materialization, into one table. "
        "Everything that can be checked is checked before the first request: the ids, "
        "OUT's folder, format and library, the --failed-ids folder, the store. "
        "Tokens come from BRAINCIRCUITS_TOKEN and BRAINCIRCUITS_CAVE_TOKEN (or CAVE_TOKEN, "
        "or CAVEclient's secret file), the address from BRAINCIRCUITS_URL. With --store, "
        "a run stopped by Ctrl-C, SIGTERM, a crash or a refused token, run again with the "
        "same arguments, fetches only what is missing, then writes OUT. Exit status: "
        "0 all fetched; 1 some segments failed (the others are written); 2 bad usage, "
        "bad ids, an output that cannot be written, a token problem or an unusable store "
        "(found before the first request, these send nothing); 130 Ctrl-C; 143 SIGTERM.",
    )
    fetch.add_argument(
        "properties",
        nargs="+",
        metavar="PROPERTY",
        help="the properties, e.g. link_pre, size, connectivity; several as size,link_pre "
        "or size link_pre: one table, a row per segment, columns <property>.<field> "
        "(JSON lines: a key per property)",
    )
    fetch.add_argument("--project", required=True, help="the project, e.g. fruitfly_fafb_flywire")
    fetch.add_argument(
        "--ids",
        metavar="FILE",
        help="file of segment ids, one per line, or a CSV/TSV file (see --column); '-' (or "
        "a bare '-' anywhere after fetch) reads standard input",
    )
    fetch.add_argument(
        "--column",
        metavar="NAME|N",
        help="the column of --ids that holds the ids: a name of its header line, or a "
        "number counting from 1 (default: the only column, or the one header named "
        "root_id, pt_root_id or segment_id)",
    )
    _add_output_options(fetch)
    fetch.add_argument(
        "--store",
        metavar="PATH",
        help="result store (one SQLite file, created if missing): each chunk is saved "
        "there as it arrives, and ids it holds are not fetched again, so an interrupted "
        "run resumes where it stopped; if the fetch stops at an error (e.g. a refused "
        "token), OUT is not written and the same command run again finishes it",
    )
    fetch.add_argument(
        "--failed-ids",
        metavar="PATH",
        help="write the ids that could not be fetched to PATH, one per line (the format "
        "of --ids; ids unknown to the server are not listed), replacing PATH; empty when "
        "none failed",
    )
    fetch.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="progress bar on standard error (default: on when it is a terminal)",
    )
    _add_client_options(fetch)
    fetch.add_argument(
        "--max-retries",
        type=int,
        default=DEFAULT_MAX_RETRIES,
        help="retries per request for transient failures (default: %(default)s)",
    )
    fetch.add_argument(
        "--request-timeout",
        type=_positive_float,
        default=DEFAULT_REQUEST_TIMEOUT,
        metavar="SECONDS",
        help="longest time one request may take, from sending it to the last byte of its "
        "answer; a slower one is retried like a timeout (default: %(default)g)",
    )
    fetch.add_argument(
        "--deadline",
        type=_positive_float,
        default=None,
        metavar="SECONDS",
        help="longest time the whole fetch may take; when it passes, what was fetched is "
        "written (and kept in --store) and the rest is reported as failed, exit status 1 "
        "(default: no limit)",
    )
    fetch.add_argument(
        "--base-url",
        default=None,
        help=f"API address (default: BRAINCIRCUITS_URL, else {DEFAULT_BASE_URL})",
    )
    fetch.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=0,
        help="-v: log each retry (with its backoff), split and give-up on standard error; "
        "-vv: also one line per request",
    )

    export = commands.add_parser(
        "export",
        help="write what a result store holds for one property, offline",
        description="Write every segment the --store holds for PROPERTY in --project, from "
        "one materialization (the newest unless --materialized-timestamp picks an older "
        "one), with the same formats as fetch. No network, no token. Exit status: 0 "
        "written; 2 bad usage, an output that cannot be written, or a store that holds "
        "nothing for it.",
    )
    export.add_argument("property", help="the property, e.g. link_pre, size, connectivity")
    export.add_argument(
        "--store", required=True, metavar="PATH", help="the result store to read (a file)"
    )
    export.add_argument("--project", required=True, help="the project, e.g. fruitfly_fafb_flywire")
    export.add_argument(
        "--materialized-timestamp",
        type=int,
        metavar="TS",
        default=None,
        help="the materialization to write, in UNIX seconds (default: the newest held; "
        "the summary lists the others)",
    )
    _add_output_options(export)

    demo = commands.add_parser(
        "demo",
        help="bulk-fetch from the bundled fake server over loopback and check every value",
        description="Start the fake server on a free loopback port, bulk-fetch through "
        "the real client over real sockets, print a summary, and check every value "
        "against the fake's truth. Exits 1 if any value is wrong or missing.",
    )
    demo.add_argument(
        "--segments",
        type=_positive_int,
        default=20_000,
        help="how many segment ids to fetch (default: %(default)s)",
    )
    demo.add_argument(
        "--property", default="link_pre", help="property to fetch (default: %(default)s)"
    )
    _add_client_options(demo)
    demo.add_argument(
        "--no-progress", action="store_true", help="do not draw a progress bar on stderr"
    )
    _add_fake_options(demo)

    fake = commands.add_parser(
        "fake-server",
        help="run the fake BrainCircuits server on a loopback port until Ctrl+C",
        description="Serve the fake segment-property endpoint over HTTP until Ctrl+C. "
        "It prints, on standard output, the export lines that point a shell at it: its "
        "address and the fake's own test tokens (public values, not secrets). "
        "Needs the 'fake' extra: pip install \"braincircuits-async[fake]\".",
    )
    fake.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default: %(default)s)"
    )
    fake.add_argument(
        "--port", type=int, default=8000, help="port to listen on (default: %(default)s)"
    )
    fake.add_argument(
        "--max-segments",
        type=_positive_int,
        default=10_000,
        help="most ids per request; more get 413 (default: %(default)s)",
    )
    fake.add_argument(
        "--latency-per-segment-us",
        type=_non_negative_float,
        default=0.0,
        help="extra server latency per segment in a request, in microseconds (default: 0)",
    )
    fake.add_argument(
        "--cache-mb",
        type=_non_negative_float,
        default=0.0,
        help="serve repeated requests from up to this many MiB of cached answers, so the "
        "fake's own CPU time stays out of benchmarks (default: 0, off)",
    )
    fake.add_argument(
        "--rollover-after",
        type=_positive_int,
        default=None,
        help="move to a new materialization after this many answers (default: never)",
    )
    fake.add_argument(
        "--rate-limit",
        type=float,
        default=None,
        metavar="REQUESTS_PER_S",
        help="accept at most this many requests per second across all clients; more get "
        "429 without Retry-After (default: no limit)",
    )
    _add_fake_options(fake)
    fake.set_defaults(latency_ms=0.0, fault_rate=0.0)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    words = list(sys.argv[1:] if argv is None else argv)
    if words[:1] == ["fetch"] and "-" in words:
        # A bare "-" means the ids come from standard input (argparse cannot place an
        # optional positional after options, so it becomes --ids -).
        at = words.index("-")
        if words[at - 1] not in ("--ids", "-o", "--output", "--store", "--failed-ids"):
            words[at : at + 1] = ["--ids", "-"]
    args = _build_parser().parse_args(words)
    try:
        if args.command == "fetch":
            return _fetch(args, sys.stdin, sys.stdout, sys.stderr)
        if args.command == "export":
            return _export(args, sys.stdout, sys.stderr)
        if args.command == "demo":
            return _demo(args, sys.stdout, sys.stderr)
        return _fake_server(args, sys.stdout)
    except (ImportError, OSError, ValueError, TypeError, AuthenticationError, StoreError) as error:
        print(f"braincircuits-async: error: {cli_message(str(error))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
