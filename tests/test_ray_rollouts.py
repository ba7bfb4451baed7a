"""Parallel rollouts on Ray actors equal serial ones; recording from workers; killed workers.

One small local Ray (2 CPUs) for the whole session.  Run with ``pytest -m ray tests/test_ray_rollouts.py``.
"""

from __future__ import annotations

import os
import signal
import threading
import time

import numpy as np
import pytest

from embodied_lm.evaluate import evaluate
from sim.env import EnvConfig, TabletopEnv
from sim.tasks import generate_specs

pytestmark = [pytest.mark.ray, pytest.mark.timeout(180)]

ray = pytest.importorskip("ray")
from embodied_lm.distributed import RolloutError, episode_planner, row_trace, run_parallel  # noqa: E402

# 8 families (questions, pick/place, push, bowls); index 3 is a multi-step p2_stack (killed below)
FAMILIES = ["q1_color", "p1_grasp", "push_to_block", "p2_stack", "q3_on_object", "bowl_match",
            "push_sort_corners", "q4_feasible"]
STATE_ONLY = EnvConfig(observe_images=False)


@pytest.fixture(scope="module")
def specs():
    by_family = {s.task: s for s in generate_specs(FAMILIES, ["L1"], episodes=1, seed=11)}
    return [by_family[f] for f in FAMILIES]


def _serial(specs, planner, kwargs, env_config=STATE_ONLY, recorder=None):
    env = TabletopEnv(env_config)
    try:
        return evaluate(env, episode_planner(planner, kwargs), specs, recorder, progress=False)
    finally:
        env.close()


@pytest.fixture(scope="module")
def serial_oracle(specs):
    return _serial(specs, "oracle", {})


def _pid_gone(pid: int, wait_s: float = 10.0) -> bool:
    end = time.monotonic() + wait_s
    while time.monotonic() < end:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.1)
    return False


@pytest.mark.parametrize("planner", ["oracle", "random"])
def test_parallel_equals_serial(ray_session, specs, serial_oracle, planner):
    kwargs = {"seed": 3}
    if planner == "random":  # random episodes run to the step limit (~3-7 s each here): fewer of them
        specs = [specs[i] for i in (0, 1, 3, 4, 7)]  # q1, p1_grasp, p2_stack, q3, q4
    serial = serial_oracle if planner == "oracle" else _serial(specs, planner, kwargs)
    rows, stats = run_parallel(specs, planner, kwargs, STATE_ONLY, num_workers=2, progress=False)
    assert [r.spec for r in rows] == [s.to_dict() for s in specs]  # spec order, whoever ran them
    assert [row_trace(r) for r in rows] == [row_trace(r) for r in serial]
    assert stats["workers"] == 2 and stats["retries"] == 0 and stats["episodes"] == len(specs)
    if planner == "oracle":
        assert all(r.success for r in rows)
    else:  # per-episode reseeding: an episode's random plan does not depend on what ran before it
        assert sum(r.success for r in rows) < len(rows)
        alone = _serial(specs[2:3], planner, kwargs)  # p2_stack without the two episodes before it
        assert row_trace(alone[0]) == row_trace(serial[2])


def test_recording_from_workers_equals_serial(ray_session, specs, tmp_path):
    from embodied_lm.datasets import ReplayReader, ReplayWriter

    cfg = EnvConfig(observe_images=True)
    chosen = [specs[3], specs[0], specs[6], specs[5]]  # p2_stack, q1_color, push_sort_corners, bowl_match
    with ReplayWriter(tmp_path / "serial.zarr", attrs={"run": "x"}) as w:
        serial = _serial(chosen, "oracle", {}, cfg, recorder=w)
    with ReplayWriter(tmp_path / "parallel.zarr", attrs={"run": "x"}) as w:
        # the first episode's worker dies once, so later episodes finish first and must wait to be written
        rows, stats = run_parallel(chosen, "oracle", {}, cfg, num_workers=2, recorder=w, progress=False,
                                   fault_injection={0: 1})
    assert stats["retries"] == 1 and stats["out_of_order"] >= 1 and stats["max_buffered"] >= 2
    assert [row_trace(r) for r in rows] == [row_trace(r) for r in serial]

    a, b = ReplayReader(tmp_path / "serial.zarr"), ReplayReader(tmp_path / "parallel.zarr")
    assert a.n_episodes == b.n_episodes == len(chosen)
    np.testing.assert_array_equal(a.episode_ends, b.episode_ends)
    assert a.keys == b.keys and a.meta_keys == b.meta_keys and "rgb_top" in a.keys
    for i in range(a.n_episodes):
        ea, eb = a.episode(i), b.episode(i)
        assert ea.meta == eb.meta and ea.meta["seed"] == chosen[i].seed
        for k in a.keys:
            assert ea.data[k].dtype == eb.data[k].dtype, k
            np.testing.assert_array_equal(ea.data[k], eb.data[k], err_msg=f"episode {i} {k}")
    assert a.episode(0).data["rgb_top"].any()  # real images, not the state-only zeros


