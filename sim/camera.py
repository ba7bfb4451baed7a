"""Pinhole cameras: RGB, metric depth and segmentation, with intrinsics and extrinsics."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
import pybullet as p


@dataclass(frozen=True)
class CameraConfig:
    eye: tuple[float, float, float]
    target: tuple[float, float, float]
    up: tuple[float, float, float]
    fov_deg: float = 45.0  # vertical field of view
    near: float = 0.05
    far: float = 3.0

    def view_matrix(self) -> list[float]:
        return p.computeViewMatrix(self.eye, self.target, self.up)

    def projection_matrix(self, h: int, w: int) -> list[float]:
        return p.computeProjectionMatrixFOV(self.fov_deg, w / h, self.near, self.far)

    def intrinsics(self, h: int, w: int) -> np.ndarray:
        """3x3 K in pixels (OpenCV convention: x right, y down, z forward)."""
        f = (h / 2) / math.tan(math.radians(self.fov_deg) / 2)
        return np.array([[f, 0, w / 2], [0, f, h / 2], [0, 0, 1]])

    def world_from_camera(self) -> np.ndarray:
        """4x4 pose of the camera in the world, OpenCV camera axes (x right, y down, z forward)."""
        view = np.array(self.view_matrix()).reshape(4, 4).T  # OpenGL: camera looks down -z, y up
        gl_from_cv = np.diag([1.0, -1.0, -1.0, 1.0])
        return np.linalg.inv(view) @ gl_from_cv

    def params(self, h: int, w: int) -> dict[str, list]:
        return {
            "height": h, "width": w,
            "K": self.intrinsics(h, w).tolist(),
            "world_from_camera": self.world_from_camera().tolist(),
            "near": self.near, "far": self.far,
        }


@dataclass(frozen=True)
class Jitter:
    """Per-episode camera and appearance changes (robustness at test time: a robot's cameras are never the
    sim's).  Each camera's eye and target move by up to ``position`` m per axis and its view turns by up to
    ``angle_deg`` about a random axis (the reported extrinsics follow: a calibrated camera); the light
    comes from a random direction with ambient / diffuse coefficients scaled by 1 +- ``light``; each RGB
    channel gains 1 +- ``color``.  (PyBullet's OpenGL path, ``renderer=egl``, ignores the light; the
    default TinyRenderer honours it.)"""

    position: float = 0.02
    angle_deg: float = 3.0
    light: float = 0.3
    color: float = 0.1

    def __post_init__(self) -> None:
        if min(self.position, self.angle_deg, self.light, self.color) < 0 or self.light >= 1 or self.color >= 1:
            raise ValueError(f"Jitter: amounts must be >= 0 (light, color < 1), got {self}")


@dataclass(frozen=True)
class Look:
    """How one camera sees an episode: its (possibly moved) pose, the light and a colour gain."""

    camera: CameraConfig
    light_direction: tuple[float, float, float] | None = None  # None: the renderer's default light
    ambient: float = 0.6
    diffuse: float = 0.35
    gain: tuple[float, float, float] = (1.0, 1.0, 1.0)


def jittered(cam: CameraConfig, jitter: Jitter, rng: np.random.Generator) -> Look:
    """A ``Look`` at ``cam`` drawn from ``rng`` (see ``Jitter``)."""
    eye, target = np.asarray(cam.eye, float), np.asarray(cam.target, float)
    shift = rng.uniform(-jitter.position, jitter.position, 3)
    axis = rng.normal(size=3)
    axis /= np.linalg.norm(axis)
    a = math.radians(rng.uniform(-jitter.angle_deg, jitter.angle_deg))
    d = target - eye  # Rodrigues: turn the viewing direction by a about axis
    d = d * math.cos(a) + np.cross(axis, d) * math.sin(a) + axis * (axis @ d) * (1 - math.cos(a))
    eye = eye + shift
    light = rng.normal(size=3) * np.array([1.0, 1.0, 0.3]) + np.array([0.0, 0.0, 1.0])
    scale = rng.uniform(1 - jitter.light, 1 + jitter.light, 2)
    return Look(replace(cam, eye=tuple(eye), target=tuple(eye + d)), tuple(light / np.linalg.norm(light)),
                0.6 * float(scale[0]), 0.35 * float(scale[1]),
                tuple(float(g) for g in rng.uniform(1 - jitter.color, 1 + jitter.color, 3)))


def render(client: int, cam: CameraConfig | Look, h: int, w: int, egl: bool = False) -> dict[str, np.ndarray]:
    """One frame: rgb (H,W,3) uint8, depth (H,W) float32 metres along the optical axis, seg (H,W) int32."""
    look = cam if isinstance(cam, Look) else Look(cam)
    cam = look.camera
    light = {} if look.light_direction is None else {
        "lightDirection": look.light_direction, "lightAmbientCoeff": look.ambient,
        "lightDiffuseCoeff": look.diffuse}
    _, _, rgba, zbuf, seg = p.getCameraImage(
        w, h, cam.view_matrix(), cam.projection_matrix(h, w),
        renderer=p.ER_BULLET_HARDWARE_OPENGL if egl else p.ER_TINY_RENDERER,
        physicsClientId=client, **light,
    )
    rgb = np.asarray(rgba, np.uint8).reshape(h, w, 4)[..., :3]
    if look.gain != (1.0, 1.0, 1.0):
        rgb = np.clip(rgb * np.asarray(look.gain, np.float32), 0, 255).astype(np.uint8)
    zbuf = np.asarray(zbuf, np.float32).reshape(h, w)
    depth = cam.far * cam.near / (cam.far - (cam.far - cam.near) * zbuf)  # OpenGL z-buffer -> metres
    return {"rgb": np.ascontiguousarray(rgb), "depth": depth.astype(np.float32),
            "seg": np.asarray(seg, np.int32).reshape(h, w)}
