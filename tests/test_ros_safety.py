"""ROS bridge safety rules, message decoding, config validation and perception: pure functions, no network."""

import base64
import json
import math
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from embodied_lm.ros import messages as rm
from embodied_lm.ros.config import CameraTopics, RosConfig
from embodied_lm.ros.messages import camera_info_msg, image_msg, pose_msg, ros_header
from embodied_lm.ros.safety import (
    MotionTarget,
    Rejected,
    WorkspaceBox,
    check_fresh,
    check_image,
    check_motion,
    estop_engaged,
    header_stamp,
)
from sensors.perception import (
    PerceivedObject,
    SlotTracker,
    color_name,
    fuse_detections,
    looks_down,
    objects_array,
)
from skills.vocab import COLOR_NAMES, COLORS, Col

ROOT = Path(__file__).resolve().parents[1]

BOX = WorkspaceBox((0.25, 0.75), (-0.35, 0.35), (-0.01, 0.40))


def _rgb(h=8, w=6, stamp=None, **over):
    header = ros_header(time.time() if stamp is None else stamp, "cam")
    msg = image_msg(np.zeros((h, w, 3), np.uint8), "rgb8", header)
    return msg | over


# -- motion ---------------------------------------------------------------------------------------------
def test_targets_inside_the_box_at_allowed_speed_pass():
    check_motion([MotionTarget("obj_1", "object", (0.5, 0.0, 0.02))], 0.25, box=BOX, max_speed=0.5)
    check_motion([], 0.5, box=BOX, max_speed=0.5)  # answer / done: nothing moves


@pytest.mark.parametrize("pos", [(0.9, 0.0, 0.02), (0.5, -0.5, 0.02), (0.5, 0.0, 0.6), (0.5, 0.0, -0.2),
                                 (math.nan, 0.0, 0.02), (0.5, math.inf, 0.0)])
def test_out_of_workspace_target_is_refused(pos):
    with pytest.raises(Rejected, match="outside the workspace box") as e:
        check_motion([MotionTarget("obj_3", "object", pos)], 0.25, box=BOX, max_speed=0.5)
    assert e.value.kind == "out_of_workspace" and "obj_3" in str(e.value)


def test_informational_pose_of_the_held_block_is_not_a_motion_target():
    held = MotionTarget("obj_2", "held", (0.22, 0.0, 0.34), moves=False)  # tucked-in home pose, outside the box
    check_motion([held, MotionTarget("goal", "goal", (0.5, 0.1, 0.02))], 0.25, box=BOX, max_speed=0.5)


@pytest.mark.parametrize("speed", [0.51, 2.0, 0.0, -0.1, math.nan, math.inf])
def test_over_speed_is_refused(speed):
    with pytest.raises(Rejected) as e:
        check_motion([MotionTarget("obj_1", "object", (0.5, 0.0, 0.02))], speed, box=BOX, max_speed=0.5)
    assert e.value.kind == "over_speed"


# -- freshness, headers -----------------------------------------------------------------------------
def test_stale_and_future_stamps_are_refused():
    now = 1000.0
    check_fresh(999.5, now, 1.0)
    with pytest.raises(Rejected, match=r"2\.000 s old") as e:
        check_fresh(998.0, now, 1.0, where="rgb_top")
    assert e.value.kind == "stale" and "rgb_top" in str(e.value)
    with pytest.raises(Rejected, match="future"):
        check_fresh(1003.0, now, 1.0)


def test_header_stamps_in_ros1_and_ros2_spelling():
    assert header_stamp({"header": {"stamp": {"sec": 5, "nanosec": 500_000_000}}}) == 5.5
    assert header_stamp({"header": {"seq": 3, "stamp": {"secs": 5, "nsecs": 250_000_000}}}) == 5.25
    for bad in [{}, {"header": {}}, {"header": {"stamp": {"sec": "5", "nanosec": 0}}},
                {"header": {"stamp": {"sec": 5, "nanosec": 2_000_000_000}}}, "text"]:
        with pytest.raises(Rejected) as e:
            header_stamp(bad)
        assert e.value.kind == "malformed"


