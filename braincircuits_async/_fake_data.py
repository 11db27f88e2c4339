"""Deterministic synthetic segment properties for the fake server in `testing/`.

Every value is a pure function of (project, property, segment id, materialized
timestamp): the same question always gets the same answer, and a rollover of the
materialization changes the answers. Whether a segment exists at all depends only on
(project, segment id), so an id never appears or disappears across a rollover or
between properties.

Speed is the design constraint: benchmarks ask the fake for a million ids, so the
per-id work is a few integer operations and one f-string. Each property's generator
writes the JSON text of one value directly (no dict, no `json.dumps` per id), and
`FakeBrainCircuits.expected` parses that same text, so the served value and the
expected value cannot drift apart.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Callable, Sequence

__all__ = [
    "DOCUMENTED_PROPERTIES",
    "Generator",
    "encode_answer",
    "fragment_for",
    "generator_for",
    "is_known",
    "presence_salt",
    "property_salt",
    "unknown_threshold",
]

#: Turns a well-mixed 64-bit hash into the JSON text of one segment's value.
Generator = Callable[[int], str]

_MASK = 0xFFFF_FFFF_FFFF_FFFF
_GOLDEN = 0x9E37_79B9_7F4A_7C15
_MIX1 = 0xBF58_476D_1CE4_E5B9
_MIX2 = 0x94D0_49BB_1331_11EB
# Knuth's MMIX LCG: a cheap way to draw several partners from one hash.
_LCG_A = 6364136223846793005
_LCG_C = 1442695040888963407
# FlyWire-like root ids: 18 digits starting with 7205759406.
_ID_BASE = 720_575_940_600_000_000
_ID_SPAN = 100_000_000

NEUROTRANSMITTERS = ("gaba", "acetylcholine", "glutamate", "octopamine", "serotonin", "dopamine")


def _mix(x: int) -> int:
    """Return splitmix64's finalizer of ``x``: a well-spread 64-bit hash."""
    z = (x + _GOLDEN) & _MASK
    z = ((z ^ (z >> 30)) * _MIX1) & _MASK
    z = ((z ^ (z >> 27)) * _MIX2) & _MASK
    return z ^ (z >> 31)


def _salt(*parts: object) -> int:
    data = "\x1f".join(str(p) for p in parts).encode()
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little")


def property_salt(project: str, prop: str, materialized_timestamp: int) -> int:
    """Return the 64-bit salt that makes values depend on project, property and time."""
    return _salt("value", project, prop, materialized_timestamp)


def presence_salt(project: str) -> int:
    """Return the 64-bit salt that decides which ids of a project are unknown."""
    return _salt("presence", project)


def unknown_threshold(fraction: float) -> int:
    """Return the hash threshold below which an id counts as unknown."""
    return min(int(fraction * 2.0**64), 1 << 64)


def is_known(segment: int, salt: int, threshold: int) -> bool:
    """Return whether ``segment`` exists; id 0 never does."""
    # Fibonacci hashing: one multiply spreads ids evenly over the top bits, which is
    # all a fraction test needs, at a fraction of the cost of a full mix.
    return segment != 0 and (((segment ^ salt) * _GOLDEN) & _MASK) >= threshold


# --- one generator per documented property -------------------------------------------
# Each slices the bits of the mixed hash `h` into fields. Counts are skewed towards
# small values by a random right shift, like real neurons (many small, few huge).


def _link_pre(h: int) -> str:
    n = (h & 0x1FFF) >> ((h >> 13) & 7)
    return f'{{"nr_pre":{n},"nr_downstream_partner":{(n * ((h >> 16) & 0xFF)) >> 8}}}'


def _link_post(h: int) -> str:
    n = (h & 0x3FFF) >> ((h >> 14) & 7)
    return f'{{"nr_post":{n},"nr_upstream_partner":{(n * ((h >> 17) & 0xFF)) >> 8}}}'


def _size(h: int) -> str:
    # Voxels, log-uniform-ish between ~1e3 and ~2e9.
    return f'{{"size":{(1024 + (h & 0xFFFF)) << ((h >> 16) & 15)}}}'


@functools.cache
def _neurotransmitter_table() -> tuple[str, ...]:
    # 4096 precomputed distributions: formatting six floats per id would dominate the
    # cost, and a test fake needs variety, not uniqueness.
    table = []
    for i in range(4096):
        h = _mix(i)
        # Cubing six random bytes makes one transmitter clearly dominant most times.
        w = [(((h >> (8 * k)) & 0xFF) + 1) ** 3 for k in range(6)]
        total = sum(w)
        probs = ",".join(
            f'"{nt}":{wk / total:.4f}' for nt, wk in zip(NEUROTRANSMITTERS, w, strict=True)
        )
        table.append(f'{{{probs},"top_nt":"{NEUROTRANSMITTERS[w.index(max(w))]}"}}')
    return tuple(table)


