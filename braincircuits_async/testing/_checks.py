"""Checks of the fake's arguments: each names the argument and the accepted range.

They raise `InvalidArgumentError` (a `ValueError`, as `FakeBrainCircuits`
documents) with the fake's own wording, which its tests assert; `_config.check_int`
and `_config.check_seconds` raise the same class but word their messages for the
client's settings (seconds, "at least"), so the two are kept apart.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable

from .._exceptions import InvalidArgumentError

__all__ = [
    "MAX_SEGMENT",
    "PROPERTY_NAME",
    "check_float",
    "check_int",
    "check_names",
    "check_positive",
    "check_projects",
    "check_properties",
    "check_segment",
    "check_token",
    "is_segment_id",
]

#: Segment ids are unsigned 64-bit integers.
MAX_SEGMENT = 2**64
#: What a property name may hold: it is a part of the endpoint's path.
PROPERTY_NAME = re.compile(r"[A-Za-z0-9_-]+")


def check_token(name: str, token: str | None) -> str | None:
    if token is not None and (not isinstance(token, str) or not token or token != token.strip()):
        raise InvalidArgumentError(
            f"{name} must be a non-empty string without surrounding spaces, or None to "
            "turn the check off"
        )
    return token


def check_names(name: str, names: Iterable[str], *, empty_ok: bool = False) -> frozenset[str]:
    if isinstance(names, str):
        raise InvalidArgumentError(
            f"{name} must be a collection of names, not one string: {names!r}"
        )
    result = frozenset(names)
    if not all(isinstance(n, str) and n for n in result):
        raise InvalidArgumentError(
            f"{name} must hold non-empty strings, got {sorted(map(repr, result))}"
        )
    if not result and not empty_ok:
        raise InvalidArgumentError(f"{name} must name at least one")
    return result


def check_projects(
    projects: Iterable[str],
    cave_projects: Iterable[str],
    default_project: str | None,
    *,
    preferred: str,
) -> tuple[frozenset[str], frozenset[str], str]:
    """Return (projects, cave projects, default project); the default is ``preferred``
    if it is a known project, else the first project by name.
    """
    known = check_names("projects", projects)
    cave = check_names("cave_projects", cave_projects, empty_ok=True)
    if not cave <= known:
        raise InvalidArgumentError(
            f"cave_projects must be a subset of projects; not in projects: {sorted(cave - known)}"
        )
    if default_project is None:
        default_project = preferred if preferred in known else min(known)
    elif default_project not in known:
        raise InvalidArgumentError(
            f"default_project must be one of projects, got {default_project!r}"
        )
    return known, cave, default_project


def check_properties(properties: Iterable[str]) -> frozenset[str]:
    names = check_names("properties", properties)
    bad = sorted(p for p in names if not PROPERTY_NAME.fullmatch(p))
    if bad:
        raise InvalidArgumentError(f"properties must match [A-Za-z0-9_-]+, got {bad}")
    return names


def check_int(name: str, value: int, minimum: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise InvalidArgumentError(f"{name} must be an int >= {minimum}, got {value!r}")
    return value


def _is_finite_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def check_float(name: str, value: float, minimum: float, maximum: float | None = None) -> float:
    if not (
        _is_finite_number(value) and value >= minimum and (maximum is None or value <= maximum)
    ):
        accepted = f"in [{minimum}, {maximum}]" if maximum is not None else f">= {minimum}"
        raise InvalidArgumentError(f"{name} must be a finite number {accepted}, got {value!r}")
    return float(value)


def check_positive(name: str, value: float) -> float:
    if not (_is_finite_number(value) and value > 0):
        raise InvalidArgumentError(f"{name} must be a finite number > 0, got {value!r}")
    return float(value)


def is_segment_id(value: object) -> bool:
    """Return whether ``value`` is a segment id: an int in [0, 2**64), not a bool."""
    # `type(...) is int` also rejects JSON true/false, which json gives as bools.
    return type(value) is int and 0 <= value < MAX_SEGMENT


def check_segment(segment: int) -> int:
    if not is_segment_id(segment):
        raise InvalidArgumentError(f"segment must be an int in [0, 2**64), got {segment!r}")
    return segment
