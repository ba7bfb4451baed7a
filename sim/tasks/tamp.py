"""PaLM-E's TAMP domain: questions q1–q4 over block towers, p1 grasp (unstack
what is on top first) and p2 stack in a given order."""

from __future__ import annotations

from typing import Any

import numpy as np

from sim.tasks.base import (
    SpecError,
    TaskEpisode,
    TaskFamily,
    add_objects,
    check_color,
    check_distinct,
    other_colors,
    register_family,
    tower_layout,
)
from sim.world import World
from skills import scene
from skills.robot import ObjectInfo
from skills.vocab import COLOR_NAMES


class _Blocks(TaskFamily):
    """Scenes of uniquely coloured blocks, some in towers."""

    color_keys: tuple[str, ...] = ("target",)

    def check_params(self, params: dict[str, Any], n_objects: int) -> None:
        colors = [params[k] for k in self.color_keys]
        for k in self.color_keys:
            check_color(self.name, k, params[k])
        check_distinct(self.name, colors)
        if n_objects < max(len(colors), self.min_objects()):
            raise SpecError(f"{self.name}: n_objects={n_objects} is too small (needs >= "
                            f"{max(len(colors), self.min_objects())})")
        if n_objects > len(COLOR_NAMES):
            raise SpecError(f"{self.name}: at most {len(COLOR_NAMES)} uniquely coloured blocks")

    def min_objects(self) -> int:
        return 2

    def sample_params(self, rng: np.random.Generator, n_objects: int, level: str) -> dict[str, Any]:
        cs = other_colors(rng, [], len(self.color_keys))
        return dict(zip(self.color_keys, cs, strict=False))

    def _colors(self, ep: TaskEpisode, rng: np.random.Generator, fixed: list[str]) -> list[str]:
        return fixed + other_colors(rng, fixed, ep.spec.n_objects - len(fixed))

    def _place(self, world: World, ep: TaskEpisode, rng: np.random.Generator, fixed: list[str],
               forced: list[list[str]], stack_prob: float = 0.3, max_height: int = 3) -> None:
        colors = self._colors(ep, rng, fixed)
        add_objects(world, ep, tower_layout(rng, world, colors, stack_prob, max_height, forced), rng)

    def fill(self, ep: TaskEpisode) -> dict[str, str]:
        return {"obj": ep.ref(ep.roles[ep.spec.params["target"]])}


class _Question(_Blocks):
    kind = "question"

    def truth(self, ep: TaskEpisode, objects: dict[str, ObjectInfo]) -> str:
        return ep.scratch["answer"]

    def oracle(self, ep: TaskEpisode, objects: dict[str, ObjectInfo], held: str | None) -> str:
        return f"answer {ep.scratch['answer']}"

    def success(self, ep, objects, held, answer) -> bool:
        return answer == ep.scratch["answer"]

    def answers(self) -> tuple[str, ...]:
        return ("yes", "no")


def _yes(b: bool) -> str:
    return "yes" if b else "no"


@register_family
class Q1Color(_Question):
    name = "q1_color"
    param_keys = ("target",)
    levels = ("L1", "L2", "L3")
    train_templates = ("What colour is {obj}?", "Which colour does {obj} have?", "What is the colour of {obj}?",
                       "Which colour is {obj}?", "What colour does {obj} have?")
    heldout_templates = ("Tell me the colour of {obj}.", "Name the colour of {obj}.")

    def answers(self) -> tuple[str, ...]:
        return COLOR_NAMES

    def build_scene(self, world, ep, rng) -> None:
        self._place(world, ep, rng, [ep.spec.params["target"]], [])
        ep.scratch["answer"] = ep.spec.params["target"]
        ep.scratch["description"] = _describe(ep.roles[ep.spec.params["target"]], world.object_infos())

    def fill(self, ep: TaskEpisode) -> dict[str, str]:
        name = ep.roles[ep.spec.params["target"]]
        # A colour reference would give the answer away: describe the block by where it is instead.
        return {"obj": name if ep.spec.refer == "entity" else ep.scratch["description"]}


