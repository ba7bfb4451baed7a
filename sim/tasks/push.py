"""PaLM-E's Language-Table domain: push blocks next to each other, into corners, to a side."""

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
    spread_layout,
)
from skills import scene
from skills.vocab import COLOR_NAMES, CORNERS, SIDES


class _Push(TaskFamily):
    kind = "plan"

    def max_steps(self, ep: TaskEpisode) -> int:
        return 3 * ep.spec.n_objects + 4

    def _check_n(self, n_objects: int, need: int) -> None:
        if n_objects < need:
            raise SpecError(f"{self.name}: n_objects={n_objects} is too small (needs >= {need})")
        if n_objects > 8:
            raise SpecError(f"{self.name}: at most 8 blocks fit for pushing, got n_objects={n_objects}")

    @staticmethod
    def _on_table(ep: TaskEpisode, objects, held) -> bool:
        sup = scene.supports(objects)
        return held is None and all(sup[n] == scene.TABLE for n in ep.kinds)


@register_family
class PushToBlock(_Push):
    name = "push_to_block"
    param_keys = ("block", "target")
    train_templates = ("Push {block} next to {target}.", "Slide {block} to {target}.")
    heldout_templates = ("Move {block} over until it touches {target}.", "Nudge {block} up against {target}.")

    def check_params(self, params: dict[str, Any], n_objects: int) -> None:
        check_color(self.name, "block", params["block"])
        check_color(self.name, "target", params["target"])
        check_distinct(self.name, [params["block"], params["target"]])
        self._check_n(n_objects, 2)

    def sample_params(self, rng, n_objects, level) -> dict[str, Any]:
        a, b = other_colors(rng, [], 2)
        return {"block": a, "target": b}

    def build_scene(self, world, ep, rng) -> None:
        p = ep.spec.params
        colors = [p["block"], p["target"], *other_colors(rng, [p["block"], p["target"]], ep.spec.n_objects - 2)]
        for _ in range(100):  # start the pair apart, or there is nothing to do
            placements = spread_layout(rng, world, colors)
            if np.linalg.norm(placements[0].xy - placements[1].xy) > 0.15:
                break
        add_objects(world, ep, placements, rng)

    def fill(self, ep: TaskEpisode) -> dict[str, str]:
        p = ep.spec.params
        return {"block": ep.ref(ep.roles[p["block"]]), "target": ep.ref(ep.roles[p["target"]])}

    def oracle(self, ep, objects, held) -> str:
        a, b = ep.roles[ep.spec.params["block"]], ep.roles[ep.spec.params["target"]]
        return "done" if scene.near(objects[a], objects[b]) else f"push {a} to {b}"

    def success(self, ep, objects, held, answer) -> bool:
        a, b = ep.roles[ep.spec.params["block"]], ep.roles[ep.spec.params["target"]]
        return self._on_table(ep, objects, held) and scene.near(objects[a], objects[b])


