"""Skill registry and execution.

A skill is registered under its verb (``pick``/``place``/``push``) and an
implementation name (``scripted`` here; learned skills register e.g.
``("push", "learned")``).  ``SkillLibrary`` chooses one implementation per verb
and turns text or typed calls into a ``SkillResult`` — it never raises on bad
calls: they come back as failed results with the reason.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from skills.calls import Answer, Done, SkillCall, SkillParseError, parse
from skills.robot import Robot


@dataclass(frozen=True)
class SkillResult:
    success: bool
    message: str  # why it failed, or "ok"
    sim_time: float  # robot seconds spent
    call: SkillCall | None  # None when the text did not parse

    @property
    def text(self) -> str:
        return str(self.call) if self.call is not None else ""


class SkillImpossible(Exception):
    """A well-formed call that cannot be carried out in the current scene."""


class Skill(Protocol):
    def check(self, call: SkillCall, robot: Robot) -> None:
        """Raise SkillImpossible if the call cannot run now (unknown object, holding, ...)."""
        ...

    def execute(self, call: SkillCall, robot: Robot) -> bool:
        """Carry out a checked call; True on success."""
        ...


_REGISTRY: dict[tuple[str, str], Callable[[], Skill]] = {}
VERBS = ("pick", "place", "push")


def register_skill(verb: str, name: str) -> Callable[[type], type]:
    """Class decorator: ``@register_skill("push", "learned")``.  Duplicate names are refused."""

    def wrap(cls: type) -> type:
        key = (verb, name)
        if verb not in VERBS:
            raise ValueError(f"unknown skill verb {verb!r}; verbs are {VERBS}")
        if key in _REGISTRY:
            raise ValueError(f"skill {verb}:{name} is already registered")
        _REGISTRY[key] = cls
        return cls

    return wrap


def registered_skills() -> list[tuple[str, str]]:
    return sorted(_REGISTRY)


def _verb(call: SkillCall) -> str:
    return type(call).__name__.lower()


class SkillLibrary:
    """One implementation per verb; ``choices`` overrides the default ``scripted``."""

    def __init__(self, choices: dict[str, str] | None = None):
        choices = {v: "scripted" for v in VERBS} | dict(choices or {})
        self.skills: dict[str, Skill] = {}
        for verb, name in choices.items():
            if (verb, name) not in _REGISTRY:
                have = [n for v, n in _REGISTRY if v == verb]
                raise ValueError(f"no skill {name!r} for {verb!r}; registered: {have}")
            self.skills[verb] = _REGISTRY[(verb, name)]()

    def check(self, call: SkillCall, robot: Robot) -> str | None:
        """The reason a call is impossible now, or None if it can run."""
        if isinstance(call, (Answer, Done)):
            return None
        try:
            self.skills[_verb(call)].check(call, robot)
        except SkillImpossible as e:
            return str(e)
        return None

    def run(self, call: SkillCall | str, robot: Robot) -> SkillResult:
        t0 = robot.sim_time()
        if isinstance(call, str):
            try:
                call = parse(call)
            except SkillParseError as e:
                return SkillResult(False, str(e), 0.0, None)
        if isinstance(call, (Answer, Done)):
            return SkillResult(True, "ok", 0.0, call)
        reason = self.check(call, robot)
        if reason is not None:
            return SkillResult(False, f"{call}: {reason}", 0.0, call)
        ok = self.skills[_verb(call)].execute(call, robot)
        robot.home()  # the next observation sees the scene, not the arm
        return SkillResult(ok, "ok" if ok else f"{call}: did not reach its goal", robot.sim_time() - t0, call)
