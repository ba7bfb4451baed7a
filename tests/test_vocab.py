"""skills/vocab.py, the one vocabulary: the call grammar (constrained decoding, valid_actions) and the
object-row columns as the env fills them."""

import numpy as np
import pytest

from skills.vocab import BLOCK_SIZE, BOWL_SIZE, COLOR_NAMES, KINDS, MAX_OBJECTS, Col, all_calls

# Pinned: a colour's index is its id in object rows, recorded demonstrations and checkpoints.
COLORS = ("red", "green", "blue", "yellow", "purple", "orange", "pink", "cyan", "brown", "white")
FIXED = ("left", "right", "up", "down", "to top left corner", "to top right corner", "to bottom left corner",
         "to bottom right corner", "to left side", "to right side", "to top side", "to bottom side")


def _pushes(a: str) -> list[str]:
    return [f"push {a} {t}" for t in FIXED]


def test_all_calls_is_the_decoders_grammar_in_its_order():
    # What embodied_lm.decode.grammar_calls gave before all_calls replaced it (greedy ties break by order).
    # A bowl is only a target: the decoder cannot pick, place or push one (bowl_match picked bowls).
    expected = ["done", "answer yes", "answer no", *[f"answer {c}" for c in COLORS],
                "pick obj_1", "place obj_1 on table", "place obj_1 in obj_2", *_pushes("obj_1")]
    assert all_calls(["obj_1", "obj_2"], ["block", "bowl"]) == expected
    unknown = all_calls(["obj_1", "obj_2"])  # kinds unknown: both prepositions, every object
    assert "pick obj_2" in unknown and "place obj_1 on obj_2" in unknown and "place obj_1 in obj_2" in unknown
    assert COLOR_NAMES == COLORS


def test_valid_actions_keep_their_order(env):
    # The random planner indexes this list with a seeded rng: its order is part of the README's figures.
    env.reset(options={"spec": {"task": "push_to_block", "params": {"block": "red", "target": "blue"},
                                "n_objects": 2, "seed": 0}})
    assert env.valid_actions() == ["done", "pick obj_1", "pick obj_2", *_pushes("obj_1"), "push obj_1 to obj_2",
                                   *_pushes("obj_2"), "push obj_2 to obj_1"]
    env.reset(options={"spec": {"task": "bowl_place", "params": {"block": "red", "bowl": "blue"},
                                "n_objects": 3, "seed": 0}})
    assert env.episode.kinds == {"obj_1": "bowl", "obj_2": "block", "obj_3": "bowl"}
    env.step("pick obj_2")
    assert env.valid_actions() == ["done", "place obj_2 on table", "place obj_2 in obj_1", "place obj_2 in obj_3"]


@pytest.mark.parametrize("spec", [
    {"task": "q3_on_object", "params": {"top": "red", "bottom": "blue"}, "n_objects": 5, "seed": 3},  # a tower
    {"task": "bowl_place", "params": {"block": "green", "bowl": "pink"}, "n_objects": 6, "seed": 1, "level": "L4"},
])
def test_col_indexes_the_env_object_rows(env, spec):
    obs, _ = env.reset(options={"spec": spec})
    objects, state = obs["objects"], env.world.state()
    assert objects.shape == (MAX_OBJECTS, 12) and not objects[len(state):].any()
    towers = 0
    for row, s in zip(objects, state, strict=False):
        k = int(s["name"].split("_")[1])
        assert row[Col.PRESENT] == 1
        assert COLOR_NAMES[int(row[Col.COLOR])] == s["color"] == env.episode.colors[s["name"]]
        assert KINDS[int(row[Col.KIND])] == s["kind"]
        assert np.allclose(row[Col.XYZ], s["position"]) and np.allclose(row[Col.QUAT], s["orientation"])
        assert row[Col.SIZE] == np.float32(BLOCK_SIZE if s["kind"] == "block" else BOWL_SIZE)
        on = int(row[Col.SUPPORT])
        assert (s["on"], on) == ("table", 0) or s["on"] == f"obj_{on}" != f"obj_{k}"
        towers += on > 0
    assert towers  # both scenes stack blocks (L4 bowl scenes start stacked)
