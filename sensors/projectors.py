"""Projectors from an encoder's token width into the LM's embedding width (PaLM-E's affine map)."""

from __future__ import annotations

from torch import nn


def build_projector(kind: str, in_dim: int, out_dim: int) -> nn.Module:
    """``"linear"``: one affine map; ``"mlp"``: Linear -> GELU -> Linear (LLaVA-1.5 style)."""
    if in_dim < 1 or out_dim < 1:
        raise ValueError(f"projector dims must be positive, got in_dim={in_dim}, out_dim={out_dim}")
    if kind == "linear":
        return nn.Linear(in_dim, out_dim)
    if kind == "mlp":
        return nn.Sequential(nn.Linear(in_dim, out_dim), nn.GELU(), nn.Linear(out_dim, out_dim))
    raise ValueError(f"unknown projector kind {kind!r}; known: 'linear', 'mlp'")
