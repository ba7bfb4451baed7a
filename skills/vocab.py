"""The tabletop vocabulary, in one place: colours, object kinds and sizes, the columns of an object
row, and every well-formed skill call over a scene.

It sits at the bottom layer (``skills/``) so the simulator, the sensors, the ROS bridge and the
decoder all read the same lists; none of them keeps a copy.
"""

from __future__ import annotations

from collections.abc import Sequence

# Name -> RGBA.  Ten distinct, easily named colours; the order is the colour id in an object row.
COLORS: dict[str, tuple[float, float, float, float]] = {
    "red": (0.85, 0.12, 0.10, 1),
    "green": (0.15, 0.65, 0.20, 1),
    "blue": (0.12, 0.30, 0.85, 1),
    "yellow": (0.95, 0.85, 0.10, 1),
    "purple": (0.55, 0.20, 0.70, 1),
    "orange": (0.98, 0.50, 0.05, 1),
    "pink": (0.98, 0.55, 0.75, 1),
    "cyan": (0.10, 0.80, 0.85, 1),
    "brown": (0.50, 0.30, 0.12, 1),
    "white": (0.95, 0.95, 0.95, 1),
}
COLOR_NAMES = tuple(COLORS)
KINDS = ("block", "bowl")  # the order is the kind id in an object row
BLOCK_SIZE = 0.04  # cube edge (m)
BOWL_SIZE = 0.10  # bowl outer width (m)
BOWL_HEIGHT = 0.03
MAX_OBJECTS = 16  # object slots; slot j holds obj_{j+1}


class Col:
    """Columns of an object row (``obs["objects"]``: (MAX_OBJECTS, OBJECT_FEATURES) float32)."""

    PRESENT = 0  # 1.0 when the slot holds an object
    KIND = 1  # index into KINDS
    COLOR = 2  # index into COLOR_NAMES
    XYZ = slice(3, 6)  # position (m, world frame)
    QUAT = slice(6, 10)  # orientation quaternion x, y, z, w
    SUPPORT = 10  # 0 = table, k = resting on obj_k
    SIZE = 11  # edge length / bowl width (m)


OBJECT_FEATURES = 12

# Push targets of the skill grammar (skills/calls.py).
DIRECTIONS = ("left", "right", "up", "down")
SIDES = ("left", "right", "top", "bottom")
CORNERS = ("top left", "top right", "bottom left", "bottom right")
ANSWERS = ("yes", "no", *COLOR_NAMES)  # every answer a question family can expect


def all_calls(names: Sequence[str], kinds: Sequence[str] | None = None, held: str | None = None,
              answers: bool = True) -> list[str]:
    """Every well-formed call over the objects ``names`` (kinds ``block`` / ``bowl``; ``None`` or ``?``
    = unknown, which allows both prepositions).  Bowls are placed ``in``, blocks ``on``; a bowl is only a
    target, never picked, placed or pushed.  ``held``: only that object can be placed.  ``answers``:
    include ``answer ...``.  Callers filter this one list by what is possible (the env, the ROS bridge)
    or decode over it (constrained decoding)."""
    kinds = list(kinds) if kinds is not None else ["?"] * len(names)
    out = ["done"] + ([f"answer {a}" for a in ANSWERS] if answers else [])
    for a, ka in zip(names, kinds):
        if ka == "bowl":
            continue
        out.append(f"pick {a}")
        if held is not None and a != held:
            placeable = False
        else:
            placeable = True
            out.append(f"place {a} on table")
        for b, kb in zip(names, kinds):
            if b == a:
                continue
            if kb in ("block", "?"):
                if placeable:
                    out.append(f"place {a} on {b}")
                out.append(f"push {a} to {b}")
            if kb in ("bowl", "?") and placeable:
                out.append(f"place {a} in {b}")
        out += [f"push {a} {d}" for d in DIRECTIONS] + [f"push {a} to {c} corner" for c in CORNERS]
        out += [f"push {a} to {s} side" for s in SIDES]
    return out
