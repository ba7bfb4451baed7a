"""``PushEnv``: continuous control of the low-level push skill, for RL (RLlib PPO in ``embodied_lm.rl``).

One block (plus 0-2 other blocks) on the table and a target point 5-20 cm away.  The closed gripper
starts with its fingertips at block mid-height (``PUSH_Z``) 4.5-6.5 cm behind the block (within +-45 deg
of the push line, where ``LearnedPush`` puts it); each action is a planar fingertip velocity in the push
frame (along / across the block-to-target line) in [-1, 1]^2, at most 0.15 m/s, held for 4 waypoints at
the robot's ``CONTROL_HZ`` (48 Hz; joint targets from the Panda's IK, tracked by its joint position
controllers for 5 physics steps of 1/240 s each), i.e. the policy acts at 12 Hz.  The observation contract
(``skills.learned.push_observation``) is shared with the skill that runs the trained policy.

Reward: 20 x (decrease of the block-target distance) + 2 x (decrease of the fingertip distance to the
pushing spot behind the block) - 0.01 per step, +5 and termination when the block centre is within 2 cm
of the target, -1 and termination when the block tips over or leaves the table top.  Episodes are
truncated after ``max_steps`` actions (60 = 5 s of robot time).

``control="move_ee"`` drives every action through ``PandaRobot.move_ee`` exactly as ``LearnedPush`` does
through the ``Robot`` protocol (move, then converge to within 3 mm) — slower, used to measure the gap
between the training dynamics and deployment.
"""

from __future__ import annotations

import math
from typing import Any

import gymnasium as gym
import numpy as np
import pybullet as p
from gymnasium import spaces

from sim.robot import ARM, CONTROL_HZ, FINGERS, REST
from sim.world import BLOCK_SIZE, World, WorldConfig
from skills.learned import (
    ACT_DIM,
    BEHIND,
    MAX_SPEED,
    OBS_DIM,
    SUCCESS_TOL,
    WAYPOINTS_PER_ACTION,
    action_to_world,
    clip_to_workspace,
    hand_yaw,
    push_observation,
)
from skills.scripted import PUSH_Z

DEFAULTS: dict[str, Any] = {
    "max_steps": 60,  # actions per episode (12 Hz)
    "dist_range": (0.05, 0.20),  # initial block-target distance (m)
    "max_distractors": 2,  # 0..max other blocks, sampled uniformly per episode
    "near_target_prob": 0.5,  # first other block sits just beyond the target (as in push_to_block)
    "start_angle": 45.0,  # fingertips start within +-this many degrees of straight behind the block
    "around_prob": 0.0,  # ... or, with this probability, anywhere around it (0: the skill always starts behind)
    "start_dist": (0.045, 0.065),  # fingertips' initial distance from the block centre (m)
    "control": "fast",  # "fast" (setpoint integration, no convergence wait) | "move_ee" (as deployed)
    "move_ee_prob": 0.0,  # with control="fast": share of episodes driven through move_ee instead (robustness)
    "success_bonus": 5.0,
    "progress_scale": 20.0,
    "approach_scale": 2.0,
    "step_cost": 0.01,
    "fail_penalty": 1.0,
}
PARK = [(1.2, 0.7), (1.2, -0.7)]  # unused blocks wait here, out of the arm's reach
WINDUP = 0.02  # the commanded fingertip point stays within this of the real one (blocked arm, no wind-up)
EDGE = -0.03  # fingertips may go this far outside the workspace (a block at the edge is pushed from outside)


