"""A minimal rosbridge v2 WebSocket server: what the ROS bridge (roslibpy) needs, for tests and demos.

autobahn on asyncio, in its own thread and loop, bound to 127.0.0.1 on an ephemeral port by default.
Client operations (ROSBRIDGE_PROTOCOL.md): ``advertise``, ``publish``, ``subscribe``, ``unsubscribe``
and ``call_service`` of services hosted here; anything else, and every refused request, is answered
with an error ``status`` message, as rosbridge does.  Messages are JSON text; ``uint8[]`` fields travel
as base64.  A client written against this server works unchanged against a real ``rosbridge_server``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import itertools
import json
import logging
import threading
from collections.abc import Callable
from typing import Any

from autobahn.asyncio.websocket import WebSocketServerFactory, WebSocketServerProtocol

log = logging.getLogger(__name__)

# Minimal field checks for the simple types, as rosbridge's message conversion would refuse them.
_SIMPLE_FIELDS = {"std_msgs/String": ("data", str), "std_msgs/Bool": ("data", bool)}

Handler = Callable[[dict[str, Any]], dict[str, Any]]  # service request args -> response values


def _norm_type(t: str) -> str:
    """``sensor_msgs/msg/Image`` (ROS 2 spelling) == ``sensor_msgs/Image``."""
    parts = t.split("/")
    return f"{parts[0]}/{parts[-1]}" if len(parts) == 3 and parts[1] in ("msg", "srv") else t


class _ProtocolError(Exception):
    """A rosbridge op the server cannot serve; answered with an error status."""


class _Client(WebSocketServerProtocol):
    """One WebSocket connection.  All methods run on the server's loop thread."""

    def onConnect(self, request):  # noqa: N802 (autobahn API)
        self.subs: dict[str, set[Any]] = {}  # topic -> subscription ids

    def onOpen(self):  # noqa: N802
        self.factory.server._clients.add(self)

    def onClose(self, wasClean, code, reason):  # noqa: N802
        self.factory.server._clients.discard(self)

    def onMessage(self, payload, isBinary):  # noqa: N802
        msg: Any = None
        try:
            if isBinary:
                raise _ProtocolError("binary (CBOR) messages are not supported; send JSON text")
            try:
                msg = json.loads(payload.decode("utf8"))
            except ValueError as e:  # UnicodeDecodeError, JSONDecodeError
                raise _ProtocolError(f"could not parse message as JSON: {e}") from None
            if not isinstance(msg, dict) or not isinstance(msg.get("op"), str):
                raise _ProtocolError("received a message without an 'op' field")
            handler = getattr(self.factory.server, f"_op_{msg['op']}", None)
            if handler is None:
                raise _ProtocolError(f"unsupported op {msg['op']!r}")
            handler(self, msg)
        except _ProtocolError as e:
            self.status(str(e), msg)
        except Exception as e:  # a bug in a handler must not kill the connection
            log.exception("rosbridge server: %s failed", msg.get("op"))
            self.status(f"{msg.get('op')} failed: {e}", msg)

    def send_json(self, obj: dict[str, Any] | bytes) -> None:
        payload = obj if isinstance(obj, bytes) else json.dumps(obj).encode("utf8")
        if self.state == WebSocketServerProtocol.STATE_OPEN:
            self.sendMessage(payload, isBinary=False)

    def status(self, text: str, request: Any = None) -> None:
        out = {"op": "status", "level": "error", "msg": text}
        if isinstance(request, dict) and request.get("id") is not None:
            out["id"] = request["id"]
        self.send_json(out)


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
        self._services: dict[str, tuple[Handler, concurrent.futures.Executor | None]] = {}
        self._ids = itertools.count(1)

    # -- lifecycle ---------------------------------------------------------------------------------
    def start(self, timeout: float = 5.0) -> int:
        """Bind and serve; returns the port.  Raises RuntimeError if the server does not come up."""
        if self._thread is not None:
            raise RuntimeError("server already started")
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            loop = self._loop = asyncio.new_event_loop()
            asyncio.set_event_loop(loop)
            factory = WebSocketServerFactory(loop=loop)
            factory.protocol, factory.server = _Client, self
            factory.setProtocolOptions(autoPingInterval=0, maxMessagePayloadSize=0, maxFramePayloadSize=0)
            try:
                self._server = loop.run_until_complete(loop.create_server(factory, self.host, self._want_port))
                self.port = self._server.sockets[0].getsockname()[1]
            except BaseException as e:  # bind failure: report to start()
                failure.append(e)
                loop.close()
                return
            finally:
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
        log.info("rosbridge server listening on %s", self.url)
        return self.port

    @property
    def url(self) -> str:
        return f"ws://{self.host}:{self.port}"

    def stop(self, timeout: float = 5.0) -> None:
        """Close every connection cleanly (WebSocket close handshake, bounded), then stop the loop."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None or not thread.is_alive():
            return

        async def close() -> None:
            try:
                self._server.close()
                for c in list(self._clients):
                    with contextlib.suppress(Exception):  # a client may be half-way through closing
                        c.sendClose(code=1001, reason="server shutting down")
                for _ in range(50):
                    if not self._clients:
                        break
                    await asyncio.sleep(0.01)
                for c in list(self._clients):
                    with contextlib.suppress(Exception):
                        c.transport.close()
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
        """Publish ``msg`` to every subscriber (and server-side handler) of ``topic``; a latched message
        is also sent to later subscribers."""
        if msg_type is not None:
            self.advertise(topic, msg_type)
        self._call(self._route, topic, msg, latch)

    def on_publish(self, topic: str, msg_type: str, callback: Callable[[dict[str, Any]], None]) -> None:
        """Call ``callback(msg)`` (on the server thread) for every message a client publishes on ``topic``."""
        self.advertise(topic, msg_type)
        self._call(lambda: self._handlers.setdefault(topic, []).append(callback))

    def advertise_service(self, name: str, handler: Handler,
                          executor: concurrent.futures.Executor | None = None) -> None:
        """Host a service: ``handler(args) -> values`` runs in ``executor`` (default: a thread); an
        exception is a failed call."""
        self._call(self._services.__setitem__, name, (handler, executor))

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
        known = self._topics.setdefault(topic, msg_type)
        if _norm_type(known) != _norm_type(msg_type):
            raise _ProtocolError(f"topic {topic} already has type {known}, not {msg_type}")

    def _route(self, topic: str, msg: dict[str, Any], latch: bool = False) -> None:
        payload = json.dumps({"op": "publish", "topic": topic, "msg": msg}).encode("utf8")
        if latch:
            self._latched[topic] = payload
        for c in list(self._clients):
            if c.subs.get(topic):
                c.send_json(payload)
        for cb in self._handlers.get(topic, ()):
            try:
                cb(msg)
            except Exception:
                log.exception("rosbridge server: handler for %s failed", topic)

    # -- protocol operations (loop thread) ---------------------------------------------------------
    @staticmethod
    def _str(msg: dict[str, Any], key: str) -> str:
        v = msg.get(key)
        if not isinstance(v, str) or not v:
            raise _ProtocolError(f"{msg.get('op')}: field {key!r} must be a non-empty string")
        return v

    def _op_advertise(self, c: _Client, msg: dict[str, Any]) -> None:
        self._register_topic(self._str(msg, "topic"), self._str(msg, "type"))

    def _op_publish(self, c: _Client, msg: dict[str, Any]) -> None:
        topic, body = self._str(msg, "topic"), msg.get("msg")
        if not isinstance(body, dict):
            raise _ProtocolError(f"publish: msg on {topic} must be an object")
        msg_type = self._topics.get(topic)
        if msg_type is None:
            raise _ProtocolError(f"publish: topic {topic} does not exist (advertise it first)")
        key, typ = _SIMPLE_FIELDS.get(_norm_type(msg_type), (None, object))
        if key is not None and not isinstance(body.get(key), typ):
            raise _ProtocolError(f"publish: msg on {topic} does not conform to {msg_type}")
        self._route(topic, body, bool(msg.get("latch", False)))

    def _op_subscribe(self, c: _Client, msg: dict[str, Any]) -> None:
        topic = self._str(msg, "topic")
        if msg.get("type"):
            self._register_topic(topic, msg["type"])
        elif topic not in self._topics:
            raise _ProtocolError(f"subscribe: cannot infer the type of {topic}; give 'type'")
        c.subs.setdefault(topic, set()).add(msg.get("id") or f"subscribe:{topic}:{next(self._ids)}")
        if topic in self._latched:
            c.send_json(self._latched[topic])

    def _op_unsubscribe(self, c: _Client, msg: dict[str, Any]) -> None:
        subs = c.subs.get(self._str(msg, "topic"), set())
        subs.discard(msg.get("id")) if msg.get("id") is not None else subs.clear()

    def _op_call_service(self, c: _Client, msg: dict[str, Any]) -> None:
        name, args, call_id = self._str(msg, "service"), msg.get("args") or {}, msg.get("id")

        def respond(values: Any, ok: bool) -> None:
            out = {"op": "service_response", "service": name, "values": values, "result": ok}
            c.send_json(out if call_id is None else out | {"id": call_id})

        if name not in self._services:
            respond(f"Service {name} does not exist", False)
            return
        if not isinstance(args, dict):
            respond(f"{name}: args must be an object with the request fields", False)
            return
        handler, executor = self._services[name]

        def done(f: asyncio.Future) -> None:
            try:
                respond(f.result(), True)
            except Exception as e:
                log.exception("service %s failed", name)
                respond(f"{name} failed: {e}", False)

        self._loop.run_in_executor(executor, handler, args).add_done_callback(done)