def test_killed_workers_are_replaced_and_episodes_rerun(ray_session, specs, serial_oracle):
    killed: list[int] = []

    def kill_spec_3(d):  # SIGKILL the worker process from outside, just after spec 3 was handed to it
        if d.spec_index == 3 and d.attempt == 0:
            def kill():
                pid = d.pid()
                time.sleep(0.05)
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)

            threading.Thread(target=kill, daemon=True).start()

    rows, stats = run_parallel(specs, "oracle", {}, STATE_ONLY, num_workers=2, progress=False,
                               on_dispatch=kill_spec_3, fault_injection={6: 1})  # spec 6 kills itself
    assert len(rows) == len(specs) and [r.spec for r in rows] == [s.to_dict() for s in specs]
    assert [r.success for r in rows] == [r.success for r in serial_oracle]
    assert [row_trace(r) for r in rows] == [row_trace(r) for r in serial_oracle]
    assert stats["retries"] >= 2 and {3, 6} <= set(stats["retried_specs"])
    assert stats["workers_started"] == 2 + stats["retries"]
    assert killed and _pid_gone(killed[0])


def test_retry_bound_and_startup_errors_fail_fast(ray_session, specs):
    with pytest.raises(RolloutError, match=r"spec 0 .*max_retries=0"):
        run_parallel(specs[3:4], "oracle", {}, STATE_ONLY, num_workers=1, progress=False,
                     fault_injection={0: 1}, max_retries=0)
    with pytest.raises(RolloutError, match="could not start"):  # not retried: it would fail again
        run_parallel(specs[:2], "oracle", {"no_such_arg": 1}, STATE_ONLY, num_workers=1, progress=False)
    with pytest.raises(ValueError, match="do not fit"):  # instead of waiting forever for CPUs
        run_parallel(specs, "oracle", {}, STATE_ONLY, num_workers=3, progress=False)


@pytest.mark.timeout(600)
def test_groups_on_workers_equal_serial_and_a_dead_group_reruns(ray_session, specs, serial_oracle, tmp_path):
    """``batch``: each worker takes a group of consecutive specs.  The oracle runs its group one episode
    at a time; the embodied LM (a tiny checkpoint) side by side, decoded in one batch.  Rows equal the
    serial ones; a worker that dies re-runs its whole group."""
    import torch

    from embodied_lm.model import EmbodiedLM, ModelConfig
    from embodied_lm.train import TrainConfig, save_checkpoint

    rows, stats = run_parallel(specs, "oracle", {}, STATE_ONLY, num_workers=2, progress=False, batch=3,
                               fault_injection={3: 1})  # p2_stack: its worker dies after one step
    assert [row_trace(r) for r in rows] == [row_trace(r) for r in serial_oracle]
    assert stats["worker_deaths"] == 1 and stats["retried_specs"] == [3, 4, 5]  # groups [0 1 2] [3 4 5] [6] [7]

    model = EmbodiedLM(ModelConfig(backbone="tiny", sensors="state", mode="full"), seed=1)
    ckpt = save_checkpoint(model, torch.optim.AdamW(model.parameters()), TrainConfig(),
                           {"step": 0, "losses": [], "tokens": 0, "train_s": 0.0}, tmp_path / "checkpoint")
    kwargs = {"checkpoint": str(ckpt), "precision": "fp32"}
    chosen = [specs[i] for i in (0, 1, 4, 7)]  # q1, p1_grasp, q3, q4
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each worker: fp32 sums follow the thread count
    try:
        serial = _serial(chosen, "embodied_lm", kwargs)
    finally:
        torch.set_num_threads(threads)
    rows, _ = run_parallel(chosen, "embodied_lm", kwargs, STATE_ONLY, num_workers=2, progress=False, batch=3)
    assert [row_trace(r) for r in rows] == [row_trace(r) for r in serial]
