"""``pointcloud``: depth + intrinsics -> ``segment_objects`` -> a PointNet per detection -> one token each.

Per detection a fixed number of points (deterministic sampling with a seeded Generator; padding by
repeating points, which max pooling ignores) with input = xyz relative to the centroid + rgb; the
pooled feature is combined with the centroid and extent.  Touching objects (towers, a block in a bowl)
are one detection (see ``sensors.segmentation``).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from sensors.base import Cameras, ImageConfig, Obs, PooledObjectEncoder, get_objects, register_encoder, rgbd
from sensors.layers import mlp
from sensors.segmentation import assign_to_slots, segment_objects
from skills.vocab import MAX_OBJECTS

_SEG_KEYS = set(inspect.signature(segment_objects).parameters) - {"rgb", "depth", "K", "world_from_camera"}


@dataclass
class PointCloudConfig(ImageConfig):
    n_points: int = 128
    point_mlp: tuple[int, ...] = (64, 128)  # shared per-point MLP widths (PointNet)
    hidden: int = 128
    rel_scale: float = 0.04  # metres per unit for point offsets and extents
    xyz_center: tuple[float, float, float] = (0.5, 0.0, 0.0)
    xyz_scale: float = 0.1
    segmentation: dict[str, Any] = field(default_factory=dict)  # keyword args of segment_objects

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.n_points < 1 or not self.point_mlp or min(self.point_mlp) < 1 or self.hidden < 1:
            raise ValueError(f"PointCloudConfig: need n_points >= 1 and positive widths, got {self}")
        bad = sorted(set(self.segmentation) - _SEG_KEYS)
        if bad:
            raise ValueError(f"PointCloudConfig.segmentation: unknown key(s) {bad}; known: {sorted(_SEG_KEYS)}")
        self.point_mlp = tuple(int(c) for c in self.point_mlp)


@register_encoder("pointcloud")
class PointCloudEncoder(PooledObjectEncoder):
    config_cls = PointCloudConfig

    def __init__(self, config: PointCloudConfig):
        super().__init__(config)
        c = config
        self.point_net = nn.Sequential(mlp([6, *c.point_mlp]), nn.GELU())  # shared over points
        self._build_head(c.point_mlp[-1] + 6)
        self.register_buffer("center", torch.tensor(c.xyz_center, dtype=torch.float32), persistent=False)

    def preprocess(self, obs: Obs, cameras: Cameras) -> dict[str, np.ndarray]:
        c = self.config
        rgb, depth, K, T = rgbd(obs, c, cameras)
        dets = segment_objects(rgb, depth, K, T, **c.segmentation)
        if "objects" in obs:
            # EVALUATION-ONLY association in sim: match detections to the env's object slots so that
            # token j is obj_{j+1} and the LM's entity referrals line up.  A real robot has no such array:
            # there slot j is simply the j-th detection (sorted by x, then y).
            slots = assign_to_slots(dets, get_objects(obs))
        else:
            slots = list(range(min(len(dets), MAX_OBJECTS))) + [-1] * max(0, len(dets) - MAX_OBJECTS)
        points = np.zeros((MAX_OBJECTS, c.n_points, 6), np.float32)
        box = np.zeros((MAX_OBJECTS, 6), np.float32)  # centroid (metres), extent (metres)
        present = np.zeros(MAX_OBJECTS, bool)
        rng = np.random.default_rng(c.seed)  # fresh per call: the same observation gives the same sample
        for det, j in zip(dets, slots, strict=True):
            if j < 0:
                continue
            n = len(det.points)
            idx = rng.choice(n, c.n_points, replace=n < c.n_points)
            points[j, :, :3] = det.points[idx] - det.centroid
            points[j, :, 3:] = det.colors[idx]
            box[j] = [*det.centroid, *det.extent]
            present[j] = True
        return {"points": points, "box": box, "present": present}

    def forward(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        c = self.config
        pts = batch["points"].float()  # (B, N, P, 6)
        pts = torch.cat([pts[..., :3] / c.rel_scale, pts[..., 3:] - 0.5], -1)
        feat = self.point_net(pts).amax(2)  # (B, N, F): max over points (order-invariant)
        box = batch["box"].float()
        geo = torch.cat([(box[..., :3] - self.center) / c.xyz_scale, box[..., 3:] / c.rel_scale], -1)  # (B, N, 6)
        return self._tokens(feat, geo, batch["present"])  # (B, N, D)
