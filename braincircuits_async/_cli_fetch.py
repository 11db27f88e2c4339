"""The ``fetch`` and ``export`` commands: checks first, then the fetch, then what is written.

``fetch`` checks everything it can before the first request (the output's
folder, format and library, the ``--failed-ids`` folder, the ids, the store),
so a long run cannot fail at its end for a reason known at its start. With
``--store``, every chunk is committed to the store as it arrives: a run stopped
by Ctrl-C, SIGTERM, SIGKILL or a refused token, run again with the same
arguments, fetches only what is missing and then writes OUT. Several properties
are one ``fetch_properties`` call (one materialization across them all, resumed
from the store alike) and one table (see ``_export.table``).

What is written when a fetch fails (exit status in brackets):

* some chunks failed for good (1): OUT with everything else;
* a fatal error after some chunks (2: a refused token, an unknown project, a
  store that cannot be written): with ``--store``, OUT is not written (the chunks
  are in the store, and the re-run writes OUT without ``--force``); without, OUT
  is written with what was fetched, so nothing is lost (unless the values
  disagree on the materialization: no file mixes two);
* either way, ``--failed-ids`` lists the ids not fetched (not those unknown to
  the server), one per line, for ``--ids``.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TextIO, TypeVar

import anyio

from ._cli_ids import read_ids
from ._cli_messages import cli_logging, cli_message
from ._client import AsyncClient
from ._exceptions import (
    AuthenticationError,
    BrainCircuitsError,
    IncompleteResultError,
    InconsistentMaterializationError,
    InvalidArgumentError,
    MissingDependencyError,
    StoreError,
    UsageError,
)
from ._export import (
    OutputError,
    check_writable_folder,
    prepare_output,
    table,
    write_ids,
    write_result,
)
from ._models import SegmentPropertyResult
from ._retry import is_fatal
from ._stats import ClientStats
from ._store import ResultStore

__all__ = ["EXIT_TERMINATED", "exit_status", "export", "fetch", "not_fetched", "property_names"]

#: The exit status after a SIGTERM (128 + 15, as the shell reports a process it killed).
EXIT_TERMINATED = 143

_T = TypeVar("_T")


@dataclass(frozen=True)
class _Outcome:
    """How a fetch ended: what it got of each property (``{}`` if nothing), which ids
    failed and why, the error that stopped it."""

    results: Mapping[str, SegmentPropertyResult]
    failures: Mapping[int, str]
    error: BrainCircuitsError | None  # None: finished, perhaps with failed chunks
    stats: ClientStats


def exit_status(error: BrainCircuitsError) -> int:
    """The exit status for an error that ended a fetch: 2 for what a re-run would
    repeat until something is fixed (a token, the arguments, the store), 1 for a
    failure that another try may not meet (5xx, 429, dropped connections)."""
    if isinstance(error, IncompleteResultError):
        return 1
    usage = (AuthenticationError, StoreError, InvalidArgumentError, UsageError)
    if isinstance(error, (*usage, MissingDependencyError)) or is_fatal(error):
        return 2
    return 1


def not_fetched(ids: Iterable[int], results: Sequence[SegmentPropertyResult]) -> list[int]:
    """The requested ids that some property of ``results`` neither holds nor knows to
    be unknown to the server, once each, in request order: what ``--failed-ids``
    writes (with no results, every id)."""
    if not results:
        return list(dict.fromkeys(ids))
    unknown = [frozenset(r.missing) for r in results]
    return [
        s
        for s in dict.fromkeys(ids)
        if any(s not in r and s not in u for r, u in zip(results, unknown, strict=True))
    ]


def property_names(words: Sequence[str]) -> list[str]:
    """The properties of ``fetch size,link_pre`` or ``fetch size link_pre``: split at
    commas, blanks dropped, each once, in the order given."""
    names = [n.strip() for word in words for n in word.split(",")]
    return list(dict.fromkeys(n for n in names if n))


# --- fetch -----------------------------------------------------------------------------


def fetch(args: argparse.Namespace, stdin: TextIO, out: TextIO, err: TextIO) -> int:
    """``braincircuits-async fetch``: ids from a file, results to a file or stdout."""
    if args.failed_ids == "-":
        raise OutputError("--failed-ids needs a file path, not '-'")
    failed_ids = None if args.failed_ids is None else Path(args.failed_ids)
    store_path = None if args.store is None else Path(args.store)
    _distinct({"-o": args.output, "--failed-ids": failed_ids, "--store": store_path})
    output, fmt = prepare_output(args.output, args.format, force=args.force)
    if failed_ids is not None:
        check_writable_folder(failed_ids, "--failed-ids")
    ids = _read_ids(args.ids, args.column, stdin)
    properties = property_names(args.properties)
    if not properties:
        raise InvalidArgumentError("give at least one property, e.g. fetch size,link_pre ...")
    progress = err.isatty() if args.progress is None else args.progress
    # Opened last, so that a check failing above leaves no new store file behind.
    store = None if store_path is None else ResultStore(store_path)
    try:
        with cli_logging(args.verbose, err):
            outcome = anyio.run(
                _until_sigterm, lambda: _run(args, properties, ids, store, progress)
            )
    except KeyboardInterrupt:
        _say_resumable(store, "interrupted", err)
        raise
    finally:
        if store is not None:
            store.close()
    if outcome is None:
        _say_resumable(store, "stopped by SIGTERM", err)
        return EXIT_TERMINATED
    return _finish(outcome, properties, ids, fmt, output, failed_ids, store, out, err)


async def _run(
    args: argparse.Namespace,
    properties: list[str],
    ids: list[int],
    store: ResultStore | None,
    progress: bool,
) -> _Outcome:
    async with AsyncClient(
        base_url=args.base_url,
        project=args.project,
        chunk_size=args.chunk_size,
        max_concurrency=args.concurrency,
        max_retries=args.max_retries,
        request_timeout=args.request_timeout,
        deadline=args.deadline,
        store=store,
    ) as client:
        # One call for every property: one materialization across them all.
        try:
            results = await client.fetch_properties(properties, ids, progress=progress)
        except IncompleteResultError as error:
            return _Outcome(error.results, error.failures, None, client.stats)
        except BrainCircuitsError as error:
            return _Outcome(error.results, {}, error, client.stats)
        return _Outcome(results, {}, None, client.stats)


def _finish(
    outcome: _Outcome,
    properties: list[str],
    ids: list[int],
    fmt: str,
    output: Path | None,
    failed_ids: Path | None,
    store: ResultStore | None,
    out: TextIO,
    err: TextIO,
) -> int:
    """Write what the fetch got (OUT, ``--failed-ids``), say so, return the exit status."""
    error = outcome.error
    results = [outcome.results[p] for p in properties if p in outcome.results]
    where = "standard output" if output is None else repr(str(output))

    def write() -> None:
        rows = table(results, properties, dict.fromkeys(ids), nested=fmt == "jsonl")
        write_result(rows, fmt, output, out)

    if error is None:
        write()
        _summary(results, len(outcome.failures), outcome.stats, err)
        status = 1 if outcome.failures else 0
    else:
        print(f"braincircuits-async: {type(error).__name__}: {cli_message(str(error))}", file=err)
        got = len({s for r in results for s in (*r, *r.missing)})
        if got and store is not None:
            print(
                f"{got:,} of {len(set(ids)):,} segment(s) are in the result store "
                f"{str(store.path)!r}; {where} was not written. Fix the cause, then run the "
                "same command again: it fetches only the rest and writes the output.",
                file=err,
            )
        elif got and isinstance(error, InconsistentMaterializationError):
            # Its result mixes materializations: no table may do that.
            print(f"{where} was not written: the values fetched disagree", file=err)
        elif got:
            write()
            print(
                f"the {got:,} segment(s) fetched before the error were written to {where}", file=err
            )
        status = exit_status(error)
    if failed_ids is not None:
        missed = not_fetched(ids, results if len(results) == len(properties) else [])
        write_ids(missed, failed_ids)
        if missed:
            print(
                f"{len(missed):,} id(s) not fetched are listed in {str(failed_ids)!r} "
                "(retry them with --ids)",
                file=err,
            )
    if outcome.failures:
        reasons = sorted(set(outcome.failures.values()))
        more = f" (+{len(reasons) - 1} more)" if reasons[1:] else ""
        print(f"failed: {cli_message(reasons[0])}{more}", file=err)
    return status


def _summary(
    results: Sequence[SegmentPropertyResult], failed: int, stats: ClientStats, err: TextIO
) -> None:
    """The last line of a fetch: segments written, unknown and failed, the
    materialization, and what it took (requests, retries, splits)."""
    written = len({s for r in results for s in r})
    unknown = len(frozenset.intersection(*(frozenset(r.missing) for r in results)))
    timestamp = next((r.materialized_timestamp for r in results if r.materialized_timestamp), None)
    print(
        f"{written:,} segment(s) written, {unknown:,} unknown to the server, "
        f"{failed:,} failed; materialized_timestamp {timestamp}; "
        f"{stats.requests:,} request(s) sent ({stats.retries:,} retried, "
        f"{stats.splits:,} split)",
        file=err,
    )


def _say_resumable(store: ResultStore | None, what: str, err: TextIO) -> None:
    if store is not None:
        print(
            f"braincircuits-async: {what}; the chunks fetched so far are kept in the result "
            f"store {str(store.path)!r}: run the same command again to fetch only the rest",
            file=err,
        )


def _read_ids(source: str | None, column: str | None, stdin: TextIO) -> list[int]:
    if source is None:
        raise InvalidArgumentError("give the ids with --ids FILE, or '-' to read standard input")
    if source == "-":
        return read_ids(stdin, "standard input", column=column)
    with open(source, encoding="utf-8") as lines:
        return read_ids(lines, source, column=column)


def _distinct(paths: Mapping[str, str | Path | None]) -> None:
    """Fail if two options name the same file (the store written over by OUT, ...)."""
    seen: dict[Path, str] = {}
    for option, path in paths.items():
        if path is None or path == "-":
            continue
        key = Path(path).resolve()
        if key in seen:
            raise OutputError(f"{seen[key]} and {option} name the same file {str(path)!r}")
        seen[key] = option


async def _until_sigterm(run: Callable[[], Awaitable[_T]]) -> _T | None:
    """``await run()``, or ``None`` if a SIGTERM came first.

    A SIGTERM (``kill``, a batch scheduler's stop) cancels the fetch as cleanly as
    Ctrl-C does: requests in flight are dropped, every answer already received is
    committed to the store. Off the main thread (or on Windows) signals cannot be
    received, and ``run`` simply runs.
    """
    done: list[_T] = []
    failed: list[Exception] = []
    async with anyio.create_task_group() as tasks:

        async def work() -> None:
            try:
                done.append(await run())
            except Exception as error:  # re-raised below, not wrapped in a group
                failed.append(error)
            tasks.cancel_scope.cancel()

        tasks.start_soon(work)
        if sys.platform == "win32" or threading.current_thread() is not threading.main_thread():
            await anyio.sleep_forever()  # until `work` is done
        else:
            with anyio.open_signal_receiver(signal.SIGTERM) as signals:
                async for _ in signals:
                    break
        tasks.cancel_scope.cancel()
    if failed:
        raise failed[0]
    return done[0] if done else None


# --- export ----------------------------------------------------------------------------


def export(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    """``braincircuits-async export``: what a result store holds for a property, offline."""
    store_path = Path(args.store)
    _distinct({"--store": store_path, "-o": args.output})
    output, fmt = prepare_output(args.output, args.format, force=args.force)
    if not store_path.is_file():
        raise StoreError(f"--store {str(store_path)!r}: no such file; give a result store")
    with ResultStore(store_path) as store:
        held = store.materializations(args.property, project=args.project)
        chosen = args.materialized_timestamp
        if not held or (chosen is not None and chosen not in held):
            what = "nothing" if not held else f"no materialized_timestamp {chosen}"
            listing = f"; it holds {_listing(held)}" if held else ""
            raise StoreError(
                f"the result store {str(store_path)!r} holds {what} for {args.property!r} "
                f"in project {args.project!r}{listing}"
            )
        result = store.read(
            args.property, None, project=args.project, materialized_timestamp=chosen
        )
    write_result(result, fmt, output, out)
    print(
        f"{len(result):,} segment(s) written, {len(result.missing):,} unknown to the server; "
        f"materialized_timestamp {result.materialized_timestamp} "
        f"({_when(result.materialized_timestamp)})",
        file=err,
    )
    others = {ts: n for ts, n in held.items() if ts != result.materialized_timestamp}
    if others:
        print(
            f"the store also holds {_listing(others)} (pick one with --materialized-timestamp)",
            file=err,
        )
    return 0


def _listing(held: Mapping[int, int]) -> str:
    return ", ".join(f"{ts} ({_when(ts)}, {n:,} segments)" for ts, n in held.items())


def _when(timestamp: int | None) -> str:
    if timestamp is None:
        return "none"
    moment = datetime.fromtimestamp(timestamp, tz=timezone.utc)
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC")
