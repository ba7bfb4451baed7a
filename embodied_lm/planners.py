"""Planners drive an env one skill call at a time.  Baselines live here; the embodied LM plugs in
through the same registry.  A planner sees the observation and info dict; privileged baselines
(oracle) also query the env, which a learned planner never does."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import numpy as np

from sim.env import TabletopEnv


class PlannerRefusal(ValueError):
    """The planner cannot act on this instruction (say, it names an object the scene does not hold);
    the episode ends failed with this one-line reason instead of a guessed plan."""


class Planner(Protocol):
    name: str
    needs_images: bool  # False: the env may skip rendering

    @classmethod
    def run_args(cls, cfg, model=None, checkpoint: str | None = None) -> tuple[dict[str, Any], bool]:
        """(constructor kwargs, needs images) for a run config; kwargs must pickle (Ray workers build
        the planner themselves).  ``model``: a model already in this process; ``checkpoint``: its path."""
        ...

    def reset(self, env: TabletopEnv, obs: dict[str, Any], info: dict[str, Any]) -> None: ...

    def act(self, obs: dict[str, Any], info: dict[str, Any]) -> str:
        """The next skill call (or answer) as text."""
        ...


PLANNERS: dict[str, Callable[..., Planner]] = {}


def register_planner(name: str) -> Callable[[type], type]:
    def wrap(cls: type) -> type:
        if name in PLANNERS:
            raise ValueError(f"planner {name!r} is already registered")
        PLANNERS[name] = cls
        cls.name = name
        return cls

    return wrap


def planner_names() -> list[str]:
    _load_lm_planners()
    return sorted(PLANNERS)


def _load_lm_planners() -> None:
    """The LM planners import torch and transformers: load them only when asked for (keeps workers light)."""
    from embodied_lm import lm_planner  # noqa: F401  (registers embodied_lm and saycan)


def planner_class(name: str) -> type:
    if name not in PLANNERS:
        _load_lm_planners()
    if name not in PLANNERS:
        raise ValueError(f"unknown planner {name!r}; known: {', '.join(sorted(PLANNERS))}")
    return PLANNERS[name]


def make_planner(name: str, **kwargs: Any) -> Planner:
    return planner_class(name)(**kwargs)


class SeededBaseline:
    """A baseline whose only argument is ``planner.seed`` and that never looks at images."""

    needs_images = False

    @classmethod
    def run_args(cls, cfg, model=None, checkpoint=None) -> tuple[dict[str, Any], bool]:
        return {"seed": cfg.planner.seed}, False


@register_planner("oracle")
class OraclePlanner(SeededBaseline):
    """Upper bound: the task family's oracle on privileged state, re-planned every step."""

    def __init__(self, seed: int = 0):
        self.env: TabletopEnv | None = None

    def reset(self, env, obs, info) -> None:
        self.env = env

    def act(self, obs, info) -> str:
        return self.env.oracle_action()


@register_planner("random")
class RandomPlanner(SeededBaseline):
    """Lower bound: a uniformly random call among those possible now (or a random answer)."""

    def __init__(self, seed: int = 0):
        self.seed = seed
        self.rng = np.random.default_rng(seed)
        self.env: TabletopEnv | None = None

    def reset(self, env, obs, info) -> None:
        self.env = env
        # Per-episode stream: the same spec gives the same episode however episodes are scheduled.
        self.rng = np.random.default_rng([self.seed, int(info["spec"]["seed"])])

    def act(self, obs, info) -> str:
        options = self.env.valid_actions()
        return options[int(self.rng.integers(len(options)))]