# -- images ---------------------------------------------------------------------------------------------
def test_valid_images_decode_exactly():
    rgb = np.random.default_rng(0).integers(0, 255, (8, 6, 3), dtype=np.uint8)
    depth = np.random.default_rng(1).uniform(0.3, 2.0, (8, 6)).astype(np.float32)
    t = time.time()
    img, stamp = rm.read_image(image_msg(rgb, "rgb8", ros_header(t, "cam")), rm.RGB_ENCODINGS, (8, 6))
    assert np.array_equal(img, rgb) and abs(stamp - t) < 1e-6
    d, _ = rm.read_image(image_msg(depth, "32FC1", ros_header(t, "cam", ros_version=1)), rm.DEPTH_ENCODINGS, None)
    assert d.dtype == np.float32 and np.array_equal(d, depth)
    mm = (depth * 1000).astype("<u2")
    msg16 = {"header": ros_header(t, "cam"), "height": 8, "width": 6, "encoding": "16UC1", "is_bigendian": 0,
             "step": 12, "data": base64.b64encode(mm.tobytes()).decode()}
    d16, _ = rm.read_image(msg16, rm.DEPTH_ENCODINGS, None)
    assert np.allclose(d16, depth, atol=1e-3)
    as_list = _rgb() | {"data": list(np.zeros(8 * 6 * 3, np.uint8).tolist())}  # a JSON list of bytes is fine too
    assert rm.read_image(as_list, rm.RGB_ENCODINGS, None)[0].shape == (8, 6, 3)


@pytest.mark.parametrize("encoding", ["bgr8", "mono8", "rgba8", "jpeg"])
def test_wrong_image_encoding_is_refused(encoding):
    with pytest.raises(Rejected) as e:
        check_image(_rgb(encoding=encoding), rm.RGB_ENCODINGS)
    assert e.value.kind == "encoding"


@pytest.mark.parametrize("over,expected_hw,why", [
    ({}, (16, 6), "camera is 6x16"),                                 # CameraInfo says another size
    ({"height": 9}, None, "data bytes"),                             # header size vs data length
    ({"step": 20}, None, "step 20"),                                 # padded rows
    ({"width": 0}, None, "empty image"),
    ({"data": base64.b64encode(b"\0" * 10).decode()}, None, "data bytes"),
])
def test_wrong_image_size_is_refused(over, expected_hw, why):
    with pytest.raises(Rejected, match=why) as e:
        check_image(_rgb() | over, rm.RGB_ENCODINGS, expected_hw=expected_hw)
    assert e.value.kind == "size"


@pytest.mark.parametrize("msg", [
    "not a message", {}, _rgb() | {"height": "8"}, _rgb() | {"data": 42}, _rgb() | {"encoding": None},
    {k: v for k, v in _rgb().items() if k != "data"}, _rgb() | {"header": {"stamp": {}}},
])
def test_malformed_image_is_refused(msg):
    with pytest.raises(Rejected) as e:
        check_image(msg, rm.RGB_ENCODINGS)
    assert e.value.kind == "malformed"


def test_bad_base64_is_malformed():
    msg = _rgb() | {"data": "!" * 192}
    meta = check_image(msg, rm.RGB_ENCODINGS)
    with pytest.raises(Rejected, match="base64") as e:
        rm.decode_image(msg, meta)
    assert e.value.kind == "malformed"


# -- other messages -----------------------------------------------------------------------------------
def test_camera_info_joint_state_and_pose():
    K = np.array([[100.0, 0, 32], [0, 100.0, 24], [0, 0, 1]])
    Kr, hw, _ = rm.read_camera_info(camera_info_msg(K, 48, 64, ros_header(1.0, "cam")))
    assert np.array_equal(Kr, K) and hw == (48, 64)
    ros1 = camera_info_msg(K, 48, 64, ros_header(1.0, "cam", 1))
    ros1["K"] = ros1.pop("k")
    assert np.array_equal(rm.read_camera_info(ros1)[0], K)
    names = ["a", "b", "c"]
    js = {"header": ros_header(1.0, ""), "name": ["c", "a", "b"], "position": [3.0, 1.0, 2.0]}
    q, _ = rm.read_joint_state(js, names)
    assert q.tolist() == [1.0, 2.0, 3.0]  # reordered by name
    with pytest.raises(Rejected, match="missing"):
        rm.read_joint_state({"header": ros_header(1.0, ""), "name": ["a"], "position": [1.0]}, names)
    R = np.array([[0.0, -1, 0], [1, 0, 0], [0, 0, 1]])
    T, _ = rm.read_pose_stamped(pose_msg([0.1, 0.2, 0.3], rm.matrix_to_quat(R), ros_header(1.0, "world")))
    assert np.allclose(T[:3, :3], R) and np.allclose(T[:3, 3], [0.1, 0.2, 0.3])
    assert np.allclose(rm.matrix_to_quat(R), [0, 0, math.sqrt(0.5), math.sqrt(0.5)])  # 90 degrees about z
    down = np.diag([1.0, -1.0, -1.0])  # a top-down gripper / camera: 180 degrees about x
    assert np.allclose(rm.quat_to_matrix(rm.matrix_to_quat(down)), down)
    with pytest.raises(Rejected, match="unit quaternion"):
        rm.read_pose_stamped(pose_msg([0, 0, 0], [0, 0, 0, 2], ros_header(1.0, "world")))


