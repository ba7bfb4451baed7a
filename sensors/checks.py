"""Input checks with one-line messages (numpy only)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


def check_array(name: str, a: Any, shape: Sequence[int | None], dtypes: Sequence[Any]) -> np.ndarray:
    """``a`` must be an ndarray of ``shape`` (None = any size) and one of ``dtypes``."""
    want = "(" + ", ".join("N" if s is None else str(s) for s in shape) + (",)" if len(shape) == 1 else ")")
    kinds = "/".join(np.dtype(d).name for d in dtypes)
    if not isinstance(a, np.ndarray):
        raise ValueError(f"{name}: expected {want} {kinds} array, got {type(a).__name__}")
    ok_shape = a.ndim == len(shape) and all(s is None or s == d for s, d in zip(shape, a.shape, strict=False))
    if not ok_shape or a.dtype not in [np.dtype(d) for d in dtypes]:
        raise ValueError(f"{name}: expected {want} {kinds}, got {tuple(a.shape)} {a.dtype}")
    return a
