"""A sim-backed robot behind the test rosbridge server: what the ROS bridge talks to in tests and demos.

``SimRobotEndpoint`` owns a ``TabletopEnv`` (in one worker thread: PyBullet is used from one thread
only) and plays the robot side of the contract in ``embodied_lm/ros/README.md`` on the topics of a
``RosConfig`` (default: its defaults, which the bridge uses too; a camera with a fixed calibration or
no ``ee_pose_topic`` is published without that pose): publishes the cameras (rgb8 + 32FC1
depth ``Image``, ``CameraInfo``, latched camera pose), ``JointState`` and the end-effector pose with
wall-clock header stamps; executes skill commands in the sim and publishes results; refuses commands
while the e-stop is engaged.  Privileged services a real robot does not have: the reset service (an
episode spec; the reply carries the instruction, step limit and a question's possible answers) and the
oracle service; results also carry the task's success predicate.

Faults (``EnvConfig.faults``, ``--fault drop=0.3``): the sim's deliberate skill failures; the result of
a faulted skill reports success, as a robot whose gripper cannot sense a dropped block would
(``silent_faults``) -- the planner has to see it (``decode.detect``).

Objects in a command are named by the bridge (from its own perception); the endpoint resolves each
one by the pose the bridge sent (nearest sim object), as a real robot would act on poses.

Run standalone: ``python -m embodied_lm.ros.testing.sim_endpoint --port 9090`` (prints
``listening on ws://HOST:PORT``).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import itertools
import json
import logging
import re
import signal
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from embodied_lm.ros import messages as rm
from embodied_lm.ros.config import CameraTopics, RosConfig
from embodied_lm.ros.testing.server import RosbridgeServer

log = logging.getLogger(__name__)


@dataclass
class EndpointStats:
    commands: list[dict[str, Any]] = field(default_factory=list)  # every well-formed command received
    results: list[dict[str, Any]] = field(default_factory=list)
    resets: int = 0
    faults: list[dict[str, Any]] = field(default_factory=list)  # every injected fault (reported as success)


class SimRobotEndpoint:
    """A ``TabletopEnv`` behind a rosbridge server.  Use as a context manager::

        with SimRobotEndpoint() as ep:
            bridge = RosEmbodiment(RosConfig(port=ep.port))
    """

    def __init__(self, env_config: Any = None, *, host: str = "127.0.0.1", port: int = 0,
                 topics: RosConfig | None = None, ros_version: int = 2, command_delay_s: float = 0.0,
                 match_tolerance: float = 0.05, max_command_age_s: float = 5.0, silent_faults: bool = True):
        if ros_version not in (1, 2):
            raise ValueError(f"ros_version must be 1 or 2, got {ros_version}")
        self.env_config = env_config
        self.topics = topics or RosConfig()
        self.ros_version = ros_version
        self.command_delay_s = float(command_delay_s)
        self.match_tolerance = float(match_tolerance)
        self.max_command_age_s = float(max_command_age_s)
        self.silent_faults = silent_faults
        self.server = RosbridgeServer(host, port)
        self.stats = EndpointStats()
        self._worker = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="sim-robot")
        self._estop = threading.Event()
        self._seq = itertools.count()
        self._cams: dict[str, CameraTopics] = {}
        self.env = None

    # -- lifecycle -----------------------------------------------------------------------------------
    def start(self) -> int:
        self._worker.submit(self._make_env).result(timeout=120)
        port = self.server.start()
        t, srv = self.topics, self.server
        named = {c.name: c for c in t.cameras}
        for cam in self.env.config.world.cameras:
            c = self._cams[cam] = named.get(cam) or CameraTopics(cam)
            for topic in (c.rgb_topic, c.depth_topic):
                srv.advertise(topic, "sensor_msgs/Image")
            srv.advertise(c.info_topic, "sensor_msgs/CameraInfo")
            if c.pose_topic:
                srv.advertise(c.pose_topic, "geometry_msgs/PoseStamped")
        srv.advertise(t.joint_states_topic, "sensor_msgs/JointState")
        if t.ee_pose_topic:
            srv.advertise(t.ee_pose_topic, "geometry_msgs/PoseStamped")
        srv.advertise(t.result_topic, "std_msgs/String")
        srv.on_publish(t.command_topic, "std_msgs/String", self._on_command)
        srv.on_publish(t.estop_topic, "std_msgs/Bool", self._on_estop)
        srv.advertise_service(t.reset_service, self._srv_reset, self._worker)
        srv.advertise_service(t.oracle_service, self._srv_oracle, self._worker)
        return port

    @property
    def port(self) -> int:
        return self.server.port

    def stop(self) -> None:
        self.server.stop()
        self._estop.set()  # a command sleeping in command_delay_s ends now
        with contextlib.suppress(Exception):
            self._worker.submit(self._close_env).result(timeout=30)
        self._worker.shutdown(wait=False, cancel_futures=True)

    def __enter__(self) -> SimRobotEndpoint:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- robot-side publishing (any thread) -----------------------------------------------------------
    def publish(self, topic: str, msg: dict[str, Any], msg_type: str | None = None) -> None:
        """Publish as the robot (also how tests inject faulty messages or an e-stop)."""
        self.server.publish(topic, msg, msg_type)

    def estop(self, engaged: bool = True) -> None:
        """Press (or release) the e-stop: published on the e-stop topic, like a safety controller would."""
        self._estop.set() if engaged else self._estop.clear()
        self.server.publish(self.topics.estop_topic, {"data": bool(engaged)}, "std_msgs/Bool")

    def publish_sensors(self) -> None:
        """Render and publish one set of sensor messages now (a real robot streams them continuously)."""
        self._worker.submit(lambda: self._publish_obs(self._sense())).result(timeout=60)

    # -- worker thread -------------------------------------------------------------------------------
    def _make_env(self) -> None:
        from sim.env import EnvConfig, TabletopEnv

        cfg = self.env_config
        self.env = TabletopEnv(EnvConfig(**cfg) if isinstance(cfg, dict) else cfg)

    def _close_env(self) -> None:
        if self.env is not None:
            self.env.close()
            self.env = None

    def _sense(self) -> dict[str, Any]:
        """The sensor part of an observation, with or without an episode."""
        obs: dict[str, Any] = {}
        for cam in self.env.config.world.cameras:
            frame = self.env.world.render(cam)
            obs[f"rgb_{cam}"], obs[f"depth_{cam}"] = frame["rgb"], frame["depth"]
        obs["robot"] = self.env.world.robot.state()
        return obs

    def _publish_obs(self, obs: dict[str, Any]) -> float:
        """Publish the observation's sensors; returns their stamp."""
        t, v, pub = self.topics, self.ros_version, self.server.publish
        stamp = time.time()
        seq = next(self._seq)
        world = rm.ros_header(stamp, "world", v, seq)
        for cam, c in self._cams.items():
            cp = self.env.world.camera_params(cam)
            hdr = rm.ros_header(stamp, f"{cam}_optical_frame", v, seq)
            h, w = obs[f"rgb_{cam}"].shape[:2]
            T = np.asarray(cp["world_from_camera"])
            pub(c.info_topic, rm.camera_info_msg(np.asarray(cp["K"]), h, w, hdr))
            if c.pose_topic:  # static calibration: latched, like /tf_static
                pub(c.pose_topic, rm.pose_msg(T[:3, 3], rm.matrix_to_quat(T[:3, :3]), world), latch=True)
            pub(c.rgb_topic, rm.image_msg(obs[f"rgb_{cam}"], "rgb8", hdr))
            pub(c.depth_topic, rm.image_msg(obs[f"depth_{cam}"], "32FC1", hdr))
        robot = np.asarray(obs["robot"], float)
        pub(t.joint_states_topic, rm.joint_state_msg(robot[:9], rm.ros_header(stamp, "", v, seq)))
        if t.ee_pose_topic:
            pub(t.ee_pose_topic, rm.pose_msg(robot[9:12], robot[12:16], world))
        return stamp

    def _srv_reset(self, args: dict[str, Any]) -> dict[str, Any]:
        from sim.tasks import FAMILIES, EpisodeSpec, SpecError

        try:
            spec = EpisodeSpec.from_dict(json.loads(args.get("json", "")))
        except (json.JSONDecodeError, SpecError, TypeError) as e:
            return rm.json_call_response(error=f"bad episode spec: {e}")
        obs, info = self.env.reset(options={"spec": spec})
        self.stats.resets += 1
        t_ref = time.time()
        self._publish_obs(obs)
        return rm.json_call_response({"instruction": info["instruction"], "spec": info["spec"],
                                      "max_steps": info["max_steps"], "robot_time": info["sim_time"],
                                      "stamp": t_ref, "answers": list(FAMILIES[spec.task].answers())})

    def _srv_oracle(self, args: dict[str, Any]) -> dict[str, Any]:
        if self.env is None or self.env.episode is None:
            return rm.json_call_response(error="no episode: call the reset service first")
        action = self.env.oracle_action()
        infos = self.env.world.object_infos()
        held = self.env.world.robot.held()
        objs = {n: {"position": infos[n].position.tolist(), "kind": infos[n].kind, "color": infos[n].color,
                    "held": n == held} for n in re.findall(r"obj_\d+", action) if n in infos}
        return rm.json_call_response({"action": action, "objects": objs})

    def _on_command(self, msg: dict[str, Any]) -> None:  # server thread
        try:
            cmd = json.loads(msg["data"])
            if not (isinstance(cmd, dict) and all(isinstance(cmd.get(k), str) for k in ("id", "skill"))):
                raise ValueError("needs string fields 'id' and 'skill'")
        except (KeyError, TypeError, ValueError) as e:
            log.warning("sim robot: ignoring malformed command (%s)", e)
            return
        self.stats.commands.append(cmd)
        self._worker.submit(self._execute, cmd)

    def _on_estop(self, msg: dict[str, Any]) -> None:  # server thread
        self._estop.set() if msg.get("data") is not False else self._estop.clear()

    def _resolve(self, cmd: dict[str, Any]) -> tuple[str | None, str]:
        """Bridge names -> sim names, by the pose the bridge sent for each object."""
        infos = self.env.world.object_infos()
        held = self.env.world.robot.held()
        mapping: dict[str, str] = {}
        for tgt in cmd.get("targets") or []:
            name = tgt.get("name")
            if not (isinstance(name, str) and re.fullmatch(r"obj_\d+", name)):
                continue
            if tgt.get("role") == "held" and held is not None:
                mapping[name] = held
                continue
            try:
                p = np.asarray(tgt["position"], float).reshape(3)
            except (KeyError, TypeError, ValueError):
                return None, f"target {name}: bad position"
            cands = [n for n in infos if n != held]
            if not cands:
                return None, f"no object at {p.round(3).tolist()} for {name}"
            best = min(cands, key=lambda n: float(np.linalg.norm(infos[n].position - p)))
            if float(np.linalg.norm(infos[best].position - p)) > self.match_tolerance:
                return None, f"no object within {self.match_tolerance} m of {p.round(3).tolist()} for {name}"
            mapping[name] = best
        return " ".join(mapping.get(w, w) for w in cmd["skill"].split()), "ok"

    def _execute(self, cmd: dict[str, Any]) -> None:
        t0 = time.time()
        result: dict[str, Any] = {"id": cmd["id"]}
        obs = None
        if self.env is None or self.env.episode is None:
            result |= {"success": False, "message": "no episode: call the reset service first"}
        elif self._estop.is_set():
            result |= {"success": False, "message": "e-stop engaged: command refused"}
            obs = self._sense()
        elif not isinstance(cmd.get("stamp"), (int, float)) or t0 - cmd["stamp"] > self.max_command_age_s:
            why = f"stale or unstamped command (stamp {cmd.get('stamp')!r}): refused"
            result |= {"success": False, "message": why}
            obs = self._sense()
        else:
            text, why = self._resolve(cmd)
            if self.command_delay_s > 0 and self._estop.wait(self.command_delay_s):
                text, why = None, "e-stop engaged: motion aborted"
            if text is None:
                result |= {"success": False, "message": why}
                obs = self._sense()
            else:
                obs, _, term, trunc, info = self.env.step(text)
                if info.get("fault") and self.silent_faults:  # the robot finished its motion; it cannot tell
                    self.stats.faults.append({"skill": text, "fault": info["fault"],
                                              "sim_success": info["skill_success"]})
                    info |= {"skill_success": True, "message": "ok"}
                result |= {"success": bool(info["skill_success"]), "message": info["message"],
                           "task_success": bool(info["success"]), "terminated": bool(term),
                           "truncated": bool(trunc), "sim_call": text,
                           "physics_steps": int(info.get("physics_steps", 0))}
        t_done = time.time()
        if obs is not None:
            self._publish_obs(obs)
        result |= {"stamp": t_done, "duration_s": round(t_done - t0, 4),
                   "robot_time": float(self.env.world.sim_time) if self.env is not None else 0.0}
        self.stats.results.append(result)
        self.server.publish(self.topics.result_topic, rm.json_string(result))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="Sim-backed robot behind a rosbridge v2 server (for the ROS bridge).")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=9090, help="0 = any free port")
    ap.add_argument("--ros-version", type=int, default=2, choices=(1, 2), help="header stamp spelling")
    ap.add_argument("--command-delay", type=float, default=0.0, help="extra seconds per command (a slow robot)")
    ap.add_argument("--image-size", type=int, nargs=2, default=None, metavar=("H", "W"))
    ap.add_argument("--fault", action="append", default=[], metavar="KIND=P",
                    help="inject a sim.faults fault (slip | drop | topple) into a share P of skill calls; "
                         "reported as success (repeatable)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from sim.env import EnvConfig
    from sim.faults import parse_faults
    from sim.world import WorldConfig

    try:
        world = WorldConfig(image_size=tuple(args.image_size)) if args.image_size else WorldConfig()
        env_cfg = EnvConfig(world=world, faults=parse_faults(args.fault))
    except ValueError as e:
        ap.error(str(e))
    ep = SimRobotEndpoint(env_cfg, host=args.host, port=args.port, ros_version=args.ros_version,
                          command_delay_s=args.command_delay)
    ep.start()
    print(f"listening on {ep.server.url}", flush=True)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()  # until SIGINT / SIGTERM
    ep.stop()


if __name__ == "__main__":
    main()
