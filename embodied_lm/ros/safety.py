"""Safety checks between the planner and a real robot: pure functions, no I/O, unit-tested.

Nothing leaves the bridge unless ``check_motion`` passes, and nothing reaches the model unless the
message checks pass.  Every refusal is a ``Rejected`` whose ``kind`` names the rule and whose text is
the one log line the bridge writes:

=================  ===========================================================================
kind               rule
=================  ===========================================================================
out_of_workspace   a motion target lies outside the configured workspace box (or is not finite)
over_speed         the commanded end-effector speed is above the limit (or not a positive number)
stale              a message's header stamp is older than ``stale_after_s`` (or in the future)
encoding           an image whose encoding is not one the bridge accepts
size               an image whose width/height/step/data length disagree, or differ from what
                   the camera (CameraInfo, configured size) says
malformed          a message that does not parse as its ROS type (missing/ill-typed fields)
estop              the emergency stop is engaged
disconnected       the rosbridge connection is gone
=================  ===========================================================================
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

KINDS = ("out_of_workspace", "over_speed", "stale", "encoding", "size", "malformed", "estop", "disconnected")

# Bytes per pixel of the image encodings the bridge understands (sensor_msgs/image_encodings.h names).
ENCODING_BYTES = {"rgb8": 3, "bgr8": 3, "rgba8": 4, "bgra8": 4, "mono8": 1, "8UC3": 3, "32FC1": 4, "16UC1": 2,
                  "mono16": 2}


class Rejected(ValueError):
    """A message or command refused by a safety rule; ``kind`` is one of ``KINDS``."""

    def __init__(self, kind: str, detail: str):
        if kind not in KINDS:
            raise ValueError(f"unknown rejection kind {kind!r}")
        super().__init__(f"{kind}: {detail}")
        self.kind = kind
        self.detail = detail


@dataclass(frozen=True)
class WorkspaceBox:
    """Axis-aligned box (world frame, metres) every motion target must lie in."""

    x: tuple[float, float] = (0.25, 0.75)
    y: tuple[float, float] = (-0.35, 0.35)
    z: tuple[float, float] = (-0.01, 0.40)

    def __post_init__(self) -> None:
        for axis in ("x", "y", "z"):
            lo, hi = getattr(self, axis)
            if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
                raise ValueError(f"workspace.{axis} must be finite (min, max) with min < max, got {(lo, hi)}")

    def contains(self, p: Iterable[float]) -> bool:
        q = np.asarray(list(p), dtype=float)
        if q.shape != (3,) or not np.all(np.isfinite(q)):
            return False
        return all(lo <= v <= hi for v, (lo, hi) in zip(q, (self.x, self.y, self.z), strict=True))


@dataclass(frozen=True)
class MotionTarget:
    """A point the robot is asked to move to (``moves=True``) or an informational pose (e.g. the block
    already in the gripper: ``moves=False``, not checked against the box)."""

    name: str
    role: str  # "object" | "goal" | "held"
    position: tuple[float, float, float]
    moves: bool = True


def check_motion(targets: Iterable[MotionTarget], speed: float, *, box: WorkspaceBox, max_speed: float) -> None:
    """Raise ``Rejected`` unless every moving target is inside ``box`` and 0 < speed <= max_speed."""
    if not (isinstance(speed, (int, float)) and math.isfinite(speed) and speed > 0):
        raise Rejected("over_speed", f"speed {speed!r} m/s is not a positive number")
    if speed > max_speed:
        raise Rejected("over_speed", f"speed {speed:.3f} m/s is above the limit {max_speed:.3f} m/s")
    for t in targets:
        if t.moves and not box.contains(t.position):
            pos = ", ".join(f"{v:.3f}" for v in t.position)
            raise Rejected("out_of_workspace", f"{t.role} {t.name} at ({pos}) is outside the workspace box "
                                               f"x{box.x} y{box.y} z{box.z}")


# -- message checks ---------------------------------------------------------------------------------
def _field(msg: Any, name: str, types: type | tuple[type, ...], where: str) -> Any:
    if not isinstance(msg, Mapping):
        raise Rejected("malformed", f"{where}: expected a message object, got {type(msg).__name__}")
    if name not in msg:
        raise Rejected("malformed", f"{where}: missing field {name!r}")
    v = msg[name]
    if isinstance(v, bool) and bool not in (types if isinstance(types, tuple) else (types,)):
        raise Rejected("malformed", f"{where}: field {name!r} is a bool")
    if not isinstance(v, types):
        raise Rejected("malformed", f"{where}: field {name!r} has type {type(v).__name__}")
    return v


def header_stamp(msg: Any, where: str = "message") -> float:
    """Seconds of ``msg.header.stamp``; ROS 2 (``sec``/``nanosec``) and ROS 1 (``secs``/``nsecs``)."""
    header = _field(msg, "header", Mapping, where)
    stamp = _field(header, "stamp", Mapping, where + ".header")
    keys = ("sec", "nanosec") if "sec" in stamp else ("secs", "nsecs")  # ROS 2 / ROS 1
    sec, nsec = (_field(stamp, k, int, where + ".header.stamp") for k in keys)
    if sec < 0 or not 0 <= nsec < 1_000_000_000:
        raise Rejected("malformed", f"{where}: header stamp out of range ({sec}, {nsec})")
    return sec + nsec * 1e-9


def check_fresh(stamp: float, now: float, stale_after_s: float, *, max_future_s: float = 0.5,
                where: str = "message") -> None:
    """Refuse a stamp older than ``stale_after_s`` (or more than ``max_future_s`` ahead: clocks disagree)."""
    age = now - stamp
    if age > stale_after_s:
        raise Rejected("stale", f"{where}: header stamp is {age:.3f} s old (limit {stale_after_s:.3f} s)")
    if age < -max_future_s:
        raise Rejected("stale", f"{where}: header stamp is {-age:.3f} s in the future (clocks out of sync?)")


@dataclass(frozen=True)
class ImageMeta:
    height: int
    width: int
    encoding: str
    step: int
    stamp: float


def check_image(msg: Any, encodings: Iterable[str], *, expected_hw: tuple[int, int] | None = None,
                where: str = "image") -> ImageMeta:
    """Validate a ``sensor_msgs/Image`` (as rosbridge JSON) without decoding its pixels."""
    stamp = header_stamp(msg, where)
    h = _field(msg, "height", int, where)
    w = _field(msg, "width", int, where)
    enc = _field(msg, "encoding", str, where)
    step = _field(msg, "step", int, where)
    big = msg.get("is_bigendian", 0)
    if not isinstance(big, (int, bool)):
        raise Rejected("malformed", f"{where}: is_bigendian has type {type(big).__name__}")
    data = _field(msg, "data", (str, list), where)
    allowed = tuple(encodings)
    if enc not in allowed:
        raise Rejected("encoding", f"{where}: encoding {enc!r}, expected one of {list(allowed)}")
    if big and ENCODING_BYTES.get(enc, 1) > 1:
        raise Rejected("encoding", f"{where}: big-endian {enc} is not supported")
    if h <= 0 or w <= 0:
        raise Rejected("size", f"{where}: empty image {w}x{h}")
    if expected_hw is not None and (h, w) != tuple(expected_hw):
        raise Rejected("size", f"{where}: {w}x{h} but the camera is {expected_hw[1]}x{expected_hw[0]}")
    bpp = ENCODING_BYTES.get(enc)
    if bpp is None:
        raise Rejected("encoding", f"{where}: unknown encoding {enc!r}")
    if step != w * bpp:
        raise Rejected("size", f"{where}: step {step} != width {w} x {bpp} bytes (padded rows are not supported)")
    # base64: 4 characters per 3 bytes (rosbridge sends uint8[] that way); a list has one item per byte.
    n = len(data) if isinstance(data, list) else (len(data) // 4) * 3 - data[-2:].count("=")
    if n != step * h:
        raise Rejected("size", f"{where}: {n} data bytes, expected step x height = {step * h}")
    return ImageMeta(h, w, enc, step, stamp)


def estop_engaged(msg: Any) -> bool:
    """``std_msgs/Bool`` on the e-stop topic; anything that is not a clean ``{"data": false}`` counts as
    engaged (fail-safe)."""
    return not (isinstance(msg, Mapping) and msg.get("data") is False)
