"""``RosEmbodiment``: the ``skills.embodiment.Embodiment`` of a robot behind ``rosbridge_server``.

The planner drives it exactly like ``sim.env.TabletopEnv``::

    env = RosEmbodiment(RosConfig(host="192.168.1.20", port=9090))
    rows = evaluate(env, planner, specs)

What happens underneath (roslibpy, asyncio transport, rosbridge v2 JSON):

* **Sensors in.**  Subscriptions to each camera's rgb8 ``Image``, 32FC1 depth ``Image``, ``CameraInfo``
  and pose, ``JointState``, the end-effector pose and the e-stop.  Every message is checked in the
  roslibpy thread before it is kept (``safety``): stale header stamps, wrong encodings or sizes and
  malformed messages are dropped with one log line (``logging``, logger ``embodied_lm.ros``) and never
  reach the model.  Only the newest valid message per topic is kept.
* **Observation.**  After a reset or a skill, the bridge waits (bounded) for sensors stamped after the
  robot's completion stamp and builds the SAME dict the sim gives: ``rgb_<cam>``, ``depth_<cam>``,
  ``mask_<cam>``, ``robot`` (16,), ``objects`` (16, 12), ``instruction``.  Objects come from
  ``sensors.segmentation.segment_objects`` on every camera, fused by ``sensors.perception``.
* **Skill out.**  The call is parsed, its objects are resolved to poses from that object list, the
  motion targets must pass ``safety.check_motion`` (workspace box, speed limit) — otherwise it is a
  failed step and nothing is sent — then one JSON command goes out on ``command_topic`` and the bridge
  waits for the result with the same id (``command_timeout_s``).
* **Stops.**  An e-stop message, a lost connection or a missing result ends the episode at once as
  failed (``terminated=True``, ``info["error"]`` says why, one ERROR log line); no wait is unbounded.
"""

from __future__ import annotations

import collections
import contextlib
import itertools
import json
import logging
import re
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any

import numpy as np

from embodied_lm.ros import messages as rm
from embodied_lm.ros.config import RosConfig
from embodied_lm.ros.safety import MotionTarget, Rejected, check_fresh, check_motion, estop_engaged
from sensors.perception import (
    PerceivedObject,
    PerceivedRobot,
    SlotTracker,
    object_colors,
    object_infos,
    objects_array,
    perceive,
    render_mask,
)
from skills import Answer, Done, Pick, Place, Push, SkillLibrary, SkillParseError, parse
from skills.calls import colour_named, colour_refs, named_by_colour, resolve
from skills.robot import Workspace
from skills.vocab import ANSWERS, all_calls

log = logging.getLogger("embodied_lm.ros")


class RosConnectionError(ConnectionError):
    """The rosbridge server cannot be reached (raised by ``reset``; ``step`` reports it in ``info``)."""


class EStopEngaged(RuntimeError):
    """``reset`` refuses to start an episode while the e-stop is engaged."""


class _Abort(Exception):
    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind


@dataclass
class _Msg:
    value: Any
    stamp: float  # header stamp (robot clock, s)
    arrival: float  # time.perf_counter() when it was accepted
    decode_s: float = 0.0  # validation + decoding time in the roslibpy thread


def _make_ros(host: str, port: int, heartbeat_s: float):
    """A ``roslibpy.Ros`` (asyncio transport) with WebSocket keep-alive pings set before it connects."""
    import roslibpy

    class _Ros(roslibpy.Ros):
        def connect(self) -> None:
            if heartbeat_s > 0:
                self.factory.setProtocolOptions(autoPingInterval=heartbeat_s, autoPingTimeout=2 * heartbeat_s)
            super().connect()

    return _Ros(host, port, transport="asyncio")


