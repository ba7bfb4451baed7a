"""A sim-backed robot behind a local rosbridge v2 server: what the ROS bridge talks to in tests and demos.

Two parts, both usable alone:

``RosbridgeServer``
    A small rosbridge-protocol WebSocket server (autobahn on asyncio, its own thread and loop, bound to
    127.0.0.1 on an ephemeral port by default).  It follows ROSBRIDGE_PROTOCOL.md for the operations a
    client uses: ``advertise``, ``unadvertise``, ``publish``, ``subscribe`` (with ``throttle_rate``),
    ``unsubscribe``, ``call_service`` / ``service_response`` (services hosted by the server or
    advertised by a client with ``advertise_service``), ``unadvertise_service`` and ``set_level``;
    errors are ``status`` messages, as rosbridge sends them.  Messages are JSON text (``compression:
    none``); ``uint8[]`` fields travel as base64, as rosbridge encodes them.  A client written against
    this server (roslibpy) works unchanged against a real ``rosbridge_server``.

``SimRobotEndpoint``
    Owns a ``TabletopEnv`` (in one worker thread: PyBullet is used from one thread only) and plays the
    robot side of the contract in ``embodied_lm/ros/README.md``: publishes the cameras
    (``sensor_msgs/Image`` rgb8 + 32FC1 depth, ``sensor_msgs/CameraInfo``, camera pose as
    ``geometry_msgs/PoseStamped``), ``sensor_msgs/JointState`` and the end-effector pose, with wall-clock
    header stamps; executes skill commands (``std_msgs/String`` JSON) in the sim and publishes results;
    stops taking commands while the e-stop (``std_msgs/Bool``) is engaged.  Privileged services a real
    robot does not have: ``/sim/reset`` (an episode spec) and ``/sim/oracle_action``; results also carry
    the task's success predicate.

Objects in a command are named by the bridge (from its own perception); the endpoint resolves each
one by the pose the bridge sent (nearest sim object), as a real robot would act on poses.

Run standalone: ``python -m sim.ros_endpoint --port 9090`` (prints ``listening on ws://HOST:PORT``).
``sim`` never imports ``embodied_lm``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import concurrent.futures
import contextlib
import itertools
import json
import logging
import math
import re
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from autobahn.asyncio.websocket import WebSocketServerFactory, WebSocketServerProtocol

log = logging.getLogger(__name__)

STATUS_LEVELS = ("info", "warning", "error", "none")
# Message types whose JSON carries a std_msgs/Header: rosbridge fills an omitted header on publish.
_HEADER_TYPES = {"sensor_msgs/Image", "sensor_msgs/CameraInfo", "sensor_msgs/JointState",
                 "geometry_msgs/PoseStamped"}
# Minimal field checks for the simple types, as rosbridge's message conversion would refuse them.
_SIMPLE_FIELDS = {"std_msgs/String": ("data", str), "std_msgs/Bool": ("data", bool)}


def _norm_type(t: str) -> str:
    """``sensor_msgs/msg/Image`` (ROS 2 spelling) == ``sensor_msgs/Image``."""
    parts = t.split("/")
    return f"{parts[0]}/{parts[-1]}" if len(parts) == 3 and parts[1] in ("msg", "srv") else t


# ==================================================================================================
# rosbridge v2 server
# ==================================================================================================
class _Client(WebSocketServerProtocol):
    """One WebSocket connection.  All methods run on the server's loop thread."""

    server: RosbridgeServer  # set on the factory

    def onConnect(self, request):  # noqa: N802 (autobahn API)
        self.peer_name = request.peer
        self.subs: dict[str, dict[str, int]] = {}  # topic -> {subscription id: throttle_rate ms}
        self.last_sent: dict[str, float] = {}
        self.advertised: set[str] = set()
        self.level = "error"
        return None

    def onOpen(self):  # noqa: N802
        self.factory.server._clients.add(self)

    def onClose(self, wasClean, code, reason):  # noqa: N802
        self.factory.server._drop_client(self)

    def onMessage(self, payload, isBinary):  # noqa: N802
        server = self.factory.server
        if isBinary:
            self.status("error", "binary (CBOR) messages are not supported; send JSON text")
            return
        try:
            msg = json.loads(payload.decode("utf8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            self.status("error", f"could not parse message as JSON: {e}")
            return
        if not isinstance(msg, dict) or not isinstance(msg.get("op"), str):
            self.status("error", "received a message without an 'op' field")
            return
        handler = getattr(server, f"_op_{msg['op']}", None)
        if handler is None:
            self.status("error", f"unsupported op {msg['op']!r}", msg.get("id"))
            return
        try:
            handler(self, msg)
        except _ProtocolError as e:
            self.status(e.level, str(e), msg.get("id"))
        except Exception as e:  # a bug in a handler must not kill the connection
            log.exception("rosbridge server: %s failed", msg["op"])
            self.status("error", f"{msg['op']} failed: {e}", msg.get("id"))

    def send_json(self, obj: dict[str, Any] | bytes) -> None:
        payload = obj if isinstance(obj, bytes) else json.dumps(obj).encode("utf8")
        if self.state == WebSocketServerProtocol.STATE_OPEN:
            self.sendMessage(payload, isBinary=False)

    def status(self, level: str, text: str, op_id: Any = None) -> None:
        if STATUS_LEVELS.index(level) < STATUS_LEVELS.index(self.level):
            return
        out = {"op": "status", "level": level, "msg": text}
        if op_id is not None:
            out["id"] = op_id
        self.send_json(out)


class _ProtocolError(Exception):
    def __init__(self, text: str, level: str = "error"):
        super().__init__(text)
        self.level = level


@dataclass
class _Service:
    type: str
    handler: Callable[[dict[str, Any]], tuple[Any, bool]] | None  # server-hosted
    owner: _Client | None = None  # client-hosted (advertise_service)
    executor: concurrent.futures.Executor | None = None


class RosbridgeServer:
    """A rosbridge v2 WebSocket server on its own thread.  Server-side API methods are thread-safe."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0):
        self.host, self._want_port = host, port
        self.port: int | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.AbstractServer | None = None
        self._clients: set[_Client] = set()
        self._topics: dict[str, str] = {}  # name -> type
        self._latched: dict[str, bytes] = {}  # name -> last "publish" payload of a latched topic
        self._handlers: dict[str, list[Callable[[dict[str, Any]], None]]] = {}
        self._services: dict[str, _Service] = {}
        self._forwarded: dict[str, tuple[_Client, Any, str]] = {}  # our call id -> (caller, its id, service)
        self._ids = itertools.count(1)

    # -- lifecycle ---------------------------------------------------------------------------------
    def start(self, timeout: float = 5.0) -> int:
        """Bind and serve; returns the port.  Raises RuntimeError if the server does not come up."""
        if self._thread is not None:
            raise RuntimeError("server already started")
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            asyncio.set_event_loop(loop)
            factory = WebSocketServerFactory(loop=loop)
            factory.protocol = _Client
            factory.server = self
            factory.setProtocolOptions(autoPingInterval=0, maxMessagePayloadSize=0, maxFramePayloadSize=0)
            try:
                self._server = loop.run_until_complete(loop.create_server(factory, self.host, self._want_port))
                self.port = self._server.sockets[0].getsockname()[1]
            except BaseException as e:  # bind failure: report to start()
                failure.append(e)
                ready.set()
                loop.close()
                return
            ready.set()
            try:
                loop.run_forever()
            finally:
                with contextlib.suppress(Exception):
                    loop.run_until_complete(loop.shutdown_asyncgens())
                loop.close()

        self._thread = threading.Thread(target=run, name="rosbridge-server", daemon=True)
        self._thread.start()
        if not ready.wait(timeout):
            raise RuntimeError(f"rosbridge server did not start within {timeout} s")
        if failure:
            self._thread = None
            raise RuntimeError(f"rosbridge server could not bind {self.host}:{self._want_port}: {failure[0]}")
        log.info("rosbridge server listening on ws://%s:%d", self.host, self.port)
        return self.port

    @property
    def url(self) -> str:
        return f"ws://{self.host}:{self.port}"

    def stop(self, timeout: float = 5.0) -> None:
        """Close every connection cleanly (WebSocket close handshake), then stop the loop."""
        self._shutdown(abort=False, timeout=timeout)

    def kill(self, timeout: float = 5.0) -> None:
        """Drop every connection without a close handshake (TCP reset), as a crashed robot would."""
        self._shutdown(abort=True, timeout=timeout)

    def _shutdown(self, abort: bool, timeout: float) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None or not thread.is_alive():
            return

        async def close() -> None:
            try:
                if self._server is not None:
                    self._server.close()
                for c in list(self._clients):
                    with contextlib.suppress(Exception):  # a client may be half-way through closing
                        c.transport.abort() if abort else c.sendClose(code=1001, reason="server shutting down")
                if not abort:
                    for _ in range(50):  # give the close handshakes a moment (bounded)
                        if not self._clients:
                            break
                        await asyncio.sleep(0.01)
                    for c in list(self._clients):
                        with contextlib.suppress(Exception):
                            c.transport.close()
            except Exception:
                log.exception("rosbridge server: error while shutting down")
            finally:
                loop.stop()

        asyncio.run_coroutine_threadsafe(close(), loop)
        thread.join(timeout)
        self._thread = None

    def __enter__(self) -> RosbridgeServer:
        if self._thread is None:
            self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- server-side API (any thread) ---------------------------------------------------------------
    def advertise(self, topic: str, msg_type: str) -> None:
        self._call(self._register_topic, topic, msg_type)

    def publish(self, topic: str, msg: dict[str, Any], msg_type: str | None = None, latch: bool = False) -> None:
        """Publish ``msg`` to every subscriber (and server-side handlers) of ``topic``."""
        if msg_type is not None:
            self.advertise(topic, msg_type)
        self._call(self._route, topic, msg, latch)

    def on_publish(self, topic: str, msg_type: str, callback: Callable[[dict[str, Any]], None]) -> None:
        """Call ``callback(msg)`` (on the server thread) for every message a client publishes on ``topic``."""

        def add() -> None:
            self._register_topic(topic, msg_type)
            self._handlers.setdefault(topic, []).append(callback)

        self._call(add)

    def advertise_service(self, name: str, srv_type: str, handler: Callable[[dict[str, Any]], tuple[Any, bool]],
                          executor: concurrent.futures.Executor | None = None) -> None:
        """Host a service: ``handler(args) -> (values, result)`` runs in ``executor`` (default: a thread)."""
        self._call(self._services.__setitem__, name, _Service(srv_type, handler, None, executor))

    @property
    def client_count(self) -> int:
        return len(self._clients)

    def _call(self, fn: Callable, *args: Any) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            raise RuntimeError("rosbridge server is not running")
        if threading.current_thread() is self._thread:
            fn(*args)
        else:
            loop.call_soon_threadsafe(fn, *args)

    # -- routing (loop thread) ----------------------------------------------------------------------
    def _register_topic(self, topic: str, msg_type: str) -> None:
        known = self._topics.get(topic)
        if known is not None and _norm_type(known) != _norm_type(msg_type):
            raise _ProtocolError(f"topic {topic} already has type {known}, not {msg_type}")
        self._topics.setdefault(topic, msg_type)

    def _route(self, topic: str, msg: dict[str, Any], latch: bool = False) -> None:
        payload = json.dumps({"op": "publish", "topic": topic, "msg": msg}).encode("utf8")
        if latch:
            self._latched[topic] = payload
        now = time.monotonic()
        for c in list(self._clients):
            subs = c.subs.get(topic)
            if not subs:
                continue
            throttle = min(subs.values()) / 1000.0
            if throttle > 0 and now - c.last_sent.get(topic, -math.inf) < throttle:
                continue
            c.last_sent[topic] = now
            c.send_json(payload)
        for cb in self._handlers.get(topic, ()):
            try:
                cb(msg)
            except Exception:
                log.exception("rosbridge server: handler for %s failed", topic)

    def _drop_client(self, c: _Client) -> None:
        self._clients.discard(c)
        for name in [n for n, s in self._services.items() if s.owner is c]:
            del self._services[name]
        for cid in [k for k, v in self._forwarded.items() if v[0] is c]:
            del self._forwarded[cid]

    # -- protocol operations (loop thread) ---------------------------------------------------------
    @staticmethod
    def _str(msg: dict[str, Any], key: str) -> str:
        v = msg.get(key)
        if not isinstance(v, str) or not v:
            raise _ProtocolError(f"{msg.get('op')}: field {key!r} must be a non-empty string")
        return v

    def _op_advertise(self, c: _Client, msg: dict[str, Any]) -> None:
        topic, msg_type = self._str(msg, "topic"), self._str(msg, "type")
        self._register_topic(topic, msg_type)
        c.advertised.add(topic)

    def _op_unadvertise(self, c: _Client, msg: dict[str, Any]) -> None:
        topic = self._str(msg, "topic")
        if topic not in c.advertised:
            raise _ProtocolError(f"unadvertise: {topic} is not advertised by this client", "warning")
        c.advertised.discard(topic)

    def _op_publish(self, c: _Client, msg: dict[str, Any]) -> None:
        topic = self._str(msg, "topic")
        body = msg.get("msg")
        if not isinstance(body, dict):
            raise _ProtocolError(f"publish: msg on {topic} must be an object")
        msg_type = self._topics.get(topic)
        if msg_type is None:
            raise _ProtocolError(f"publish: topic {topic} does not exist (advertise it first)")
        c.advertised.add(topic)  # rosbridge registers the sender as a publisher of a known topic
        t = _norm_type(msg_type)
        if t in _SIMPLE_FIELDS:
            key, typ = _SIMPLE_FIELDS[t]
            if not isinstance(body.get(key), typ):
                raise _ProtocolError(f"publish: msg on {topic} does not conform to {msg_type}")
        if t in _HEADER_TYPES:
            hdr = body.setdefault("header", {"frame_id": ""})
            if isinstance(hdr, dict) and "stamp" not in hdr:
                sec, nsec = divmod(time.time_ns(), 1_000_000_000)
                hdr["stamp"] = {"sec": sec, "nanosec": nsec}
        if t == "sensor_msgs/Image" and isinstance(body.get("data"), list):
            with contextlib.suppress(TypeError, ValueError):  # re-encoded as base64 for the subscribers
                body["data"] = base64.b64encode(bytes(body["data"])).decode("ascii")
        self._route(topic, body, bool(msg.get("latch", False)))

    def _op_subscribe(self, c: _Client, msg: dict[str, Any]) -> None:
        topic = self._str(msg, "topic")
        msg_type = msg.get("type")
        if msg_type:
            self._register_topic(topic, msg_type)
        elif topic not in self._topics:
            raise _ProtocolError(f"subscribe: cannot infer the type of {topic}; give 'type'")
        throttle = msg.get("throttle_rate", 0)
        sid = msg.get("id") or f"subscribe:{topic}:{next(self._ids)}"
        c.subs.setdefault(topic, {})[sid] = int(throttle) if isinstance(throttle, (int, float)) else 0
        if msg.get("compression", "none") not in ("none", None):
            c.status("warning", f"subscribe {topic}: compression {msg['compression']!r} not supported, "
                                "sending JSON", msg.get("id"))
        if topic in self._latched:
            c.last_sent[topic] = time.monotonic()
            c.send_json(self._latched[topic])

    def _op_unsubscribe(self, c: _Client, msg: dict[str, Any]) -> None:
        topic = self._str(msg, "topic")
        subs = c.subs.get(topic, {})
        if "id" in msg and msg["id"] in subs:
            del subs[msg["id"]]
        elif "id" in msg and msg["id"] is not None and subs:
            raise _ProtocolError(f"unsubscribe: no subscription {msg['id']!r} on {topic}", "warning")
        else:
            subs.clear()
        if not subs:
            c.subs.pop(topic, None)

    def _op_set_level(self, c: _Client, msg: dict[str, Any]) -> None:
        level = msg.get("level")
        if level not in STATUS_LEVELS:
            raise _ProtocolError(f"set_level: level must be one of {STATUS_LEVELS}")
        c.level = level

    def _op_advertise_service(self, c: _Client, msg: dict[str, Any]) -> None:
        name, srv_type = self._str(msg, "service"), self._str(msg, "type")
        current = self._services.get(name)
        if current is not None and current.owner is not c:
            raise _ProtocolError(f"advertise_service: {name} is already provided")
        self._services[name] = _Service(srv_type, None, c)

    def _op_unadvertise_service(self, c: _Client, msg: dict[str, Any]) -> None:
        name = self._str(msg, "service")
        s = self._services.get(name)
        if s is None or s.owner is not c:
            raise _ProtocolError(f"unadvertise_service: {name} is not advertised by this client", "warning")
        del self._services[name]

    def _op_call_service(self, c: _Client, msg: dict[str, Any]) -> None:
        name = self._str(msg, "service")
        args = msg.get("args") or {}
        call_id = msg.get("id")

        def respond(values: Any, ok: bool) -> None:
            out = {"op": "service_response", "service": name, "values": values, "result": bool(ok)}
            if call_id is not None:
                out["id"] = call_id
            c.send_json(out)

        s = self._services.get(name)
        if s is None:
            respond(f"Service {name} does not exist", False)
            return
        if s.owner is not None:  # forward to the client that hosts it
            fid = f"call_service:{name}:{next(self._ids)}"
            self._forwarded[fid] = (c, call_id, name)
            s.owner.send_json({"op": "call_service", "id": fid, "service": name, "args": args})
            return
        if not isinstance(args, dict):
            respond(f"{name}: args must be an object with the request fields", False)
            return
        fut = self._loop.run_in_executor(s.executor, s.handler, args)

        def done(f: asyncio.Future) -> None:
            try:
                values, ok = f.result()
            except Exception as e:
                log.exception("service %s failed", name)
                values, ok = f"{name} failed: {e}", False
            respond(values, ok)

        fut.add_done_callback(done)

    def _op_service_response(self, c: _Client, msg: dict[str, Any]) -> None:
        fid = msg.get("id")
        if fid not in self._forwarded:
            raise _ProtocolError(f"service_response: no pending call {fid!r}", "warning")
        caller, caller_id, name = self._forwarded.pop(fid)
        out = {"op": "service_response", "service": name, "values": msg.get("values"),
               "result": bool(msg.get("result", True))}
        if caller_id is not None:
            out["id"] = caller_id
        caller.send_json(out)


# ==================================================================================================
# Sim-backed robot
# ==================================================================================================
@dataclass
class EndpointTopics:
    """Topic and service names (``{cam}`` is replaced by the camera name).  The ROS bridge's defaults
    (``embodied_lm.ros.RosConfig``) use the same names."""

    rgb: str = "/camera/{cam}/color/image_raw"
    depth: str = "/camera/{cam}/depth/image_raw"
    camera_info: str = "/camera/{cam}/color/camera_info"
    camera_pose: str = "/camera/{cam}/pose"
    joint_states: str = "/joint_states"
    ee_pose: str = "/ee_pose"
    command: str = "/skill/command"
    result: str = "/skill/result"
    estop: str = "/estop"
    reset_service: str = "/sim/reset"
    oracle_service: str = "/sim/oracle_action"


JOINT_NAMES = tuple(f"panda_joint{i}" for i in range(1, 8)) + ("panda_finger_joint1", "panda_finger_joint2")
# The privileged services' type: request {json: string}; response {success: bool, message: string, json: string}.
JSON_SRV = "embodied_lm_msgs/JsonCall"


def ros_header(t: float, frame_id: str, ros_version: int = 2, seq: int = 0) -> dict[str, Any]:
    sec = int(math.floor(t))
    nsec = min(int(round((t - sec) * 1e9)), 999_999_999)
    if ros_version == 1:
        return {"seq": seq, "stamp": {"secs": sec, "nsecs": nsec}, "frame_id": frame_id}
    return {"stamp": {"sec": sec, "nanosec": nsec}, "frame_id": frame_id}


def image_msg(img: np.ndarray, encoding: str, header: dict[str, Any]) -> dict[str, Any]:
    """``sensor_msgs/Image`` (rosbridge JSON: data as base64)."""
    arr = np.ascontiguousarray(img.astype("<f4") if encoding == "32FC1" else img)
    h, w = arr.shape[:2]
    return {"header": header, "height": h, "width": w, "encoding": encoding, "is_bigendian": 0,
            "step": arr.strides[0], "data": base64.b64encode(arr.tobytes()).decode("ascii")}


def camera_info_msg(K: np.ndarray, h: int, w: int, header: dict[str, Any]) -> dict[str, Any]:
    K = np.asarray(K, float)
    P = np.hstack([K, np.zeros((3, 1))])
    return {"header": header, "height": h, "width": w, "distortion_model": "plumb_bob", "d": [0.0] * 5,
            "k": K.reshape(-1).tolist(), "r": np.eye(3).reshape(-1).tolist(), "p": P.reshape(-1).tolist(),
            "binning_x": 0, "binning_y": 0, "roi": {"x_offset": 0, "y_offset": 0, "height": 0, "width": 0,
                                                   "do_rectify": False}}


def matrix_to_quat(R: np.ndarray) -> list[float]:
    """Rotation matrix -> quaternion xyzw (Shepperd's method)."""
    R = np.asarray(R, float)
    tr = np.trace(R)
    if tr > 0:
        s = 2 * math.sqrt(tr + 1)
        q = [(R[2, 1] - R[1, 2]) / s, (R[0, 2] - R[2, 0]) / s, (R[1, 0] - R[0, 1]) / s, s / 4]
    else:
        i = int(np.argmax(np.diag(R)))
        j, k = (i + 1) % 3, (i + 2) % 3
        s = 2 * math.sqrt(1 + R[i, i] - R[j, j] - R[k, k])
        q = [0.0] * 4
        q[i] = s / 4
        q[j] = (R[j, i] + R[i, j]) / s
        q[k] = (R[k, i] + R[i, k]) / s
        q[3] = (R[k, j] - R[j, k]) / s
    q = np.array(q)
    return (q / np.linalg.norm(q)).tolist()


def pose_msg(position, quat_xyzw, header: dict[str, Any]) -> dict[str, Any]:
    x, y, z = (float(v) for v in position)
    qx, qy, qz, qw = (float(v) for v in quat_xyzw)
    return {"header": header, "pose": {"position": {"x": x, "y": y, "z": z},
                                       "orientation": {"x": qx, "y": qy, "z": qz, "w": qw}}}


@dataclass
class EndpointStats:
    commands: list[dict[str, Any]] = field(default_factory=list)  # every well-formed command received
    results: list[dict[str, Any]] = field(default_factory=list)
    resets: int = 0


class SimRobotEndpoint:
    """A ``TabletopEnv`` behind a rosbridge server.  Use as a context manager::

        with SimRobotEndpoint() as ep:
            bridge = RosEmbodiment(RosConfig(port=ep.port))
    """

    def __init__(self, env_config: Any = None, *, host: str = "127.0.0.1", port: int = 0,
                 topics: EndpointTopics | None = None, ros_version: int = 2, command_delay_s: float = 0.0,
                 match_tolerance: float = 0.05, max_command_age_s: float = 5.0):
        if ros_version not in (1, 2):
            raise ValueError(f"ros_version must be 1 or 2, got {ros_version}")
        self.env_config = env_config
        self.topics = topics or EndpointTopics()
        self.ros_version = ros_version
        self.command_delay_s = float(command_delay_s)
        self.match_tolerance = float(match_tolerance)
        self.max_command_age_s = float(max_command_age_s)
        self.server = RosbridgeServer(host, port)
        self.stats = EndpointStats()
        self._worker = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="sim-robot")
        self._estop = threading.Event()
        self._seq = itertools.count()
        self.env = None

    # -- lifecycle -----------------------------------------------------------------------------------
    def start(self) -> int:
        self._worker.submit(self._make_env).result(timeout=120)
        port = self.server.start()
        t = self.topics
        for cam in self.env.config.world.cameras:
            self.server.advertise(t.rgb.format(cam=cam), "sensor_msgs/Image")
            self.server.advertise(t.depth.format(cam=cam), "sensor_msgs/Image")
            self.server.advertise(t.camera_info.format(cam=cam), "sensor_msgs/CameraInfo")
            self.server.advertise(t.camera_pose.format(cam=cam), "geometry_msgs/PoseStamped")
        self.server.advertise(t.joint_states, "sensor_msgs/JointState")
        self.server.advertise(t.ee_pose, "geometry_msgs/PoseStamped")
        self.server.advertise(t.result, "std_msgs/String")
        self.server.on_publish(t.command, "std_msgs/String", self._on_command)
        self.server.on_publish(t.estop, "std_msgs/Bool", self._on_estop)
        self.server.advertise_service(t.reset_service, JSON_SRV, self._srv_reset, self._worker)
        self.server.advertise_service(t.oracle_service, JSON_SRV, self._srv_oracle, self._worker)
        return port

    @property
    def port(self) -> int:
        return self.server.port

    @property
    def url(self) -> str:
        return self.server.url

    def stop(self) -> None:
        self.server.stop()
        self._shutdown_worker()

    def kill(self) -> None:
        """Crash: connections reset without a close handshake."""
        self.server.kill()
        self._shutdown_worker()

    def _shutdown_worker(self) -> None:
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
        self.server.publish(self.topics.estop, {"data": bool(engaged)}, "std_msgs/Bool")

    def publish_sensors(self) -> None:
        """Render and publish one set of sensor messages now (a real robot streams them continuously)."""
        self._worker.submit(lambda: self._publish_obs(self._sense())).result(timeout=60)

    # -- worker thread -------------------------------------------------------------------------------
    def _make_env(self) -> None:
        from sim.env import EnvConfig, TabletopEnv

        cfg = self.env_config
        if isinstance(cfg, dict):
            cfg = EnvConfig(**cfg)
        self.env = TabletopEnv(cfg)

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
        env, t, v = self.env, self.topics, self.ros_version
        stamp = time.time()
        seq = next(self._seq)
        for cam in env.config.world.cameras:
            cp = env.world.camera_params(cam)
            hdr = ros_header(stamp, f"{cam}_optical_frame", v, seq)
            h, w = obs[f"rgb_{cam}"].shape[:2]
            T = np.asarray(cp["world_from_camera"])
            self.server.publish(t.camera_info.format(cam=cam), camera_info_msg(np.asarray(cp["K"]), h, w, hdr))
            self.server.publish(t.camera_pose.format(cam=cam),  # static calibration: latched, like /tf_static
                                pose_msg(T[:3, 3], matrix_to_quat(T[:3, :3]), ros_header(stamp, "world", v, seq)),
                                latch=True)
            self.server.publish(t.rgb.format(cam=cam), image_msg(obs[f"rgb_{cam}"], "rgb8", hdr))
            self.server.publish(t.depth.format(cam=cam), image_msg(obs[f"depth_{cam}"], "32FC1", hdr))
        robot = np.asarray(obs["robot"], float)
        self.server.publish(t.joint_states, {"header": ros_header(stamp, "", v, seq), "name": list(JOINT_NAMES),
                                             "position": robot[:9].tolist(), "velocity": [], "effort": []})
        self.server.publish(t.ee_pose, pose_msg(robot[9:12], robot[12:16], ros_header(stamp, "world", v, seq)))
        return stamp

    def _srv_reset(self, args: dict[str, Any]) -> tuple[dict[str, Any], bool]:
        from sim.tasks import EpisodeSpec, SpecError

        try:
            spec = EpisodeSpec.from_dict(json.loads(args.get("json", "")))
        except (json.JSONDecodeError, SpecError, TypeError) as e:
            return {"success": False, "message": f"bad episode spec: {e}", "json": ""}, True
        obs, info = self.env.reset(options={"spec": spec})
        self.stats.resets += 1
        t_ref = time.time()
        self._publish_obs(obs)
        body = {"instruction": info["instruction"], "spec": info["spec"], "max_steps": info["max_steps"],
                "robot_time": info["sim_time"], "stamp": t_ref}
        return {"success": True, "message": "ok", "json": json.dumps(body)}, True

    def _srv_oracle(self, args: dict[str, Any]) -> tuple[dict[str, Any], bool]:
        if self.env is None or self.env.episode is None:
            return {"success": False, "message": "no episode: call the reset service first", "json": ""}, True
        action = self.env.oracle_action()
        infos = self.env.world.object_infos()
        held = self.env.world.robot.held()
        objs = {n: {"position": infos[n].position.tolist(), "kind": infos[n].kind, "color": infos[n].color,
                    "held": n == held} for n in re.findall(r"obj_\d+", action) if n in infos}
        return {"success": True, "message": "ok", "json": json.dumps({"action": action, "objects": objs})}, True

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
        words = [mapping.get(w, w) for w in cmd["skill"].split()]
        return " ".join(words), "ok"

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
        self.server.publish(self.topics.result, {"data": json.dumps(result)})


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="Sim-backed robot behind a rosbridge v2 server (for the ROS bridge).")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=9090, help="0 = any free port")
    ap.add_argument("--ros-version", type=int, default=2, choices=(1, 2), help="header stamp spelling")
    ap.add_argument("--command-delay", type=float, default=0.0, help="extra seconds per command (a slow robot)")
    ap.add_argument("--image-size", type=int, nargs=2, default=None, metavar=("H", "W"))
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    env_cfg = None
    if args.image_size:
        from sim.env import EnvConfig
        from sim.world import WorldConfig

        env_cfg = EnvConfig(world=WorldConfig(image_size=tuple(args.image_size)))
    ep = SimRobotEndpoint(env_cfg, host=args.host, port=args.port, ros_version=args.ros_version,
                          command_delay_s=args.command_delay)
    ep.start()
    print(f"listening on {ep.url}", flush=True)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    while not stop.wait(0.5):
        pass
    ep.stop()


if __name__ == "__main__":
    main()