def test_results_must_follow_the_contract():
    ok = {"data": json.dumps({"id": "c1", "success": True, "message": "ok", "stamp": 5.0, "robot_time": 2.0,
                              "task_success": False, "physics_steps": 10})}
    out = rm.read_result(ok)
    assert out.id == "c1" and out.success and out.robot_time == 2.0 and out.extra == {"physics_steps": 10}
    for data in ["{not json", "[1, 2]", json.dumps({"id": "c1", "success": "yes", "stamp": 1.0}),
                 json.dumps({"id": "c1", "success": True}), json.dumps({"id": "c1", "success": True, "stamp": 1,
                                                                        "task_success": 1})]:
        with pytest.raises(Rejected) as e:
            rm.read_result({"data": data})
        assert e.value.kind == "malformed"


def test_estop_is_fail_safe():
    assert estop_engaged({"data": True})
    assert not estop_engaged({"data": False})
    for unreadable in [{}, {"data": "false"}, {"data": 0}, None, "stop"]:
        assert estop_engaged(unreadable)  # anything but a clean false keeps the robot stopped


# -- config ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kw,why", [
    ({"port": 0}, "port"), ({"port": "9090"}, "port"), ({"speed": 0.8, "max_speed": 0.5}, "above max_speed"),
    ({"command_topic": "skill"}, "command_topic"), ({"stale_after_s": 0}, "stale_after_s"),
    ({"workspace_x": (0.7, 0.3)}, "workspace_x"), ({"cameras": ()}, "at least one camera"),
    ({"cameras": (CameraTopics("top"), CameraTopics("top"))}, "unique"), ({"sim_services": "yes"}, "sim_services"),
    ({"joint_names": ("a", "b")}, "joint_names"), ({"max_steps": 0}, "max_steps"),
])
def test_bad_config_values_are_errors_naming_the_key(kw, why):
    with pytest.raises(ValueError, match=why):
        RosConfig(**kw)


def test_config_from_a_hydra_style_mapping():
    cfg = RosConfig.from_dict({"kind": "ros", "host": "10.0.0.2", "port": 9091, "workspace_x": [0.2, 0.8],
                               "cameras": [{"name": "wrist", "rgb_topic": "/wrist/image_rect_color",
                                            "world_from_camera": np.eye(4).tolist()}]})
    assert cfg.workspace.x == (0.2, 0.8) and cfg.cameras[0].depth_topic == "/camera/wrist/depth/image_raw"
    assert cfg.cameras[0].pose_topic == ""  # a fixed calibration replaces the pose topic
    with pytest.raises(ValueError, match="unknown ROS config key"):
        RosConfig.from_dict({"hots": "x"})
    with pytest.raises(ValueError, match="4x4"):
        CameraTopics("top", world_from_camera=[[1, 0], [0, 1]])


# -- perception (pure parts) -----------------------------------------------------------------------------
def test_colours_are_named_through_shading():
    for name in COLOR_NAMES:
        rgb = np.array(COLORS[name][:3])
        assert color_name(rgb) == name
        assert color_name(0.6 * rgb) == name  # a side face in shadow (measured ~0.6x in the sim renders)


class _Det:  # the fields of sensors.segmentation.Detection that fusion reads
    def __init__(self, pts, rgb):
        self.points = np.asarray(pts, np.float32)
        self.colors = np.tile(np.asarray(rgb, np.float32), (len(self.points), 1))
        self.centroid = self.points.mean(0)
        self.extent = self.points.max(0) - self.points.min(0)
        self.mean_rgb = self.colors.mean(0)


