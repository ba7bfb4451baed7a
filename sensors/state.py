"""``state``: one token per object from its symbolic state, with a relational (graph-network edge) block.

Per-object input: kind one-hot, colour one-hot, position xyz, yaw (sin, cos), size.  What an object
rests on is deliberately NOT given: the encoder has to see it in the geometry.  Raw poses alone leave
"is something on top of X" to the LM (the known failure mode), so each object also aggregates
pairwise relative positions (dx, dy, dz, |dxy|) to every other present object through an edge MLP,
pooled by sum and max over neighbours (Battaglia et al. 2018 edge -> node update).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sensors.base import (
    COLOR_NAMES,
    KINDS,
    MAX_OBJECTS,
    OBJECT_FEATURES,
    Cameras,
    Encoder,
    EncoderConfig,
    Obs,
    get_obs,
    register_encoder,
)
from sensors.layers import mlp

NODE_FEATURES = len(KINDS) + len(COLOR_NAMES) + 3 + 2 + 1  # 18
EDGE_FEATURES = 4  # dx, dy, dz, |dxy|


@dataclass
class StateConfig(EncoderConfig):
    hidden: int = 128
    relational: bool = True  # False: per-object MLP only (the ablation)
    xyz_center: tuple[float, float, float] = (0.5, 0.0, 0.0)  # workspace centre, metres
    xyz_scale: float = 0.1  # metres per unit for absolute positions
    rel_scale: float = 0.04  # metres per unit for relative positions: one block size -> 1.0
    tokens_per_object: int = 1  # 4 = one token per relation fact (sensors/relations.py), for the anchor loss

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.tokens_per_object < 1:
            raise ValueError(f"StateConfig.tokens_per_object must be >= 1, got {self.tokens_per_object}")
        if self.hidden < 1 or self.xyz_scale <= 0 or self.rel_scale <= 0 or len(self.xyz_center) != 3:
            raise ValueError(f"StateConfig: need hidden >= 1, scales > 0, 3-vector centre; got {self}")


def object_features(objects: Tensor, center: Tensor, scale: float) -> Tensor:
    """(B, 16, 12) env object rows -> (B, 16, 18) node features (support column ignored)."""
    kind = F.one_hot(objects[..., 1].long().clamp(0, len(KINDS) - 1), len(KINDS)).float()  # (B, N, 2)
    color = F.one_hot(objects[..., 2].long().clamp(0, len(COLOR_NAMES) - 1), len(COLOR_NAMES)).float()
    xyz = (objects[..., 3:6] - center) / scale  # (B, N, 3)
    qx, qy, qz, qw = objects[..., 6:10].unbind(-1)
    yaw = torch.atan2(2 * (qw * qz + qx * qy), 1 - 2 * (qy * qy + qz * qz))  # (B, N)
    size = objects[..., 11:12] / scale  # (B, N, 1)
    return torch.cat([kind, color, xyz, yaw.sin()[..., None], yaw.cos()[..., None], size], -1)


@register_encoder("state")
class StateEncoder(Encoder):
    kind = "objects"
    config_cls = StateConfig
    relation_targets = True  # object k's tokens come from row k of obs["objects"]: the anchor loss applies

    @property
    def tokens_per_object(self) -> int:
        return self.config.tokens_per_object

    def __init__(self, config: StateConfig):
        super().__init__(config)
        c = config
        self.node = mlp([NODE_FEATURES, c.hidden, c.hidden])
        if c.relational:
            # Edge message from neighbour j to object i: its relative position and what j is.
            self.edge = mlp([EDGE_FEATURES + c.hidden, c.hidden, c.hidden])
            self.update = mlp([3 * c.hidden, c.hidden, c.hidden])
        self.out = nn.Sequential(nn.LayerNorm(c.hidden), nn.Linear(c.hidden, c.tokens_per_object * c.dim))
        self.register_buffer("center", torch.tensor(c.xyz_center, dtype=torch.float32), persistent=False)

    def preprocess(self, obs: Obs, cameras: Cameras) -> dict[str, np.ndarray]:
        objects = get_obs(obs, "objects", (MAX_OBJECTS, OBJECT_FEATURES), (np.float32, np.float64))
        return {"objects": objects.astype(np.float32)}

    def forward(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        c = self.config
        objects = batch["objects"].float()  # (B, N, 12)
        present = objects[..., 0] > 0.5  # (B, N)
        h = self.node(object_features(objects, self.center, c.xyz_scale))  # (B, N, H)
        if c.relational:
            xyz = objects[..., 3:6] / c.rel_scale  # (B, N, 3)
            d = xyz[:, None, :, :] - xyz[:, :, None, :]  # (B, N_i, N_j, 3): position of j relative to i
            rel = torch.cat([d, d[..., :2].norm(dim=-1, keepdim=True)], -1)  # (B, N, N, 4)
            hj = h[:, None, :, :].expand(-1, h.shape[1], -1, -1)  # (B, N, N, H)
            e = self.edge(torch.cat([rel, hj], -1))  # (B, N, N, H)
            eye = torch.eye(h.shape[1], dtype=torch.bool, device=h.device)
            valid = (present[:, None, :] & ~eye)[..., None]  # (B, N_i, N_j, 1): other, present objects
            e_sum = (e * valid).sum(2)  # (B, N, H)
            e_max = e.masked_fill(~valid, float("-inf")).amax(2)
            e_max = torch.where(valid.any(2), e_max, torch.zeros_like(e_max))  # no neighbours -> 0
            h = h + self.update(torch.cat([h, e_sum, e_max], -1))  # (B, N, H)
        B, N, _ = h.shape
        m = c.tokens_per_object
        tokens = self.out(h) * present[..., None]  # (B, N, m*D); absent objects are zero
        return tokens.reshape(B, N * m, c.dim), present.repeat_interleave(m, 1)  # object-major: (B, N*m, D)
