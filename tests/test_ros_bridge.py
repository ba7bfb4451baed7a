"""The ROS bridge end to end over 127.0.0.1: roslibpy (asyncio) <-> rosbridge v2 server <-> sim robot.

Every network wait in these tests has a timeout; the robot is
``embodied_lm.ros.testing.sim_endpoint.SimRobotEndpoint`` (in-process) or
``python -m embodied_lm.ros.testing.sim_endpoint`` (a subprocess, for the dropped-connection tests).
"""

import contextlib
import logging
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import roslibpy

from embodied_lm.evaluate import evaluate, run_episode
from embodied_lm.planners import make_planner
from embodied_lm.ros import EStopEngaged, RosConfig, RosConnectionError, RosEmbodiment
from embodied_lm.ros.messages import image_msg, ros_header
from embodied_lm.ros.testing.server import RosbridgeServer, _ProtocolError
from embodied_lm.ros.testing.sim_endpoint import SimRobotEndpoint
from sim.env import EnvConfig, TabletopEnv
from sim.tasks import EpisodeSpec, generate_specs, load_specs, save_specs
from skills.vocab import COLOR_NAMES, Col

ROOT = Path(__file__).resolve().parents[1]
SPEC = EpisodeSpec("p2_stack", {"order": ["red", "blue"]}, 4, 11)
LOGGER = "embodied_lm.ros"


