"""Several worlds in one process must not interfere: interleaved runs equal solo runs."""

from embodied_lm.evaluate import run_episode
from embodied_lm.planners import make_planner
from sim.env import EnvConfig, TabletopEnv
from sim.tasks import generate_specs


def _trace(row):
    return row.plan, row.skill_success, row.success, row.sim_time


def test_two_worlds_interleaved_match_one_world_alone():
    specs = generate_specs(["p2_stack", "push_sort_corners", "bowl_match"], ["L1"], episodes=1, seed=2)
    cfg = EnvConfig(observe_images=False)
    solo_env = TabletopEnv(cfg)
    solo = [_trace(run_episode(solo_env, make_planner("oracle"), s)) for s in specs]
    solo_env.close()

    a, b = TabletopEnv(cfg), TabletopEnv(cfg)
    assert a.world.client != b.world.client
    inter_a, inter_b = [], []
    for s in specs:  # alternate episodes between the two worlds
        inter_a.append(_trace(run_episode(a, make_planner("oracle"), s)))
        inter_b.append(_trace(run_episode(b, make_planner("oracle"), s)))
    final_a, final_b = a.world.state(), b.world.state()
    a.close(), b.close()
    assert inter_a == solo and inter_b == solo
    assert final_a == final_b


def test_images_identical_across_worlds():
    cfg = EnvConfig()
    a, b = TabletopEnv(cfg), TabletopEnv(cfg)
    spec = {"task": "q1_color", "params": {"target": "red"}, "n_objects": 4, "seed": 9}
    oa, _ = a.reset(options={"spec": spec})
    b.reset(options={"spec": {**spec, "seed": 10}})  # a different scene in between
    ob, _ = b.reset(options={"spec": spec})
    for k in ("rgb_top", "depth_front", "mask_top", "objects"):
        assert (oa[k] == ob[k]).all(), k
    a.close(), b.close()
