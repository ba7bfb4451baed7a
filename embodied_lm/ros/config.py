"""Typed, validated configuration of the ROS bridge (``embodiment=ros``: the ``embodiment`` keys of a run)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

from embodied_lm.ros.messages import JOINT_NAMES
from embodied_lm.ros.safety import WorkspaceBox


def _topic(name: str, value: Any, allow_empty: bool = False) -> str:
    if not isinstance(value, str) or (value == "" and not allow_empty) or (value and not value.startswith("/")):
        alt = " or empty" if allow_empty else ""
        raise ValueError(f"{name} must be an absolute ROS name like '/joint_states'{alt}, got {value!r}")
    return value


def _positive(name: str, value: Any, allow_zero: bool = False) -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value < 0 or (value == 0 and not allow_zero):
        raise ValueError(f"{name} must be a {'non-negative' if allow_zero else 'positive'} number, got {value!r}")
    return float(value)


def _range(name: str, value: Any) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be [min, max], got {value!r}") from None
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise ValueError(f"{name} must be finite [min, max] with min < max, got {value!r}")
    return lo, hi


@dataclass
class CameraTopics:
    """One RGB-D camera.  Empty topic names default to ``/camera/<name>/...`` (the sim endpoint's names:
    the defaults here are the only place topic names are written).

    Extrinsics: either ``pose_topic`` (``geometry_msgs/PoseStamped``, world <- camera optical frame,
    OpenCV axes: x right, y down, z forward; latched) or a fixed ``world_from_camera`` 4x4 (row-major
    nested list) from your calibration.  Images must be rectified (no distortion)."""

    name: str
    rgb_topic: str = ""
    depth_topic: str = ""
    info_topic: str = ""
    pose_topic: str = ""
    world_from_camera: list[list[float]] | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.isidentifier():
            raise ValueError(f"camera name must be an identifier (obs keys are rgb_<name>), got {self.name!r}")
        key, base = f"cameras.{self.name}", f"/camera/{self.name}"
        self.rgb_topic = _topic(f"{key}.rgb_topic", self.rgb_topic or f"{base}/color/image_raw")
        self.depth_topic = _topic(f"{key}.depth_topic", self.depth_topic or f"{base}/depth/image_raw")
        self.info_topic = _topic(f"{key}.info_topic", self.info_topic or f"{base}/color/camera_info")
        if self.world_from_camera is not None:
            rows = [list(map(float, r)) for r in self.world_from_camera]
            if len(rows) != 4 or any(len(r) != 4 for r in rows) or rows[3] != [0.0, 0.0, 0.0, 1.0]:
                raise ValueError(f"{key}.world_from_camera must be a 4x4 homogeneous matrix")
            self.world_from_camera = rows
            self.pose_topic = _topic(f"{key}.pose_topic", self.pose_topic, allow_empty=True)
        else:
            self.pose_topic = _topic(f"{key}.pose_topic", self.pose_topic or f"{base}/pose")


@dataclass
class RosConfig:
    """Everything the bridge needs to drive a robot through ``rosbridge_server`` (see README.md).  The
    sim-backed test robot (``embodied_lm.ros.testing``) publishes on these defaults."""

    host: str = "127.0.0.1"
    port: int = 9090
    cameras: tuple[CameraTopics, ...] = (CameraTopics("top"), CameraTopics("front"))
    joint_states_topic: str = "/joint_states"
    joint_names: tuple[str, ...] = JOINT_NAMES  # the 9 values of obs["robot"][:9], in this order
    ee_pose_topic: str = "/ee_pose"  # geometry_msgs/PoseStamped of the fingertip point; "" = not available
    command_topic: str = "/skill/command"  # std_msgs/String, JSON command (README: contract)
    result_topic: str = "/skill/result"  # std_msgs/String, JSON result
    estop_topic: str = "/estop"  # std_msgs/Bool; true = stop now
    sim_services: str = "auto"  # privileged /sim/reset + /sim/oracle_action: "auto" (probe) | "on" | "off"
    reset_service: str = "/sim/reset"
    oracle_service: str = "/sim/oracle_action"
    connect_timeout_s: float = 5.0
    command_timeout_s: float = 60.0  # a skill without a result by then ends the episode (failed)
    observation_timeout_s: float = 5.0  # fresh sensors after a command / reset
    service_timeout_s: float = 30.0
    stale_after_s: float = 1.0  # header stamps older than this are rejected
    sync_tolerance_s: float = 0.1  # rgb / depth / camera_info of one camera must agree within this
    heartbeat_s: float = 1.0  # WebSocket ping interval (a silent, half-open link is dropped after 2x); 0 = off
    workspace_x: tuple[float, float] = (0.25, 0.75)  # safety box for every motion target (m, world frame)
    workspace_y: tuple[float, float] = (-0.35, 0.35)
    workspace_z: tuple[float, float] = (-0.01, 0.40)
    speed: float = 0.25  # commanded end-effector speed (m/s)
    max_speed: float = 0.5  # hard limit: commands above it are refused
    max_steps: int = 20  # step limit when the robot cannot say (no sim reset service)
    table_x: tuple[float, float] = (0.30, 0.70)  # table region segmented for objects
    table_y: tuple[float, float] = (-0.30, 0.30)
    segmentation: dict[str, Any] = field(default_factory=dict)  # extra kwargs for segment_objects

    def __post_init__(self) -> None:
        if not isinstance(self.host, str) or not self.host:
            raise ValueError(f"host must be a hostname or IP, got {self.host!r}")
        if not isinstance(self.port, int) or isinstance(self.port, bool) or not 0 < self.port < 65536:
            raise ValueError(f"port must be 1..65535, got {self.port!r}")
        cams = []
        for c in self.cameras:
            cams.append(c if isinstance(c, CameraTopics) else CameraTopics(**dict(c)))
        if not cams:
            raise ValueError("at least one camera is needed")
        names = [c.name for c in cams]
        if len(set(names)) != len(names):
            raise ValueError(f"camera names must be unique, got {names}")
        self.cameras = tuple(cams)
        self.joint_names = tuple(self.joint_names)
        if len(self.joint_names) != 9 or not all(isinstance(n, str) and n for n in self.joint_names):
            raise ValueError(f"joint_names must be the 9 joint names of obs['robot'][:9], got {self.joint_names}")
        for key in ("joint_states_topic", "command_topic", "result_topic", "estop_topic", "reset_service",
                    "oracle_service"):
            _topic(key, getattr(self, key))
        _topic("ee_pose_topic", self.ee_pose_topic, allow_empty=True)
        if self.sim_services not in ("auto", "on", "off"):
            raise ValueError(f"sim_services must be 'auto', 'on' or 'off', got {self.sim_services!r}")
        for key in ("connect_timeout_s", "command_timeout_s", "observation_timeout_s", "service_timeout_s",
                    "stale_after_s", "sync_tolerance_s", "speed", "max_speed"):
            setattr(self, key, _positive(key, getattr(self, key)))
        self.heartbeat_s = _positive("heartbeat_s", self.heartbeat_s, allow_zero=True)
        if self.speed > self.max_speed:
            raise ValueError(f"speed {self.speed} m/s is above max_speed {self.max_speed} m/s")
        if not isinstance(self.max_steps, int) or isinstance(self.max_steps, bool) or self.max_steps < 1:
            raise ValueError(f"max_steps must be a positive integer, got {self.max_steps!r}")
        for key in ("workspace_x", "workspace_y", "workspace_z", "table_x", "table_y"):
            setattr(self, key, _range(key, getattr(self, key)))
        if not isinstance(self.segmentation, Mapping):
            raise ValueError(f"segmentation must map segment_objects kwargs to values, got {self.segmentation!r}")
        self.segmentation = dict(self.segmentation)

    @property
    def workspace(self) -> WorkspaceBox:
        return WorkspaceBox(self.workspace_x, self.workspace_y, self.workspace_z)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> RosConfig:
        """From a plain mapping (e.g. a Hydra/OmegaConf node turned into a dict); unknown keys are an error.
        The key ``kind`` (``embodiment=ros`` config group marker) is ignored."""
        d = {k: v for k, v in dict(d).items() if k != "kind"}
        known = {f.name for f in fields(cls)}
        extra = sorted(set(d) - known)
        if extra:
            raise ValueError(f"unknown ROS config key(s) {extra}; keys are {sorted(known)}")
        if "cameras" in d:
            d["cameras"] = tuple(c if isinstance(c, CameraTopics) else CameraTopics(**dict(c))
                                 for c in d["cameras"])
        for key in ("joint_names",):
            if key in d and isinstance(d[key], Sequence):
                d[key] = tuple(d[key])
        return cls(**d)
