"""ROS messages as rosbridge JSON, both directions, and the skill command / result contract.

The one place that knows the wire format: the bridge decodes with it, the sim-backed test robot
(``embodied_lm.ros.testing``) encodes with it, and the MCAP export takes its joint names and rotations
from it.  Decoders validate first (``safety``) and raise ``safety.Rejected``; they accept ROS 1 and
ROS 2 field spellings (``stamp.secs``/``stamp.sec``, ``CameraInfo.K``/``CameraInfo.k``).  rosbridge
sends ``uint8[]`` fields as base64 strings; a JSON list of numbers is accepted too.  Encoders write
ROS 2 spellings unless told ``ros_version=1``.

Command (``std_msgs/String`` on ``command_topic``, ``data`` = JSON)::

    {"id": "3f2a-7", "stamp": 1732280000.25, "skill": "place obj_2 on obj_4", "verb": "place",
     "speed": 0.25,
     "targets": [{"name": "obj_2", "role": "held", "position": [x, y, z], "orientation": [0, 0, 0, 1],
                  "kind": "block", "color": "red", "size": 0.04, "height": 0.04},
                 {"name": "obj_4", "role": "object", ...},
                 {"name": "goal", "role": "goal", "position": [x, y, z], ...}],
     "timeout_s": 60.0}

Result (``std_msgs/String`` on ``result_topic``)::

    {"id": "3f2a-7", "stamp": 1732280003.9, "success": true, "message": "ok",
     "robot_time": 12.5, "duration_s": 3.6,
     "task_success": false, "terminated": false}          # optional; a sim-backed robot fills them
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.spatial.transform import Rotation

from embodied_lm.ros.safety import ImageMeta, Rejected, _field, check_image, header_stamp

# The 9 values of obs["robot"][:9], in this order (a Panda: 7 arm joints, 2 fingers).
JOINT_NAMES = (*(f"panda_joint{i}" for i in range(1, 8)), "panda_finger_joint1", "panda_finger_joint2")
# Type of the sim-backed robot's privileged services: request {json}; response {success, message, json}.
JSON_SRV = "embodied_lm_msgs/JsonCall"
RGB_ENCODINGS = ("rgb8",)
DEPTH_ENCODINGS = ("32FC1", "16UC1")  # 16UC1 is millimetres (RealSense, Azure Kinect drivers)


def _bytes(data: str | list, where: str) -> bytes:
    if isinstance(data, str):
        try:
            return base64.b64decode(data, validate=True)
        except (binascii.Error, ValueError) as e:
            raise Rejected("malformed", f"{where}: data is not valid base64 ({e})") from None
    try:
        return bytes(data)
    except (TypeError, ValueError):
        raise Rejected("malformed", f"{where}: data is not a list of bytes") from None


def decode_image(msg: Any, meta: ImageMeta, where: str = "image") -> np.ndarray:
    """Pixels of an image already validated by ``check_image``: rgb8 -> (H, W, 3) uint8; 32FC1 / 16UC1
    -> (H, W) float32 metres (16UC1 millimetres are scaled; 0 = no return stays 0)."""
    raw = _bytes(msg["data"], where)
    if len(raw) != meta.step * meta.height:
        raise Rejected("size", f"{where}: {len(raw)} data bytes, expected {meta.step * meta.height}")
    if meta.encoding == "rgb8":
        return np.frombuffer(raw, np.uint8).reshape(meta.height, meta.width, 3).copy()
    if meta.encoding == "32FC1":
        return np.frombuffer(raw, "<f4").reshape(meta.height, meta.width).astype(np.float32)
    if meta.encoding == "16UC1":
        return np.frombuffer(raw, "<u2").reshape(meta.height, meta.width).astype(np.float32) * 1e-3
    raise Rejected("encoding", f"{where}: cannot decode {meta.encoding!r}")


def read_image(msg: Any, encodings: Sequence[str], expected_hw: tuple[int, int] | None,
               where: str = "image") -> tuple[np.ndarray, float]:
    meta = check_image(msg, encodings, expected_hw=expected_hw, where=where)
    return decode_image(msg, meta, where), meta.stamp


def _numbers(v: Any, n: int, where: str) -> np.ndarray:
    if not isinstance(v, (list, tuple)) or len(v) != n or not all(
            isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) for x in v):
        raise Rejected("malformed", f"{where}: expected {n} finite numbers")
    return np.asarray(v, np.float64)


def read_camera_info(msg: Any, where: str = "camera_info") -> tuple[np.ndarray, tuple[int, int], float]:
    """``sensor_msgs/CameraInfo`` -> (K (3, 3), (H, W), stamp).  Distortion is assumed already removed
    (use the ``image_rect`` topics of a real camera driver)."""
    stamp = header_stamp(msg, where)
    h = _field(msg, "height", int, where)
    w = _field(msg, "width", int, where)
    key = "k" if "k" in msg else "K"
    K = _numbers(msg.get(key), 9, f"{where}.{key}").reshape(3, 3)
    if h <= 0 or w <= 0 or K[0, 0] <= 0 or K[1, 1] <= 0 or K[2, 2] != 1:
        raise Rejected("malformed", f"{where}: invalid intrinsics {K.tolist()} for {w}x{h}")
    return K, (h, w), stamp


def read_joint_state(msg: Any, names: Sequence[str], where: str = "joint_state") -> tuple[np.ndarray, float]:
    """``sensor_msgs/JointState`` -> positions in the order of ``names`` (all must be present)."""
    stamp = header_stamp(msg, where)
    got = _field(msg, "name", list, where)
    pos = _field(msg, "position", list, where)
    if len(got) != len(pos) or not all(isinstance(n, str) for n in got):
        raise Rejected("malformed", f"{where}: {len(got)} names but {len(pos)} positions")
    values = dict(zip(got, _numbers(pos, len(pos), f"{where}.position"), strict=True))
    missing = [n for n in names if n not in values]
    if missing:
        raise Rejected("malformed", f"{where}: joints {missing} missing")
    return np.array([values[n] for n in names], np.float64), stamp


def read_pose_stamped(msg: Any, where: str = "pose") -> tuple[np.ndarray, float]:
    """``geometry_msgs/PoseStamped`` -> (4, 4) homogeneous transform, stamp."""
    stamp = header_stamp(msg, where)
    pose = _field(msg, "pose", Mapping, where)
    p = _field(pose, "position", Mapping, where + ".pose")
    q = _field(pose, "orientation", Mapping, where + ".pose")
    xyz = _numbers([p.get("x"), p.get("y"), p.get("z")], 3, where + ".pose.position")
    quat = _numbers([q.get("x"), q.get("y"), q.get("z"), q.get("w")], 4, where + ".pose.orientation")
    norm = float(np.linalg.norm(quat))
    if abs(norm - 1.0) > 1e-3:
        raise Rejected("malformed", f"{where}: orientation is not a unit quaternion (norm {norm:.4f})")
    T = np.eye(4)
    T[:3, :3] = quat_to_matrix(quat / norm)
    T[:3, 3] = xyz
    return T, stamp


def quat_to_matrix(q: Sequence[float]) -> np.ndarray:
    """Unit quaternion x, y, z, w -> (3, 3) rotation matrix."""
    return Rotation.from_quat(np.asarray(q, float)).as_matrix()


def matrix_to_quat(R: np.ndarray) -> list[float]:
    """Rotation matrix -> unit quaternion x, y, z, w."""
    return Rotation.from_matrix(np.asarray(R, float)).as_quat().tolist()


def read_json_string(msg: Any, where: str) -> dict[str, Any]:
    """``std_msgs/String`` whose ``data`` is a JSON object."""
    data = _field(msg, "data", str, where)
    try:
        obj = json.loads(data)
    except json.JSONDecodeError as e:
        raise Rejected("malformed", f"{where}: data is not JSON ({e.msg})") from None
    if not isinstance(obj, dict):
        raise Rejected("malformed", f"{where}: data is JSON {type(obj).__name__}, expected an object")
    return obj


# -- the skill command contract ------------------------------------------------------------------------
@dataclass(frozen=True)
class SkillOutcome:
    """A robot's answer to one command (the result message)."""

    id: str
    success: bool
    message: str
    stamp: float  # robot clock when the skill finished: observations must be at least this new
    robot_time: float | None = None
    duration_s: float | None = None
    task_success: bool | None = None  # only robots that can judge the task (the sim endpoint) send it
    terminated: bool | None = None
    extra: dict[str, Any] | None = None


