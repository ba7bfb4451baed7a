"""The gymnasium env: check_env, observation contents, failed steps instead of exceptions."""

import gymnasium
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import sim  # noqa: F401  (registers Tabletop-v0)
from sim.env import EnvConfig, TabletopEnv
from sim.world import WorldConfig
from skills.vocab import Col


@pytest.fixture(scope="module")
def env():
    e = TabletopEnv(EnvConfig(world=WorldConfig(image_size=(64, 64))))
    yield e
    e.close()


def test_check_env_passes():
    env = gymnasium.make("Tabletop-v0")
    check_env(env.unwrapped, skip_render_check=True)
    env.close()


def test_observation_has_images_depth_masks_and_states(env):
    obs, info = env.reset(options={"spec": {"task": "p2_stack", "params": {"order": ["red", "blue"]},
                                            "n_objects": 3, "seed": 11}})
    assert env.observation_space.contains(obs)
    assert obs["rgb_top"].shape == (64, 64, 3) and obs["rgb_top"].std() > 5
    depth = obs["depth_top"]
    assert 0.9 < depth.max() < 1.1 and depth.min() > 0.8  # table ~1 m below the top camera, blocks closer
    ids = set(np.unique(obs["mask_top"])) - {0, -1}
    assert ids == {1, 2, 3}  # every block is visible from the top
    objects = obs["objects"]
    assert objects[:3, Col.PRESENT].tolist() == [1, 1, 1] and objects[3:, Col.PRESENT].sum() == 0
    assert "obj_" in obs["instruction"] and info["spec"]["task"] == "p2_stack"


def test_bad_actions_are_failed_steps(env):
    env.reset(seed=0)
    for action in ["", "jump", "pick obj_99", "place obj_1 on obj_1", "x" * 100]:
        _, reward, terminated, _, info = env.step(action)
        assert reward == 0.0 and not terminated and info["skill_success"] is False and info["message"]


def test_oracle_episode_terminates_with_reward(env):
    obs, info = env.reset(options={"spec": {"task": "p1_grasp", "params": {"target": "red"}, "n_objects": 4,
                                            "seed": 5}})
    for _ in range(info["max_steps"]):
        obs, reward, terminated, truncated, info = env.step(env.oracle_action())
        if terminated or truncated:
            break
    assert terminated and reward == 1.0 and info["held"] is not None


def test_valid_actions_all_possible(env):
    env.reset(options={"spec": {"task": "bowl_place", "params": {"block": "red", "bowl": "blue"},
                                "n_objects": 4, "seed": 3}})
    acts = env.valid_actions()
    assert "done" in acts and any(a.startswith("pick") for a in acts) and any(a.startswith("push") for a in acts)
    assert not any(a.startswith("place") for a in acts)  # nothing held yet


def test_calls_naming_objects_by_colour_act_on_that_object(env):
    """ "put the red block in the blue bowl" acts on those objects; a reference that fits no object is a
    failed step that says why and moves nothing; valid_actions(by_colour=True) offers only references
    that resolve, each the same call as one of valid_actions()."""
    env.reset(options={"spec": {"task": "bowl_place", "params": {"block": "red", "bowl": "blue"},
                                "n_objects": 4, "seed": 3}})
    assert {n: f"{o.color} {o.kind}" for n, o in env.world.object_infos().items()} == {
        "obj_1": "red block", "obj_2": "blue bowl", "obj_3": "brown block", "obj_4": "red bowl"}
    named = env.valid_actions(by_colour=True)
    assert "pick the brown block" in named and all("obj_" not in a for a in named)
    assert {env._resolve(a) for a in named} <= set(env.valid_actions())
    _, _, _, _, info = env.step("pick the red block")
    assert info["skill_success"] and info["held"] == "obj_1"
    for bad, why in [("place the red block in the green bowl", "there is no green bowl (objects: obj_1 red block"),
                     ("place the white block on table", "there is no white block")]:
        _, _, _, _, info = env.step(bad)
        assert not info["skill_success"] and why in info["message"] and info["physics_steps"] == 0
    _, _, _, _, info = env.step("place the red block in the blue bowl")
    assert info["skill_success"] and env.success()


def test_depth_intrinsics_extrinsics_back_project_onto_blocks(env):
    """Pixels of obj_k's mask, back-projected with K and world_from_camera, land on obj_k (both cameras)."""
    obs, _ = env.reset(options={"spec": {"task": "q1_color", "params": {"target": "red"}, "n_objects": 3,
                                         "seed": 2}})
    state = {s["name"]: np.array(s["position"]) for s in env.world.state()}
    for cam in ("top", "front"):
        params = env.world.camera_params(cam)
        K, T = np.array(params["K"]), np.array(params["world_from_camera"])
        mask, depth = obs[f"mask_{cam}"], obs[f"depth_{cam}"]
        for k, name in enumerate(sorted(state, key=lambda n: int(n.split("_")[1])), start=1):
            v, u = np.nonzero(mask == k)
            if len(u) < 3:
                continue  # occluded from this camera
            z = depth[v, u]
            x, y = (u + 0.5 - K[0, 2]) * z / K[0, 0], (v + 0.5 - K[1, 2]) * z / K[1, 1]
            pts = np.stack([x, y, z, np.ones_like(z)])  # (4, P) homogeneous, camera frame
            world = (T @ pts)[:3].mean(axis=1)
            assert np.linalg.norm(world[:2] - state[name][:2]) < 0.02, (cam, name, world, state[name])
            assert abs(world[2] - state[name][2]) < 0.025, (cam, name, world)  # visible faces
