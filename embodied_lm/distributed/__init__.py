"""Ray-based parallel rollouts (evaluation and demonstration collection); see README.md here.

Importing this package does not import Ray; the names below load ``rollouts`` (and Ray) on first use.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "Dispatch",
    "EpisodeRunner",
    "EpisodeSeeded",
    "RolloutError",
    "RolloutWorker",
    "episode_planner",
    "init_ray",
    "row_trace",
    "run_parallel",
]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from embodied_lm.distributed import rollouts

        return getattr(rollouts, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