def read_result(msg: Any, where: str = "result") -> SkillOutcome:
    d = read_json_string(msg, where)
    rid = _field(d, "id", str, where)
    ok = _field(d, "success", bool, where)
    message = d.get("message", "")
    stamp = _field(d, "stamp", (int, float), where)
    if not isinstance(message, str) or not math.isfinite(stamp):
        raise Rejected("malformed", f"{where}: message must be a string and stamp a finite number")

    def opt(key: str, types) -> Any:
        v = d.get(key)
        if v is not None and (not isinstance(v, types) or (isinstance(v, bool) and bool not in types)):
            raise Rejected("malformed", f"{where}: field {key!r} has type {type(v).__name__}")
        return v

    known = {"id", "success", "message", "stamp", "robot_time", "duration_s", "task_success", "terminated"}
    return SkillOutcome(rid, ok, message, float(stamp), opt("robot_time", (int, float)),
                        opt("duration_s", (int, float)), opt("task_success", (bool,)), opt("terminated", (bool,)),
                        {k: v for k, v in d.items() if k not in known} or None)


def command_message(cid: str, stamp: float, skill: str, speed: float, targets: Sequence[Mapping[str, Any]],
                    timeout_s: float) -> dict[str, str]:
    """The ``std_msgs/String`` carrying one skill command."""
    verb = skill.split()[0] if skill.split() else ""
    return json_string({"id": cid, "stamp": stamp, "skill": skill, "verb": verb, "speed": speed,
                        "targets": list(targets), "timeout_s": timeout_s})


