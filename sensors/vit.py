"""``vit``: a small Vision Transformer over one camera's RGB -> image tokens for ``<img>``."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from sensors.base import Cameras, Encoder, ImageConfig, Obs, image_check, register_encoder
from sensors.layers import AttentionPool, Block


@dataclass
class ViTConfig(ImageConfig):
    patch: int = 16
    depth: int = 4
    heads: int = 4
    mlp_ratio: int = 4
    pool_tokens: int = 0  # 0: every patch is a token; k > 0: learned-query attention pooling to k tokens

    def __post_init__(self) -> None:
        super().__post_init__()
        h, w = self.image_size
        if self.patch < 1 or h % self.patch or w % self.patch:
            raise ValueError(f"ViTConfig.patch={self.patch} must divide image_size {self.image_size}")
        if self.depth < 0 or self.heads < 1 or self.dim % self.heads:
            raise ValueError(f"ViTConfig: need depth >= 0 and dim ({self.dim}) divisible by heads ({self.heads})")
        if self.pool_tokens < 0:
            raise ValueError(f"ViTConfig.pool_tokens must be >= 0, got {self.pool_tokens}")


@register_encoder("vit")
class ViTEncoder(Encoder):
    kind = "image"
    config_cls = ViTConfig

    def __init__(self, config: ViTConfig):
        super().__init__(config)
        c = config
        h, w = c.image_size
        self.n_patches = (h // c.patch) * (w // c.patch)
        self.patch_embed = nn.Conv2d(3, c.dim, kernel_size=c.patch, stride=c.patch)  # non-overlapping patches
        self.pos = nn.Parameter(0.02 * torch.randn(1, self.n_patches, c.dim))
        self.blocks = nn.ModuleList(Block(c.dim, c.heads, c.mlp_ratio) for _ in range(c.depth))
        self.ln_f = nn.LayerNorm(c.dim)
        self.pool = AttentionPool(c.dim, c.heads, c.pool_tokens) if c.pool_tokens else None
        self.register_buffer("mean", torch.tensor([0.5, 0.5, 0.5]).view(1, 3, 1, 1), persistent=False)

    @property
    def num_tokens(self) -> int:
        return self.config.pool_tokens or self.n_patches

    def preprocess(self, obs: Obs, cameras: Cameras) -> dict[str, np.ndarray]:
        rgb = image_check(obs, self.config, f"rgb_{self.config.camera}")
        return {"rgb": np.ascontiguousarray(rgb)}  # (H, W, 3) uint8: 4x smaller than float until forward

    def forward(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        x = batch["rgb"].permute(0, 3, 1, 2).float() / 255.0 - self.mean  # (B, 3, H, W)
        x = self.patch_embed(x).flatten(2).transpose(1, 2) + self.pos  # (B, T, D)
        for blk in self.blocks:
            x = blk(x)
        x = self.ln_f(x)  # (B, T, D)
        if self.pool is not None:
            x = self.pool(x)  # (B, k, D)
        return x, torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)