def _neurotransmitter(h: int) -> str:
    return _neurotransmitter_table()[h & 0xFFF]


def _partners(h: int, n: int) -> str:
    # Counts shrink from one partner to the next, so the list comes out sorted by
    # synaptic_count, descending, as the real API sorts it.
    count = 1 + ((h >> 48) & 0x7F)
    items = []
    for _ in range(n):
        h = (h * _LCG_A + _LCG_C) & _MASK
        segmentid = _ID_BASE + (h >> 32) % _ID_SPAN
        items.append(f'{{"segmentid":"{segmentid}","synaptic_count":{count}}}')
        count = max(1, (count * (128 + ((h >> 24) & 0x7F))) >> 8)
    return "[" + ",".join(items) + "]"


def _connectivity(h: int) -> str:
    up = _partners(h, h % 6)
    down = _partners(h ^ _GOLDEN, (h >> 8) % 6)
    return f'{{"upstream":{up},"downstream":{down}}}'


def _nucleus(h: int) -> str:
    # Nanometres, inside a fly-brain-sized box.
    x = 100_000 + (h & 0xFFFFF) % 900_000
    y = 30_000 + ((h >> 20) & 0xFFFFF) % 470_000
    z = ((h * _LCG_A) >> 44) % 300_000
    return f'{{"nucleus_id":{1 + (h >> 40)},"position":[{x},{y},{z}]}}'


def _soma(h: int) -> str:
    # Nanometres.
    x = 100_000 + (h & 0xFFFFF) % 900_000
    y = 30_000 + ((h >> 20) & 0xFFFFF) % 470_000
    z = ((h * _LCG_A) >> 44) % 300_000
    radius = 1000 + ((h >> 40) & 0xFFF) / 10
    return f'{{"soma_x":{x},"soma_y":{y},"soma_z":{z},"soma_radius":{radius:.1f}}}'


def _mitochondria(h: int) -> str:
    n = (h & 0x7FF) >> ((h >> 11) & 3)
    # Cubic micrometres, 0.02-0.08 um^3 per mitochondrion.
    volume = n * (0.02 + ((h >> 13) & 0xFF) / 4096)
    return f'{{"nr_mitochondria":{n},"total_volume":{volume:.3f}}}'


def _dcv(h: int) -> str:
    return f'{{"nr_dcv":{(h & 0x3FF) >> ((h >> 10) & 7)}}}'


def _generic(h: int) -> str:
    return f'{{"value":{h & 0xFFFF_FFFF}}}'


_GENERATORS: dict[str, Generator] = {
    "size": _size,
    "link_pre": _link_pre,
    "link_post": _link_post,
    "neurotransmitter": _neurotransmitter,
    "connectivity": _connectivity,
    "nucleus": _nucleus,
    "soma": _soma,
    "mitochondria": _mitochondria,
    "dcv": _dcv,
}

#: The properties listed in the BrainCircuits.io documentation.
DOCUMENTED_PROPERTIES: frozenset[str] = frozenset(_GENERATORS)


def generator_for(prop: str) -> Generator:
    """Return the generator of a property; other names get ``{"value": int}``."""
    if prop == "neurotransmitter":
        # Same values as `_neurotransmitter`, with the table bound once, outside the
        # per-id loop.
        lookup = _neurotransmitter_table().__getitem__
        return lambda h: lookup(h & 0xFFF)
    return _GENERATORS.get(prop, _generic)


def fragment_for(generator: Generator, value_salt: int, segment: int) -> str:
    """Return the JSON text of one known segment's value."""
    return generator(_mix(segment ^ value_salt))


def encode_answer(
    segments: Sequence[int],
    materialized_timestamp: int,
    generator: Generator,
    value_salt: int,
    known_salt: int,
    threshold: int,
) -> tuple[bytes, int]:
    """Return the JSON body of one answer and the number of ids in its ``results``.

    ``segments`` must be free of duplicates (a JSON object cannot repeat a key). The
    bodies of `_mix` and `is_known` are inlined: at a million ids, function calls
    would be a third of the cost.
    """
    parts = []
    for s in segments:
        if s == 0 or (((s ^ known_salt) * _GOLDEN) & _MASK) < threshold:
            continue
        z = ((s ^ value_salt) + _GOLDEN) & _MASK
        z = ((z ^ (z >> 30)) * _MIX1) & _MASK
        z = ((z ^ (z >> 27)) * _MIX2) & _MASK
        parts.append(f'"{s}":{generator(z ^ (z >> 31))}')
    results = ",".join(parts)
    body = f'{{"materialized_timestamp":{materialized_timestamp},"results":{{{results}}}}}'
    return body.encode(), len(parts)
