"""Small building blocks (nanoGPT style): MLP, self-attention block, learned-query attention pooling."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def mlp(sizes: list[int], act: type[nn.Module] = nn.GELU) -> nn.Sequential:
    """Linear layers with ``act`` between them (none after the last)."""
    layers: list[nn.Module] = []
    for i in range(len(sizes) - 1):
        layers.append(nn.Linear(sizes[i], sizes[i + 1]))
        if i < len(sizes) - 2:
            layers.append(act())
    return nn.Sequential(*layers)


class Attention(nn.Module):
    """Multi-head attention; queries from ``x``, keys/values from ``ctx`` (self-attention if None)."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        assert dim % heads == 0, "dim must be divisible by heads"
        self.heads = heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor, ctx: Tensor | None = None) -> Tensor:
        ctx = x if ctx is None else ctx
        B, T, D = x.shape
        S = ctx.shape[1]
        q = self.q(x).view(B, T, self.heads, D // self.heads).transpose(1, 2)  # (B, h, T, d)
        k, v = self.kv(ctx).view(B, S, 2, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)  # (B, h, S, d)
        y = F.scaled_dot_product_attention(q, k, v)  # (B, h, T, d)
        return self.proj(y.transpose(1, 2).reshape(B, T, D))  # (B, T, D)


class Block(nn.Module):
    """Pre-LN transformer block."""

    def __init__(self, dim: int, heads: int, mlp_ratio: int = 4):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = Attention(dim, heads)
        self.mlp = mlp([dim, mlp_ratio * dim, dim])

    def forward(self, x: Tensor) -> Tensor:  # (B, T, D) -> (B, T, D)
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class AttentionPool(nn.Module):
    """k learned queries cross-attend to the tokens: (B, T, D) -> (B, k, D) (Perceiver/Flamingo resampler)."""

    def __init__(self, dim: int, heads: int, k: int):
        super().__init__()
        self.queries = nn.Parameter(0.02 * torch.randn(1, k, dim))
        self.ln_q, self.ln_x = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = Attention(dim, heads)
        self.mlp = mlp([dim, 4 * dim, dim])
        self.ln_out = nn.LayerNorm(dim)

    def forward(self, x: Tensor) -> Tensor:
        q = self.queries.expand(x.shape[0], -1, -1)  # (B, k, D)
        q = q + self.attn(self.ln_q(q), self.ln_x(x))  # (B, k, D)
        return q + self.mlp(self.ln_out(q))
