"""The ROS bridge: a robot behind ``rosbridge_server`` as an ``Embodiment`` (see README.md here)."""

from embodied_lm.ros.bridge import EStopEngaged, RosConnectionError, RosEmbodiment
from embodied_lm.ros.config import CameraTopics, RosConfig
from embodied_lm.ros.safety import MotionTarget, Rejected, WorkspaceBox, check_fresh, check_image, check_motion

__all__ = [
    "CameraTopics", "EStopEngaged", "MotionTarget", "Rejected", "RosConfig", "RosConnectionError",
    "RosEmbodiment", "WorkspaceBox", "check_fresh", "check_image", "check_motion",
]
