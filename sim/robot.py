"""Franka Panda in PyBullet implementing ``skills.robot.Robot``.

Motion: straight end-effector lines, cut into waypoints, each solved by
PyBullet's damped-least-squares IK (null space pulled to a rest pose) and
tracked by the joint position controllers.  Grasp: close the fingers; on finger
contact with the object, a fixed constraint holds it (friction alone slips).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
import pybullet as p

from skills.robot import ObjectInfo, Workspace

if TYPE_CHECKING:
    from sim.world import World

ARM = list(range(7))
FINGERS = [9, 10]
EE_LINK = 11  # panda_grasptarget: between the fingertips
REST = [0.0, -0.25, 0.0, -2.2, 0.0, 1.95, math.pi / 4]  # IK null-space target: elbow up, hand over the table
HOME = [0.0, -1.2, 0.0, -2.9, 0.0, 1.75, math.pi / 4]  # tucked back, out of the top camera's view
LOWER = [-2.9, -1.76, -2.9, -3.07, -2.9, -0.02, -2.9]
UPPER = [2.9, 1.76, 2.9, -0.07, 2.9, 3.75, 2.9]
CONTROL_HZ = 48  # waypoint rate


class PandaRobot:
    def __init__(self, world: World):
        self.world = world
        self.c = world.client
        self.workspace: Workspace = world.config.workspace
        self.body = p.loadURDF("franka_panda/panda.urdf", [0, 0, 0], useFixedBase=True, physicsClientId=self.c)
        for j, q in zip(ARM, HOME, strict=False):
            p.resetJointState(self.body, j, q, physicsClientId=self.c)
        for j in FINGERS:
            p.resetJointState(self.body, j, 0.04, physicsClientId=self.c)
            p.changeDynamics(self.body, j, lateralFriction=1.0, physicsClientId=self.c)
        self._finger_target = 0.04
        self._arm_target = list(HOME)
        self._grasp: tuple[str, int] | None = None  # (object name, constraint id)
        self.fault = None  # sim.faults.Fault for the skill call running now (the env sets it)
        self._apply()

    # -- protocol -----------------------------------------------------------------------------
    def objects(self) -> dict[str, ObjectInfo]:
        return self.world.object_infos()

    def held(self) -> str | None:
        return self._grasp[0] if self._grasp else None

    def sim_time(self) -> float:
        return self.world.sim_time

    def ee_position(self) -> np.ndarray:
        return np.array(p.getLinkState(self.body, EE_LINK, physicsClientId=self.c)[4])

    def ee_yaw(self) -> float:
        quat = p.getLinkState(self.body, EE_LINK, physicsClientId=self.c)[5]
        # Pointing down (roll = pi): the hand's yaw is read off its x axis.
        m = np.array(p.getMatrixFromQuaternion(quat)).reshape(3, 3)
        return float(math.atan2(m[1, 0], m[0, 0]))

    def joint_state(self) -> np.ndarray:
        """(9,) arm and finger joint positions."""
        return np.array([s[0] for s in p.getJointStates(self.body, ARM + FINGERS, physicsClientId=self.c)])

    def state(self) -> np.ndarray:
        """(16,) float32: 9 joint positions, end-effector xyz and quaternion xyzw."""
        pos, quat = p.getLinkState(self.body, EE_LINK, physicsClientId=self.c)[4:6]
        return np.concatenate([self.joint_state(), pos, quat]).astype(np.float32)

    def move_ee(self, pos: np.ndarray, yaw: float = 0.0, speed: float = 0.4) -> bool:
        pos = np.asarray(pos, dtype=float)
        start = self.ee_position()
        dist = float(np.linalg.norm(pos - start))
        n = max(1, int(math.ceil(dist / speed * CONTROL_HZ)))
        orn = p.getQuaternionFromEuler([math.pi, 0.0, yaw])
        steps_per_wp = max(1, int(round(1.0 / (CONTROL_HZ * self.world.config.time_step))))
        for i in range(1, n + 1):
            self._arm_target = self._ik(start + (pos - start) * i / n, orn)
            self._apply()
            self.world.step(steps_per_wp)
        # Converge on the final waypoint (bounded: at most 0.5 s).
        for _ in range(int(0.5 * CONTROL_HZ)):
            if float(np.linalg.norm(self.ee_position() - pos)) < 0.003:
                break
            self._arm_target = self._ik(pos, orn)
            self._apply()
            self.world.step(steps_per_wp)
        return float(np.linalg.norm(self.ee_position() - pos)) < 0.01

    def close_gripper(self) -> None:
        self._finger_target = 0.0
        self._apply()
        self.world.settle(0.25)

    def grasp(self, name: str) -> bool:
        body = {o.name: o.body for o in self.world.objects}.get(name)
        self._finger_target = 0.0
        self._apply()
        for _ in range(int(0.4 / self.world.config.time_step)):
            self.world.step()
            if body is not None and self._touching(body):
                break
        if body is None or not self._touching(body):
            return False
        # Hold the object where it is relative to the end effector.
        ee_pos, ee_orn = p.getLinkState(self.body, EE_LINK, physicsClientId=self.c)[4:6]
        obj_pos, obj_orn = p.getBasePositionAndOrientation(body, physicsClientId=self.c)
        inv_pos, inv_orn = p.invertTransform(ee_pos, ee_orn)
        rel_pos, rel_orn = p.multiplyTransforms(inv_pos, inv_orn, obj_pos, obj_orn)
        cid = p.createConstraint(self.body, EE_LINK, body, -1, p.JOINT_FIXED, [0, 0, 0], rel_pos, [0, 0, 0],
                                 rel_orn, physicsClientId=self.c)
        p.changeConstraint(cid, maxForce=200, physicsClientId=self.c)
        self._grasp = (name, cid)
        self.world.settle(0.05)
        return True

    def release(self) -> None:
        if self._grasp is not None:
            p.removeConstraint(self._grasp[1], physicsClientId=self.c)
            self._grasp = None
        if self._finger_target != 0.04:
            self._finger_target = 0.04
            self._apply()
            self.world.settle(0.2)

    def settle(self, seconds: float) -> None:
        self.world.settle(seconds)

    def home(self) -> None:
        """Joint-space move back to HOME (bounded: at most 1.5 s)."""
        here = self.ee_position()
        self.move_ee(np.array([here[0], here[1], max(here[2], 0.26)]), self.ee_yaw())  # lift clear first
        self._arm_target = list(HOME)
        self._apply()
        steps = max(1, int(round(1.0 / (CONTROL_HZ * self.world.config.time_step))))
        for _ in range(int(1.5 * CONTROL_HZ)):
            self.world.step(steps)
            if np.abs(self.joint_state()[:7] - HOME).max() < 0.01:
                break

    # -- internals ------------------------------------------------------------------------------
    def _touching(self, body: int) -> bool:
        return any(
            p.getContactPoints(self.body, body, linkIndexA=f, physicsClientId=self.c) for f in FINGERS
        )

    def _ik(self, pos: np.ndarray, orn) -> list[float]:
        q = p.calculateInverseKinematics(
            self.body, EE_LINK, pos.tolist(), orn,
            lowerLimits=LOWER + [0, 0], upperLimits=UPPER + [0.04, 0.04],
            jointRanges=[u - lo for u, lo in zip(UPPER, LOWER, strict=False)] + [0.04, 0.04],
            restPoses=REST + [0.04, 0.04], maxNumIterations=60, residualThreshold=1e-5,
            physicsClientId=self.c,
        )
        return list(q[:7])

    def _apply(self) -> None:
        p.setJointMotorControlArray(self.body, ARM, p.POSITION_CONTROL, targetPositions=self._arm_target,
                                    forces=[200.0] * 7, positionGains=[0.1] * 7, physicsClientId=self.c)
        p.setJointMotorControlArray(self.body, FINGERS, p.POSITION_CONTROL,
                                    targetPositions=[self._finger_target] * 2, forces=[40.0] * 2,
                                    physicsClientId=self.c)
