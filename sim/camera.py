"""Pinhole cameras: RGB, metric depth and segmentation, with intrinsics and extrinsics."""

from __future__ import annotations

import math
from dataclasses import dataclass

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


def render(client: int, cam: CameraConfig, h: int, w: int, egl: bool = False) -> dict[str, np.ndarray]:
    """One frame: rgb (H,W,3) uint8, depth (H,W) float32 metres along the optical axis, seg (H,W) int32."""
    _, _, rgba, zbuf, seg = p.getCameraImage(
        w, h, cam.view_matrix(), cam.projection_matrix(h, w),
        renderer=p.ER_BULLET_HARDWARE_OPENGL if egl else p.ER_TINY_RENDERER,
        physicsClientId=client,
    )
    rgb = np.asarray(rgba, np.uint8).reshape(h, w, 4)[..., :3]
    zbuf = np.asarray(zbuf, np.float32).reshape(h, w)
    depth = cam.far * cam.near / (cam.far - (cam.far - cam.near) * zbuf)  # OpenGL z-buffer -> metres
    return {"rgb": np.ascontiguousarray(rgb), "depth": depth.astype(np.float32),
            "seg": np.asarray(seg, np.int32).reshape(h, w)}