class RosEmbodiment:
    """A real (or sim-backed) robot over rosbridge, as an ``Embodiment``."""

    def __init__(self, config: RosConfig | dict | None = None, *, connect: bool = True):
        if isinstance(config, dict):
            config = RosConfig.from_dict(config)
        self.config = config or RosConfig()
        self._cond = threading.Condition()
        self._latest: dict[str, _Msg] = {}
        self._results: dict[str, rm.SkillOutcome] = {}
        self._estop = False
        self._estop_reason = ""
        self._lost = False
        self._ros = None
        self._topics: list[Any] = []
        self._session = uuid.uuid4().hex[:8]
        self._cmd_ids = itertools.count(1)
        self._sim_services: bool | None = {"on": True, "off": False}.get(self.config.sim_services)
        self.rejections: collections.Counter[str] = collections.Counter()  # kind -> count
        self._last_logged: dict[tuple[str, str], float] = {}
        self.tracker = SlotTracker()
        self.skills = SkillLibrary()
        self.latencies: list[dict[str, float]] = []  # per sent command, for benchmarks
        self._reset_state()
        if connect:
            self.connect()

    def _reset_state(self) -> None:
        self._steps = 0
        self._max_steps = self.config.max_steps
        self._spec: dict[str, Any] | None = None
        self._answers: tuple[str, ...] = ()  # a question's possible answers (empty: a manipulation task)
        self._instruction = ""
        self._last_obs: dict[str, Any] | None = None
        self._robot_time = 0.0
        self._t_reset = time.monotonic()
        self._ended = False
        self.tracker.reset()

    # -- connection ---------------------------------------------------------------------------------
    @property
    def connected(self) -> bool:
        return self._ros is not None and not self._lost and self._ros.is_connected

    @property
    def estop_engaged(self) -> bool:
        return self._estop

    def connect(self) -> None:
        """Open the rosbridge connection and subscribe (bounded by ``connect_timeout_s``)."""
        import roslibpy

        if self.connected:
            return
        self._disconnect()
        cfg = self.config
        ros = _make_ros(cfg.host, cfg.port, cfg.heartbeat_s)
        try:
            ros.run(timeout=cfg.connect_timeout_s)
        except Exception as e:  # RosTimeoutError, refused, ...
            self._stop_reconnecting(ros)
            raise RosConnectionError(f"cannot reach rosbridge at ws://{cfg.host}:{cfg.port} within "
                                     f"{cfg.connect_timeout_s:g} s: {e}") from None
        with self._cond:
            self._ros, self._lost = ros, False
            self._latest.clear()
        ros.on("close", lambda *_, r=ros: self._on_close(r))
        if not ros.is_connected:  # closed before the handler was in place
            self._on_close(ros)

        def sub(topic: str, msg_type: str, handler) -> None:
            t = roslibpy.Topic(ros, topic, msg_type, reconnect_on_close=False)
            t.subscribe(lambda msg, _t=topic: self._guard(_t, handler, msg))
            self._topics.append(t)

        for cam in cfg.cameras:
            sub(cam.rgb_topic, "sensor_msgs/Image", lambda m, c=cam.name: self._on_image(c, "rgb", m))
            sub(cam.depth_topic, "sensor_msgs/Image", lambda m, c=cam.name: self._on_image(c, "depth", m))
            sub(cam.info_topic, "sensor_msgs/CameraInfo", lambda m, c=cam.name: self._on_info(c, m))
            if cam.pose_topic:
                sub(cam.pose_topic, "geometry_msgs/PoseStamped", lambda m, c=cam.name: self._on_cam_pose(c, m))
        sub(cfg.joint_states_topic, "sensor_msgs/JointState", self._on_joints)
        if cfg.ee_pose_topic:
            sub(cfg.ee_pose_topic, "geometry_msgs/PoseStamped", self._on_ee_pose)
        sub(cfg.result_topic, "std_msgs/String", self._on_result)
        sub(cfg.estop_topic, "std_msgs/Bool", self._on_estop)
        self._command = roslibpy.Topic(ros, cfg.command_topic, "std_msgs/String", reconnect_on_close=False)
        self._command.advertise()
        log.info("ROS bridge: connected to ws://%s:%d", cfg.host, cfg.port)

    def _on_close(self, ros: Any) -> None:
        with self._cond:
            if ros is not self._ros:  # an old connection closing late, or our own close()
                return
            self._lost = True
            self._cond.notify_all()
        log.error("ROS bridge: connection to ws://%s:%d lost", self.config.host, self.config.port)
        self._stop_reconnecting(ros)

    @staticmethod
    def _stop_reconnecting(ros: Any) -> None:
        """Never let queued messages (a command!) go out on a later automatic reconnection."""
        factory = getattr(ros, "factory", None)
        if factory is None:
            return
        with contextlib.suppress(Exception):
            factory.remove_all_listeners("ready")
        if hasattr(factory, "_stop"):
            factory._stop = True  # roslibpy's asyncio factory: stop its reconnect backoff loop

    def _disconnect(self) -> None:
        ros, self._ros = self._ros, None
        self._topics.clear()
        if ros is None:
            return
        self._stop_reconnecting(ros)
        with contextlib.suppress(Exception):
            ros.off("close")
            if ros.is_connected:
                ros.close(timeout=2)

    def close(self) -> None:
        self._disconnect()

    def __enter__(self) -> RosEmbodiment:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- message handlers (roslibpy thread) ---------------------------------------------------------
    def _guard(self, topic: str, handler, msg: Any) -> None:
        self._t_handler = time.perf_counter()  # (one roslibpy thread calls every handler)
        try:
            handler(msg)
        except Rejected as e:
            self._reject(topic, e)
        except Exception as e:  # never let a bad message kill the subscription
            self._reject(topic, Rejected("malformed", f"{type(e).__name__}: {e}"))

    def _reject(self, topic: str, e: Rejected) -> None:
        self.rejections[e.kind] += 1
        key, now = (topic, e.kind), time.monotonic()
        if now - self._last_logged.get(key, -1e9) >= 5.0:  # one line per topic and kind every 5 s at most
            self._last_logged[key] = now
            log.warning("ROS bridge: rejected message on %s (%s)", topic, e)

    def _fresh(self, stamp: float, where: str) -> None:
        check_fresh(stamp, time.time(), self.config.stale_after_s, where=where)

    def _store(self, key: str, value: Any, stamp: float) -> None:
        now = time.perf_counter()
        with self._cond:
            self._latest[key] = _Msg(value, stamp, now, now - getattr(self, "_t_handler", now))
            self._cond.notify_all()

    def _on_image(self, cam: str, kind: str, msg: Any) -> None:
        info = self._latest.get(f"info_{cam}")
        hw = info.value[1] if info is not None else None
        encodings = rm.RGB_ENCODINGS if kind == "rgb" else rm.DEPTH_ENCODINGS
        img, stamp = rm.read_image(msg, encodings, hw, where=f"{kind}_{cam}")
        self._fresh(stamp, f"{kind}_{cam}")
        if kind == "depth" and not np.all(np.isfinite(img) | np.isnan(img)):
            raise Rejected("malformed", f"depth_{cam}: infinite depth values")
        self._store(f"{kind}_{cam}", img, stamp)

    def _on_info(self, cam: str, msg: Any) -> None:
        K, hw, stamp = rm.read_camera_info(msg, where=f"camera_info_{cam}")
        self._fresh(stamp, f"camera_info_{cam}")
        self._store(f"info_{cam}", (K, hw), stamp)

    def _on_cam_pose(self, cam: str, msg: Any) -> None:
        T, stamp = rm.read_pose_stamped(msg, where=f"camera_pose_{cam}")  # static calibration: no staleness
        self._store(f"pose_{cam}", T, stamp)

    def _on_joints(self, msg: Any) -> None:
        q, stamp = rm.read_joint_state(msg, self.config.joint_names)
        self._fresh(stamp, "joint_states")
        self._store("joints", q, stamp)

    def _on_ee_pose(self, msg: Any) -> None:
        T, stamp = rm.read_pose_stamped(msg, where="ee_pose")
        self._fresh(stamp, "ee_pose")
        self._store("ee", T, stamp)

    def _on_result(self, msg: Any) -> None:
        out = rm.read_result(msg)
        with self._cond:
            self._results[out.id] = out
            self._cond.notify_all()

    def _on_estop(self, msg: Any) -> None:
        engaged = estop_engaged(msg)
        with self._cond:
            was, self._estop = self._estop, engaged
            if engaged:
                clean = isinstance(msg, dict) and msg.get("data") is True
                self._estop_reason = "e-stop engaged" if clean else \
                    f"e-stop engaged (unreadable e-stop message {msg!r:.60})"
            self._cond.notify_all()
        if engaged and not was:
            log.error("ROS bridge: %s: stopping", self._estop_reason)
        elif was and not engaged:
            log.warning("ROS bridge: e-stop released")

    # -- waiting (caller thread; every wait is bounded) ----------------------------------------------
    def _check_abort(self, estop: bool = True) -> None:
        if estop and self._estop:
            raise _Abort("estop", self._estop_reason or "e-stop engaged")
        if self._lost or self._ros is None:
            raise _Abort("disconnected", f"connection to ws://{self.config.host}:{self.config.port} lost")

    def _wait_for(self, ready, timeout: float, what: str, estop_aborts: bool = True):
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                self._check_abort(estop_aborts)
                value = ready()
                if value is not None:
                    return value
                left = deadline - time.monotonic()
                if left <= 0:
                    raise _Abort("timeout", f"no {what} within {timeout:g} s")
                self._cond.wait(min(left, 0.25))

    def _sensors_since(self, t_ref: float) -> dict[str, _Msg] | None:
        """The newest valid sensor messages if all of them are stamped at or after ``t_ref`` (and fresh)."""
        cfg, got = self.config, {}
        now = time.time()
        keys = ["joints"] + (["ee"] if cfg.ee_pose_topic else [])
        for cam in cfg.cameras:
            keys += [f"rgb_{cam.name}", f"depth_{cam.name}", f"info_{cam.name}"]
        for k in keys:
            m = self._latest.get(k)
            if m is None or m.stamp < t_ref - 1e-6 or now - m.stamp > cfg.stale_after_s:
                return None
            got[k] = m
        for cam in cfg.cameras:
            stamps = [got[f"{p}_{cam.name}"].stamp for p in ("rgb", "depth", "info")]
            if max(stamps) - min(stamps) > cfg.sync_tolerance_s:
                return None
            if got[f"rgb_{cam.name}"].value.shape[:2] != got[f"depth_{cam.name}"].value.shape:
                return None
            if cam.world_from_camera is None:
                pose = self._latest.get(f"pose_{cam.name}")
                if pose is None:
                    return None
                got[f"pose_{cam.name}"] = pose
        return got

    def _observe(self, t_ref: float) -> dict[str, Any]:
        t0 = time.perf_counter()
        got = self._wait_for(lambda: self._sensors_since(t_ref), self.config.observation_timeout_s,
                             f"fresh sensor messages (stamped after {t_ref:.3f})")
        t_ready = time.perf_counter()
        obs = self._build_obs(got)
        t_built = time.perf_counter()
        self._timing = {"obs_wait_s": t_ready - t0, "obs_build_s": t_built - t_ready,
                        "obs_latency_s": t_built - max(m.arrival for m in got.values()), "obs_built": t_built,
                        "decode_s": sum(m.decode_s for m in got.values())}
        self._last_obs = obs
        return obs

    def _build_obs(self, got: dict[str, _Msg]) -> dict[str, Any]:
        cfg = self.config
        obs: dict[str, Any] = {}
        cams = {}
        for cam in cfg.cameras:
            K = got[f"info_{cam.name}"].value[0]
            T = np.asarray(cam.world_from_camera, float) if cam.world_from_camera is not None \
                else got[f"pose_{cam.name}"].value
            cams[cam.name] = (got[f"rgb_{cam.name}"].value, got[f"depth_{cam.name}"].value, K, T)
        ee = got["ee"].value[:3, 3] if "ee" in got else None
        slots = self.tracker.update(perceive(cams, (cfg.table_x, cfg.table_y), cfg.segmentation), ee)
        for cam, (rgb, depth, K, T) in cams.items():
            obs[f"rgb_{cam}"] = rgb
            obs[f"depth_{cam}"] = depth.astype(np.float32)
            obs[f"mask_{cam}"] = render_mask(np.nan_to_num(depth, nan=0.0), K, T, slots)
        robot = np.zeros(16, np.float32)
        robot[:9] = got["joints"].value
        if "ee" in got:
            T = got["ee"].value
            robot[9:12] = T[:3, 3]
            robot[12:16] = rm.matrix_to_quat(T[:3, :3])
        obs["robot"] = robot
        obs["objects"] = objects_array(slots)
        obs["object_rgb"] = object_colors(slots)
        obs["instruction"] = self._instruction
        return obs

    # -- Embodiment API ---------------------------------------------------------------------------------
    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        """Start an episode.  With the sim endpoint's ``/sim/reset`` the spec is replayed exactly; on a real
        robot the scene is set up by a person and ``options["instruction"]`` (or ``spec.instruction``) is
        the task, and ``options["answers"]`` the possible answers if it is a question.  Raises
        ``RosConnectionError`` / ``EStopEngaged`` / ``TimeoutError`` (no sensors)."""
        options = dict(options or {})
        answers = tuple(options.get("answers") or ())
        if any(a not in ANSWERS for a in answers):
            raise ValueError(f"options['answers'] must be taken from {ANSWERS}, got {answers}")
        if not self.connected:
            self.connect()
        if self._estop:
            raise EStopEngaged("the e-stop is engaged: release it (publish false on "
                               f"{self.config.estop_topic}) before starting an episode")
        spec = options.get("spec")
        spec_d = spec.to_dict() if hasattr(spec, "to_dict") else (dict(spec) if spec is not None else None)
        self._reset_state()
        with self._cond:
            self._results.clear()
        t_ref = None
        if spec_d is not None and self._use_sim_services():
            body = self._call_json(self.config.reset_service, {"json": json.dumps(spec_d)})
            self._instruction = body["instruction"]
            self._spec = body.get("spec", spec_d)
            self._max_steps = int(body.get("max_steps", self.config.max_steps))
            answers = tuple(body.get("answers") or ())
            self._robot_time = float(body.get("robot_time", 0.0))
            t_ref = float(body["stamp"])
        else:
            instr = options.get("instruction") or (spec_d or {}).get("instruction")
            if not instr:
                raise ValueError("a robot without the sim reset service needs options['instruction'] "
                                 "(or a spec with an instruction)")
            self._instruction, self._spec = str(instr), spec_d
            t_ref = time.time()
        self._answers = answers
        try:
            obs = self._observe(t_ref)
        except _Abort as e:
            if e.kind == "disconnected":
                raise RosConnectionError(str(e)) from None
            if e.kind == "estop":
                raise EStopEngaged(str(e)) from None
            raise TimeoutError(f"reset: {e}") from None
        return obs, self._info()

    def step(self, action: str):
        return self.execute(action)

    def execute(self, action: str, speed: float | None = None):
        """``step`` with an explicit end-effector speed (m/s; default ``config.speed``)."""
        t_call = time.perf_counter()
        if self._last_obs is None:
            raise RuntimeError("call reset() before step()")
        if self._ended:
            return self._failed_end("disconnected" if self._lost else "estop" if self._estop else "ended",
                                    "the episode already ended (e-stop or lost connection): reset() first")
        self._steps += 1
        if self._lost:
            return self._failed_end("disconnected", "connection lost: the robot cannot be reached")
        if self._estop:
            return self._failed_end("estop", self._estop_reason or "e-stop engaged")
        try:
            call = parse(action)
            if named_by_colour(call):  # "the red block": the one object the perception sees in that colour
                call = resolve(call, object_infos(self.tracker.slots))
        except SkillParseError as e:  # UnresolvedObject too: none or several fit
            return self._failed_step(str(e), None)
        try:
            targets = self._targets(call)
        except KeyError as e:
            names = ", ".join(f"obj_{k + 1}" for k in self.tracker.slots)
            return self._failed_step(f"{call}: there is no {e.args[0]} (objects: {names or 'none'})", call)
        speed = self.config.speed if speed is None else speed
        try:
            check_motion(targets, speed, box=self.config.workspace, max_speed=self.config.max_speed)
        except Rejected as e:
            self.rejections[e.kind] += 1
            log.warning("ROS bridge: refused %r (%s); nothing was sent", str(call), e)
            return self._failed_step(f"{call}: refused by the safety check: {e}", call)
        cid = f"{self._session}-{next(self._cmd_ids)}"
        payload = [self._target_dict(t) for t in targets]
        try:
            self._check_abort()
            if not self._ros.is_connected:
                raise _Abort("disconnected", "connection lost before sending")
            import roslibpy

            self._command.publish(roslibpy.Message(rm.command_message(
                cid, time.time(), str(call), speed, payload, self.config.command_timeout_s)))
            t_sent = time.perf_counter()
            built = getattr(self, "_timing", {}).get("obs_built", t_call)
            self.latencies.append({"obs_to_call_s": t_call - built, "prepare_s": t_sent - t_call,
                                   "obs_latency_s": self._timing.get("obs_latency_s", 0.0),
                                   "decode_s": self._timing.get("decode_s", 0.0), "sent": t_sent})
            outcome = self._wait_for(lambda: self._results.pop(cid, None), self.config.command_timeout_s,
                                     f"result for {str(call)!r}")
        except _Abort as e:
            return self._failed_end(e.kind, f"{call}: {e}")
        if isinstance(call, Pick) and outcome.success:
            self.tracker.mark_held(int(call.obj.split("_")[1]) - 1)
        elif isinstance(call, Place) and outcome.success:
            self.tracker.mark_held(None)
        try:
            obs = self._observe(outcome.stamp)
        except _Abort as e:
            return self._failed_end(e.kind, f"after {call}: {e}")
        elapsed = time.monotonic() - self._t_reset
        self._robot_time = outcome.robot_time if outcome.robot_time is not None else elapsed
        terminated = isinstance(call, (Answer, Done)) or bool(outcome.terminated)
        success = bool(outcome.task_success) if outcome.task_success is not None else False
        truncated = not terminated and self._steps >= self._max_steps
        info = self._info() | {"skill_success": bool(outcome.success), "message": outcome.message,
                               "success": success, "skill_time": outcome.duration_s or 0.0,
                               "physics_steps": int((outcome.extra or {}).get("physics_steps", 0))}
        return obs, (1.0 if terminated and success else 0.0), terminated, truncated, info

    def _failed_step(self, message: str, call) -> tuple:
        """A refused call: nothing was sent, the scene is unchanged, the episode goes on."""
        truncated = self._steps >= self._max_steps
        info = self._info() | {"skill_success": False, "message": message, "success": False, "skill_time": 0.0}
        return self._last_obs, 0.0, False, truncated, info

    def _failed_end(self, kind: str, message: str) -> tuple:
        """E-stop, lost connection, no result: the episode ends now, failed, and says why."""
        if not self._ended:
            log.error("ROS bridge: episode ended (%s): %s", kind, message)
        self._ended = True
        info = self._info() | {"skill_success": False, "message": message, "success": False, "skill_time": 0.0,
                               "error": kind}
        return self._last_obs, 0.0, True, False, info

    def _info(self) -> dict[str, Any]:
        held = f"obj_{self.tracker.held + 1}" if self.tracker.held is not None else None
        return {"spec": self._spec, "instruction": self._instruction, "step": self._steps,
                "max_steps": self._max_steps, "sim_time": float(self._robot_time), "held": held}

    # -- targets ---------------------------------------------------------------------------------------
    def _obj(self, name: str) -> PerceivedObject:
        k = int(name.split("_")[1]) - 1
        if k not in self.tracker.slots:
            raise KeyError(name)
        return self.tracker.slots[k]

    def _targets(self, call) -> list[MotionTarget]:
        """Poses the robot needs for ``call`` (from the perceived objects); KeyError(name) if unknown."""
        def pos(o: PerceivedObject) -> tuple[float, float, float]:
            return tuple(float(v) for v in o.position)

        held = self.tracker.held
        if isinstance(call, Pick):
            return [MotionTarget(call.obj, "object", pos(self._obj(call.obj)))]
        if isinstance(call, Place):
            o = self._obj(call.obj)
            is_held = held is not None and call.obj == f"obj_{held + 1}"
            out = [MotionTarget(call.obj, "held" if is_held else "object", pos(o), moves=False)]
            if call.target is not None:
                t = self._obj(call.target)
                z = t.position[2] + (t.height + o.height) / 2 if t.kind == "block" else 0.006 + o.height / 2
                out += [MotionTarget(call.target, "object", pos(t)),
                        MotionTarget("goal", "goal", (float(t.position[0]), float(t.position[1]), float(z)))]
            elif call.at is not None:
                out.append(MotionTarget("goal", "goal", (float(call.at[0]), float(call.at[1]), o.height / 2)))
            return out
        if isinstance(call, Push):
            out = [MotionTarget(call.obj, "object", pos(self._obj(call.obj)))]
            if call.to_obj is not None:
                out.append(MotionTarget(call.to_obj, "object", pos(self._obj(call.to_obj))))
            return out
        return []  # answer / done: no motion

    def _target_dict(self, t: MotionTarget) -> dict[str, Any]:
        d = {"name": t.name, "role": t.role, "position": [round(v, 5) for v in t.position],
             "orientation": [0.0, 0.0, 0.0, 1.0]}
        if re.fullmatch(r"obj_\d+", t.name):
            o = self._obj(t.name)
            d |= {"kind": o.kind, "color": o.color, "size": o.size, "height": o.height}
        return d

    # -- privileged services (sim-backed robots only) ---------------------------------------------------
    def _use_sim_services(self) -> bool:
        if self._sim_services is None:  # "auto": probe once per bridge
            try:
                self._call_json(self.config.oracle_service, {"json": "{}"}, probe=True)
                self._sim_services = True
            except (NotImplementedError, TimeoutError):
                self._sim_services = False
            log.info("ROS bridge: sim services %s", "found" if self._sim_services else "absent (real robot)")
        return self._sim_services

    def _call_json(self, service: str, args: dict[str, Any], probe: bool = False) -> dict[str, Any]:
        """Call a JsonCall service; the wait ends early if the connection drops (RosConnectionError)."""
        import roslibpy

        if not self.connected:
            raise RosConnectionError("not connected")
        box: dict[str, Any] = {}

        def done(key: str, value: Any) -> None:
            with self._cond:
                box[key] = value
                self._cond.notify_all()

        srv = roslibpy.Service(self._ros, service, rm.JSON_SRV, reconnect_on_close=False)
        srv.call(roslibpy.ServiceRequest(args), lambda r: done("ok", r), lambda e: done("error", e))
        timeout = min(self.config.service_timeout_s, 3.0) if probe else self.config.service_timeout_s
        try:
            self._wait_for(lambda: box or None, timeout, f"response from {service}", estop_aborts=False)
        except _Abort as e:
            if e.kind == "disconnected":
                raise RosConnectionError(f"{service}: {e}") from None
            raise TimeoutError(f"{service}: {e}") from None
        if "error" in box:
            raise NotImplementedError(f"service {service} is not available: {box['error']}")
        return {} if probe else rm.read_json_call_response(box["ok"], service)

    def oracle_action(self) -> str:
        """The sim's oracle call, with its objects renamed to this bridge's perceived names."""
        if not self._use_sim_services():
            raise NotImplementedError("a real robot has no oracle (no /sim/oracle_action service)")
        if self._lost or self._estop:
            return "done"  # never sent: the next step() reports the stop and ends the episode
        try:
            body = self._call_json(self.config.oracle_service, {"json": "{}"})
        except RosConnectionError:
            return "done"
        action: str = body["action"]
        names: dict[str, str] = {}
        slots = self.tracker.slots
        for sim_name, o in body.get("objects", {}).items():
            if o.get("held") and self.tracker.held is not None:
                names[sim_name] = f"obj_{self.tracker.held + 1}"
                continue
            cands = [k for k, p in slots.items() if not p.held and p.kind == o.get("kind", p.kind)] or \
                [k for k, p in slots.items() if not p.held]
            if cands:
                p = np.asarray(o["position"], float)
                k = min(cands, key=lambda k: float(np.linalg.norm(slots[k].position - p)))
                names[sim_name] = f"obj_{k + 1}"
        return " ".join(names.get(w, w) for w in action.split())

    def valid_actions(self, by_colour: bool = False) -> list[str]:
        """Calls that are well-formed and possible in the perceived scene (the robot may still refuse).  For
        a question, its answers: they come with the episode (the sim's reset reply or ``options["answers"]``).
        ``by_colour``: objects named "the red block", only those no other object of their colour and kind
        shares."""
        if self._answers:
            return [f"answer {a}" for a in self._answers]
        robot = PerceivedRobot.of(self.tracker, Workspace(self.config.table_x, self.config.table_y))
        infos = robot.objects()
        names = sorted(infos, key=lambda n: int(n.split("_")[1]))
        out = []
        for call in map(parse, all_calls(names, [infos[n].kind for n in names], robot.held(), answers=False)):
            if self.skills.check(call, robot) is not None:
                continue
            try:
                check_motion(self._targets(call), self.config.speed, box=self.config.workspace,
                             max_speed=self.config.max_speed)
            except (Rejected, KeyError):
                continue
            out.append(call)
        # Listed as before all_calls (the random planner indexes this list with a seeded rng): done, picks,
        # places, then each block's pushes with "push a to b" after the fixed goals.
        verb = {Done: 0, Pick: 1, Place: 2, Push: 3}
        out.sort(key=lambda c: (verb[type(c)], names.index(c.obj) if isinstance(c, Push) else 0,
                                isinstance(c, Push) and c.to_obj is not None))
        if by_colour:
            refs = colour_refs(infos)
            out = [named for c in out if (named := colour_named(c, refs)) is not None]
        return [str(c) for c in out]


__all__ = ["EStopEngaged", "RosConnectionError", "RosEmbodiment"]
