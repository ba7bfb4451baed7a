"""Deliberate skill failures: the labelled negatives that success detection trains on (PaLM-E Table 4),
and the robot faults a closed loop must notice.

``EnvConfig.faults`` maps a fault to its probability per call of the skill it affects:

- ``slip``: the grasp slips as the arm lifts; the block falls back to the table (pick fails);
- ``drop``: the held block drops halfway to the place target, a block or a bowl (it lands where it falls);
- ``topple``: the block is set down 2.8 cm off the target's centre and falls off it (place on a block).

A fault is drawn only for a call that can run now and that it affects (``TabletopEnv._draw_fault``).

Draws come from the episode's own generator (seeded by the spec's seed), not the world's, so a scene
and its faults replay exactly, and a run without faults draws nothing.  The simulator's labels stay
truthful: a faulted skill reports failure unless the target happens to be reached anyway.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

FAULTS = {"slip": "pick", "drop": "place", "topple": "place"}  # fault -> the verb it affects
TOPPLE_OFFSET = 0.028  # m: the block's centre 0.7 edges off its support's centre -> it falls off


@dataclass(frozen=True)
class Fault:
    kind: str  # one of FAULTS
    direction: float = 0.0  # radians: where a toppled block is set down off-centre

    def offset(self) -> np.ndarray:
        return TOPPLE_OFFSET * np.array([math.cos(self.direction), math.sin(self.direction)])


def check_faults(faults: dict[str, float], where: str = "faults") -> None:
    """A one-line ValueError naming the bad entry: unknown fault, probability outside [0, 1], or the
    faults of one verb summing over 1."""
    for kind, p in faults.items():
        if kind not in FAULTS:
            raise ValueError(f"{where}.{kind}: unknown fault; known: {', '.join(FAULTS)}")
        if not isinstance(p, (int, float)) or isinstance(p, bool) or not 0 <= p <= 1:
            raise ValueError(f"{where}.{kind} must be a probability in [0, 1], got {p!r}")
    for verb in set(FAULTS.values()):
        total = sum(p for k, p in faults.items() if FAULTS[k] == verb)
        if total > 1:
            raise ValueError(f"{where}: the {verb} faults sum to {total:g} > 1")


def parse_faults(items: list[str]) -> dict[str, float]:
    """``["drop=0.3", "slip=0.1"]`` (command-line ``--fault KIND=P``) -> checked faults; one-line ValueError."""
    out = {}
    for item in items:
        kind, _, p = item.partition("=")
        try:
            out[kind] = float(p)
        except ValueError:
            raise ValueError(f"--fault {item!r}: expected KIND=P, e.g. drop=0.3") from None
    check_faults(out, "--fault")
    return out


def draw_fault(faults: dict[str, float], verb: str, rng: np.random.Generator) -> Fault | None:
    """The fault (or None) for one call of ``verb``; draws only when a fault applies to the verb."""
    kinds = [k for k in FAULTS if FAULTS[k] == verb and faults.get(k, 0) > 0]
    if not kinds:
        return None
    u, direction = rng.random(), float(rng.uniform(0, 2 * math.pi))
    for k in kinds:
        if u < faults[k]:
            return Fault(k, direction)
        u -= faults[k]
    return None
