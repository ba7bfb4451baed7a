"""The small robot protocol every skill acts through.

The PyBullet robot (``sim.robot.PandaRobot``) implements it, and so can a ROS
bridge: skills never see a simulator.  Frames: metres, world frame with x away
from the robot base, y to the robot's left, z up; the table top is z = 0.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np


@dataclass(frozen=True)
class ObjectInfo:
    """What a skill may know about one object."""

    name: str  # obj_k
    kind: str  # "block" | "bowl"
    color: str
    position: np.ndarray  # (3,) centre of the object
    yaw: float  # rad
    size: float  # block edge or bowl outer width (m)
    height: float  # block edge or bowl wall height (m)


@dataclass(frozen=True)
class Workspace:
    """Axis-aligned table region the robot may act in."""

    x: tuple[float, float] = (0.30, 0.70)
    y: tuple[float, float] = (-0.30, 0.30)

    def contains(self, xy: np.ndarray, margin: float = 0.0) -> bool:
        return bool(
            self.x[0] + margin <= xy[0] <= self.x[1] - margin
            and self.y[0] + margin <= xy[1] <= self.y[1] - margin
        )


class Robot(Protocol):
    workspace: Workspace

    def objects(self) -> dict[str, ObjectInfo]:
        """Current objects by name."""
        ...

    def held(self) -> str | None:
        """Name of the object in the gripper, if any."""
        ...

    def move_ee(self, pos: np.ndarray, yaw: float = 0.0, speed: float = 0.4) -> bool:
        """Move the end effector in a straight line to ``pos`` (gripper pointing down); True if reached."""
        ...

    def grasp(self, name: str) -> bool:
        """Close the gripper; True if ``name`` is now held."""
        ...

    def close_gripper(self) -> None:
        """Close the fingers on nothing (for pushing)."""
        ...

    def release(self) -> None:
        """Open the gripper, letting go of anything held."""
        ...

    def ee_position(self) -> np.ndarray: ...

    def ee_yaw(self) -> float: ...

    def sim_time(self) -> float:
        """Seconds of robot time elapsed since the world started."""
        ...

    def home(self) -> None:
        """Return to a pose that keeps the arm out of the cameras' view."""
        ...

    def settle(self, seconds: float) -> None:
        """Let the world run with the robot holding still."""
        ...
