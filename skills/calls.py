"""Typed skill calls and their one canonical text form.

Grammar (one call per line, lower case, objects named ``obj_<k>``)::

    pick obj_2
    place obj_2 on obj_4            # on a block
    place obj_2 in obj_7            # into a bowl
    place obj_2 on table            # nearest free spot
    place obj_2 on table at 0.45 -0.10
    push obj_1 left                 # a direction: left|right|up|down (fixed distance)
    push obj_1 to top left corner   # a corner
    push obj_1 to left side         # a side strip: left|right|top|bottom
    push obj_1 to obj_3             # next to another block
    answer yes                      # answers end question episodes
    done                            # ends a planning episode

Wherever a call names an object it may instead name it by colour and kind, as a person (or a
model that sees no object tokens) would: ``pick the red block``, ``place the red block in the blue
bowl``, ``push the red block to the green block``.  ``resolve(call, objects)`` turns those into
the ``obj_k`` of the one observed object that fits, or refuses (``UnresolvedObject``) when none or
several do.

``parse(text)`` turns text into a call or raises ``SkillParseError`` saying what
was wrong; ``str(call)`` gives the canonical text back (round trip).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from skills.vocab import COLOR_NAMES, CORNERS, DIRECTIONS, KINDS, SIDES

if TYPE_CHECKING:
    from skills.robot import ObjectInfo

_OBJ = re.compile(r"obj_([1-9][0-9]?)$")
_NUM = re.compile(r"-?\d+(\.\d+)?$")


class SkillParseError(ValueError):
    """Skill text that does not follow the grammar."""


class UnresolvedObject(SkillParseError):
    """A colour reference that names no object, or several, in the observed scene."""


@dataclass(frozen=True)
class Pick:
    obj: str

    def __str__(self) -> str:
        return f"pick {self.obj}"


@dataclass(frozen=True)
class Place:
    """Place the held block ``obj``: on/in ``target`` (an object) or on the table."""

    obj: str
    target: str | None = None  # None = the table
    at: tuple[float, float] | None = None  # table position (m), only with target=None

    def __str__(self) -> str:
        if self.target is not None:
            return f"place {self.obj} {'in' if self.in_bowl else 'on'} {self.target}"
        if self.at is None:
            return f"place {self.obj} on table"
        return f"place {self.obj} on table at {self.at[0]:.2f} {self.at[1]:.2f}"

    # The preposition is part of the call text; the robot checks it against the target's kind.
    in_bowl: bool = False


@dataclass(frozen=True)
class Push:
    """Push block ``obj``; exactly one of direction / corner / side / to_obj is set."""

    obj: str
    direction: str | None = None
    corner: str | None = None
    side: str | None = None
    to_obj: str | None = None

    def __str__(self) -> str:
        if self.direction:
            return f"push {self.obj} {self.direction}"
        if self.corner:
            return f"push {self.obj} to {self.corner} corner"
        if self.side:
            return f"push {self.obj} to {self.side} side"
        return f"push {self.obj} to {self.to_obj}"


@dataclass(frozen=True)
class Answer:
    text: str

    def __str__(self) -> str:
        return f"answer {self.text}"


@dataclass(frozen=True)
class Done:
    def __str__(self) -> str:
        return "done"


SkillCall = Pick | Place | Push | Answer | Done


def by_colour(colour: str, kind: str) -> str:
    """The colour reference to an object: "the red block"."""
    return f"the {colour} {kind}"


def _obj(word: str, text: str) -> str:
    if word.startswith("the "):
        colour, kind = word.split()[1:]
        if colour not in COLOR_NAMES:
            raise SkillParseError(f"{text!r}: unknown colour {colour!r} (known: {', '.join(COLOR_NAMES)})")
        if kind not in KINDS:
            raise SkillParseError(f"{text!r}: unknown kind {kind!r} (known: {', '.join(KINDS)})")
        return word
    if not _OBJ.match(word):
        raise SkillParseError(f"{text!r}: expected an object name like 'obj_3' or 'the red block', got {word!r}")
    return word


def _words(text: str) -> list[str]:
    """The words of a call, each "the <colour> <kind>" joined into one (an object reference)."""
    words, out = text.split(), []
    while words:
        if words[0] == "the" and len(words) >= 3:
            out.append(" ".join(words[:3]))
            words = words[3:]
        else:
            out.append(words.pop(0))
    return out


_OBJECT_FIELDS = ("obj", "target", "to_obj")


def objects_of(call: SkillCall) -> list[str]:
    """The object references of a call, in text order."""
    return [v for f in _OBJECT_FIELDS if (v := getattr(call, f, None)) is not None]


def rename(call: SkillCall, names: Mapping[str, str]) -> SkillCall:
    """``call`` with its object references mapped through ``names`` (others kept)."""
    fields = [f for f in _OBJECT_FIELDS if getattr(call, f, None) is not None]
    return dataclasses.replace(call, **{f: names.get(getattr(call, f), getattr(call, f)) for f in fields})


def colour_named(call: SkillCall, refs: Mapping[str, str]) -> SkillCall | None:
    """``call`` with every object named by its colour reference (``refs``: ``colour_refs``); None when one
    of them has none (another object shares its colour and kind)."""
    return rename(call, refs) if all(n in refs for n in objects_of(call)) else None


def named_by_colour(call: SkillCall) -> bool:
    """Whether ``call`` names an object by colour (it needs ``resolve`` before a robot can run it)."""
    return any(ref.startswith("the ") for ref in objects_of(call))


def _by_number(names):
    return sorted(names, key=lambda n: int(n[4:]))


def colour_refs(objects: Mapping[str, ObjectInfo]) -> dict[str, str]:
    """``obj_k`` -> "the red block" for every object that no other object shares its colour and kind
    with: the references ``resolve`` accepts."""
    seen = [(o.color, o.kind) for o in objects.values()]
    return {n: by_colour(o.color, o.kind) for n, o in objects.items() if seen.count((o.color, o.kind)) == 1}


def resolve(call: SkillCall, objects: Mapping[str, ObjectInfo]) -> SkillCall:
    """``call`` with every colour reference replaced by the one object of that colour and kind among
    ``objects`` (what the robot observes); raises ``UnresolvedObject`` naming the reference when no
    object or several fit."""
    names = {}
    for ref in (r for r in objects_of(call) if r.startswith("the ")):
        colour, kind = ref.split()[1:]
        hits = _by_number(n for n, o in objects.items() if (o.color, o.kind) == (colour, kind))
        if len(hits) > 1:
            raise UnresolvedObject(f"{call}: {ref!r} is ambiguous: {', '.join(hits)} are {colour} {kind}s")
        if not hits:
            seen = ", ".join(f"{n} {objects[n].color} {objects[n].kind}" for n in _by_number(objects))
            raise UnresolvedObject(f"{call}: there is no {colour} {kind} (objects: {seen or 'none'})")
        names[ref] = hits[0]
    return rename(call, names)


def parse(text: str) -> SkillCall:
    """Parse one skill call; raises SkillParseError naming what is wrong."""
    if not isinstance(text, str):
        raise SkillParseError(f"skill text must be a string, got {type(text).__name__}")
    words = text.strip().split()
    if not words:
        raise SkillParseError("empty skill text")
    verb, args = words[0], words[1:] if words[0] == "answer" else _words(" ".join(words[1:]))
    n = len(args)
    if verb == "done" and n == 0:
        return Done()
    if verb == "answer" and n >= 1:
        if not all(re.fullmatch(r"[a-z0-9_]+", w) for w in args):
            raise SkillParseError(f"{text!r}: answers are lower-case words")
        return Answer(" ".join(args))
    if verb == "pick" and n == 1:
        return Pick(_obj(args[0], text))
    if verb == "place" and n >= 3:
        obj = _obj(args[0], text)
        prep, target = args[1], args[2]
        if prep not in ("on", "in"):
            raise SkillParseError(f"{text!r}: expected 'on' or 'in' after the object, got {prep!r}")
        if target == "table":
            if prep != "on":
                raise SkillParseError(f"{text!r}: blocks go 'on table', not 'in table'")
            if n == 3:
                return Place(obj)
            if n == 6 and args[3] == "at" and _NUM.match(args[4]) and _NUM.match(args[5]):
                return Place(obj, at=(round(float(args[4]), 2), round(float(args[5]), 2)))
            raise SkillParseError(f"{text!r}: expected 'place obj_k on table at X Y' (metres)")
        if n == 3:
            tgt = _obj(target, text)
            if tgt == obj:
                raise SkillParseError(f"{text!r}: cannot place {obj} on itself")
            return Place(obj, target=tgt, in_bowl=prep == "in")
    if verb == "push" and n >= 2:
        obj = _obj(args[0], text)
        rest = " ".join(args[1:])
        if n == 2 and args[1] in DIRECTIONS:
            return Push(obj, direction=args[1])
        if args[1] == "to":
            tail = " ".join(args[2:])
            if tail.endswith(" corner") and tail[: -len(" corner")] in CORNERS:
                return Push(obj, corner=tail[: -len(" corner")])
            if n == 4 and args[3] == "side" and args[2] in SIDES:
                return Push(obj, side=args[2])
            if n == 3 and (_OBJ.match(args[2]) or args[2].startswith("the ")):
                _obj(args[2], text)
                if args[2] == obj:
                    raise SkillParseError(f"{text!r}: cannot push {obj} to itself")
                return Push(obj, to_obj=args[2])
        raise SkillParseError(
            f"{text!r}: cannot read push target {rest!r}; expected a direction {DIRECTIONS}, "
            f"'to <corner> corner' {CORNERS}, 'to <side> side' {SIDES} or 'to obj_k' / 'to the red block'"
        )
    known = "pick, place, push, answer, done"
    if verb not in known.replace(",", "").split():
        raise SkillParseError(f"{text!r}: unknown skill {verb!r} (known: {known})")
    raise SkillParseError(f"{text!r}: wrong arguments for {verb!r}")
