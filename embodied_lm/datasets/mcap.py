"""Replay store -> ROS 2 bag (rosbag2, MCAP storage) with rosbags; no ROS install needed.

Topics (``<cam>`` from the store's ``rgb_<cam>`` keys; frame ids in brackets)::

    /camera/<cam>/image        sensor_msgs/msg/Image       rgb8                 [<cam>_optical_frame]
    /camera/<cam>/depth        sensor_msgs/msg/Image       32FC1, metres        [<cam>_optical_frame]
    /camera/<cam>/mask         sensor_msgs/msg/Image       16SC1: k = obj_k, -1 robot, 0 other
    /camera/<cam>/camera_info  sensor_msgs/msg/CameraInfo  K, P from store attrs ``cameras``, no distortion
    /joint_states              sensor_msgs/msg/JointState  panda_joint1..7, panda_finger_joint1..2 [world]
    /ee_pose                   geometry_msgs/msg/PoseStamped  end effector (robot[9:16]) [world]
    /objects                   std_msgs/msg/Float32MultiArray (16 slots x 12 fields, see lerobot.OBJECT_FIELDS)
    /skill                     std_msgs/msg/String  the skill call chosen at this observation
    /skill_success             std_msgs/msg/Bool    whether that skill call succeeded
    /instruction               std_msgs/msg/String  once per episode (transient-local QoS)
    /episode                   std_msgs/msg/String  once per episode, JSON: index, steps, start/end stamps, meta
    /tf_static                 tf2_msgs/msg/TFMessage  world -> <cam>_optical_frame (OpenCV axes)

Time: the store has no wall clock; steps are skill steps. Step k of the j-th exported episode is
stamped ``start_time + (frames before it + j + k) / fps`` seconds: ``fps`` per step (default store attr
``fps`` or 1 Hz) and one empty slot between episodes. Header stamps equal bag (log) timestamps.
``start_time`` defaults to 1 s, not 0, since a zero stamp means "unset" to many ROS tools.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from embodied_lm.atomic import staged_dir
from embodied_lm.datasets.zarr_store import ReplayReader, select_episodes
from embodied_lm.ros import messages as rm

__all__ = ["JOINT_NAMES", "export_mcap"]

JOINT_NAMES = list(rm.JOINT_NAMES)  # the ROS bridge's joint names (rosbags wants a list)
WORLD_FRAME = "world"

PathLike = str | os.PathLike[str]


@contextlib.contextmanager
def _bag_dir(parent: Path, name: str) -> Iterator[Path]:
    """``parent/name`` for rosbags to create (it names the ``.mcap`` after the bag directory: keep the
    final name); once the writer has closed, the bag's files move up into ``parent``."""
    bag = parent / name
    yield bag
    for f in list(bag.iterdir()):
        f.rename(parent / f.name)
    bag.rmdir()


def _fps(fps: float | None, attrs: dict[str, Any]) -> float:
    value = attrs.get("fps", 1.0) if fps is None else fps
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) or not value > 0:
        raise ValueError(f"fps must be a positive number, got {value!r}")
    return float(value)


