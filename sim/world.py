"""The PyBullet tabletop world: one DIRECT client and one numpy Generator per world.

Every ``p.*`` call passes ``physicsClientId`` so several worlds in one process
never interfere.  The world owns the table, the Panda (``sim.robot``), the
objects and the cameras, and reads out the full symbolic state.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import numpy as np
import pybullet as p
import pybullet_data

from sim.camera import CameraConfig, Jitter, Look, jittered, render
from skills import scene
from skills.robot import ObjectInfo, Workspace
from skills.vocab import (
    BLOCK_SIZE,
    BOWL_HEIGHT,
    BOWL_SIZE,
    COLOR_NAMES,
    COLORS,
    KINDS,
    MAX_OBJECTS,
    OBJECT_FEATURES,
    Col,
)


@dataclass
class WorldConfig:
    """Physics and sensing settings of a world (typed; validated on construction)."""

    time_step: float = 1.0 / 240.0
    image_size: tuple[int, int] = (128, 128)  # (H, W)
    cameras: tuple[str, ...] = ("top", "front")
    renderer: str = "tiny"  # "tiny" (TinyRenderer) | "egl" (EGL plugin, CPU Mesa works)
    workspace: Workspace = field(default_factory=Workspace)

    def __post_init__(self) -> None:
        if self.renderer not in ("tiny", "egl"):
            raise ValueError(f"world.renderer must be 'tiny' or 'egl', got {self.renderer!r}")
        unknown = set(self.cameras) - set(CAMERAS)
        if unknown:
            raise ValueError(f"unknown camera(s) {sorted(unknown)}; known: {sorted(CAMERAS)}")
        if len(self.image_size) != 2 or min(self.image_size) < 16:
            raise ValueError(f"world.image_size must be (H, W) >= 16, got {self.image_size}")
        self.image_size = tuple(int(v) for v in self.image_size)  # type: ignore[assignment]


CAMERAS: dict[str, CameraConfig] = {
    # Looking straight down at the workspace centre.
    "top": CameraConfig(eye=(0.50, 0.0, 1.00), target=(0.50, 0.0, 0.0), up=(1.0, 0.0, 0.0), fov_deg=40.0),
    # From the far side of the table, looking back at the robot and the blocks.
    "front": CameraConfig(eye=(1.25, 0.0, 0.55), target=(0.45, 0.0, 0.02), up=(0.0, 0.0, 1.0), fov_deg=45.0),
}


@dataclass
class SceneObject:
    name: str  # obj_k; k is the object's slot + 1
    kind: str
    color: str
    body: int  # PyBullet body id


class World:
    """A tabletop world.  Build objects with ``add_block``/``add_bowl`` after ``reset``."""

    def __init__(self, config: WorldConfig | None = None, seed: int = 0):
        self.config = config or WorldConfig()
        self.client = p.connect(p.DIRECT)
        self.rng = np.random.default_rng(seed)
        self.objects: list[SceneObject] = []
        self._egl = None
        if self.config.renderer == "egl":
            self._load_egl()
        self.reset(seed)

    # -- lifecycle -------------------------------------------------------------------------
    def reset(self, seed: int | None = None) -> None:
        """Empty the world: table and robot only.  Reseeds the Generator when ``seed`` is given."""
        from sim.robot import PandaRobot  # robot needs the world's client

        if seed is not None:
            self.rng = np.random.default_rng(seed)
        c = self.client
        p.resetSimulation(physicsClientId=c)
        p.setGravity(0, 0, -9.81, physicsClientId=c)
        p.setTimeStep(self.config.time_step, physicsClientId=c)
        p.setAdditionalSearchPath(pybullet_data.getDataPath(), physicsClientId=c)
        # The table: a plain box whose top face is z = 0.
        half = [1.0, 1.0, 0.02]
        self.table = p.createMultiBody(
            0, p.createCollisionShape(p.GEOM_BOX, halfExtents=half, physicsClientId=c),
            p.createVisualShape(p.GEOM_BOX, halfExtents=half, rgbaColor=(0.78, 0.70, 0.58, 1), physicsClientId=c),
            [0.5, 0, -0.02], physicsClientId=c)
        p.changeDynamics(self.table, -1, lateralFriction=0.5, physicsClientId=c)
        self.objects = []
        self.steps = 0
        self.robot = PandaRobot(self)
        self.looks: dict[str, Look] = {}  # cameras moved / relit for this episode (``jitter``)

    def jitter(self, jitter: Jitter | None, rng: np.random.Generator) -> None:
        """Move and relight every configured camera for this episode (None: the nominal cameras)."""
        self.looks = {} if jitter is None else {c: jittered(CAMERAS[c], jitter, rng) for c in self.config.cameras}

    def close(self) -> None:
        if self.client is not None and p.isConnected(self.client):
            p.disconnect(self.client)
        self.client = None

    def __enter__(self) -> World:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):  # interpreter shutdown: pybullet may already be gone
            self.close()

    def _load_egl(self) -> None:
        import pkgutil

        loader = pkgutil.get_loader("eglRenderer")
        if loader is None:
            raise RuntimeError("world.renderer=egl: PyBullet's eglRenderer plugin was not found")
        self._egl = p.loadPlugin(loader.get_filename(), "_eglRendererPlugin", physicsClientId=self.client)

    # -- objects ----------------------------------------------------------------------------
    def add_block(self, color: str, xy: tuple[float, float], z: float | None = None, yaw: float = 0.0) -> str:
        h = BLOCK_SIZE / 2
        c = self.client
        col = p.createCollisionShape(p.GEOM_BOX, halfExtents=[h] * 3, physicsClientId=c)
        vis = p.createVisualShape(p.GEOM_BOX, halfExtents=[h] * 3, rgbaColor=COLORS[color], physicsClientId=c)
        z = h if z is None else z
        body = p.createMultiBody(
            0.05, col, vis, [xy[0], xy[1], z], p.getQuaternionFromEuler([0, 0, yaw]), physicsClientId=c
        )
        p.changeDynamics(body, -1, lateralFriction=0.6, spinningFriction=0.001, physicsClientId=c)
        return self._register("block", color, body)

    def add_bowl(self, color: str, xy: tuple[float, float], yaw: float = 0.0) -> str:
        """A square dish: a base plate and four walls, one rigid body."""
        c, s, t, hgt = self.client, BOWL_SIZE / 2, 0.004, BOWL_HEIGHT
        half = [[s, s, t / 2], [t / 2, s, hgt / 2], [t / 2, s, hgt / 2], [s, t / 2, hgt / 2], [s, t / 2, hgt / 2]]
        pos = [[0, 0, t / 2], [s - t / 2, 0, hgt / 2], [-s + t / 2, 0, hgt / 2], [0, s - t / 2, hgt / 2],
               [0, -s + t / 2, hgt / 2]]
        col = p.createCollisionShapeArray([p.GEOM_BOX] * 5, halfExtents=half, collisionFramePositions=pos,
                                          physicsClientId=c)
        rgba = COLORS[color]
        vis = p.createVisualShapeArray([p.GEOM_BOX] * 5, halfExtents=half, visualFramePositions=pos,
                                       rgbaColors=[rgba] * 5, physicsClientId=c)
        body = p.createMultiBody(0.4, col, vis, [xy[0], xy[1], 0.0], p.getQuaternionFromEuler([0, 0, yaw]),
                                 physicsClientId=c)
        p.changeDynamics(body, -1, lateralFriction=0.8, physicsClientId=c)
        return self._register("bowl", color, body)

    def _register(self, kind: str, color: str, body: int) -> str:
        if color not in COLORS:
            raise ValueError(f"unknown colour {color!r}; known: {', '.join(COLOR_NAMES)}")
        if len(self.objects) >= MAX_OBJECTS:
            raise ValueError(f"a world holds at most {MAX_OBJECTS} objects")
        name = f"obj_{len(self.objects) + 1}"
        self.objects.append(SceneObject(name, kind, color, body))
        return name

    def body_to_name(self) -> dict[int, str]:
        return {o.body: o.name for o in self.objects}

    # -- physics ----------------------------------------------------------------------------
    def step(self, n: int = 1) -> None:
        for _ in range(n):
            p.stepSimulation(physicsClientId=self.client)
        self.steps += n

    def settle(self, seconds: float = 0.5) -> None:
        self.step(int(round(seconds / self.config.time_step)))

    @property
    def sim_time(self) -> float:
        return self.steps * self.config.time_step

    # -- symbolic state ---------------------------------------------------------------------
    def object_infos(self) -> dict[str, ObjectInfo]:
        out = {}
        for o in self.objects:
            pos, quat = p.getBasePositionAndOrientation(o.body, physicsClientId=self.client)
            yaw = p.getEulerFromQuaternion(quat)[2]
            size, height = (BLOCK_SIZE, BLOCK_SIZE) if o.kind == "block" else (BOWL_SIZE, BOWL_HEIGHT)
            out[o.name] = ObjectInfo(o.name, o.kind, o.color, np.array(pos), float(yaw), size, height)
        return out

    def state(self) -> list[dict]:
        """Full symbolic readout: id, kind, colour, pose, what it rests on, held."""
        infos = self.object_infos()
        sup = scene.supports(infos)
        held = self.robot.held()
        rows = []
        for o in self.objects:
            pos, quat = p.getBasePositionAndOrientation(o.body, physicsClientId=self.client)
            rows.append({
                "name": o.name, "body": o.body, "kind": o.kind, "color": o.color,
                "position": [round(v, 5) for v in pos], "orientation": [round(v, 5) for v in quat],
                "on": "gripper" if held == o.name else sup[o.name],
            })
        return rows

    def object_array(self) -> np.ndarray:
        """(MAX_OBJECTS, OBJECT_FEATURES) float32 rows, columns ``skills.vocab.Col``; support is the slot
        (0 = table, k = obj_k, -1 = air/held).  Rows beyond the scene are zero."""
        arr = np.zeros((MAX_OBJECTS, OBJECT_FEATURES), np.float32)
        for r, row in zip(arr, self.state()):
            on = row["on"]
            r[Col.PRESENT] = 1
            r[Col.KIND] = KINDS.index(row["kind"])
            r[Col.COLOR] = COLOR_NAMES.index(row["color"])
            r[Col.XYZ] = row["position"]
            r[Col.QUAT] = row["orientation"]
            r[Col.SUPPORT] = 0 if on == "table" else -1 if on in ("air", "gripper") else int(on.split("_")[1])
            r[Col.SIZE] = BLOCK_SIZE if row["kind"] == "block" else BOWL_SIZE
        return arr

    # -- sensing ----------------------------------------------------------------------------
    def render(self, camera: str) -> dict[str, np.ndarray]:
        """RGB (H,W,3) uint8, depth (H,W) float32 metres, mask (H,W) int16: k for obj_k, -1 robot, 0 else."""
        h, w = self.config.image_size
        out = render(self.client, self.looks.get(camera) or CAMERAS[camera], h, w, egl=self._egl is not None)
        seg = out.pop("seg")
        mask = np.zeros(seg.shape, np.int16)
        body = seg & ((1 << 24) - 1)  # low bits = body id (segmentation flag may add link bits)
        for o in self.objects:
            mask[body == o.body] = int(o.name.split("_")[1])
        mask[body == self.robot.body] = -1
        out["mask"] = mask
        return out

    def camera_params(self, camera: str) -> dict[str, list]:
        h, w = self.config.image_size
        look = self.looks.get(camera)
        return (look.camera if look is not None else CAMERAS[camera]).params(h, w)
