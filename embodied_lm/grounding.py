"""Referring expressions in a person's instruction -> the observed objects they name.

A person names a block by what it looks like ("the red block", "the blue cube", "the green one") or
by where it is ("the block on the blue block", "the leftmost block", "the block nearest to the
robot", "the block at x 0.43 y 0.00"); ``obj_k`` is the planner's own handle, given by whoever
observes the scene (the simulator's object rows, or the robot's perception).  ``ground`` writes the
handle after the reference's head ("Pick up the red block obj_3.", "the block obj_2 on the blue block
obj_5") so the closed loop reads every reference style the way it reads entity names, and refuses
what it cannot resolve: an object the scene does not hold, or a singular reference that several
objects match.  Words it does not know are left to the LM.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from embodied_lm.planners import PlannerRefusal
from skills.vocab import COLOR_NAMES, KINDS, Col

# Nouns a reference may use for each kind; "one" / "thing" name no kind.  Plurals refer to groups.
NOUNS = {"block": "block", "blocks": "block", "cube": "block", "cubes": "block", "box": "block",
         "boxes": "block", "brick": "block", "bricks": "block",
         "bowl": "bowl", "bowls": "bowl", "dish": "bowl", "dishes": "bowl", "container": "bowl"}
PLURALS = {"blocks", "cubes", "boxes", "bricks", "bowls", "dishes", "ones", "things"}
_HEADS = (*NOUNS, "one", "ones", "thing", "things")
_COLOUR = r"(?:" + "|".join(COLOR_NAMES) + r")"
_SINGLE = r"(?:block|cube|box|brick|one)"  # a singular head naming a block (or no kind)
_NUM = r"-?\d+(?:\.\d+)?"
_BELOW = ("under", "below", "beneath", "underneath")
SIDE_MARGIN = 0.02  # m: "the leftmost block" is ambiguous when the runner-up is this close
AT_RADIUS = 0.05  # m: "the block at x .. y .." names a block within this distance of the point

# One pattern, place references first: at the same start they win, so "the block on the blue block"
# is read as one place reference (whose colour part is resolved with it), not as a colour reference.
_REF = re.compile(
    rf"\bthe (?P<rhead>{_SINGLE}) (?P<rel>on top of|on|{'|'.join(_BELOW)}) the (?P<rcol>{_COLOUR})"
    rf"(?: (?P<rnoun>{_SINGLE}))?\b"
    rf"|\bthe (?P<side>leftmost|rightmost) (?P<shead>{_SINGLE})\b"
    rf"|\bthe (?P<nhead>{_SINGLE}) (?P<near>nearest to|closest to|farthest from|furthest from) the robot\b"
    rf"|\bthe (?P<ahead>{_SINGLE}) at x (?P<x>{_NUM}) y (?P<y>{_NUM})"
    rf"|\b(?P<col>{_COLOUR})\b(?:\s+(?P<noun>{'|'.join(_HEADS)})\b)?",
    re.IGNORECASE)


class UnresolvedReference(PlannerRefusal):
    """An instruction naming an object the scene does not hold, or naming one of several matches."""


@dataclass(frozen=True)
class SceneObject:
    slot: int  # k of obj_k (1-based), what the support column counts in
    colour: str
    kind: str
    xy: np.ndarray  # (2,) m, world frame: +x away from the robot, +y to its left
    support: int  # 0 table, k resting on obj_k, -1 air / held

    @property
    def name(self) -> str:
        return f"obj_{self.slot}"


def scene_objects(objects: np.ndarray) -> list[SceneObject]:
    """The present objects of an ``objects`` array (MAX_OBJECTS, OBJECT_FEATURES)."""
    return [SceneObject(int(i) + 1, COLOR_NAMES[int(objects[i, Col.COLOR])], KINDS[int(objects[i, Col.KIND])],
                        objects[i, Col.XYZ][:2].astype(float), int(round(float(objects[i, Col.SUPPORT]))))
            for i in np.flatnonzero(objects[:, Col.PRESENT] > 0.5)]


def _one(matches: list[SceneObject], phrase: str, missing: str) -> SceneObject:
    if not matches:
        raise UnresolvedReference(f"the instruction names {phrase!r} but the scene holds no {missing}")
    if len(matches) > 1:
        raise UnresolvedReference(f"{phrase!r} is ambiguous: {len(matches)} objects match "
                                  f"({', '.join(o.name for o in matches)})")
    return matches[0]


def _by_colour(scene: list[SceneObject], colour: str, noun: str, phrase: str) -> list[SceneObject]:
    kind = NOUNS.get(noun)
    matches = [o for o in scene if o.colour == colour and (kind is None or o.kind == kind)]
    if not matches:
        raise UnresolvedReference(f"the instruction names {phrase!r} but the scene holds no "
                                  f"{colour} {kind or 'object'}")
    if len(matches) > 1 and noun not in PLURALS:
        _one(matches, phrase, "")
    return matches


def _extreme(candidates: list[SceneObject], key, phrase: str, missing: str) -> SceneObject:
    """The candidate with the largest ``key``, refused when the runner-up is within SIDE_MARGIN."""
    ranked = sorted(candidates, key=key, reverse=True)
    if not ranked:
        raise UnresolvedReference(f"the instruction names {phrase!r} but the scene holds no {missing}")
    if len(ranked) > 1 and key(ranked[0]) - key(ranked[1]) < SIDE_MARGIN:
        _one(ranked[:2], phrase, "")
    return ranked[0]


def ground(instruction: str, objects: np.ndarray) -> str:
    """``instruction`` with each reference followed by the name(s) of the object(s) it names.
    Raises ``UnresolvedReference`` (one line, naming the words) when a reference matches nothing, or
    when a singular one matches several objects."""
    scene = scene_objects(objects)
    blocks = [o for o in scene if o.kind == "block"]
    on_table = [o for o in blocks if o.support == 0]

    def resolve(m: re.Match) -> str:
        phrase = m.group(0).strip()
        if m["col"]:
            named = _by_colour(scene, m["col"].lower(), (m["noun"] or "").lower(), phrase)
            return f"{m.group(0)} {' '.join(o.name for o in named)}"
        if m["rel"]:
            rel, colour = m["rel"].lower(), m["rcol"].lower()
            (ref,) = _by_colour(scene, colour, (m["rnoun"] or "").lower(), phrase)
            if rel in _BELOW:
                target = _one([o for o in scene if o.slot == ref.support], phrase,
                              f"object under the {colour} {ref.kind}")
            else:
                target = _one([o for o in blocks if o.support == ref.slot], phrase,
                              f"block on the {colour} {ref.kind}")
            return (f"the {m['rhead']} {target.name} {m['rel']} the {m['rcol']}"
                    f"{' ' + m['rnoun'] if m['rnoun'] else ''} {ref.name}")
        if m["side"]:
            sign = 1 if m["side"].lower() == "leftmost" else -1  # +y is the robot's left
            target = _extreme(on_table, lambda o: sign * o.xy[1], phrase, "block on the table")
            return f"{m.group(0)} {target.name}"
        if m["near"]:
            sign = -1 if m["near"].lower() in ("nearest to", "closest to") else 1  # the robot looks along +x
            target = _extreme(on_table, lambda o: sign * o.xy[0], phrase, "block on the table")
            return f"the {m['nhead']} {target.name} {m['near']} the robot"
        point = np.array([float(m["x"]), float(m["y"])])
        near = [o for o in blocks if np.linalg.norm(o.xy - point) < AT_RADIUS]
        target = _extreme(near, lambda o: -np.linalg.norm(o.xy - point), phrase,
                          f"block within {AT_RADIUS * 100:.0f} cm of that point")
        return f"the {m['ahead']} {target.name} at x {m['x']} y {m['y']}"

    return _REF.sub(resolve, instruction)
