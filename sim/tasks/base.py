"""Task families: typed params + scene sampler + instruction templates + success
predicate + oracle (ravens / VIMA-Bench pattern), and the episode spec that
replays any episode exactly."""

from __future__ import annotations

import dataclasses
import json
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from sim.tasks.language import REF_FORMS, colour_ref
from sim.world import World
from skills import scene
from skills.robot import ObjectInfo
from skills.vocab import BLOCK_SIZE, BOWL_SIZE, COLOR_NAMES

REFERS = ("entity", "color")
STYLES = (*REFERS, "mixed")  # mixed: entity and colour references alternate
LEVELS = ("L1", "L2", "L3", "L4")


class SpecError(ValueError):
    """An episode spec (or its params) that cannot be run."""


# --------------------------------------------------------------------------------------------------
# Episode specs
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class EpisodeSpec:
    """One reproducible episode: the JSONL line format of DESIGN.md."""

    task: str
    params: dict[str, Any]
    n_objects: int
    seed: int
    instruction: str | None = None  # replaces the template when given
    refer: str = "entity"
    level: str = "L1"

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        if d["instruction"] is None:
            del d["instruction"]
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=False)

    @classmethod
    def from_dict(cls, d: Any) -> EpisodeSpec:
        """Build and fully validate a spec (family, params, object count); raises SpecError."""
        if not isinstance(d, dict):
            raise SpecError(f"a spec is a JSON object, got {type(d).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        extra = set(d) - known
        if extra:
            raise SpecError(f"unknown field(s) {sorted(extra)}; fields are {sorted(known)}")
        for key in ("task", "params", "n_objects", "seed"):
            if key not in d:
                raise SpecError(f"missing field {key!r}")
        if not isinstance(d["task"], str) or d["task"] not in FAMILIES:
            raise SpecError(f"unknown task family {d['task']!r}; known: {', '.join(sorted(FAMILIES))}")
        for key in ("n_objects", "seed"):
            if not isinstance(d[key], int) or isinstance(d[key], bool) or d[key] < 0:
                raise SpecError(f"{key} must be a non-negative integer, got {d[key]!r}")
        if not isinstance(d["params"], dict):
            raise SpecError(f"params must be an object, got {d['params']!r}")
        refer = d.get("refer", "entity")
        if refer not in REFERS:
            raise SpecError(f"refer must be one of {REFERS}, got {refer!r}")
        level = d.get("level", "L1")
        if level not in LEVELS:
            raise SpecError(f"level must be one of {LEVELS}, got {level!r}")
        instr = d.get("instruction")
        if instr is not None and (not isinstance(instr, str) or not instr.strip()):
            raise SpecError("instruction, when given, must be a non-empty string")
        fam = FAMILIES[d["task"]]
        params = fam.validate(d["params"], d["n_objects"])
        return cls(d["task"], params, d["n_objects"], d["seed"], instr, refer, level)


# --------------------------------------------------------------------------------------------------
# Built episodes
# --------------------------------------------------------------------------------------------------
@dataclass
class TaskEpisode:
    """A spec built into a world: which object plays which role, the instruction text."""

    spec: EpisodeSpec
    family: TaskFamily
    roles: dict[str, str]  # role (e.g. a colour, "bowl:red") -> obj name
    colors: dict[str, str]  # obj name -> colour
    kinds: dict[str, str]  # obj name -> kind
    instruction: str = ""
    scratch: dict[str, Any] = field(default_factory=dict)  # per-episode facts fixed at build time

    def ref(self, name: str) -> str:
        """How the instruction names an object in this episode's reference style (a colour reference
        takes the episode's referring form: "the red block", "the red cube", "the red one")."""
        if self.spec.refer == "entity":
            return name
        form, colour = self.scratch.get("ref_form", REF_FORMS[0]), self.colors[name]
        if "{c} one" in form and any(c == colour for n, c in self.colors.items() if n != name):
            form = REF_FORMS[0]  # "the red one" would name a red block and a red bowl: say which
        return colour_ref(form, colour, self.kinds[name])

    @property
    def max_steps(self) -> int:
        return self.family.max_steps(self)


# --------------------------------------------------------------------------------------------------
# Families
# --------------------------------------------------------------------------------------------------
class TaskFamily(ABC):
    name: ClassVar[str]
    kind: ClassVar[str]  # "question" | "plan"
    param_keys: ClassVar[tuple[str, ...]] = ()
    levels: ClassVar[tuple[str, ...]] = LEVELS
    # Instruction templates: train pool and held-out paraphrases.  Fields are filled by ``fill``.
    train_templates: ClassVar[tuple[str, ...]]
    heldout_templates: ClassVar[tuple[str, ...]]

    # -- params -----------------------------------------------------------------------------
    def validate(self, params: dict[str, Any], n_objects: int) -> dict[str, Any]:
        extra = set(params) - set(self.param_keys)
        if extra:
            raise SpecError(f"{self.name}: unknown param(s) {sorted(extra)}; params are {list(self.param_keys)}")
        missing = set(self.param_keys) - set(params)
        if missing:
            raise SpecError(f"{self.name}: missing param(s) {sorted(missing)}")
        self.check_params(params, n_objects)
        return params

    @abstractmethod
    def check_params(self, params: dict[str, Any], n_objects: int) -> None: ...

    @abstractmethod
    def sample_params(self, rng: np.random.Generator, n_objects: int, level: str) -> dict[str, Any]: ...

    def object_counts(self, level: str) -> tuple[int, ...]:
        return (6, 8) if level == "L2" else (3, 4, 5)

    # -- scene ------------------------------------------------------------------------------
    @abstractmethod
    def build_scene(self, world: World, ep: TaskEpisode, rng: np.random.Generator) -> None:
        """Add objects to an empty world, filling ``ep.roles``/``colors``/``kinds``."""

    @abstractmethod
    def fill(self, ep: TaskEpisode) -> dict[str, str]:
        """Template fields for the instruction."""

    def max_steps(self, ep: TaskEpisode) -> int:
        return 1 if self.kind == "question" else 4 * ep.spec.n_objects + 4

    # -- semantics --------------------------------------------------------------------------
    @abstractmethod
    def oracle(self, ep: TaskEpisode, objects: dict[str, ObjectInfo], held: str | None) -> str:
        """Next skill call (or answer) from privileged state."""

    @abstractmethod
    def success(self, ep: TaskEpisode, objects: dict[str, ObjectInfo], held: str | None,
                answer: str | None) -> bool: ...

    def answers(self) -> tuple[str, ...]:
        """The answer vocabulary of a question family."""
        return ()


FAMILIES: dict[str, TaskFamily] = {}


def register_family(cls: type[TaskFamily]) -> type[TaskFamily]:
    if cls.name in FAMILIES:
        raise ValueError(f"task family {cls.name!r} is already registered")
    FAMILIES[cls.name] = cls()
    return cls


# --------------------------------------------------------------------------------------------------
# Helpers for families
# --------------------------------------------------------------------------------------------------
def check_color(family: str, key: str, value: Any) -> None:
    if not isinstance(value, str) or value not in COLOR_NAMES:
        raise SpecError(f"{family}: {key}={value!r} is not a colour; colours: {', '.join(COLOR_NAMES)}")


def check_distinct(family: str, colors: list[str]) -> None:
    if len(set(colors)) != len(colors):
        raise SpecError(f"{family}: colours must be distinct, got {colors}")


def other_colors(rng: np.random.Generator, exclude: list[str], k: int) -> list[str]:
    pool = [c for c in COLOR_NAMES if c not in exclude]
    if k > len(pool):
        raise SpecError(f"needs {k} more colours but only {len(pool)} are left")
    return [pool[i] for i in rng.choice(len(pool), size=k, replace=False)]


def sample_xy(rng: np.random.Generator, world: World, n: int, spacing: float,
              taken: list[tuple[np.ndarray, float]] = (), margin: float = 0.05) -> list[np.ndarray]:
    """``n`` table points at least ``spacing`` apart and clear of ``taken`` (point, distance) pairs."""
    ws = world.config.workspace
    for _ in range(50):  # restart the whole set when sequential sampling paints itself into a corner
        out: list[np.ndarray] = []
        for _ in range(n):
            for _ in range(200):
                xy = np.array([rng.uniform(ws.x[0] + margin, ws.x[1] - margin),
                               rng.uniform(ws.y[0] + margin, ws.y[1] - margin)])
                if all(np.linalg.norm(xy - q) >= spacing for q in out) and all(
                        np.linalg.norm(xy - q) >= d for q, d in taken):
                    out.append(xy)
                    break
            else:
                break
        if len(out) == n:
            return out
    raise SpecError(f"cannot fit {n} objects {spacing} m apart in the workspace")


@dataclass
class Placement:
    kind: str
    color: str
    xy: np.ndarray
    level: int = 0  # 0 = on the table, k = k blocks below
    yaw: float = 0.0


def add_objects(world: World, ep: TaskEpisode, placements: list[Placement], rng: np.random.Generator) -> None:
    """Add objects in a random order (so obj_k says nothing about role), then let them settle."""
    order = rng.permutation(len(placements))
    for i in order:
        pl = placements[i]
        if pl.kind == "block":
            z = BLOCK_SIZE / 2 + pl.level * (BLOCK_SIZE + 0.0005)
            name = world.add_block(pl.color, (pl.xy[0], pl.xy[1]), z=z, yaw=pl.yaw)
        else:
            name = world.add_bowl(pl.color, (pl.xy[0], pl.xy[1]), yaw=pl.yaw)
        ep.colors[name] = pl.color
        ep.kinds[name] = pl.kind
        role = pl.color if pl.kind == "block" else f"bowl:{pl.color}"
        ep.roles.setdefault(role, name)
    world.settle(0.3)


def _towers(rng: np.random.Generator, colors: list[str], stack_prob: float, max_height: int,
            forced: list[list[str]]) -> list[list[str]]:
    """Group blocks into towers (bottom first).  ``forced`` towers are kept exactly as given."""
    towers = [list(t) for t in forced]
    placed = {c for t in towers for c in t}
    for c in colors:
        if c in placed:
            continue
        short = [t for t in towers[len(forced):] if len(t) < max_height]
        if short and rng.random() < stack_prob:
            short[int(rng.integers(len(short)))].append(c)
        else:
            towers.append([c])
    return towers


def _tower_placements(rng: np.random.Generator, towers: list[list[str]], xys: list[np.ndarray],
                      yaw_range: float) -> list[Placement]:
    out = []
    for t, xy in zip(towers, xys, strict=False):
        yaw = float(rng.uniform(-yaw_range, yaw_range))
        out += [Placement("block", c, xy, lvl, yaw + float(rng.uniform(-0.05, 0.05))) for lvl, c in enumerate(t)]
    return out


def tower_layout(rng: np.random.Generator, world: World, colors: list[str], stack_prob: float,
                 max_height: int = 3, forced: list[list[str]] | None = None) -> list[Placement]:
    """Blocks on the table, some stacked into towers."""
    towers = _towers(rng, colors, stack_prob, max_height, forced or [])
    return _tower_placements(rng, towers, sample_xy(rng, world, len(towers), spacing=0.09), 0.4)


def spread_layout(rng: np.random.Generator, world: World, blocks: list[str], bowls: list[str] = (),
                  spacing: float = 0.09, stack_prob: float = 0.0) -> list[Placement]:
    """Bowls first (they are bigger), then blocks (towers if ``stack_prob`` > 0) clear of the bowls."""
    out = []
    bxy = sample_xy(rng, world, len(bowls), spacing=BOWL_SIZE + 0.05, margin=0.07)
    for c, xy in zip(bowls, bxy, strict=False):
        out.append(Placement("bowl", c, xy, 0, float(rng.uniform(-0.3, 0.3))))
    taken = [(xy, BOWL_SIZE * 0.71 + 0.04) for xy in bxy]  # blocks keep clear of the bowls' corners
    towers = _towers(rng, blocks, stack_prob, 3, [])
    return out + _tower_placements(rng, towers, sample_xy(rng, world, len(towers), spacing, taken), 0.6)


def support_map(objects: dict[str, ObjectInfo]) -> dict[str, str]:
    return scene.supports(objects)