def _describe(name: str, objs: dict[str, ObjectInfo]) -> str:
    """A colour-free description that picks out ``name`` uniquely."""
    sup = scene.supports(objs)
    col = {n: o.color for n, o in objs.items()}
    if sup[name] in objs:
        return f"the block on the {col[sup[name]]} block"
    above = scene.on_top_of(name, objs)
    if above:
        return f"the block under the {col[above[0]]} block"
    ground = [n for n, s in sup.items() if s == "table" and objs[n].kind == "block"]
    xy = {n: objs[n].position[:2] for n in ground}
    for axis, sign, words in ((1, 1, "leftmost"), (1, -1, "rightmost"), (0, -1, "nearest to the robot"),
                              (0, 1, "farthest from the robot")):
        vals = sorted(((sign * xy[n][axis], n) for n in ground), reverse=True)
        if vals[0][1] == name and (len(vals) == 1 or vals[0][0] - vals[1][0] > 0.03):
            return f"the {words} block" if words in ("leftmost", "rightmost") else f"the block {words}"
    x, y = objs[name].position[:2]
    return f"the block at x {x:.2f} y {y:.2f}"


@register_family
class Q2OnTable(_Question):
    name = "q2_on_table"
    param_keys = ("target",)
    levels = ("L1", "L2", "L3")
    train_templates = ("Is {obj} on the table?", "Does {obj} rest on the table?", "Is {obj} lying on the table?",
                       "Is {obj} placed on the table?", "Does {obj} stand on the table?")
    heldout_templates = ("Is {obj} sitting directly on the table?", "Tell me whether {obj} touches the table.")

    def build_scene(self, world, ep, rng) -> None:
        t = ep.spec.params["target"]
        under = other_colors(rng, [t], 1)[0]
        forced = [[under, t]] if rng.random() < 0.5 else [[t]]
        self._place(world, ep, rng, [t, under], forced)
        objs = world.object_infos()
        ep.scratch["answer"] = _yes(scene.support_of(ep.roles[t], objs) == scene.TABLE)


@register_family
class Q3OnObject(_Question):
    name = "q3_on_object"
    param_keys = ("top", "bottom")
    color_keys = ("top", "bottom")
    levels = ("L1", "L2", "L3")
    train_templates = ("Is {top} on {bottom}?", "Is {top} stacked on {bottom}?", "Is {top} resting on {bottom}?",
                       "Has {top} been placed on {bottom}?", "Does {top} lie on {bottom}?")
    heldout_templates = ("Does {top} sit on top of {bottom}?", "Tell me whether {top} rests on {bottom}.")

    def build_scene(self, world, ep, rng) -> None:
        top, bottom = ep.spec.params["top"], ep.spec.params["bottom"]
        u = rng.random()
        forced = [[bottom, top]] if u < 0.5 else [[top, bottom]] if u < 0.7 else [[top], [bottom]]
        self._place(world, ep, rng, [top, bottom], forced)
        objs = world.object_infos()
        ep.scratch["answer"] = _yes(scene.support_of(ep.roles[top], objs) == ep.roles[bottom])

    def fill(self, ep: TaskEpisode) -> dict[str, str]:
        p = ep.spec.params
        return {"top": ep.ref(ep.roles[p["top"]]), "bottom": ep.ref(ep.roles[p["bottom"]])}


@register_family
class Q4Feasible(_Question):
    name = "q4_feasible"
    param_keys = ("target",)
    levels = ("L1", "L2", "L3")
    train_templates = ("Can {obj} be picked up now?", "Is it possible to pick up {obj} right now?",
                       "Can you lift {obj} right now?", "Can {obj} be grasped now?", "Is {obj} clear to pick up?")
    heldout_templates = ("Could the robot grasp {obj} at this moment?", "Is {obj} free to be picked up?")

    def build_scene(self, world, ep, rng) -> None:
        t = ep.spec.params["target"]
        top = other_colors(rng, [t], 1)[0]
        forced = [[t, top]] if rng.random() < 0.5 else [[top, t]] if rng.random() < 0.5 else [[t]]
        self._place(world, ep, rng, [t, top], forced)
        objs = world.object_infos()
        ep.scratch["answer"] = _yes(not scene.on_top_of(ep.roles[t], objs))


