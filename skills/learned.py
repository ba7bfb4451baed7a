"""A learned push skill: an RL policy (trained with RLlib PPO in ``sim.push_env``) that steers the closed
gripper at block mid-height, one small planar move at a time, until the block reaches a goal spot.

What lives here (``skills/`` imports neither ``sim/`` nor ``embodied_lm/``, so both of them import it):

* the policy's observation and action contract (``push_observation``, ``OBS_NAMES``, ``STEP_M`` ...), shared
  by the training env and the skill so the two can never drift apart;
* the exported policy: a plain torch MLP (``build_policy_mlp``) whose weights are the RLModule's actor
  (encoder + mean rows of the action head), loaded from ``skills/checkpoints/push_policy/``;
* ``LearnedPush``, registered as ``("push", "learned")``.  It resolves a push call to a goal spot exactly as
  the scripted push does (it asks a ``ScriptedPush`` for ``goal``/``done``), then runs the policy
  closed-loop through the ``Robot`` protocol (``move_ee`` steps at the policy rate).

torch is imported only when the policy is first loaded: importing ``skills`` stays cheap.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from skills.calls import Push
from skills.library import register_skill
from skills.robot import ObjectInfo, Robot, Workspace
from skills.scripted import PUSH_SPEED, PUSH_Z, TRAVEL_Z, ScriptedPush

CHECKPOINT_DIR = Path(__file__).resolve().parent / "checkpoints" / "push_policy"
FORMAT = 1  # bump when the observation/action contract below changes

# -- the observation / action contract ------------------------------------------------------------
CONTROL_HZ = 48  # IK waypoint rate of the robot's move_ee (sim.robot.CONTROL_HZ; checked by a test)
WAYPOINTS_PER_ACTION = 4  # the policy acts at CONTROL_HZ / 4 = 12 Hz
POLICY_HZ = CONTROL_HZ / WAYPOINTS_PER_ACTION
MAX_SPEED = PUSH_SPEED  # m/s at |action| = 1 (0.15, as the scripted push strokes)
STEP_M = MAX_SPEED / POLICY_HZ  # planar fingertip displacement per action at full speed (12.5 mm)
SUCCESS_TOL = 0.02  # block centre within 2 cm of the target point
MAX_TARGET_DIST = 0.15  # the skill feeds the policy a target at most this far ahead of the block
BEHIND = 0.045  # the skill drops the fingertips this far behind the block centre (as the scripted push)
NEIGHBOUR_RADIUS = 0.15  # other blocks closer than this to the pushed block are observed
N_NEIGHBOURS = 2
CENTRE = np.array([0.5, 0.0])  # workspace centre: absolute positions are observed relative to it
POS_SCALE = 5.0  # absolute positions: +-0.2 m -> +-1
REL_SCALE = 10.0  # relative vectors: +-0.1 m -> +-1

# Observation and action live mostly in the *push frame*: x along (target - block), y to its left.  The
# push looks the same in every direction and at every place on the table, so the policy learns one
# controller instead of one per heading; absolute positions stay in (world frame) for the table edges.
OBS_NAMES: tuple[str, ...] = (
    "ee_x", "ee_y", "block_x", "block_y", "target_x", "target_y",  # world frame, relative to CENTRE
    "frame_sin", "frame_cos",  # heading of the push frame in the world
    "block_sin4yaw", "block_cos4yaw", "hand_sin2yaw", "hand_cos2yaw",  # yaws relative to the push frame
    "block_minus_ee_u", "block_minus_ee_v", "target_dist",  # push frame
    *(f"nb{i}_{k}" for i in range(1, N_NEIGHBOURS + 1) for k in ("u", "v", "present")),
)
OBS_DIM = len(OBS_NAMES)
ACT_DIM = 2  # fingertip planar velocity (along, across) the push frame; world speed = min(|a|, 1) * MAX_SPEED


def hand_yaw(direction: np.ndarray) -> float:
    """Gripper yaw for pushing along ``direction``: fingers side by side across it (as the scripted push),
    mapped to [-45 deg, 45 deg)."""
    a = math.atan2(float(direction[1]), float(direction[0])) + math.pi / 2
    return (a + math.pi / 4) % (math.pi / 2) - math.pi / 4


def push_frame(block_xy: np.ndarray, target_xy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Unit vectors (u, v): u from the block towards the target, v = u turned 90 deg to the left."""
    d = np.asarray(target_xy, dtype=float)[:2] - np.asarray(block_xy, dtype=float)[:2]
    n = float(np.linalg.norm(d))
    u = d / n if n > 1e-9 else np.array([1.0, 0.0])
    return u, np.array([-u[1], u[0]])