def read_json_call_response(resp: Mapping[str, Any], service: str) -> dict[str, Any]:
    """The JSON body of a ``JSON_SRV`` response; ValueError with the robot's message if it failed."""
    if not resp.get("success", False):
        raise ValueError(f"{service}: {resp.get('message', 'failed')}")
    return json.loads(resp.get("json") or "{}")


# -- encoders (the robot side: the sim-backed endpoint, tests) ---------------------------------------------
def json_string(obj: Any) -> dict[str, str]:
    """``std_msgs/String`` whose ``data`` is ``obj`` as JSON (commands, results)."""
    return {"data": json.dumps(obj)}


def json_call_response(body: Mapping[str, Any] | None = None, error: str | None = None) -> dict[str, Any]:
    """A ``JSON_SRV`` response: ``body`` on success, or the reason it failed."""
    if error is not None:
        return {"success": False, "message": error, "json": ""}
    return {"success": True, "message": "ok", "json": json.dumps(dict(body or {}))}


def ros_header(t: float, frame_id: str, ros_version: int = 2, seq: int = 0) -> dict[str, Any]:
    """``std_msgs/Header`` stamped ``t`` (s); ROS 1 spelling (``secs``/``nsecs``, ``seq``) if asked."""
    sec = int(math.floor(t))
    nsec = min(int(round((t - sec) * 1e9)), 999_999_999)
    if ros_version == 1:
        return {"seq": seq, "stamp": {"secs": sec, "nsecs": nsec}, "frame_id": frame_id}
    return {"stamp": {"sec": sec, "nanosec": nsec}, "frame_id": frame_id}


def image_msg(img: np.ndarray, encoding: str, header: dict[str, Any]) -> dict[str, Any]:
    """``sensor_msgs/Image`` (data as base64, as rosbridge sends it); 32FC1 is written little-endian."""
    arr = np.ascontiguousarray(img.astype("<f4") if encoding == "32FC1" else img)
    h, w = arr.shape[:2]
    return {"header": header, "height": h, "width": w, "encoding": encoding, "is_bigendian": 0,
            "step": arr.strides[0], "data": base64.b64encode(arr.tobytes()).decode("ascii")}


def camera_info_fields(K: np.ndarray) -> dict[str, Any]:
    """The intrinsics fields of a ``sensor_msgs/CameraInfo`` for a rectified pinhole camera (numpy)."""
    K = np.asarray(K, np.float64)
    return {"distortion_model": "plumb_bob", "d": np.zeros(5), "k": K.reshape(-1), "r": np.eye(3).reshape(-1),
            "p": np.hstack([K, np.zeros((3, 1))]).reshape(-1), "binning_x": 0, "binning_y": 0}


def camera_info_msg(K: np.ndarray, h: int, w: int, header: dict[str, Any]) -> dict[str, Any]:
    fields = {k: v.tolist() if isinstance(v, np.ndarray) else v for k, v in camera_info_fields(K).items()}
    roi = {"x_offset": 0, "y_offset": 0, "height": 0, "width": 0, "do_rectify": False}
    return {"header": header, "height": h, "width": w, **fields, "roi": roi}


def pose_msg(position: Sequence[float], quat_xyzw: Sequence[float], header: dict[str, Any]) -> dict[str, Any]:
    """``geometry_msgs/PoseStamped``."""
    x, y, z = (float(v) for v in position)
    qx, qy, qz, qw = (float(v) for v in quat_xyzw)
    return {"header": header, "pose": {"position": {"x": x, "y": y, "z": z},
                                       "orientation": {"x": qx, "y": qy, "z": qz, "w": qw}}}


def joint_state_msg(positions: Sequence[float], header: dict[str, Any],
                    names: Sequence[str] = JOINT_NAMES) -> dict[str, Any]:
    """``sensor_msgs/JointState`` with positions only."""
    return {"header": header, "name": list(names), "position": [float(v) for v in positions], "velocity": [],
            "effort": []}
