"""Trajectory datasets: crash-safe zarr replay store (writer, reader, torch dataset)."""

from embodied_lm.datasets.zarr_store import *  # noqa: F403 -- its public names, listed once, in its __all__
from embodied_lm.datasets.zarr_store import __all__  # noqa: F401