def push_observation(ee_xy: np.ndarray, block_xy: np.ndarray, block_yaw: float, target_xy: np.ndarray,
                     yaw: float, others: list[np.ndarray] | tuple = ()) -> np.ndarray:
    """The policy input (float32, ``OBS_NAMES`` order).  ``yaw``: the gripper's yaw; ``others``: xy of the
    other blocks on the table, of which the ``N_NEIGHBOURS`` nearest to the pushed block within
    ``NEIGHBOUR_RADIUS`` are observed."""
    ee_xy, block_xy, target_xy = (np.asarray(v, dtype=float)[:2] for v in (ee_xy, block_xy, target_xy))
    u, v = push_frame(block_xy, target_xy)
    th = math.atan2(u[1], u[0])
    nb = sorted((np.asarray(q, dtype=float)[:2] - block_xy for q in others), key=lambda d: float(d @ d))
    nb_feats: list[float] = []
    for i in range(N_NEIGHBOURS):
        if i < len(nb) and float(np.linalg.norm(nb[i])) < NEIGHBOUR_RADIUS:
            nb_feats += [REL_SCALE * float(nb[i] @ u), REL_SCALE * float(nb[i] @ v), 1.0]
        else:
            nb_feats += [0.0, 0.0, 0.0]
    rel = block_xy - ee_xy
    obs = [
        *(POS_SCALE * (ee_xy - CENTRE)), *(POS_SCALE * (block_xy - CENTRE)), *(POS_SCALE * (target_xy - CENTRE)),
        math.sin(th), math.cos(th), math.sin(4 * (block_yaw - th)), math.cos(4 * (block_yaw - th)),
        math.sin(2 * (yaw - th)), math.cos(2 * (yaw - th)),
        REL_SCALE * float(rel @ u), REL_SCALE * float(rel @ v),
        REL_SCALE * float(np.linalg.norm(target_xy - block_xy)),
        *nb_feats,
    ]
    return np.asarray(obs, dtype=np.float32)


def action_to_world(action: np.ndarray, block_xy: np.ndarray, target_xy: np.ndarray) -> np.ndarray:
    """Policy action (push frame, [-1, 1]^2) -> planar fingertip displacement in metres for one action
    (world frame, at most ``STEP_M``)."""
    a = np.clip(np.asarray(action, dtype=float).reshape(ACT_DIM), -1.0, 1.0)
    u, v = push_frame(block_xy, target_xy)
    w = a[0] * u + a[1] * v
    n = float(np.linalg.norm(w))
    return STEP_M * (w / n if n > 1.0 else w)


def clip_to_workspace(xy: np.ndarray, ws: Workspace, margin: float = 0.0) -> np.ndarray:
    return np.clip(xy, [ws.x[0] + margin, ws.y[0] + margin], [ws.x[1] - margin, ws.y[1] - margin])


# -- the exported policy -----------------------------------------------------------------------------
ACTIVATIONS = ("tanh", "relu")


def build_policy_mlp(obs_dim: int, hiddens: list[int], act_dim: int, activation: str = "tanh"):
    """The deterministic actor as a plain ``torch.nn.Sequential``: obs -> hidden layers -> action mean.
    State-dict keys: ``{2i}.weight``/``{2i}.bias`` for the i-th linear layer."""
    import torch

    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
    act = {"tanh": torch.nn.Tanh, "relu": torch.nn.ReLU}[activation]
    layers: list[Any] = []
    width = obs_dim
    for h in hiddens:
        layers += [torch.nn.Linear(width, h), act()]
        width = h
    layers.append(torch.nn.Linear(width, act_dim))
    return torch.nn.Sequential(*layers)


@dataclass
class PushPolicy:
    """The loaded policy: ``act(obs)`` gives the deterministic (mean) action clipped to [-1, 1]."""

    net: Any  # torch.nn.Sequential
    config: dict[str, Any]

    def act(self, obs: np.ndarray) -> np.ndarray:
        import torch

        with torch.no_grad():
            x = torch.as_tensor(np.asarray(obs, dtype=np.float32)).reshape(-1, OBS_DIM)
            a = self.net(x).numpy()
        a = np.clip(a, -1.0, 1.0)
        return a[0] if np.ndim(obs) == 1 else a


def load_policy(path: str | Path = CHECKPOINT_DIR) -> PushPolicy:
    """Load ``policy.pt`` + ``config.json``; a missing or mismatched checkpoint is a one-line error."""
    import torch

    path = Path(path)
    cfg_file, weights = path / "config.json", path / "policy.pt"
    if not cfg_file.is_file() or not weights.is_file():
        raise FileNotFoundError(f"learned push policy not found in {path} (needs config.json and policy.pt): "
                                "train it with `python -m embodied_lm.rl.train_push`")
    cfg = json.loads(cfg_file.read_text())
    if cfg.get("format") != FORMAT or list(cfg.get("obs_names", [])) != list(OBS_NAMES) \
            or cfg.get("act_dim") != ACT_DIM or cfg.get("step_m") != STEP_M:
        raise ValueError(f"learned push policy in {path} does not match this code (format {cfg.get('format')}, "
                         f"{cfg.get('obs_dim')} obs, step {cfg.get('step_m')} m; expected format {FORMAT}, "
                         f"{OBS_DIM} obs, step {STEP_M} m): retrain with `python -m embodied_lm.rl.train_push`")
    net = build_policy_mlp(OBS_DIM, list(cfg["hiddens"]), ACT_DIM, cfg.get("activation", "tanh"))
    try:
        net.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    except RuntimeError as e:
        raise ValueError(f"learned push policy weights in {weights} do not fit its config.json: "
                         f"{str(e).splitlines()[0]}") from None
    net.eval()
    return PushPolicy(net, cfg)