def _face(cx, cy, z, n=8, half=0.018):
    g = np.linspace(-half, half, n)
    return [(cx + a, cy + b, z) for a in g for b in g]


def _side(cx, cy, z0, z1, n=8, half=0.018):
    return [(cx + 0.02, cy + b, z) for b in np.linspace(-half, half, n) for z in np.linspace(z0, z1, n)]


def test_fusion_splits_a_tower_into_coloured_layers_and_finds_supports():
    top_down = np.eye(4)
    top_down[:3, :3] = np.diag([1.0, -1.0, -1.0])  # optical axis straight down
    side = np.eye(4)
    side[:3, :3] = np.array([[0, 0, -1.0], [1, 0, 0], [0, -1, 0]])  # looking along -x
    red, blue = np.array(COLORS["red"][:3]), np.array(COLORS["blue"][:3])
    dets = {"top": [_Det(_face(0.5, 0.1, 0.08), red), _Det(_face(0.4, -0.1, 0.04), blue)],
            "front": [_Det(_side(0.5, 0.1, 0.041, 0.079) + _side(0.5, 0.1, 0.001, 0.039), red * 0.6)]}
    lower = dets["front"][0].points[:, 2] < 0.04  # the tower's lower block is green, seen from the side

    dets["front"][0].colors[lower] = np.array(COLORS["green"][:3]) * 0.6
    objs = fuse_detections(dets, {"top": looks_down(top_down), "front": looks_down(side)})
    found = sorted((o.color, round(float(o.position[2]), 2)) for o in objs)
    assert found == [("blue", 0.02), ("green", 0.02), ("red", 0.06)]
    slots = SlotTracker().update(objs)
    arr = objects_array(slots)
    by_color = {COLOR_NAMES[int(r[2])]: r for r in arr if r[0] == 1}
    green_slot = [k for k, o in slots.items() if o.color == "green"][0]
    assert by_color["red"][10] == green_slot + 1  # red rests on the green block
    assert by_color["green"][10] == 0 and by_color["blue"][10] == 0  # on the table
    assert np.allclose(arr[arr[:, Col.PRESENT] == 1][:, Col.QUAT], [0, 0, 0, 1])  # identity quaternions


def test_fusion_ignores_a_few_stray_pixels_at_an_edge():
    """A side view's 5-point sliver (mixed depth at a block's lower edge) made a phantom block, or a
    phantom bowl when it was low: "the white one" then matched two objects."""
    top_down, side = np.eye(4), np.eye(4)
    top_down[:3, :3] = np.diag([1.0, -1.0, -1.0])
    side[:3, :3] = np.array([[0, 0, -1.0], [1, 0, 0], [0, -1, 0]])
    white = np.array(COLORS["white"][:3])
    block = {"top": [_Det(_face(0.5, 0.1, 0.04), white)], "front": [_Det(_side(0.5, 0.1, 0.001, 0.039), white)]}
    score = {"top": looks_down(top_down), "front": looks_down(side)}
    for z in (0.015, 0.03):  # low (a bowl wall's height) and high (a block's side)
        sliver = _Det([(0.47, 0.14 + 0.003 * i, z) for i in range(5)], white)
        objs = fuse_detections({"top": block["top"], "front": [*block["front"], sliver]}, score)
        assert [(o.kind, o.color) for o in objs] == [("block", "white")]


def test_slot_tracker_keeps_names_and_the_held_block():
    a = PerceivedObject("block", "red", np.array([0.4, 0.0, 0.02]), 0.04, 0.04)
    b = PerceivedObject("block", "blue", np.array([0.6, 0.1, 0.02]), 0.04, 0.04)
    tr = SlotTracker()
    first = tr.update([b, a])
    names = {o.color: k for k, o in first.items()}
    assert names == {"red": 0, "blue": 1}  # first view: ordered by x
    tr.mark_held(names["red"])  # picked
    held = tr.update([b], ee_position=np.array([0.22, 0.0, 0.34]))
    assert held[names["red"]].held and np.allclose(held[names["red"]].position, [0.22, 0.0, 0.335])
    tr.mark_held(None)  # placed somewhere new: keeps its name
    moved = PerceivedObject("block", "red", np.array([0.5, -0.2, 0.02]), 0.04, 0.04)
    again = tr.update([moved, b])
    assert {o.color: k for k, o in again.items()} == names and not again[names["red"]].held