def export_mcap(
    store: PathLike | ReplayReader,
    out_dir: PathLike,
    *,
    episodes: Sequence[int] | None = None,
    distro: str = "ROS2_HUMBLE",
    fps: float | None = None,
    start_time: float = 1.0,
) -> Path:
    """Write ``episodes`` (default all) of a replay store as a rosbag2 bag with MCAP storage.

    ``out_dir`` (the bag directory: ``<name>.mcap`` + ``metadata.yaml``) must not exist; the bag is
    written in a temp dir and renamed into place only when complete, so a failure leaves nothing.
    ``distro``: a ``rosbags.typesys.Stores`` name for message definitions (ROS2_HUMBLE, ROS2_JAZZY, ...).
    Returns ``out_dir``.
    """
    from rosbags.interfaces import Qos, QosDurability, QosHistory, QosLiveliness, QosReliability, QosTime
    from rosbags.rosbag2 import StoragePlugin, Writer
    from rosbags.typesys import Stores, get_typestore

    reader = store if isinstance(store, ReplayReader) else ReplayReader(store)
    out = Path(out_dir)
    selected = select_episodes(reader.n_episodes, episodes)
    if distro not in Stores.__members__ or not distro.startswith("ROS2"):
        ros2 = [s for s in Stores.__members__ if s.startswith("ROS2")]
        raise ValueError(f"distro {distro!r} is not a ROS 2 typestore; one of {ros2}")
    attrs = reader.attrs
    rate = _fps(fps, attrs)
    if not math.isfinite(start_time) or start_time < 0:
        raise ValueError(f"start_time must be >= 0 seconds, got {start_time!r}")
    ts = get_typestore(Stores[distro])
    T_ = ts.types
    Time, Header = T_["builtin_interfaces/msg/Time"], T_["std_msgs/msg/Header"]
    Image, CameraInfo, JointState = (
        T_["sensor_msgs/msg/Image"],
        T_["sensor_msgs/msg/CameraInfo"],
        T_["sensor_msgs/msg/JointState"],
    )
    ROI = T_["sensor_msgs/msg/RegionOfInterest"]
    String, Bool = T_["std_msgs/msg/String"], T_["std_msgs/msg/Bool"]
    F32Array, Layout, Dim = (
        T_["std_msgs/msg/Float32MultiArray"],
        T_["std_msgs/msg/MultiArrayLayout"],
        T_["std_msgs/msg/MultiArrayDimension"],
    )
    PoseStamped, Pose = T_["geometry_msgs/msg/PoseStamped"], T_["geometry_msgs/msg/Pose"]
    Point, Quaternion = T_["geometry_msgs/msg/Point"], T_["geometry_msgs/msg/Quaternion"]
    TFMessage, TransformStamped = T_["tf2_msgs/msg/TFMessage"], T_["geometry_msgs/msg/TransformStamped"]
    Transform, Vector3 = T_["geometry_msgs/msg/Transform"], T_["geometry_msgs/msg/Vector3"]

    keys = set(reader.keys)
    cams = sorted(k[4:] for k in keys if k.startswith("rgb_"))
    cam_params = attrs.get("cameras", {}) or {}
    zero = QosTime(sec=0, nsec=0)
    latched = [
        Qos(
            QosHistory.KEEP_LAST,
            1,
            QosReliability.RELIABLE,
            QosDurability.TRANSIENT_LOCAL,
            zero,
            zero,
            QosLiveliness.AUTOMATIC,
            zero,
            False,
        )
    ]

    def stamp_of(ns: int):
        return Time(sec=ns // 1_000_000_000, nanosec=ns % 1_000_000_000)

    def image(hdr, arr: np.ndarray, encoding: str):
        arr = np.ascontiguousarray(arr)
        h, w = arr.shape[:2]
        return Image(
            header=hdr,
            height=h,
            width=w,
            encoding=encoding,
            is_bigendian=0,
            step=int(arr.strides[0]),
            data=arr.view(np.uint8).reshape(-1),
        )

    with (staged_dir(out) as tmp, _bag_dir(tmp, out.name) as bag,
          Writer(bag, version=9, storage_plugin=StoragePlugin.MCAP) as w):
        conns: dict[str, Any] = {}

        def write(topic: str, msg: Any, t_ns: int, qos: Sequence[Any] = ()) -> None:
            if topic not in conns:
                conns[topic] = w.add_connection(topic, msg.__msgtype__, typestore=ts, offered_qos_profiles=qos)
            w.write(conns[topic], t_ns, ts.serialize_cdr(msg, msg.__msgtype__))

        t0 = round(start_time * 1e9)
        tfs = []
        for cam in cams:
            pose = cam_params.get(cam, {}).get("world_from_camera")
            if pose is None:
                continue
            M = np.asarray(pose, dtype=np.float64)
            q = rm.matrix_to_quat(M[:3, :3])
            tfs.append(
                TransformStamped(
                    header=Header(stamp=stamp_of(t0), frame_id=WORLD_FRAME),
                    child_frame_id=f"{cam}_optical_frame",
                    transform=Transform(
                        translation=Vector3(x=M[0, 3], y=M[1, 3], z=M[2, 3]),
                        rotation=Quaternion(x=q[0], y=q[1], z=q[2], w=q[3]),
                    ),
                )
            )
        if tfs:
            write("/tf_static", TFMessage(transforms=tfs), t0, latched)

        slot = 0
        for ep_idx in selected:
            ep = reader.episode(ep_idx)
            d, n = ep.data, ep.n_steps
            t_ns = [t0 + round((slot + k) * 1e9 / rate) for k in range(n)]
            slot += n + 1  # one empty slot marks the boundary between episodes
            start = stamp_of(t_ns[0])
            info = {
                "episode_index": ep_idx,
                "steps": n,
                "fps": rate,
                "start": {"sec": start.sec, "nanosec": start.nanosec},
                "end": {"sec": t_ns[-1] // 1_000_000_000, "nanosec": t_ns[-1] % 1_000_000_000},
                "meta": ep.meta,
            }
            write("/episode", String(data=json.dumps(info, ensure_ascii=False)), t_ns[0], latched)
            write("/instruction", String(data=str(ep.meta.get("instruction", ""))), t_ns[0], latched)
            for k in range(n):
                stamp = stamp_of(t_ns[k])
                for cam in cams:
                    hdr = Header(stamp=stamp, frame_id=f"{cam}_optical_frame")
                    rgb = d[f"rgb_{cam}"][k]
                    write(f"/camera/{cam}/image", image(hdr, rgb, "rgb8"), t_ns[k])
                    if f"depth_{cam}" in keys:
                        write(
                            f"/camera/{cam}/depth",
                            image(hdr, d[f"depth_{cam}"][k].astype("<f4"), "32FC1"),
                            t_ns[k],
                        )
                    if f"mask_{cam}" in keys:
                        write(
                            f"/camera/{cam}/mask", image(hdr, d[f"mask_{cam}"][k].astype("<i2"), "16SC1"), t_ns[k]
                        )
                    p = cam_params.get(cam)
                    if p and "K" in p:
                        write(
                            f"/camera/{cam}/camera_info",
                            CameraInfo(
                                header=hdr,
                                height=int(p.get("height", rgb.shape[0])),
                                width=int(p.get("width", rgb.shape[1])),
                                roi=ROI(x_offset=0, y_offset=0, height=0, width=0, do_rectify=False),
                                **rm.camera_info_fields(p["K"]),
                            ),
                            t_ns[k],
                        )
                world = Header(stamp=stamp, frame_id=WORLD_FRAME)
                if "robot" in keys:
                    r = np.asarray(d["robot"][k], dtype=np.float64)
                    nj = min(len(JOINT_NAMES), len(r))
                    write(
                        "/joint_states",
                        JointState(
                            header=world,
                            name=JOINT_NAMES[:nj],
                            position=r[:nj].copy(),
                            velocity=np.zeros(0),
                            effort=np.zeros(0),
                        ),
                        t_ns[k],
                    )
                    if len(r) >= 16:
                        write(
                            "/ee_pose",
                            PoseStamped(
                                header=world,
                                pose=Pose(
                                    position=Point(x=r[9], y=r[10], z=r[11]),
                                    orientation=Quaternion(x=r[12], y=r[13], z=r[14], w=r[15]),
                                ),
                            ),
                            t_ns[k],
                        )
                if "objects" in keys:
                    o = np.asarray(d["objects"][k], dtype=np.float32)
                    shape = o.shape if o.ndim == 2 else (o.size, 1)
                    layout = Layout(
                        dim=[
                            Dim(label="object", size=shape[0], stride=shape[0] * shape[1]),
                            Dim(label="field", size=shape[1], stride=shape[1]),
                        ],
                        data_offset=0,
                    )
                    write("/objects", F32Array(layout=layout, data=o.reshape(-1).copy()), t_ns[k])
                if "action" in keys:
                    write("/skill", String(data=str(d["action"][k])), t_ns[k])
                if "skill_success" in keys:
                    write("/skill_success", Bool(data=bool(d["skill_success"][k])), t_ns[k])
    return out
