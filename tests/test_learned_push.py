"""The learned push: its training env (check_env, contract with the robot), the exported policy (loads,
deterministic, clear errors), its registration, and the oracle planner driving it end to end."""

import json

import numpy as np
import pytest

import skills.learned


@pytest.fixture(scope="module")
def learned_skill():
    return skills.learned


@pytest.fixture(scope="module")
def policy(learned_skill):
    return learned_skill.load_policy()


@pytest.fixture(scope="module")
def push_env(learned_skill):
    from sim.push_env import PushEnv

    env = PushEnv({})
    yield env
    env.close()


def test_push_env_passes_check_env(push_env):
    from gymnasium.utils.env_checker import check_env

    check_env(push_env, skip_render_check=True)


def test_push_env_contract_matches_the_robot(learned_skill, push_env):
    from sim.robot import CONTROL_HZ

    assert learned_skill.CONTROL_HZ == CONTROL_HZ
    assert push_env.observation_space.shape == (learned_skill.OBS_DIM,)
    assert push_env.action_space.shape == (learned_skill.ACT_DIM,)
    assert pytest.approx(0.0125) == learned_skill.STEP_M
    obs, info = push_env.reset(seed=3)
    assert push_env.observation_space.contains(obs) and not info["success"]
    ee0 = push_env.robot.ee_position()
    assert ee0[2] == pytest.approx(0.022, abs=0.005)  # fingertips at block mid-height
    for _ in range(6):  # full speed along +x: 6 actions = 0.5 s = 7.5 cm commanded
        push_env.step(np.array([1.0, 0.0], np.float32))
    moved = push_env.robot.ee_position() - ee0
    assert 0.04 < moved[0] < 0.08 and abs(moved[1]) < 0.02 and abs(moved[2]) < 0.005


def test_push_env_rejects_unknown_config(learned_skill):
    from sim.push_env import PushEnv

    with pytest.raises(ValueError, match="unknown PushEnv config key"):
        PushEnv({"max_step": 10})


def test_exported_policy_loads_and_is_deterministic(learned_skill, policy, push_env):
    cfg = policy.config
    assert cfg["obs_names"] == list(learned_skill.OBS_NAMES) and cfg["act_dim"] == 2
    assert cfg["versions"]["ray"] and cfg["evaluation"][0]["episodes"] >= 100
    obs, _ = push_env.reset(seed=5)
    a1, a2 = policy.act(obs), policy.act(obs.copy())
    assert a1.shape == (2,) and a1.dtype == np.float32 and np.array_equal(a1, a2)
    assert np.all(np.abs(a1) <= 1.0)
    batch = np.stack([obs, obs])
    assert np.allclose(policy.act(batch), a1[None], atol=1e-6)
    # A fresh load gives the same action.
    assert np.array_equal(learned_skill.load_policy().act(obs), a1)


def test_policy_pushes_blocks_in_its_env(policy, push_env):
    wins = 0
    for seed in range(2_000_000, 2_000_010):
        obs, info = push_env.reset(seed=seed)
        done = False
        while not done:
            obs, _, term, trunc, info = push_env.step(policy.act(obs))
            done = term or trunc
        wins += info["success"]
    assert wins >= 6, f"{wins}/10 pushes reached their target"


def test_missing_or_mismatched_checkpoint_is_a_one_line_error(learned_skill, tmp_path):
    with pytest.raises(FileNotFoundError, match="train it with `python -m embodied_lm.rl.train_push`"):
        learned_skill.load_policy(tmp_path)
    src = learned_skill.CHECKPOINT_DIR
    cfg = json.loads((src / "config.json").read_text())
    (tmp_path / "policy.pt").write_bytes((src / "policy.pt").read_bytes())
    (tmp_path / "config.json").write_text(json.dumps(cfg | {"obs_names": cfg["obs_names"][:-1]}))
    with pytest.raises(ValueError, match="does not match this code") as e:
        learned_skill.load_policy(tmp_path)
    assert "\n" not in str(e.value)
    (tmp_path / "config.json").write_text(json.dumps(cfg | {"hiddens": [8]}))
    with pytest.raises(ValueError, match="do not fit its config.json"):
        learned_skill.load_policy(tmp_path)


def test_actor_export_mapping(learned_skill):
    import torch

    from embodied_lm.rl.train_push import actor_state_dict

    n, h = learned_skill.OBS_DIM, 8
    enc = "encoder.actor_encoder.net.mlp"
    state = {
        f"{enc}.0.weight": torch.randn(h, n), f"{enc}.0.bias": torch.randn(h),
        f"{enc}.2.weight": torch.randn(h, h), f"{enc}.2.bias": torch.randn(h),
        "encoder.critic_encoder.net.mlp.0.weight": torch.randn(h, n), "pi.net.mlp.0.weight": torch.randn(4, h),
        "pi.net.mlp.0.bias": torch.randn(4), "vf.net.mlp.0.weight": torch.randn(1, h),
    }
    net = learned_skill.build_policy_mlp(n, [h, h], 2)
    net.load_state_dict(actor_state_dict(state, 2))  # strict: every key present, shapes fit
    assert torch.equal(net[4].weight, state["pi.net.mlp.0.weight"][:2])


def test_learned_push_is_registered(learned_skill):
    from skills import SkillLibrary, registered_skills

    assert ("push", "learned") in registered_skills()
    lib = SkillLibrary({"push": "learned"})
    assert isinstance(lib.skills["push"], learned_skill.LearnedPush)
    assert type(lib.skills["pick"]).__name__ == "ScriptedPick"


def test_oracle_with_learned_push_runs_push_to_block(learned_skill, capsys):
    from embodied_lm.evaluate import run_episode
    from embodied_lm.planners import make_planner
    from sim.env import EnvConfig, TabletopEnv
    from sim.tasks import EpisodeSpec

    env = TabletopEnv(EnvConfig(skills={"push": "learned"}, observe_images=False))
    try:
        spec = EpisodeSpec.from_dict({"task": "push_to_block", "params": {"block": "red", "target": "blue"},
                                      "n_objects": 3, "seed": 7})
        row = run_episode(env, make_planner("oracle"), spec)
    finally:
        env.close()
    assert 1 <= row.steps <= 3 * 3 + 4  # terminated or truncated at the family's step limit
    assert row.plan[0].startswith("push obj_")
    with capsys.disabled():
        print(f"\n[learned push] push_to_block seed 7: success={row.success} plan={row.plan} "
              f"sim_time={row.sim_time:.1f}s wall={row.wall_s:.1f}s")


@pytest.mark.slow
def test_exported_policy_succeeds_on_100_episodes(learned_skill, policy):
    from embodied_lm.rl.train_push import evaluate

    ev = evaluate(policy, 100, policy.config["env_config"], "fast", seed0=3_000_000)
    assert ev["success_rate"] >= 0.8, ev
