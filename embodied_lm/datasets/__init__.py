"""Trajectory datasets: crash-safe zarr replay store (writer, reader, torch dataset)."""

from embodied_lm.datasets.zarr_store import (
    FORMAT_VERSION,
    LAYOUT,
    Episode,
    InvalidStoreError,
    ReplayReader,
    ReplayWriter,
    StepDataset,
    StoreLockedError,
)

__all__ = [
    "FORMAT_VERSION",
    "LAYOUT",
    "Episode",
    "InvalidStoreError",
    "ReplayReader",
    "ReplayWriter",
    "StepDataset",
    "StoreLockedError",
]
