"""Colour references in a person's instruction -> the observed objects they name.

A person names a block by what it looks like ("the red block", "the blue cube", "the green one");
``obj_k`` is the planner's own handle, given by whoever observes the scene (the simulator's object
rows, or the robot's perception).  ``ground`` writes the handle after each colour reference
("Pick up the red block obj_3.") so the closed loop reads colour-referenced and entity-named
instructions the same way, and refuses what it cannot resolve: a colour the scene does not hold,
or a singular reference that two objects match.  Words it does not know are left to the LM.
"""

from __future__ import annotations

import re

import numpy as np

from embodied_lm.planners import PlannerRefusal
from skills.vocab import COLOR_NAMES, KINDS, Col

# Nouns a reference may use for each kind; "one" / "thing" name no kind.  Plurals refer to groups.
NOUNS = {"block": "block", "blocks": "block", "cube": "block", "cubes": "block", "box": "block",
         "boxes": "block", "brick": "block", "bricks": "block",
         "bowl": "bowl", "bowls": "bowl", "dish": "bowl", "dishes": "bowl", "container": "bowl"}
PLURALS = {"blocks", "cubes", "boxes", "bricks", "bowls", "dishes", "ones", "things"}
_HEADS = (*NOUNS, "one", "ones", "thing", "things")
_REF = re.compile(r"\b(" + "|".join(COLOR_NAMES) + r")\b(\s+(" + "|".join(_HEADS) + r")\b)?", re.IGNORECASE)


class UnresolvedReference(PlannerRefusal):
    """An instruction naming an object the scene does not hold, or naming one of several matches."""


def scene_objects(objects: np.ndarray) -> list[tuple[str, str, str]]:
    """(name, colour, kind) of each present object of an ``objects`` array (MAX_OBJECTS, OBJECT_FEATURES)."""
    present = np.flatnonzero(objects[:, Col.PRESENT] > 0.5)
    return [(f"obj_{i + 1}", COLOR_NAMES[int(objects[i, Col.COLOR])], KINDS[int(objects[i, Col.KIND])])
            for i in present]


def ground(instruction: str, objects: np.ndarray) -> str:
    """``instruction`` with each colour reference followed by the name(s) of the object(s) it names.
    Raises ``UnresolvedReference`` (one line, naming the words) when a reference matches nothing, or
    when a singular one matches several objects."""
    scene = scene_objects(objects)

    def resolve(m: re.Match) -> str:
        colour, noun = m.group(1).lower(), (m.group(3) or "").lower()
        kind = NOUNS.get(noun)
        matches = [n for n, c, k in scene if c == colour and (kind is None or k == kind)]
        phrase = m.group(0).strip()
        if not matches:
            raise UnresolvedReference(f"the instruction names {phrase!r} but the scene holds no "
                                      f"{colour} {kind or 'object'}")
        if len(matches) > 1 and noun not in PLURALS:
            raise UnresolvedReference(f"{phrase!r} is ambiguous: {len(matches)} objects match "
                                      f"({', '.join(matches)})")
        return f"{m.group(0)} {' '.join(matches)}"

    return _REF.sub(resolve, instruction)
