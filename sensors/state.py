"""``state``: tokens per object from its symbolic state, with a relational (graph-network edge) block.

Per-object input: kind one-hot, colour one-hot, position xyz, yaw (sin, cos), size.  What an object
rests on is deliberately NOT given: the encoder has to see it in the geometry.  Raw poses alone leave
"is something on top of X" to the LM (the known failure mode), so each object also aggregates
pairwise relative positions (dx, dy, dz, |dxy|) to every other present object through an edge MLP,
pooled by sum and max over neighbours (Battaglia et al. 2018 edge -> node update).

``pointers`` (e.g. support, top): a pair scorer over (relative position, both objects' updated states)
points each object at another object or a special (" table"); EmbodiedLM turns each pointer into a
referral token, the LM's embedding of the word pointed at -- "3" when the top of obj_1's stack is obj_3,
the digit the LM itself reads in "obj_3" -- so a plan step is a copy, not a lookup.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sensors.base import Cameras, Encoder, EncoderConfig, Obs, get_objects, get_obs, register_encoder
from sensors.layers import mlp
from skills.vocab import COLOR_NAMES, KINDS, Col

NODE_FEATURES = len(KINDS) + len(COLOR_NAMES) + 3 + 2 + 1  # 18
EDGE_FEATURES = 4  # dx, dy, dz, |dxy|


@dataclass
class StateConfig(EncoderConfig):
    hidden: int = 128
    relational: bool = True  # False: per-object MLP only (the ablation)
    xyz_center: tuple[float, float, float] = (0.5, 0.0, 0.0)  # workspace centre, metres
    xyz_scale: float = 0.1  # metres per unit for absolute positions
    rel_scale: float = 0.04  # metres per unit for relative positions: one block size -> 1.0
    tokens_per_object: int = 1  # tokens per object from the node state (the first is the colour token)
    pointers: tuple[str, ...] = ()  # relation facts answered as pointers -> referral tokens (relations.py)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.tokens_per_object < 1:
            raise ValueError(f"StateConfig.tokens_per_object must be >= 1, got {self.tokens_per_object}")
        from sensors.relations import POINTER_FACTS

        self.pointers = tuple(self.pointers)
        if not set(self.pointers) <= set(POINTER_FACTS) or len(set(self.pointers)) != len(self.pointers):
            raise ValueError(f"StateConfig.pointers must be distinct facts among {POINTER_FACTS}, "
                             f"got {list(self.pointers)}")
        if self.pointers and not self.relational:
            raise ValueError("StateConfig.pointers need the relational block (relational: true)")
        if self.hidden < 1 or self.xyz_scale <= 0 or self.rel_scale <= 0 or len(self.xyz_center) != 3:
            raise ValueError(f"StateConfig: need hidden >= 1, scales > 0, 3-vector centre; got {self}")


def object_features(objects: Tensor, center: Tensor, scale: float) -> Tensor:
    """(B, 16, 12) env object rows -> (B, 16, 18) node features (support column ignored)."""
    kind = F.one_hot(objects[..., Col.KIND].long().clamp(0, len(KINDS) - 1), len(KINDS)).float()  # (B, N, 2)
    color = F.one_hot(objects[..., Col.COLOR].long().clamp(0, len(COLOR_NAMES) - 1), len(COLOR_NAMES)).float()
    xyz = (objects[..., Col.XYZ] - center) / scale  # (B, N, 3)
    qx, qy, qz, qw = objects[..., Col.QUAT].unbind(-1)
    yaw = torch.atan2(2 * (qw * qz + qx * qy), 1 - 2 * (qy * qy + qz * qz))  # (B, N)
    size = objects[..., Col.SIZE, None] / scale  # (B, N, 1)
    return torch.cat([kind, color, xyz, yaw.sin()[..., None], yaw.cos()[..., None], size], -1)


@register_encoder("state")
class StateEncoder(Encoder):
    kind = "objects"
    reads_images = False
    config_cls = StateConfig
    relation_targets = True  # object k's tokens come from row k of obs["objects"]: the anchor loss applies
    node_inputs = NODE_FEATURES

    @property
    def tokens_per_object(self) -> int:
        return self.config.tokens_per_object

    @property
    def pointer_facts(self) -> tuple[str, ...]:
        return self.config.pointers

    def __init__(self, config: StateConfig):
        super().__init__(config)
        c = config
        self.node = mlp([self.node_inputs, c.hidden, c.hidden])
        if c.relational:
            # Edge message from neighbour j to object i: its relative position and what j is.
            self.edge = mlp([EDGE_FEATURES + c.hidden, c.hidden, c.hidden])
            self.update = mlp([3 * c.hidden, c.hidden, c.hidden])
        if c.pointers:
            from sensors.relations import POINTER_SPECIALS, SPECIALS_OF

            # Pointer of object i to object j: an MLP on (relative position, state of i, state of j), its
            # first layer split per input so that the (B, N, N, H) pair tensor is one broadcast sum.
            self.pair_rel = nn.Linear(EDGE_FEATURES, c.hidden)
            self.pair_i = nn.Linear(c.hidden, c.hidden, bias=False)
            self.pair_j = nn.Linear(c.hidden, c.hidden, bias=False)
            self.pair_out = nn.Sequential(nn.GELU(), nn.Linear(c.hidden, len(c.pointers)))
            self.special = nn.Linear(c.hidden, len(c.pointers) * len(POINTER_SPECIALS))
            allowed = [[w in SPECIALS_OF[f] for w in POINTER_SPECIALS] for f in c.pointers]  # (F, 3)
            self.register_buffer("special_allowed", torch.tensor(allowed), persistent=False)
        self.out = nn.Sequential(nn.LayerNorm(c.hidden), nn.Linear(c.hidden, c.tokens_per_object * c.dim))
        self.register_buffer("center", torch.tensor(c.xyz_center, dtype=torch.float32), persistent=False)

    def preprocess(self, obs: Obs, cameras: Cameras) -> dict[str, np.ndarray]:
        return {"objects": get_objects(obs).astype(np.float32)}

    def node_features(self, batch: dict[str, Tensor]) -> Tensor:
        """-> (B, N, node_inputs) per-object inputs."""
        return object_features(batch["objects"].float(), self.center, self.config.xyz_scale)

    def _nodes(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor, Tensor | None]:
        """(B, N, 12) rows -> node states (B, N, H), present (B, N), pair geometry (B, N, N, 4) or None."""
        c = self.config
        objects = batch["objects"].float()
        present = objects[..., Col.PRESENT] > 0.5  # (B, N)
        h = self.node(self.node_features(batch))  # (B, N, H)
        if not c.relational:
            return h, present, None
        xyz = objects[..., Col.XYZ] / c.rel_scale  # (B, N, 3)
        d = xyz[:, None, :, :] - xyz[:, :, None, :]  # (B, N_i, N_j, 3): position of j relative to i
        rel = torch.cat([d, d[..., :2].norm(dim=-1, keepdim=True)], -1)  # (B, N, N, 4)
        hj = h[:, None, :, :].expand(-1, h.shape[1], -1, -1)  # (B, N, N, H)
        e = self.edge(torch.cat([rel, hj], -1))  # (B, N, N, H)
        eye = torch.eye(h.shape[1], dtype=torch.bool, device=h.device)
        valid = (present[:, None, :] & ~eye)[..., None]  # (B, N_i, N_j, 1): other, present objects
        e_sum = (e * valid).sum(2)  # (B, N, H)
        e_max = e.masked_fill(~valid, float("-inf")).amax(2)
        e_max = torch.where(valid.any(2), e_max, torch.zeros_like(e_max))  # no neighbours -> 0
        return h + self.update(torch.cat([h, e_sum, e_max], -1)), present, rel  # (B, N, H)

    def forward(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        tokens, mask, _ = self.forward_with_pointers(batch, pointers=False)
        return tokens, mask

    def forward_with_pointers(self, batch: dict[str, Tensor], pointers: bool = True):
        """One pass -> tokens (B, N*m, D), mask (B, N*m) and, with ``pointers`` configured, pointer logits
        (B, N, F, 3 + N): per object and fact, over POINTER_SPECIALS then the objects; what a fact cannot
        point at (an absent object, "hand" for top) is -inf."""
        c = self.config
        h, present, rel = self._nodes(batch)
        B, N, _ = h.shape
        m = c.tokens_per_object
        tokens = (self.out(h) * present[..., None]).reshape(B, N * m, c.dim)  # absent objects are zero
        mask = present.repeat_interleave(m, 1)  # object-major: (B, N*m)
        if not (pointers and c.pointers):
            return tokens, mask, None
        pair = self.pair_rel(rel) + self.pair_i(h)[:, :, None] + self.pair_j(h)[:, None]  # (B, N_i, N_j, H)
        to_obj = self.pair_out(pair).permute(0, 1, 3, 2)  # (B, N_i, F, N_j)
        to_obj = to_obj.masked_fill(~present[:, None, None, :], float("-inf"))
        special = self.special(h).reshape(B, N, *self.special_allowed.shape)  # (B, N, F, 3)
        special = special.masked_fill(~self.special_allowed, float("-inf"))
        return tokens, mask, torch.cat([special, to_obj], -1)  # (B, N, F, 3 + N)


def color_features(rgb: Tensor) -> Tensor:
    """(B, N, 3) measured colours 0..1 -> (B, N, 7): rgb, chromaticity (shading-free) and log brightness."""
    total = rgb.sum(-1, keepdim=True)
    return torch.cat([rgb, rgb / total.clamp_min(1e-3), torch.log(total.clamp_min(1e-3) / 3)], -1)


@register_encoder("perceived")
class PerceivedEncoder(StateEncoder):
    """``state``'s machinery (relational block, colour anchor, referral pointers) over what a robot's
    perception gives (``sensors.perception`` on RGB-D images: ``EnvConfig.perception`` in the sim, the ROS
    bridge on a robot): per object its kind, back-projected position and size, and its *measured* mean
    colour ``obs["object_rgb"]`` -- not the perception's colour name, so the colour word is learned from
    pixels (the anchor loss) and an object of a colour the palette lacks still gets a token."""

    node_inputs = NODE_FEATURES - len(COLOR_NAMES) + 7
    store_hint = "record the demonstrations observed like a robot (collect.perception=true)"

    def preprocess(self, obs: Obs, cameras: Cameras) -> dict[str, np.ndarray]:
        if isinstance(obs, dict) and "object_rgb" not in obs:
            raise ValueError(f"obs: missing 'object_rgb' (has {sorted(obs)}): the perceived encoder plans from "
                             "perception (EnvConfig(perception=True), eval.perception=true, or a ROS robot)")
        rgb = get_obs(obs, "object_rgb", (16, 3), (np.float32, np.float64))
        return {"objects": get_objects(obs).astype(np.float32), "object_rgb": rgb.astype(np.float32)}

    def node_features(self, batch: dict[str, Tensor]) -> Tensor:
        full = super().node_features(batch)  # (B, N, 18): kind, colour one-hot, xyz, yaw, size
        k = len(KINDS)
        return torch.cat([full[..., :k], color_features(batch["object_rgb"].float()),
                          full[..., k + len(COLOR_NAMES):]], -1)  # (B, N, 15)
