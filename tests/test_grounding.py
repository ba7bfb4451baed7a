"""Colour references resolved against the observed scene; phrasings for training; refusals in closed loop."""

import numpy as np
import pytest

from embodied_lm.data import prompt_text
from embodied_lm.grounding import UnresolvedReference, ground
from sim.tasks import FAMILIES, build_episode, generate_specs
from sim.world import World, WorldConfig
from skills.vocab import COLOR_NAMES, KINDS, MAX_OBJECTS, OBJECT_FEATURES, Col

TAMP = ["q1_color", "q2_on_table", "q3_on_object", "q4_feasible", "p1_grasp", "p2_stack"]


def _scene(*objects: tuple) -> np.ndarray:
    """Rows of (slot, colour, kind[, (x, y), support slot])."""
    rows = np.zeros((MAX_OBJECTS, OBJECT_FEATURES), np.float32)
    for slot, colour, kind, *where in objects:
        rows[slot - 1, Col.PRESENT] = 1
        rows[slot - 1, Col.COLOR] = COLOR_NAMES.index(colour)
        rows[slot - 1, Col.KIND] = KINDS.index(kind)
        if where:
            rows[slot - 1, Col.XYZ][:2], rows[slot - 1, Col.SUPPORT] = where
    return rows


SCENE = _scene((1, "red", "block"), (3, "blue", "block"), (4, "red", "bowl"), (6, "green", "block"))


@pytest.mark.parametrize("text,expected", [
    ("Pick up the blue block.", "Pick up the blue block obj_3."),
    ("Could you grab the Blue cube, please?", "Could you grab the Blue cube obj_3, please?"),
    ("Is the green one on the table?", "Is the green one obj_6 on the table?"),
    ("Stack the blue block, the green block, bottom first.",
     "Stack the blue block obj_3, the green block obj_6, bottom first."),
    ("Put the red block in the red bowl.", "Put the red block obj_1 in the red bowl obj_4."),
    ("Push the red things left.", "Push the red things obj_1 obj_4 left."),  # a plural names a group
    ("Pick up obj_3.", "Pick up obj_3."),  # entity names are the planner's own: untouched
    ("Stack some blocks.", "Stack some blocks."),
])
def test_colour_references_name_the_observed_object(text, expected):
    assert ground(text, SCENE) == expected


@pytest.mark.parametrize("text,why", [
    ("Pick up the white block.", "holds no white block"),
    ("Put the blue bowl down.", "holds no blue bowl"),
    ("Pick up the red one.", "ambiguous: 2 objects match (obj_1, obj_4)"),
])
def test_unresolvable_references_are_refused_with_a_reason(text, why):
    with pytest.raises(UnresolvedReference, match=why.replace("(", r"\(").replace(")", r"\)")):
        ground(text, SCENE)


# obj_2 (white) stands on obj_5 (yellow); +y is the robot's left, +x away from it.
TOWER = _scene((1, "red", "block", (0.40, 0.20), 0), (2, "white", "block", (0.50, -0.10), 5),
               (5, "yellow", "block", (0.50, -0.10), 0), (7, "pink", "block", (0.60, 0.05), 0))


@pytest.mark.parametrize("text,expected", [
    ("What colour is the block on the yellow block?", "What colour is the block obj_2 on the yellow block obj_5?"),
    ("Which colour is the one under the white cube?", "Which colour is the one obj_5 under the white cube obj_2?"),
    ("What colour is the leftmost block?", "What colour is the leftmost block obj_1?"),
    ("Tell me the colour of the rightmost one.", "Tell me the colour of the rightmost one obj_5."),
    ("What colour is the block nearest to the robot?", "What colour is the block obj_1 nearest to the robot?"),
    ("What colour is the block farthest from the robot?",
     "What colour is the block obj_7 farthest from the robot?"),
    ("What colour is the block at x 0.61 y 0.04?", "What colour is the block obj_7 at x 0.61 y 0.04?"),
    ("Is the white block on the yellow block?", "Is the white block obj_2 on the yellow block obj_5?"),  # colours
])
def test_place_references_name_the_observed_object(text, expected):
    assert ground(text, TOWER) == expected