def test_a_slipped_grasp_is_seen_and_the_block_is_not_held():
    a = PerceivedObject("block", "red", np.array([0.4, 0.0, 0.02]), 0.04, 0.04)
    b = PerceivedObject("block", "blue", np.array([0.6, 0.1, 0.02]), 0.04, 0.04)
    tr = SlotTracker()
    names = {o.color: k for k, o in tr.update([a, b]).items()}
    tr.mark_held(names["red"])  # the robot reported the pick done ...
    fell = PerceivedObject("block", "red", np.array([0.41, 0.01, 0.02]), 0.04, 0.04)
    after = tr.update([fell, b], ee_position=np.array([0.22, 0.0, 0.34]))  # ... but red is still there
    assert tr.held is None and not after[names["red"]].held and len(after) == 2
    assert {o.color: k for k, o in after.items()} == names  # no new name for the block that stayed
    tr.mark_held(names["red"])  # a real grasp: the block leaves the table
    held = tr.update([b], ee_position=np.array([0.22, 0.0, 0.34]))
    assert tr.held == names["red"] and held[names["red"]].held
    assert tr.update([b], ee_position=np.array([0.3, 0.0, 0.3]))[names["red"]].held  # checked once, not after


def test_an_object_out_of_view_gets_its_name_back_when_it_is_seen_again():
    red = PerceivedObject("block", "red", np.array([0.4, 0.0, 0.02]), 0.04, 0.04)
    blue = PerceivedObject("block", "blue", np.array([0.6, 0.1, 0.02]), 0.04, 0.04)
    tr = SlotTracker()
    names = {o.color: k for k, o in tr.update([red, blue]).items()}
    assert names["red"] not in tr.update([blue])  # hidden: not reported ...
    assert names["red"] not in tr.update([blue])
    toppled = PerceivedObject("block", "red", np.array([0.48, -0.08, 0.02]), 0.04, 0.04)  # 11 cm away
    green = PerceivedObject("block", "green", np.array([0.4, 0.0, 0.02]), 0.04, 0.04)  # where red was
    back = tr.update([blue, toppled, green])
    assert {o.color: k for k, o in back.items() if o.color != "green"} == names  # ... and back under its name
    assert [k for k, o in back.items() if o.color == "green"] == [2]  # another colour: a new name
    far = PerceivedObject("block", "blue", np.array([0.1, -0.3, 0.02]), 0.04, 0.04)
    tr.update([toppled, green])
    assert [k for k, o in tr.update([toppled, green, far]).items() if o.color == "blue"] == [3]  # too far


def test_topic_and_joint_names_are_written_once():
    """``RosConfig``'s defaults and ``messages.JOINT_NAMES`` are the only names: the sim endpoint publishes
    on a ``RosConfig`` and the MCAP export takes the same joint names."""
    from embodied_lm.datasets import mcap
    from embodied_lm.ros.testing.sim_endpoint import SimRobotEndpoint

    assert RosConfig().joint_names == rm.JOINT_NAMES and tuple(mcap.JOINT_NAMES) == rm.JOINT_NAMES
    assert SimRobotEndpoint().topics == RosConfig()


_BLOCK_SIM = """
import sys

class BlockSim:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("sim", "pybullet"):
            raise ImportError(f"{name} is blocked: the ROS bridge must not need the simulator")

sys.meta_path.insert(0, BlockSim())
import embodied_lm.ros, embodied_lm.ros.bridge, embodied_lm.ros.config, embodied_lm.ros.messages
import sensors.perception, embodied_lm.ros.safety
from embodied_lm.ros import RosConfig, RosEmbodiment

bridge = RosEmbodiment(RosConfig(), connect=False)
assert bridge.valid_actions() == ["done"], bridge.valid_actions()  # (no scene perceived yet)
print(sorted(m for m in sys.modules if m.split(".")[0] in ("sim", "pybullet")))
"""


def test_bridge_modules_import_no_simulator():
    """A planner machine drives a real robot without PyBullet: the bridge imports nothing from ``sim``."""
    proc = subprocess.run([sys.executable, "-c", _BLOCK_SIM], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "[]"