@register_family
class PushSortCorners(_Push):
    """Sort blocks by colour into corners: several blocks share a colour."""

    name = "push_sort_corners"
    param_keys = ("corners",)
    train_templates = ("Push {groups}.", "Sort the blocks: push {groups}.")
    heldout_templates = ("Group the blocks by colour: move {groups}.", "Slide {groups}.")

    def check_params(self, params: dict[str, Any], n_objects: int) -> None:
        corners = params["corners"]
        if not isinstance(corners, dict) or not corners:
            raise SpecError(f"{self.name}: corners must map colours to corners, got {corners!r}")
        for c, corner in corners.items():
            check_color(self.name, "corners", c)
            if corner not in CORNERS:
                raise SpecError(f"{self.name}: corner {corner!r} for {c!r} is not one of {CORNERS}")
        check_distinct(self.name, list(corners.values()))
        self._check_n(n_objects, len(corners))

    def sample_params(self, rng, n_objects, level) -> dict[str, Any]:
        k = 3 if level == "L4" else 2  # L4: a new composition, three colour groups
        colors = other_colors(rng, [], k)
        corners = [CORNERS[i] for i in rng.choice(4, size=k, replace=False)]
        return {"corners": dict(zip(colors, corners, strict=False))}

    def build_scene(self, world, ep, rng) -> None:
        groups = list(ep.spec.params["corners"])
        colors = groups + [groups[int(rng.integers(len(groups)))] for _ in range(ep.spec.n_objects - len(groups))]
        add_objects(world, ep, spread_layout(rng, world, colors), rng)

    def _groups(self, ep: TaskEpisode) -> dict[str, list[str]]:
        return {c: sorted(n for n, col in ep.colors.items() if col == c) for c in ep.spec.params["corners"]}

    def fill(self, ep: TaskEpisode) -> dict[str, str]:
        parts = []
        for c, names in self._groups(ep).items():
            corner = ep.spec.params["corners"][c]
            if ep.spec.refer == "color":
                who = f"the {c} block" + ("s" if len(names) > 1 else "")
            else:
                who = " and ".join([", ".join(names[:-1]), names[-1]] if len(names) > 1 else names)
            parts.append(f"{who} to the {corner} corner")
        return {"groups": " and ".join(parts)}

    def _todo(self, ep, objects) -> list[tuple[float, str, str]]:
        ws = ep.scratch["workspace"]
        todo = []
        for c, names in self._groups(ep).items():
            corner = ep.spec.params["corners"][c]
            goal = scene.corner_point(corner, ws)
            for n in names:
                if not scene.in_corner(objects[n].position[:2], corner, ws):
                    todo.append((float(np.linalg.norm(objects[n].position[:2] - goal)), n, corner))
        return sorted(todo)

    def oracle(self, ep, objects, held) -> str:
        todo = self._todo(ep, objects)
        if not todo:
            return "done"
        _, n, corner = todo[0]  # closest first: the corner fills from the inside out
        return f"push {n} to {corner} corner"

    def success(self, ep, objects, held, answer) -> bool:
        return self._on_table(ep, objects, held) and not self._todo(ep, objects)


@register_family
class PushGatherSide(_Push):
    name = "push_gather_side"
    param_keys = ("side",)
    train_templates = ("Push all the blocks to the {side} side.", "Gather every block on the {side} side.")
    heldout_templates = ("Move all blocks over to the {side} edge.", "Collect the blocks along the {side} side.")

    def check_params(self, params: dict[str, Any], n_objects: int) -> None:
        if params["side"] not in SIDES:
            raise SpecError(f"{self.name}: side {params['side']!r} is not one of {SIDES}")
        self._check_n(n_objects, 1)

    def sample_params(self, rng, n_objects, level) -> dict[str, Any]:
        return {"side": SIDES[int(rng.integers(len(SIDES)))]}

    def build_scene(self, world, ep, rng) -> None:
        colors = other_colors(rng, [], min(ep.spec.n_objects, len(COLOR_NAMES)))
        add_objects(world, ep, spread_layout(rng, world, colors), rng)

    def fill(self, ep: TaskEpisode) -> dict[str, str]:
        return {"side": ep.spec.params["side"]}

    def _todo(self, ep, objects) -> list[tuple[float, str]]:
        side, ws = ep.spec.params["side"], ep.scratch["workspace"]
        out = []
        for n in ep.kinds:
            xy = objects[n].position[:2]
            if not scene.in_side(xy, side, ws):
                out.append((float(np.linalg.norm(scene.side_point(side, xy, ws) - xy)), n))
        return sorted(out)

    def oracle(self, ep, objects, held) -> str:
        todo = self._todo(ep, objects)
        return f"push {todo[0][1]} to {ep.spec.params['side']} side" if todo else "done"

    def success(self, ep, objects, held, answer) -> bool:
        return self._on_table(ep, objects, held) and not self._todo(ep, objects)