@pytest.mark.parametrize("text,why", [
    ("What colour is the block on the red block?", "holds no block on the red block"),
    ("What colour is the block under the red block?", "holds no object under the red block"),
    ("What colour is the block at x 0.50 y -0.10?", "ambiguous: 2 objects match (obj_2, obj_5)"),  # a tower
    ("What colour is the block at x 0.10 y 0.10?", "holds no block within 5 cm of that point"),
])
def test_unresolvable_place_references_are_refused(text, why):
    with pytest.raises(UnresolvedReference, match=why.replace("(", r"\(").replace(")", r"\)")):
        ground(text, TOWER)


def test_a_colour_reference_prompts_like_an_entity_name():
    """The LM sees the object's name and its token where the person named it by colour."""
    colour = prompt_text("Pick up the blue block.", [], "objects", SCENE)
    entity = prompt_text("Pick up obj_3.", [], "objects", SCENE)
    assert "Task: Pick up the blue block obj_3 <obj_3>." in colour and "Task: Pick up obj_3 <obj_3>." in entity
    assert colour.replace("the blue block ", "") == entity


def test_train_phrasings_are_groundable_and_never_held_out():
    """Every generated train instruction (both styles, every family: a red bowl beside a red block
    must not be "the red one") resolves on its own scene; no train template or phrasing reuses a
    held-out paraphrase."""
    world = World(WorldConfig())
    try:
        for spec in generate_specs(sorted(FAMILIES), ["L1", "L2", "L4"], 12, seed=3, split="train", refer="mixed"):
            if spec.level not in FAMILIES[spec.task].levels:
                continue
            ep = build_episode(world, spec)
            objects = world.object_array()
            grounded = ground(ep.instruction, objects)
            # every block the task is about is named (q1's by place)
            if spec.refer == "color" and spec.task in TAMP:
                roles = [spec.params[k] for k in FAMILIES[spec.task].param_keys]
                for colour in (roles[0] if spec.task == "p2_stack" else roles):
                    assert f"{ep.roles[colour]}" in grounded, (ep.instruction, grounded)
            for held in FAMILIES[spec.task].heldout_templates:
                assert held.split("{")[0] not in FAMILIES[spec.task].train_templates
                assert ep.instruction != held
    finally:
        world.close()
    for fam in FAMILIES.values():
        assert not set(fam.train_templates) & set(fam.heldout_templates), fam.name
    from benchmarks.unseen_requests import UNSEEN_REQUESTS  # measurement-only sentences: in no pool

    for family, requests in UNSEEN_REQUESTS.items():
        pools = FAMILIES[family].train_templates + FAMILIES[family].heldout_templates
        assert not {r.split("{")[0] for r in requests} & {t.split("{")[0] for t in pools}, family


def test_planner_refuses_an_instruction_naming_a_missing_object():
    """Closed loop: an instruction that names no object in the scene ends failed, with the reason,
    after no skill call."""
    from embodied_lm.evaluate import run_episode
    from embodied_lm.model import EmbodiedLM, ModelConfig
    from embodied_lm.planners import make_planner
    from sim.env import EnvConfig, TabletopEnv
    from sim.tasks import EpisodeSpec

    model = EmbodiedLM(ModelConfig(backbone="tiny", sensors="state", mode="frozen"), seed=0)
    env = TabletopEnv(EnvConfig(observe_images=False))
    try:
        spec = EpisodeSpec("p1_grasp", {"target": "red"}, 3, 1_000_001, None, "color", "L1")
        obs, _ = env.reset(options={"spec": spec})
        present = {COLOR_NAMES[int(r[Col.COLOR])] for r in obs["objects"] if r[Col.PRESENT] > 0.5}
        missing = next(c for c in COLOR_NAMES if c not in present)
        spec = EpisodeSpec("p1_grasp", {"target": "red"}, 3, 1_000_001,
                           f"Pick up the turquoise block and the {missing} block.", "color", "L1")
        row = run_episode(env, make_planner("embodied_lm", model=model), spec)
    finally:
        env.close()
    assert row.plan == ["refuse"] and not row.success and not row.plan_success
    assert row.messages == [f"refused: the instruction names '{missing} block' but the scene holds no "
                            f"{missing} block"]