@register_family
class P1Grasp(_Blocks):
    """Grasp a block that may be buried: unstack what is on top first."""

    name = "p1_grasp"
    kind = "plan"
    param_keys = ("target",)
    train_templates = ("Pick up {obj}.", "Grasp {obj}.", "Grab {obj}.", "Lift {obj}.", "Pick {obj} up.",
                       "Take {obj}.", "Hold {obj}.")
    heldout_templates = ("Get {obj} into the gripper.", "I need {obj} in your hand.")

    def build_scene(self, world, ep, rng) -> None:
        t, n = ep.spec.params["target"], ep.spec.n_objects
        depth_max = min(3 if ep.spec.level == "L4" else 2, n - 1)
        if ep.spec.level == "L4":
            depth = depth_max  # longer horizon than trained: the deepest burial
        else:
            depth = int(rng.integers(1, depth_max + 1)) if rng.random() < 0.7 and depth_max else 0
        cover = other_colors(rng, [t], depth)
        self._place(world, ep, rng, [t, *cover], [[t, *cover]], max_height=depth + 1 if depth >= 2 else 3)

    def oracle(self, ep, objects, held) -> str:
        target = ep.roles[ep.spec.params["target"]]
        if held == target:
            return "done"
        if held is not None:
            return f"place {held} on table"
        above = scene.stack_above(target, objects)
        return f"pick {above[0]}" if above else f"pick {target}"

    def success(self, ep, objects, held, answer) -> bool:
        return held == ep.roles[ep.spec.params["target"]]


@register_family
class P2Stack(_Blocks):
    """Stack given blocks in a given order, bottom first."""

    name = "p2_stack"
    kind = "plan"
    param_keys = ("order",)
    train_templates = ("Stack {seq}, bottom first.", "Build a tower of {seq} from the bottom up.",
                       "Stack {seq} with the first at the bottom.", "Pile up {seq}, bottom first.",
                       "Build a stack of {seq}, bottom to top.")
    heldout_templates = ("Make a stack: {seq}, the first one at the bottom.",
                         "Put {seq} on top of each other, starting from the bottom.")

    def check_params(self, params: dict[str, Any], n_objects: int) -> None:
        order = params["order"]
        if not isinstance(order, list) or len(order) < 2:
            raise SpecError(f"p2_stack: order must be a list of at least 2 colours, got {order!r}")
        for i, c in enumerate(order):
            check_color(self.name, f"order[{i}]", c)
        check_distinct(self.name, order)
        if n_objects < len(order):
            raise SpecError(f"p2_stack: n_objects={n_objects} is too small for an order of {len(order)}")

    def sample_params(self, rng, n_objects, level) -> dict[str, Any]:
        # Trained stacks hold 2–3 blocks; L4 asks for one more than ever trained.
        length = 4 if level == "L4" else int(rng.integers(2, 4))
        return {"order": other_colors(rng, [], min(length, n_objects))}

    def object_counts(self, level: str) -> tuple[int, ...]:
        return (6, 8) if level == "L2" else (4, 5) if level == "L4" else (3, 4, 5)

    def build_scene(self, world, ep, rng) -> None:
        order = ep.spec.params["order"]
        colors = self._colors(ep, rng, list(order))
        add_objects(world, ep, tower_layout(rng, world, colors, stack_prob=0.25), rng)

    def fill(self, ep: TaskEpisode) -> dict[str, str]:
        return {"seq": ", ".join(ep.ref(ep.roles[c]) for c in ep.spec.params["order"])}

    def _prefix(self, names: list[str], sup: dict[str, str]) -> int:
        """How many of ``names`` already stand correctly, from the bottom."""
        k = 0
        for i, n in enumerate(names):
            if sup[n] != (scene.TABLE if i == 0 else names[i - 1]):
                break
            k += 1
        return k

    def oracle(self, ep, objects, held) -> str:
        names = [ep.roles[c] for c in ep.spec.params["order"]]
        sup = scene.supports(objects)
        if held is not None:
            sup[held] = "gripper"
        k = self._prefix(names, sup)
        if k == len(names) and held is None:
            return "done"
        blocked = k > 0 and bool(scene.on_top_of(names[k - 1], objects))  # wrong block on the prefix
        if held is not None:
            if k < len(names) and held == names[k] and not blocked:
                return f"place {held} on table" if k == 0 else f"place {held} on {names[k - 1]}"
            return f"place {held} on table"
        if blocked:
            return f"pick {scene.stack_above(names[k - 1], objects)[0]}"
        above = scene.stack_above(names[k], objects)
        return f"pick {above[0]}" if above else f"pick {names[k]}"

    def success(self, ep, objects, held, answer) -> bool:
        names = [ep.roles[c] for c in ep.spec.params["order"]]
        sup = scene.supports(objects)
        return held is None and self._prefix(names, sup) == len(names)
