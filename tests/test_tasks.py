"""Every family's oracle solves its episodes in the real sim; specs generate deterministically."""

import pytest

from embodied_lm.evaluate import run_episode
from embodied_lm.planners import make_planner
from sim.tasks import FAMILIES, SEED_SPLITS, EpisodeSpec, build_episode, generate_specs
from sim.world import World


def test_eleven_families_registered():
    assert set(FAMILIES) == {"q1_color", "q2_on_table", "q3_on_object", "q4_feasible", "p1_grasp", "p2_stack",
                             "push_to_block", "push_sort_corners", "push_gather_side", "bowl_place", "bowl_match"}


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_oracle_solves_family(env, family):
    """Three L1 seeds, one 8-object L2 seed, one L4 (where the family has it), both reference styles."""
    specs = generate_specs([family], ["L1"], episodes=3, seed=7)
    specs += [s for s in generate_specs([family], ["L2"], episodes=2, seed=7) if s.n_objects == 8]
    if "L4" in FAMILIES[family].levels:
        specs += generate_specs([family], ["L4"], episodes=1, seed=7)
    specs += generate_specs([family], ["L3"], episodes=2, seed=7, refer="color")[:1]
    oracle = make_planner("oracle")
    for spec in specs:
        row = run_episode(env, oracle, spec)
        assert row.success and row.plan_success, (spec.to_json(), row.plan, row.messages)


def test_random_planner_is_far_below_oracle(env):
    specs = generate_specs(["p2_stack", "bowl_place", "q3_on_object"], ["L1"], episodes=4, seed=1)
    rnd = make_planner("random", seed=0)
    rate = sum(run_episode(env, rnd, s).success for s in specs) / len(specs)
    assert rate <= 0.5


def test_specs_are_deterministic_and_seed_splits_disjoint():
    a = generate_specs(episodes=3, seed=3)
    assert a == generate_specs(episodes=3, seed=3)
    assert a != generate_specs(episodes=3, seed=4)
    train = {s.seed for s in generate_specs(episodes=3, split="train")}
    test = {s.seed for s in a}
    lo, hi = SEED_SPLITS["test"]
    assert all(lo <= s < hi for s in test) and not train & test


def test_same_spec_builds_same_scene_and_instruction():
    spec = EpisodeSpec("p2_stack", {"order": ["red", "blue", "green"]}, 5, 17, None, "color", "L3")
    w1, w2 = World(), World()
    e1, e2 = build_episode(w1, spec), build_episode(w2, spec)
    assert e1.instruction == e2.instruction and "the red block" in e1.instruction
    assert w1.state() == w2.state()
    explicit = EpisodeSpec("p2_stack", {"order": ["red", "blue"]}, 3, 1, "Make a red-blue tower.")
    assert build_episode(w1, explicit).instruction == "Make a red-blue tower."


def test_instruction_control_can_fail():
    """benchmarks/instruction_control judges reversed and vague instructions on the same scene: the
    oracle, which reads the spec's params and not the instruction, builds the generated tower every
    time -- full marks as written and with the vague instruction, none reversed."""
    from benchmarks.instruction_control import run_control

    res = run_control(make_planner("oracle"), episodes=4, progress=False)
    assert res["as_written"] == 1.0 and res["vague"] == 1.0 and res["reversed"] == 0.0
    assert 0.0 <= res["floor"] <= 1.0 and res["episodes"] == 4
