"""Skill library: typed skill calls, their text grammar, and execution through a robot protocol."""

from skills import learned, scripted  # noqa: F401,E402  (registers the scripted and RL-trained skills)
from skills.calls import (
    Answer,
    Done,
    Pick,
    Place,
    Push,
    SkillCall,
    SkillParseError,
    UnresolvedObject,
    by_colour,
    colour_named,
    colour_refs,
    named_by_colour,
    objects_of,
    parse,
    rename,
    resolve,
)
from skills.library import SkillLibrary, SkillResult, register_skill, registered_skills
from skills.robot import ObjectInfo, Robot, Workspace

__all__ = [
    "Answer", "Done", "ObjectInfo", "Pick", "Place", "Push", "Robot", "SkillCall", "SkillLibrary",
    "SkillParseError", "SkillResult", "UnresolvedObject", "Workspace", "by_colour", "colour_named", "colour_refs",
    "named_by_colour", "objects_of", "parse", "register_skill", "registered_skills", "rename", "resolve",
]
