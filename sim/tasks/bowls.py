"""Ravens-style bowl tasks: a named block into a named bowl; every block into the bowl of its colour.

For bowl families ``n_objects`` counts blocks and bowls together."""

from __future__ import annotations

from typing import Any

from sim.tasks.base import (
    SpecError,
    TaskEpisode,
    TaskFamily,
    add_objects,
    check_color,
    other_colors,
    register_family,
    spread_layout,
)
from skills import scene


class _Bowls(TaskFamily):
    kind = "plan"

    def _layout(self, world, ep, rng, blocks: list[str], bowls: list[str]) -> None:
        # L4 is a composition never trained: blocks start stacked, so they must be unstacked first.
        stack_prob = 0.6 if ep.spec.level == "L4" else 0.0
        add_objects(world, ep, spread_layout(rng, world, blocks, bowls, stack_prob=stack_prob), rng)

    def _check_n(self, n_objects: int) -> None:
        if not 3 <= n_objects <= 10:
            raise SpecError(f"{self.name}: n_objects (blocks and bowls) must be 3..10, got {n_objects}")

    def in_bowl(self, block: str, bowl: str, objects) -> bool:
        return scene.support_of(block, objects) == bowl

    def max_steps(self, ep: TaskEpisode) -> int:
        return 3 * ep.spec.n_objects + 4


@register_family
class BowlPlace(_Bowls):
    name = "bowl_place"
    param_keys = ("block", "bowl")
    train_templates = ("Put {block} in {bowl}.", "Place {block} into {bowl}.")
    heldout_templates = ("Drop {block} inside {bowl}.", "{block_cap} goes in {bowl}.")

    def n_bowls(self, n_objects: int) -> int:
        return 2 if n_objects <= 5 else 3

    def check_params(self, params: dict[str, Any], n_objects: int) -> None:
        check_color(self.name, "block", params["block"])
        check_color(self.name, "bowl", params["bowl"])
        self._check_n(n_objects)

    def sample_params(self, rng, n_objects, level) -> dict[str, Any]:
        return {"block": other_colors(rng, [], 1)[0], "bowl": other_colors(rng, [], 1)[0]}

    def build_scene(self, world, ep, rng) -> None:
        p, n = ep.spec.params, ep.spec.n_objects
        k = self.n_bowls(n)
        blocks = [p["block"], *other_colors(rng, [p["block"]], n - k - 1)]
        bowls = [p["bowl"], *other_colors(rng, [p["bowl"]], k - 1)]
        self._layout(world, ep, rng, blocks, bowls)

    def fill(self, ep: TaskEpisode) -> dict[str, str]:
        p = ep.spec.params
        block = ep.ref(ep.roles[p["block"]])
        return {"block": block, "block_cap": block[0].upper() + block[1:],
                "bowl": ep.ref(ep.roles[f"bowl:{p['bowl']}"])}

    def oracle(self, ep, objects, held) -> str:
        block, bowl = ep.roles[ep.spec.params["block"]], ep.roles[f"bowl:{ep.spec.params['bowl']}"]
        if held is not None:
            return f"place {held} in {bowl}" if held == block else f"place {held} on table"
        if self.in_bowl(block, bowl, objects):
            return "done"
        above = scene.stack_above(block, objects)
        return f"pick {above[0]}" if above else f"pick {block}"

    def success(self, ep, objects, held, answer) -> bool:
        block, bowl = ep.roles[ep.spec.params["block"]], ep.roles[f"bowl:{ep.spec.params['bowl']}"]
        return held is None and self.in_bowl(block, bowl, objects)


@register_family
class BowlMatch(_Bowls):
    name = "bowl_match"
    param_keys = ()
    train_templates = ("Put every block in the bowl of its colour.", "Sort the blocks into the matching bowls.")
    heldout_templates = ("Each block goes into the bowl with the same colour.",
                         "Match the blocks to the bowls by colour.")

    def n_bowls(self, n_objects: int) -> int:
        return (n_objects + 1) // 2

    def check_params(self, params: dict[str, Any], n_objects: int) -> None:
        self._check_n(n_objects)

    def sample_params(self, rng, n_objects, level) -> dict[str, Any]:
        return {}

    def build_scene(self, world, ep, rng) -> None:
        n = ep.spec.n_objects
        bowls = other_colors(rng, [], self.n_bowls(n))
        blocks = [bowls[i] for i in rng.choice(len(bowls), size=n - len(bowls), replace=False)]
        self._layout(world, ep, rng, blocks, bowls)

    def fill(self, ep: TaskEpisode) -> dict[str, str]:
        return {}

    def _todo(self, ep, objects) -> list[str]:
        blocks = [n for n, k in ep.kinds.items() if k == "block"]
        return [b for b in blocks if not self.in_bowl(b, ep.roles[f"bowl:{ep.colors[b]}"], objects)]

    def oracle(self, ep, objects, held) -> str:
        if held is not None:
            return f"place {held} in {ep.roles['bowl:' + ep.colors[held]]}"
        todo = self._todo(ep, objects)
        if not todo:
            return "done"
        clear = [b for b in todo if not scene.on_top_of(b, objects)]
        return f"pick {clear[0] if clear else scene.stack_above(todo[0], objects)[0]}"

    def success(self, ep, objects, held, answer) -> bool:
        return held is None and not self._todo(ep, objects)
