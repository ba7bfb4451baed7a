"""``object``: object-centric tokens from one camera: a small conv backbone over RGB(+depth), then
masked average pooling of the feature map inside each object's segmentation mask (``mask_<cam>`` == k
for obj_k), plus mask geometry (visible flag, pixel centroid, sqrt area, world centroid from depth).

The masks are the simulator's ground truth here; on a real robot any instance segmenter that labels
pixels 1..16 feeds the same code.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sensors.base import (
    Cameras,
    ImageConfig,
    Obs,
    PooledObjectEncoder,
    get_objects,
    image_check,
    register_encoder,
    rgbd,
)
from sensors.segmentation import backproject
from skills.vocab import MAX_OBJECTS, Col

GEO_FEATURES = 7  # visible, u, v, sqrt(area), world x, y, z


@dataclass
class ObjectConfig(ImageConfig):
    camera: str = "front"  # sees the sides of towers (the top camera sees only each tower's top block)
    use_depth: bool = True
    channels: tuple[int, ...] = (32, 64, 64)  # conv widths; the first two convs stride 2 -> H/4 x W/4 map
    hidden: int = 128
    depth_center: float = 1.0  # metres; depth is fed as (d - center) / scale
    depth_scale: float = 0.3
    xyz_center: tuple[float, float, float] = (0.5, 0.0, 0.0)
    xyz_scale: float = 0.1

    def __post_init__(self) -> None:
        super().__post_init__()
        if len(self.channels) < 2 or min(self.channels) < 1 or self.hidden < 1:
            raise ValueError(f"ObjectConfig: need >= 2 positive conv widths and hidden >= 1, got {self}")
        if self.depth_scale <= 0 or self.xyz_scale <= 0:
            raise ValueError("ObjectConfig: depth_scale and xyz_scale must be > 0")
        self.channels = tuple(int(c) for c in self.channels)


@register_encoder("object")
class ObjectEncoder(PooledObjectEncoder):
    config_cls = ObjectConfig

    def __init__(self, config: ObjectConfig):
        super().__init__(config)
        c = config
        layers: list[nn.Module] = []
        cin = 4 if c.use_depth else 3
        for i, cout in enumerate(c.channels):
            stride = 2 if i < 2 else 1
            layers += [nn.Conv2d(cin, cout, 3, stride=stride, padding=1), nn.GroupNorm(1, cout), nn.GELU()]
            cin = cout
        self.backbone = nn.Sequential(*layers)  # (B, C, H/4, W/4)
        self._build_head(c.channels[-1] + GEO_FEATURES)

    def preprocess(self, obs: Obs, cameras: Cameras) -> dict[str, np.ndarray]:
        c = self.config
        rgb, depth, K, T = rgbd(obs, c, cameras)
        mask = image_check(obs, c, f"mask_{c.camera}")
        h, w = c.image_size
        world = backproject(depth, K, T)  # (H, W, 3)
        geo = np.zeros((MAX_OBJECTS, GEO_FEATURES), np.float32)
        v, u = np.mgrid[0:h, 0:w]
        for k in np.unique(mask):
            if not 1 <= k <= MAX_OBJECTS:
                continue
            sel = mask == k
            xyz = (world[sel].mean(0) - np.asarray(c.xyz_center)) / c.xyz_scale
            geo[k - 1] = [1.0, u[sel].mean() / w, v[sel].mean() / h, np.sqrt(sel.mean()), *xyz]
        if "objects" in obs:  # every existing object gets a token, visible or not (flag in geo[:, 0])
            present = get_objects(obs)[:, Col.PRESENT] > 0.5
        else:
            present = geo[:, 0] > 0
        return {"rgb": np.ascontiguousarray(rgb), "depth": depth.astype(np.float32),
                "mask": mask.astype(np.int16), "geo": geo, "present": present}

    def forward(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        c = self.config
        x = batch["rgb"].permute(0, 3, 1, 2).float() / 255.0 - 0.5  # (B, 3, H, W)
        if c.use_depth:
            d = ((batch["depth"].float() - c.depth_center) / c.depth_scale).clamp(-3, 3)
            x = torch.cat([x, d[:, None]], 1)  # (B, 4, H, W)
        f = self.backbone(x)  # (B, C, h, w)
        ids = torch.arange(1, MAX_OBJECTS + 1, device=x.device).view(1, -1, 1, 1)
        onehot = (batch["mask"][:, None].long() == ids).float()  # (B, N, H, W)
        wts = F.adaptive_avg_pool2d(onehot, f.shape[-2:])  # (B, N, h, w): fraction of each cell on object k
        pooled = torch.einsum("bnhw,bchw->bnc", wts, f) / wts.sum((2, 3)).clamp_min(1e-6)[..., None]  # (B, N, C)
        return self._tokens(pooled, batch["geo"].float(), batch["present"])
