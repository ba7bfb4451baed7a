"""The one interface a planner drives: the PyBullet env (``sim.env.TabletopEnv``) and the ROS bridge both
implement it, so the planner never knows which one it runs on.

It is gymnasium's ``reset``/``step`` with a text action (one skill call).  ``info`` must carry
``skill_success`` (bool), ``message`` (str), ``success`` (the task predicate, bool) and ``sim_time``
(robot seconds); ``spec`` and ``instruction`` after reset.
"""

from __future__ import annotations

from typing import Any, Protocol


class Embodiment(Protocol):
    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None
              ) -> tuple[dict[str, Any], dict[str, Any]]:
        """Start an episode; ``options={"spec": EpisodeSpec | dict}`` replays a given episode."""
        ...

    def step(self, action: str) -> tuple[dict[str, Any], float, bool, bool, dict[str, Any]]:
        """Execute one skill call (text).  Bad calls are failed steps, never exceptions."""
        ...

    def oracle_action(self) -> str:
        """Privileged next call (sim, or a sim-backed robot); real robots raise NotImplementedError."""
        ...

    def valid_actions(self) -> list[str]:
        """Skill calls that are well-formed and possible now."""
        ...

    def close(self) -> None: ...
