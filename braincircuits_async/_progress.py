"""Progress reporting for long fetches: a tqdm bar, or the user's own callback."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ._exceptions import InvalidArgumentError, MissingDependencyError

__all__ = [
    "CombinedProgress",
    "Progress",
    "ProgressArg",
    "Reporter",
    "close_reporter",
    "make_reporter",
]


@dataclass(frozen=True, slots=True)
class Progress:
    """Where a fetch stands, as handed to a ``progress=`` callback.

    ``done`` counts segments whose chunk has finished (fetched, unknown to the
    server, or failed for good) out of ``total``; ``retries`` and ``failed`` are
    running totals for the call.
    """

    property: str
    done: int
    total: int
    retries: int
    failed: int


ProgressArg = bool | Callable[[Progress], object] | None


Reporter = Callable[[Progress], object]


def in_notebook() -> bool:
    """Whether this runs in a Jupyter kernel (not a terminal IPython)."""
    ipython = sys.modules.get("IPython")
    get = getattr(ipython, "get_ipython", None)
    shell = get() if get is not None else None
    return shell is not None and "IPKernelApp" in getattr(shell, "config", {})


def _bar_class() -> Any:
    """tqdm's widget bar in a notebook with ipywidgets, else its text bar.

    Not ``tqdm.auto``: in a notebook without ipywidgets it warns "IProgress not
    found" and then draws a text bar anyway.
    """
    try:
        if in_notebook() and importlib.util.find_spec("ipywidgets") is not None:
            from tqdm.notebook import tqdm
        else:
            from tqdm import tqdm
    except ImportError:
        raise MissingDependencyError(
            'progress=True needs tqdm: pip install "braincircuits-async[progress]" '
            '(in notebooks, "braincircuits-async[notebook]" draws a widget)'
        ) from None
    return tqdm


class _TqdmReporter:
    """A tqdm bar counting segments, with the retries in its postfix."""

    def __init__(self, total: int, description: str) -> None:
        tqdm = _bar_class()
        self._bar: Any = tqdm(total=total, desc=description, unit="seg", unit_scale=True)
        self._shown = 0
        self._retries = 0

    def __call__(self, progress: Progress) -> None:
        if progress.retries != self._retries:
            self._retries = progress.retries
            self._bar.set_postfix(retries=progress.retries, refresh=False)
        self._bar.update(progress.done - self._shown)
        self._shown = progress.done

    def close(self) -> None:
        self._bar.close()


def make_reporter(progress: ProgressArg, total: int, description: str) -> Reporter | None:
    """Turn the ``progress=`` argument into a callable, or ``None`` for no reporting."""
    if progress is None or progress is False:
        return None
    if progress is True:
        return _TqdmReporter(total, description)
    if callable(progress):
        return progress
    raise InvalidArgumentError(
        f"progress must be True, False, None or a callable, not {type(progress).__name__}"
    )


def close_reporter(reporter: object) -> None:
    """Close a tqdm bar (a user's callable has nothing to close)."""
    close = getattr(reporter, "close", None)
    if close is not None:
        close()


class CombinedProgress:
    """One progress report for several concurrent calls (``fetch_properties``)."""

    def __init__(self, reporter: Reporter, total: int) -> None:
        self.reporter = reporter
        self.total = total
        self.parts: dict[int, Progress] = {}

    def reporter_for(self, index: int) -> Reporter:
        """The reporter of the ``index``-th call: it reports the sum of all calls."""

        def report(progress: Progress) -> None:
            self.parts[index] = progress
            parts = self.parts.values()
            self.reporter(
                Progress(
                    ",".join(p.property for p in parts),
                    sum(p.done for p in parts),
                    self.total,
                    sum(p.retries for p in parts),
                    sum(p.failed for p in parts),
                )
            )

        return report