def _wait(pred, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = pred()
        if value:
            return value
        time.sleep(0.01)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def _client(port: int) -> roslibpy.Ros:
    ros = roslibpy.Ros("127.0.0.1", port, transport="asyncio")
    ros.run(timeout=5)
    return ros


@pytest.fixture(scope="module")
def endpoint():
    with SimRobotEndpoint() as ep:
        yield ep


@pytest.fixture
def bridge(endpoint):
    b = RosEmbodiment(RosConfig(port=endpoint.port))
    yield b
    b.close()


# -- the rosbridge server itself ----------------------------------------------------------------------
def test_rosbridge_server_speaks_the_protocol_to_roslibpy():
    with RosbridgeServer() as server:
        a, b = _client(server.port), _client(server.port)
        try:
            got_a, got_server = queue.Queue(), queue.Queue()
            server.advertise("/chatter", "std_msgs/String")
            roslibpy.Topic(a, "/chatter", "std_msgs/String").subscribe(got_a.put)
            roslibpy.Topic(a, "/cmd", "std_msgs/String").subscribe(got_a.put)
            server.on_publish("/cmd", "std_msgs/String", got_server.put)
            time.sleep(0.2)  # subscriptions travel on the socket
            server.publish("/chatter", {"data": "from robot"})
            assert got_a.get(timeout=2) == {"data": "from robot"}
            roslibpy.Topic(b, "/cmd", "std_msgs/String").publish(roslibpy.Message({"data": "from client"}))
            assert got_a.get(timeout=2) == {"data": "from client"}  # fan-out to other clients
            assert got_server.get(timeout=2) == {"data": "from client"}

            server.advertise_service("/add", lambda args: {"sum": args["a"] + args["b"]})
            server.advertise_service("/fail", lambda args: 1 / 0)
            time.sleep(0.1)
            srv = roslibpy.Service(a, "/add", "rospy_tutorials/AddTwoInts")
            assert srv.call(roslibpy.ServiceRequest({"a": 2, "b": 3}), timeout=2)["sum"] == 5
            with pytest.raises(roslibpy.core.ServiceException, match="does not exist"):
                roslibpy.Service(a, "/nope", "std_srvs/Trigger").call(roslibpy.ServiceRequest(), timeout=2)
            with pytest.raises(roslibpy.core.ServiceException, match="/fail failed"):
                roslibpy.Service(a, "/fail", "std_srvs/Trigger").call(roslibpy.ServiceRequest(), timeout=2)

            server.publish("/calibration", {"data": "latched"}, "std_msgs/String", latch=True)
            late = queue.Queue()  # a latched message reaches a later subscriber, like /tf_static
            roslibpy.Topic(b, "/calibration", "std_msgs/String").subscribe(late.put)
            assert late.get(timeout=2) == {"data": "latched"}
        finally:
            a.close()
            b.close()


def test_protocol_errors_follow_the_spec():
    server = RosbridgeServer()
    server._topics["/chatter"] = "std_msgs/String"

    class Fake:
        subs: dict = {}

    with pytest.raises(_ProtocolError, match="does not exist"):
        server._op_publish(Fake(), {"op": "publish", "topic": "/nope", "msg": {"data": "x"}})
    with pytest.raises(_ProtocolError, match="already has type"):
        server._op_advertise(Fake(), {"op": "advertise", "topic": "/chatter", "type": "std_msgs/Bool"})
    with pytest.raises(_ProtocolError, match="does not conform"):
        server._op_publish(Fake(), {"op": "publish", "topic": "/chatter", "msg": {"data": 3}})
    with pytest.raises(_ProtocolError, match="cannot infer"):
        server._op_subscribe(Fake(), {"op": "subscribe", "topic": "/unknown"})
    ros2_name = {"op": "advertise", "topic": "/chatter", "type": "std_msgs/msg/String"}
    server._op_advertise(Fake(), ros2_name)  # the same type


# -- the bridge as an Embodiment ----------------------------------------------------------------------
def test_oracle_through_ros_matches_driving_the_sim_directly(endpoint, tmp_path):
    specs = []
    for fam, i in [("p1_grasp", 1), ("p2_stack", 1), ("bowl_place", 0), ("push_to_block", 0),
                   ("q2_on_table", 0), ("p1_grasp", 0)]:
        specs.append(generate_specs([fam], ["L1"], episodes=2, split="test")[i])
    save_specs(specs, tmp_path / "specs.jsonl")
    specs = load_specs(tmp_path / "specs.jsonl")

    direct = TabletopEnv(EnvConfig(observe_images=False))
    want = evaluate(direct, make_planner("oracle"), specs, progress=False)
    direct.close()

    done_before = len(endpoint.stats.results)
    with RosEmbodiment(RosConfig(port=endpoint.port)) as bridge:
        got = evaluate(bridge, make_planner("oracle"), specs, progress=False)
    executed = [r["sim_call"] for r in endpoint.stats.results[done_before:]]

    assert [r.success for r in got] == [r.success for r in want]
    assert [r.steps for r in got] == [r.steps for r in want]
    assert executed == [a for r in want for a in r.plan]  # the sim ran exactly the direct run's calls
    assert sum(r.steps for r in want) >= 12 and all(r.success for r in want)
    for r in got:
        assert all(r.skill_success) and r.plan_success and r.instruction


def test_observation_has_the_sim_layout_without_ground_truth(bridge, endpoint):
    obs, info = bridge.reset(options={"spec": SPEC})
    sim_env = TabletopEnv(EnvConfig(observe_images=False))
    try:
        space = sim_env.observation_space
        assert set(obs) == set(space.spaces) | {"object_rgb"}  # + the perceived objects' measured colours
        assert space.contains({k: v for k, v in obs.items() if k != "object_rgb"})
        assert obs["object_rgb"].shape == (16, 3) and obs["object_rgb"][:4].min() >= 0
        for k in space.spaces:
            if k != "instruction":
                assert obs[k].shape == space[k].shape and obs[k].dtype == space[k].dtype, k
        truth, _ = sim_env.reset(options={"spec": SPEC})
    finally:
        sim_env.close()
    present = obs["objects"][obs["objects"][:, Col.PRESENT] == 1]
    gt = truth["objects"][truth["objects"][:, Col.PRESENT] == 1]
    assert len(present) == len(gt) == 4
    assert sorted(present[:, 2].tolist()) == sorted(gt[:, 2].tolist())  # same colours
    for row in present:  # every perceived block is within 1.5 cm of a real one
        assert np.min(np.linalg.norm(gt[:, 3:6] - row[3:6], axis=1)) < 0.015
    assert set(np.unique(obs["mask_top"])) - {0} == {int(i) for i in np.flatnonzero(obs["objects"][:, 0]) + 1}
    assert obs["robot"][:9].tolist() == pytest.approx(truth["robot"][:9].tolist(), abs=1e-5)
    assert info["instruction"] == obs["instruction"] and info["spec"]["task"] == "p2_stack"
    assert bridge.oracle_action() in bridge.valid_actions()


def test_calls_naming_objects_by_colour_run_on_the_robot(bridge, endpoint):
    """ "pick the blue block" resolves in the bridge's perception before anything is sent; a reference
    that fits no object is a failed step and sends nothing."""
    bridge.reset(options={"spec": SPEC})
    assert "pick the blue block" in bridge.valid_actions(by_colour=True)
    sent = len(endpoint.stats.results)
    _, _, _, _, info = bridge.step("pick the pink block")
    assert not info["skill_success"] and "there is no pink block" in info["message"]
    assert len(endpoint.stats.results) == sent
    for call in ("pick the blue block", "place the blue block on the yellow block"):
        _, _, _, _, info = bridge.step(call)
        assert info["skill_success"], info["message"]
    # in the sim's names (obj_1 yellow, obj_2 red, obj_3 green, obj_4 blue), what the robot was sent
    assert [r["sim_call"] for r in endpoint.stats.results[sent:]] == ["pick obj_4", "place obj_4 on obj_1"]


# -- safety: refused before anything is sent ------------------------------------------------------------
def test_out_of_workspace_target_is_refused_and_nothing_is_sent(endpoint, caplog):
    cfg = RosConfig(port=endpoint.port, workspace_x=(0.25, 0.45))
    with RosEmbodiment(cfg) as bridge:
        obs, _ = bridge.reset(options={"spec": SPEC})
        far = [k for k in np.flatnonzero(obs["objects"][:, 0]) if obs["objects"][k, 3] > 0.47]
        assert far, "the spec has a block beyond x = 0.47"
        sent = len(endpoint.stats.commands)
        with caplog.at_level(logging.WARNING, LOGGER):
            obs2, reward, terminated, truncated, info = bridge.step(f"pick obj_{far[0] + 1}")
        assert not info["skill_success"] and "outside the workspace box" in info["message"]
        assert not terminated and reward == 0 and obs2 is obs  # nothing moved
        assert len(endpoint.stats.commands) == sent
        assert any("outside the workspace" in r.getMessage() for r in caplog.records)
        placed = bridge.step("place obj_1 on table at 0.95 0.00")  # a goal outside the box (and not holding)
        assert not placed[4]["skill_success"] and len(endpoint.stats.commands) == sent


def test_over_speed_is_refused_and_nothing_is_sent(bridge, endpoint, caplog):
    bridge.reset(options={"spec": SPEC})
    sent = len(endpoint.stats.commands)
    with caplog.at_level(logging.WARNING, LOGGER):
        _, _, terminated, _, info = bridge.execute("pick obj_1", speed=2.0)
    assert not info["skill_success"] and "above the limit" in info["message"] and not terminated
    assert len(endpoint.stats.commands) == sent
    assert bridge.rejections["over_speed"] == 1
    assert [r for r in caplog.records if "over_speed" in r.getMessage()]


# -- safety: bad messages never reach the model ------------------------------------------------------
def _bad_rgb(kind: str, h: int, w: int) -> dict:
    img = np.full((h, w, 3), 255, np.uint8)  # a white frame: easy to spot if it ever got through
    if kind == "stale":
        return image_msg(img, "rgb8", ros_header(time.time() - 30, "top_optical_frame"))
    msg = image_msg(img, "rgb8", ros_header(time.time(), "top_optical_frame"))
    if kind == "encoding":
        return msg | {"encoding": "bgr8"}
    if kind == "size":
        return image_msg(np.full((h // 2, w, 3), 255, np.uint8), "rgb8", msg["header"])
    return {k: v for k, v in msg.items() if k != "data"} | {"width": "wide"}  # malformed


@pytest.mark.parametrize("kind", ["stale", "encoding", "size", "malformed"])
def test_bad_sensor_message_is_rejected_with_one_log_line(bridge, endpoint, caplog, kind):
    obs, _ = bridge.reset(options={"spec": SPEC})
    h, w = obs["rgb_top"].shape[:2]
    before = bridge._latest["rgb_top"]
    topic = bridge.config.cameras[0].rgb_topic
    with caplog.at_level(logging.WARNING, LOGGER):
        endpoint.publish(topic, _bad_rgb(kind, h, w))
        _wait(lambda: bridge.rejections[kind] >= 1, 3, f"a {kind} rejection")
    lines = [r.getMessage() for r in caplog.records if r.name == LOGGER]
    assert len(lines) == 1 and topic in lines[0] and kind in lines[0], lines
    assert bridge._latest["rgb_top"] is before  # the model's view is unchanged
    _, _, _, _, info = bridge.step("done")  # the next observation is built from valid frames only
    assert info["skill_success"]
    assert not np.all(bridge._last_obs["rgb_top"] == 255)


def test_malformed_result_is_rejected_and_the_wait_stays_bounded(endpoint, caplog):
    with RosEmbodiment(RosConfig(port=endpoint.port, command_timeout_s=1.0)) as bridge:
        bridge.reset(options={"spec": SPEC})
        endpoint.command_delay_s = 2.5  # the real result comes too late
        try:
            with caplog.at_level(logging.WARNING, LOGGER):
                endpoint.publish(bridge.config.result_topic, {"data": "{not json"})
                _wait(lambda: bridge.rejections["malformed"] >= 1, 3, "the malformed result")
                t0 = time.monotonic()
                _, _, terminated, _, info = bridge.step("pick obj_1")
            assert time.monotonic() - t0 < 2.0
            assert terminated and info["error"] == "timeout" and not info["success"]
            assert any("not JSON" in r.getMessage() for r in caplog.records)
        finally:
            endpoint.command_delay_s = 0.0
            late = bridge._session
            _wait(lambda: endpoint.stats.results and endpoint.stats.results[-1]["id"].startswith(late), 10,
                  "the late result")


# -- stops --------------------------------------------------------------------------------------------
def test_estop_ends_the_episode_at_once_and_blocks_the_next(endpoint, caplog):
    button = _client(endpoint.port)
    estop = roslibpy.Topic(button, "/estop", "std_msgs/Bool")
    try:
        with RosEmbodiment(RosConfig(port=endpoint.port)) as bridge:
            bridge.reset(options={"spec": SPEC})
            endpoint.command_delay_s = 10.0  # a long motion
            out: dict = {}
            t = threading.Thread(target=lambda: out.update(r=bridge.step("pick obj_1"), t=time.monotonic()))
            n = len(endpoint.stats.commands)
            with caplog.at_level(logging.WARNING, LOGGER):
                t.start()
                _wait(lambda: len(endpoint.stats.commands) > n, 5, "the command to reach the robot")
                t_press = time.monotonic()
                estop.publish(roslibpy.Message({"data": True}))
                t.join(5)
            assert not t.is_alive()
            _, reward, terminated, truncated, info = out["r"]
            assert out["t"] - t_press < 1.0  # at once, not when the motion would have ended
            assert terminated and not truncated and reward == 0
            assert info["error"] == "estop" and not info["success"] and not info["skill_success"]
            assert any(r.levelno == logging.ERROR and "e-stop" in r.getMessage() for r in caplog.records)
            with pytest.raises(EStopEngaged):
                bridge.reset(options={"spec": SPEC})
            estop.publish(roslibpy.Message({"data": False}))
            _wait(lambda: not bridge.estop_engaged, 3, "the e-stop release")
            endpoint.command_delay_s = 0.0
            bridge.reset(options={"spec": SPEC})  # usable again
    finally:
        endpoint.command_delay_s = 0.0
        endpoint.estop(False)
        button.close()


@contextlib.contextmanager
def _endpoint_process(*args: str):
    """``python -m embodied_lm.ros.testing.sim_endpoint --port 0`` in a subprocess; yields (process, port)."""
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    cmd = [sys.executable, "-m", "embodied_lm.ros.testing.sim_endpoint", "--port", "0", *args]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(x) for x in proc.stdout], daemon=True).start()
    try:
        deadline = time.monotonic() + 60
        while True:
            line = lines.get(timeout=max(0.1, deadline - time.monotonic()))
            m = re.search(r"listening on ws://127\.0\.0\.1:(\d+)", line)
            if m:
                break
        yield proc, int(m.group(1))
    finally:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGKILL)
        proc.wait(10)


def _episode_then(action, port: int, proc) -> tuple:
    """Run an oracle episode over ROS; ``action(proc)`` once the first command has been sent."""
    bridge = RosEmbodiment(RosConfig(port=port, heartbeat_s=0.5))
    result: dict = {}

    def run():
        result["row"] = run_episode(bridge, make_planner("oracle"), SPEC)
        result["t"] = time.monotonic()

    t = threading.Thread(target=run, daemon=True)
    t.start()
    _wait(lambda: bridge.latencies, 30, "the first command")
    t_fault = time.monotonic()
    action(proc)
    t.join(15)
    assert not t.is_alive(), "the episode hung after the fault"
    return bridge, result["row"], result["t"] - t_fault


def test_killed_robot_ends_the_episode_failed_within_bounded_time(caplog):
    with _endpoint_process("--command-delay", "5") as (proc, port), caplog.at_level(logging.ERROR, LOGGER):
        bridge, row, dt = _episode_then(lambda p: p.send_signal(signal.SIGKILL), port, proc)
    assert dt < 10.0, f"took {dt:.1f} s"
    assert not row.success and not row.skill_success[-1] and not row.plan_success
    assert "lost" in row.messages[-1]
    assert any("connection" in r.getMessage() and "lost" in r.getMessage() for r in caplog.records)
    t0 = time.monotonic()
    with pytest.raises(RosConnectionError):
        bridge.reset(options={"spec": SPEC})  # the next episode cannot start: a clear error, quickly
    assert time.monotonic() - t0 < bridge.config.connect_timeout_s + 2
    bridge.close()


def test_frozen_robot_is_detected_by_the_heartbeat():
    """SIGSTOP: the socket stays open but nothing answers (a half-open link); pings catch it."""
    with _endpoint_process("--command-delay", "30") as (proc, port):
        bridge, row, dt = _episode_then(lambda p: p.send_signal(signal.SIGSTOP), port, proc)
        proc.send_signal(signal.SIGCONT)
    assert dt < 10.0, f"took {dt:.1f} s"
    assert not row.success and "lost" in row.messages[-1]
    bridge.close()


def test_unreachable_robot_is_a_clear_error_quickly():
    with RosbridgeServer() as s:  # a port that was free a moment ago
        port = s.port
    t0 = time.monotonic()
    with pytest.raises(RosConnectionError, match=f"ws://127.0.0.1:{port}"):
        RosEmbodiment(RosConfig(port=port, connect_timeout_s=1.0))
    assert time.monotonic() - t0 < 3.0


def test_a_robot_without_sim_services_has_no_oracle_and_needs_an_instruction(endpoint):
    with RosEmbodiment(RosConfig(port=endpoint.port, sim_services="off")) as bridge:
        with pytest.raises(NotImplementedError):
            bridge.oracle_action()
        with pytest.raises(ValueError, match="instruction"):
            bridge.reset(options={"spec": SPEC})
        # A real robot streams its sensors; here the endpoint publishes once, a moment after the reset.
        timer = threading.Timer(0.3, endpoint.publish_sensors)
        timer.start()
        obs, info = bridge.reset(options={"instruction": "stack the red block on the blue block"})
        timer.join()
        assert obs["instruction"] == "stack the red block on the blue block" and info["max_steps"] == 20
        assert obs["objects"][:, 0].sum() >= 3
        assert "done" in bridge.valid_actions() and not [a for a in bridge.valid_actions() if "answer" in a]
        # A question: the caller says which answers it allows (no task family on a real robot).
        with pytest.raises(ValueError, match="answers"):
            bridge.reset(options={"instruction": "Is the red block on the table?", "answers": ["maybe"]})
        timer = threading.Timer(0.3, endpoint.publish_sensors)
        timer.start()
        bridge.reset(options={"instruction": "Is the red block on the table?", "answers": ["yes", "no"]})
        timer.join()
        assert bridge.valid_actions() == ["answer yes", "answer no"]


def test_a_question_s_answers_come_with_the_episode(bridge):
    spec = generate_specs(["q1_color"], ["L1"], episodes=1, split="test")[0]
    bridge.reset(options={"spec": spec})
    assert bridge.valid_actions() == [f"answer {c}" for c in COLOR_NAMES]  # from the sim's reset reply
    assert bridge.oracle_action() in bridge.valid_actions()
    bridge.reset(options={"spec": SPEC})
    assert "done" in bridge.valid_actions() and not [a for a in bridge.valid_actions() if "answer" in a]
