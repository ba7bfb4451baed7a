"""Skill grammar (round trips, rejections), registry, and execution in a real PyBullet world."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sim.world import World
from skills import (
    Answer,
    Done,
    Pick,
    Place,
    Push,
    SkillLibrary,
    SkillParseError,
    UnresolvedObject,
    colour_refs,
    parse,
    register_skill,
    registered_skills,
    resolve,
)
from skills.calls import CORNERS, DIRECTIONS, SIDES
from skills.robot import ObjectInfo
from skills.vocab import COLOR_NAMES, KINDS

objs = st.one_of(st.integers(1, 16).map(lambda k: f"obj_{k}"),  # named, or by colour as a person would
                 st.tuples(st.sampled_from(COLOR_NAMES),
                           st.sampled_from(KINDS)).map(" ".join).map("the {}".format))
coords = st.floats(-0.5, 0.9, allow_nan=False).map(lambda v: round(v, 2))


@st.composite
def calls(draw):
    a = draw(objs)
    b = draw(objs.filter(lambda o: o != a))
    return draw(st.sampled_from([
        Pick(a), Place(a, target=b), Place(a, target=b, in_bowl=True), Place(a),
        Place(a, at=(draw(coords), draw(coords))),
        Push(a, direction=draw(st.sampled_from(DIRECTIONS))), Push(a, corner=draw(st.sampled_from(CORNERS))),
        Push(a, side=draw(st.sampled_from(SIDES))), Push(a, to_obj=b),
        Answer(draw(st.sampled_from(["yes", "no", "red", "dark_blue"]))), Done(),
    ]))


@given(calls())
def test_parse_round_trip(call):
    text = str(call)
    assert parse(text) == call
    assert str(parse(text)) == text


@pytest.mark.parametrize("text,why", [
    ("", "empty"),
    ("fly obj_1", "unknown skill 'fly'"),
    ("pick", "wrong arguments"),
    ("pick red", "expected an object name"),
    ("pick obj_0", "expected an object name"),
    ("place obj_1 on obj_1", "on itself"),
    ("place obj_1 under obj_2", "expected 'on' or 'in'"),
    ("place obj_1 in table", "'on table'"),
    ("place obj_1 on table at x y", "on table at X Y"),
    ("push obj_1 to obj_1", "to itself"),
    ("push obj_1 sideways", "cannot read push target"),
    ("push obj_1 to middle left corner", "cannot read push target"),
    ("answer Yes!", "lower-case"),
    ("pick the magenta block", "unknown colour 'magenta'"),
    ("pick the red cube", "unknown kind 'cube'"),
    ("pick the red", "wrong arguments"),
    ("place the red block on the red block", "on itself"),
    ("push the red block to the big bowl", "unknown colour 'big'"),
    ("done now", "wrong arguments"),
])
def test_parse_rejects_with_reason(text, why):
    with pytest.raises(SkillParseError, match=why.replace("(", r"\(").replace(")", r"\)")):
        parse(text)


def test_registry_refuses_duplicates_and_unknown_choices():
    with pytest.raises(ValueError, match="already registered"):
        register_skill("pick", "scripted")(type("Again", (), {}))
    with pytest.raises(ValueError, match="no skill 'dreamed' for 'push'"):
        SkillLibrary({"push": "dreamed"})
    assert ("push", "learned") in registered_skills()  # the RLlib-trained push is registered by name


def _scene(*objects: str) -> dict[str, ObjectInfo]:
    """obj_1, obj_2, ... of the given "colour kind" pairs."""
    return {f"obj_{i}": ObjectInfo(f"obj_{i}", o.split()[1], o.split()[0], None, 0.0, 0.04, 0.04)
            for i, o in enumerate(objects, 1)}


def test_colour_references_resolve_to_the_one_object_that_fits():
    scene = _scene("red block", "blue block", "red block", "blue bowl")
    assert str(resolve(parse("place the blue block in the blue bowl"), scene)) == "place obj_2 in obj_4"
    assert str(resolve(parse("push the blue block to obj_3"), scene)) == "push obj_2 to obj_3"
    assert resolve(parse("pick obj_1"), scene) == parse("pick obj_1")
    with pytest.raises(UnresolvedObject, match="'the red block' is ambiguous: obj_1, obj_3 are red blocks"):
        resolve(parse("pick the red block"), scene)
    with pytest.raises(UnresolvedObject, match="there is no green block .objects: obj_1 red block, obj_2 blue"):
        resolve(parse("pick the green block"), scene)
    # only the references that resolve are offered
    assert colour_refs(scene) == {"obj_2": "the blue block", "obj_4": "the blue bowl"}


@pytest.fixture()
def world():
    w = World(seed=0)
    w.add_block("red", (0.50, 0.00))
    w.add_block("blue", (0.45, 0.15))
    w.add_block("green", (0.50, 0.00), z=0.06)  # on red
    w.add_bowl("yellow", (0.60, -0.15))
    w.settle(0.3)
    yield w
    w.close()


def test_impossible_calls_fail_cleanly(world):
    lib = SkillLibrary()
    robot = world.robot
    cases = [
        ("pick obj_9", "there is no obj_9"),
        ("pick obj_1", "obj_1 has obj_3 on it"),
        ("pick obj_4", "only blocks can be picked"),
        ("place obj_2 on obj_3", "not holding obj_2"),
        ("push obj_3 left", "not on the table"),
        ("grab obj_2", "unknown skill"),
    ]
    for text, why in cases:
        r = lib.run(text, robot)
        assert not r.success and why in r.message, (text, r.message)
        assert r.sim_time == 0.0
    r = lib.run("pick obj_2", robot)
    assert r.success and robot.held() == "obj_2" and r.sim_time > 0.5
    r = lib.run("pick obj_3", robot)
    assert not r.success and "already holding obj_2" in r.message
    r = lib.run("place obj_2 on obj_4", robot)
    assert not r.success and "is a bowl" in r.message


def test_pick_place_stack_and_bowl_for_real(world):
    lib = SkillLibrary()
    state = lambda: {s["name"]: s["on"] for s in world.state()}
    for text in ["pick obj_3", "place obj_3 on obj_2", "pick obj_1", "place obj_1 in obj_4"]:
        r = lib.run(text, world.robot)
        assert r.success, r.message
    assert state() == {"obj_1": "obj_4", "obj_2": "table", "obj_3": "obj_2", "obj_4": "table"}
    # The block rests on the blue one physically (no teleport): its height is one block up.
    pos = {s["name"]: s["position"] for s in world.state()}
    assert abs(pos["obj_3"][2] - 0.06) < 0.005


def test_push_moves_block_into_corner(world):
    lib = SkillLibrary()
    r = lib.run("push obj_2 to top left corner", world.robot)
    assert r.success, r.message
    x, y, _ = next(s["position"] for s in world.state() if s["name"] == "obj_2")
    assert x > 0.58 and y > 0.18


def test_an_object_off_the_table_is_out_of_reach(world):
    """A block knocked off the table's edge falls: a pick of it is refused at once, not chased."""
    import pybullet as p

    blue = next(o for o in world.objects if o.name == "obj_2")
    p.resetBasePositionAndOrientation(blue.body, (1.6, 0.0, -0.5), (0, 0, 0, 1), physicsClientId=world.client)
    r = SkillLibrary().run("pick obj_2", world.robot)
    assert not r.success and "obj_2 is out of reach" in r.message and r.sim_time == 0.0