# -- the skill ------------------------------------------------------------------------------------------
def _others(objs: dict[str, ObjectInfo], name: str) -> list[np.ndarray]:
    return [o.position[:2] for o in objs.values() if o.name != name and o.kind == "block"]


@register_skill("push", "learned")
class LearnedPush:
    """Same calls, checks and goal spots as ``ScriptedPush``; the strokes are driven by the RL policy."""

    max_strokes = 4
    max_policy_steps = 120  # per stroke: 10 s of robot time at 12 Hz
    stall_steps = 12  # end a stroke (and approach again from behind) when nothing moved for 1 s

    def __init__(self, checkpoint: str | Path = CHECKPOINT_DIR):
        self.checkpoint = Path(checkpoint)
        self._scripted = ScriptedPush()
        self._policy: PushPolicy | None = None

    @property
    def policy(self) -> PushPolicy:
        if self._policy is None:
            self._policy = load_policy(self.checkpoint)
        return self._policy

    def check(self, call: Push, robot: Robot) -> None:
        self._scripted.check(call, robot)

    def execute(self, call: Push, robot: Robot) -> bool:
        policy = self.policy  # fail before moving if the checkpoint is missing
        start = robot.objects()[call.obj].position[:2].copy()
        for _ in range(self.max_strokes):
            target, final = self._scripted.goal(call, robot, start)  # re-chosen each stroke
            xy = robot.objects()[call.obj].position[:2]
            if self._scripted.done(call, robot, start) and float(np.linalg.norm(final - xy)) < 0.04:
                break
            if float(np.linalg.norm(target - xy)) < SUCCESS_TOL:
                target = final  # at the detour point (or the goal): head for the goal
            if float(np.linalg.norm(target - xy)) < SUCCESS_TOL:
                break
            if not self._stroke(robot, call.obj, target, policy):
                break  # the block tipped over
        return self._scripted.done(call, robot, start)

    def _stroke(self, robot: Robot, name: str, target: np.ndarray, policy: PushPolicy) -> bool:
        """Drop the closed gripper behind the block, then let the policy push it to ``target``.  The stroke
        ends at the target, when nothing moved for ``stall_steps``, when the block leaves the workspace (the
        next stroke starts afresh from behind it) or tips over (False)."""
        obj = robot.objects()[name]
        d = target - obj.position[:2]
        u = d / max(float(np.linalg.norm(d)), 1e-9)
        yaw = hand_yaw(u)
        behind = obj.position[:2] - u * BEHIND
        here = robot.ee_position()
        robot.move_ee(np.array([here[0], here[1], TRAVEL_Z]), yaw)
        robot.move_ee(np.array([behind[0], behind[1], TRAVEL_Z]), yaw)
        robot.close_gripper()
        robot.move_ee(np.array([behind[0], behind[1], PUSH_Z]), yaw, speed=0.3)
        ok = True
        trace: list[np.ndarray] = []  # (ee xy, block xy) per policy step, to notice a stalled policy
        for _ in range(self.max_policy_steps):
            objs = robot.objects()
            blk = objs[name]
            xy = blk.position[:2]
            if blk.position[2] > blk.height / 2 + 0.01:
                ok = False
                break
            if not robot.workspace.contains(xy, -0.03):
                break
            to_go = target - xy
            dist = float(np.linalg.norm(to_go))
            if dist < SUCCESS_TOL:
                break
            carrot = xy + to_go * min(1.0, MAX_TARGET_DIST / dist)
            ee = robot.ee_position()
            trace.append(np.concatenate([ee[:2], xy]))
            if len(trace) > self.stall_steps and np.abs(trace[-1] - trace[-1 - self.stall_steps]).max() < 0.002:
                break
            a = policy.act(push_observation(ee[:2], xy, blk.yaw, carrot, yaw, _others(objs, name)))
            nxt = clip_to_workspace(ee[:2] + action_to_world(a, xy, carrot), robot.workspace, -0.03)
            robot.move_ee(np.array([nxt[0], nxt[1], PUSH_Z]), yaw, speed=MAX_SPEED)
        ee = robot.ee_position()
        robot.move_ee(np.array([ee[0], ee[1], TRAVEL_Z]), yaw)
        return ok