class PushEnv(gym.Env):
    metadata = {"render_modes": []}

    def __init__(self, config: dict[str, Any] | None = None):
        cfg = dict(DEFAULTS)
        unknown = set(config or {}) - set(DEFAULTS)
        if unknown:
            raise ValueError(f"unknown PushEnv config key(s) {sorted(unknown)}; known: {sorted(DEFAULTS)}")
        cfg.update(config or {})
        if cfg["control"] not in ("fast", "move_ee"):
            raise ValueError(f"PushEnv control must be 'fast' or 'move_ee', got {cfg['control']!r}")
        if not 0.0 <= float(cfg["move_ee_prob"]) <= 1.0:
            raise ValueError(f"PushEnv move_ee_prob must be in [0, 1], got {cfg['move_ee_prob']}")
        if not 0 <= int(cfg["max_distractors"]) <= len(PARK):
            raise ValueError(f"PushEnv max_distractors must be in 0..{len(PARK)}, got {cfg['max_distractors']}")
        self.cfg = cfg
        self.observation_space = spaces.Box(-10.0, 10.0, (OBS_DIM,), np.float32)
        self.action_space = spaces.Box(-1.0, 1.0, (ACT_DIM,), np.float32)
        self.world = World(WorldConfig(cameras=()), seed=0)
        self.robot = self.world.robot
        self.ws = self.world.config.workspace
        self.block = self.world.add_block("red", (0.5, 0.0))
        self.others = [self.world.add_block(c, xy) for c, xy in zip(("blue", "green"), PARK, strict=False)]
        self._bodies = {o.name: o.body for o in self.world.objects}
        self._substeps = max(1, int(round(1.0 / (CONTROL_HZ * self.world.config.time_step))))
        self._active: list[str] = []
        self._steps = 0
        self._control = cfg["control"]

    # -- gymnasium API ----------------------------------------------------------------------------
    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        rng = self.np_random
        self._forget_contacts()
        block, target = self._sample_block_target(rng)
        u = (target - block) / np.linalg.norm(target - block)
        self.yaw = hand_yaw(u)
        self.target = target
        base = math.atan2(-u[1], -u[0])
        off = rng.uniform(-math.pi, math.pi) if rng.random() < self.cfg["around_prob"] else \
            math.radians(rng.uniform(-self.cfg["start_angle"], self.cfg["start_angle"]))
        r = rng.uniform(*self.cfg["start_dist"])
        ee = block + r * np.array([math.cos(base + off), math.sin(base + off)])
        ee = clip_to_workspace(ee, self.ws, EDGE)
        self._place(self.block, block, rng.uniform(-math.pi / 4, math.pi / 4))
        self._active = []
        n = int(rng.integers(0, int(self.cfg["max_distractors"]) + 1))
        for i, name in enumerate(self.others):
            xy = self._sample_other(rng, block, target, u, ee, first=i == 0) if i < n else None
            if xy is None:
                self._place(name, np.array(PARK[i]), 0.0)
            else:
                self._place(name, xy, rng.uniform(-math.pi / 4, math.pi / 4))
                self._active.append(name)
        self._place_robot(ee)
        self._control = self.cfg["control"]
        if self._control == "fast" and self.cfg["move_ee_prob"] > 0 and rng.random() < self.cfg["move_ee_prob"]:
            self._control = "move_ee"
        self._steps = 0
        d_bt, d_e = self._distances()
        self._prev = (d_bt, d_e)
        return self._obs(), {"success": False, "distance": d_bt}

    def step(self, action):
        step = action_to_world(action, self._block_pos()[:2], self.target)
        if self._control == "move_ee":
            ee = self.robot.ee_position()
            nxt = clip_to_workspace(ee[:2] + step, self.ws, EDGE)
            self.robot.move_ee(np.array([nxt[0], nxt[1], PUSH_Z]), self.yaw, speed=MAX_SPEED)
        else:
            self._drive(step)
        self._steps += 1
        d_bt, d_e = self._distances()
        c = self.cfg
        reward = c["progress_scale"] * (self._prev[0] - d_bt) + c["approach_scale"] * (self._prev[1] - d_e)
        reward -= c["step_cost"]
        self._prev = (d_bt, d_e)
        pos = self._block_pos()
        success = d_bt < SUCCESS_TOL
        failed = pos[2] > BLOCK_SIZE / 2 + 0.01 or not self.ws.contains(pos[:2], EDGE)
        if success:
            reward += c["success_bonus"]
        elif failed:
            reward -= c["fail_penalty"]
        terminated = bool(success or failed)
        truncated = bool(not terminated and self._steps >= c["max_steps"])
        return self._obs(), float(reward), terminated, truncated, {"success": bool(success), "distance": d_bt}

    def close(self) -> None:
        self.world.close()

    # -- internals ----------------------------------------------------------------------------------
    def _drive(self, step: np.ndarray) -> None:
        """Move the commanded fingertip point by ``step`` (m): one IK solve for where it ends, joint targets
        interpolated over 4 waypoints at the robot's control rate (48 Hz, 5 physics steps each).  Over
        12.5 mm this matches ``move_ee``'s per-waypoint IK to well under a millimetre at a quarter of the
        IK cost (IK is the most expensive part of a step)."""
        ee = self.robot.ee_position()[:2]
        new = clip_to_workspace(self._sp + step, self.ws, EDGE)
        off = new - ee
        n = float(np.linalg.norm(off))
        if n > WINDUP:
            new = ee + off * (WINDUP / n)
        orn = p.getQuaternionFromEuler([math.pi, 0.0, self.yaw])
        q0 = np.asarray(self.robot._arm_target, dtype=float)
        q1 = np.asarray(self.robot._ik(np.array([new[0], new[1], PUSH_Z]), orn), dtype=float)
        for k in range(1, WAYPOINTS_PER_ACTION + 1):
            self.robot._arm_target = list(q0 + (q1 - q0) * k / WAYPOINTS_PER_ACTION)
            self.robot._apply()
            self.world.step(self._substeps)
        self._sp = new

    def _sample_block_target(self, rng) -> tuple[np.ndarray, np.ndarray]:
        lo, hi = self.cfg["dist_range"]
        for _ in range(1000):
            block = rng.uniform([self.ws.x[0] + 0.04, self.ws.y[0] + 0.04],
                                [self.ws.x[1] - 0.04, self.ws.y[1] - 0.04])
            phi = rng.uniform(-math.pi, math.pi)
            target = block + rng.uniform(lo, hi) * np.array([math.cos(phi), math.sin(phi)])
            if self.ws.contains(target, 0.03):
                return block, target
        raise RuntimeError("could not sample a push target inside the workspace")

    def _sample_other(self, rng, block, target, u, ee, first: bool) -> np.ndarray | None:
        if first and rng.random() < self.cfg["near_target_prob"]:
            phi = math.atan2(u[1], u[0]) + rng.uniform(-math.pi / 3, math.pi / 3)
            xy = target + 0.055 * np.array([math.cos(phi), math.sin(phi)])
            if self.ws.contains(xy, 0.0) and self._clear(xy, block, ee, 0.06):
                return xy
        for _ in range(50):
            xy = rng.uniform([self.ws.x[0] + 0.02, self.ws.y[0] + 0.02],
                             [self.ws.x[1] - 0.02, self.ws.y[1] - 0.02])
            if (self._clear(xy, block, ee, 0.07) and _seg_dist(xy, block, target) > 0.06
                    and float(np.linalg.norm(xy - target)) > 0.055):
                return xy
        return None

    def _clear(self, xy, block, ee, r) -> bool:
        taken = [block, ee] + [self._block_pos(n)[:2] for n in self._active]
        return all(float(np.linalg.norm(xy - q)) > r for q in taken)

    def _forget_contacts(self) -> None:
        """Lift every block far apart and run collision detection: the broadphase drops their contact
        manifolds, so no warm-start impulse from the last episode leaks into this one (``check_env``'s
        determinism check catches that)."""
        c = self.world.client
        for i, body in enumerate(self._bodies.values()):
            p.resetBasePositionAndOrientation(body, [10.0 + i, 10.0, 5.0], [0, 0, 0, 1], physicsClientId=c)
        p.performCollisionDetection(physicsClientId=c)

    def _place(self, name: str, xy: np.ndarray, yaw: float) -> None:
        body = self._bodies[name]
        c = self.world.client
        p.resetBasePositionAndOrientation(body, [float(xy[0]), float(xy[1]), BLOCK_SIZE / 2],
                                          p.getQuaternionFromEuler([0, 0, float(yaw)]), physicsClientId=c)
        p.resetBaseVelocity(body, [0, 0, 0], [0, 0, 0], physicsClientId=c)

    def _place_robot(self, ee_xy: np.ndarray) -> None:
        """Put the arm (fingers closed) at the start pose directly, then let it settle briefly."""
        r, c = self.robot, self.world.client
        pos = np.array([ee_xy[0], ee_xy[1], PUSH_Z])
        orn = p.getQuaternionFromEuler([math.pi, 0.0, self.yaw])
        for j, q in zip(ARM, REST, strict=False):
            p.resetJointState(r.body, j, q, physicsClientId=c)
        for j in FINGERS:
            p.resetJointState(r.body, j, 0.0, physicsClientId=c)
        for _ in range(4):  # IK from the current joints: iterate to converge on the exact pose
            q = r._ik(pos, orn)
            for j, v in zip(ARM, q, strict=False):
                p.resetJointState(r.body, j, v, physicsClientId=c)
        r._arm_target, r._finger_target = q, 0.0
        r._apply()
        self.world.step(2 * self._substeps)
        self._sp = np.asarray(ee_xy, dtype=float).copy()

    def _block_pos(self, name: str | None = None) -> np.ndarray:
        body = self._bodies[name or self.block]
        return np.array(p.getBasePositionAndOrientation(body, physicsClientId=self.world.client)[0])

    def _distances(self) -> tuple[float, float]:
        blk = self._block_pos()[:2]
        d = self.target - blk
        dist = float(np.linalg.norm(d))
        spot = blk - d / max(dist, 1e-9) * BEHIND  # where the fingertips should be to push it there
        return dist, float(np.linalg.norm(self.robot.ee_position()[:2] - spot))

    def _obs(self) -> np.ndarray:
        c = self.world.client
        pos, quat = p.getBasePositionAndOrientation(self._bodies[self.block], physicsClientId=c)
        yaw = p.getEulerFromQuaternion(quat)[2]
        others = [self._block_pos(n)[:2] for n in self._active]
        obs = push_observation(self.robot.ee_position()[:2], np.array(pos[:2]), yaw, self.target, self.yaw, others)
        return np.clip(obs, -10.0, 10.0)


def _seg_dist(q: np.ndarray, a: np.ndarray, b: np.ndarray) -> float:
    d = b - a
    t = float(np.clip((q - a) @ d / max(float(d @ d), 1e-12), 0.0, 1.0))
    return float(np.linalg.norm(q - (a + t * d)))
