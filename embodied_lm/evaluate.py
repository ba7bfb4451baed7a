"""Closed-loop evaluation: run specs with a planner in the env, optionally record to zarr, and
aggregate success by family × level."""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Generator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from tqdm import tqdm

from embodied_lm.planners import Planner, PlannerRefusal
from sim.tasks import FAMILIES, EpisodeSpec
from skills.embodiment import Embodiment


@dataclass
class EpisodeRow:
    """One evaluated episode (a line of episodes.jsonl)."""

    spec: dict[str, Any]
    instruction: str
    plan: list[str]
    skill_success: list[bool]
    messages: list[str]
    success: bool  # the family's success predicate at the end (answer correctness for questions)
    plan_success: bool  # ended by the planner and every step was a valid, possible call
    steps: int
    sim_time: float
    planner_ms: float  # mean per step
    wall_s: float
    physics_steps: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class EpisodeStep:
    """One decided step of an episode, as ``episode_steps`` yields it."""

    obs: dict[str, Any]  # what the planner acted on
    action: str  # the skill call, or "refuse" when the planner refused (no skill ran)
    ok: bool
    message: str
    info: dict[str, Any]  # the env's info after the step (the previous info for a refusal)
    next_obs: dict[str, Any] | None  # the observation after the step; None for a refusal


def episode_steps(env: Embodiment, planner: Planner,
                  spec: EpisodeSpec) -> Generator[EpisodeStep, None, EpisodeRow]:
    """Drive one episode, yielding each step as it is decided and run (live views watch these);
    returns the episode's row.  ``run_episode`` is this generator run to its end."""
    t0 = time.perf_counter()
    obs, info = env.reset(options={"spec": spec})
    planner.reset(env, obs, info)
    plan, oks, msgs, fault_log = [], [], [], []
    planner_s, ended, physics = 0.0, False, 0
    refused = False
    while True:
        t = time.perf_counter()
        try:
            action = planner.act(obs, info)
        except PlannerRefusal as e:  # a clear failure, not a guess: no skill runs
            plan.append("refuse")
            oks.append(False)
            msgs.append(f"refused: {e}")
            refused = True
            yield EpisodeStep(obs, "refuse", False, msgs[-1], info, None)
            break
        planner_s += time.perf_counter() - t
        prev = obs
        obs, _, terminated, truncated, info = env.step(action)
        plan.append(action)
        oks.append(bool(info["skill_success"]))
        msgs.append(info["message"])
        fault_log.append(info.get("fault"))
        physics += int(info.get("physics_steps", 0))
        yield EpisodeStep(prev, action, oks[-1], msgs[-1], info, obs)
        if terminated or truncated:
            ended = terminated
            break
    success = bool(info.get("success", False)) and not refused  # reset info has no verdict yet
    plan_ok = ended and all(oks)
    if FAMILIES[spec.task].kind == "question":
        plan_ok = plan_ok and success
    extra = planner.episode_extra() if hasattr(planner, "episode_extra") else {}
    faults = [f"{a}: {i}" for a, i in zip(plan, fault_log) if i]
    extra |= {"faults": faults} if faults else {}
    return EpisodeRow(spec.to_dict(), info["instruction"], plan, oks, msgs, success, plan_ok, len(plan),
                      round(float(info["sim_time"]), 3), 1000 * planner_s / max(len(plan), 1),
                      time.perf_counter() - t0, physics, extra)


def run_episode(env: Embodiment, planner: Planner, spec: EpisodeSpec, recorder=None) -> EpisodeRow:
    """Drive one episode through any ``Embodiment`` (sim env or ROS bridge)."""
    steps = episode_steps(env, planner, spec)
    frames = []
    while True:
        try:
            step = next(steps)
        except StopIteration as end:
            row = end.value
            break
        if recorder is not None:  # the frame each step (a skill, or a refusal) started from
            frames.append(step.obs)
    if recorder is not None:
        recorder.append(_to_record(frames, row))
    return row


def _to_record(frames: list[dict[str, Any]], row: EpisodeRow):
    """Buffer a whole episode as one zarr Episode (time-first arrays)."""
    from embodied_lm.datasets import Episode

    data = {k: np.stack([f[k] for f in frames]) for k in frames[0] if k != "instruction"}
    data["action"] = np.array(row.plan, dtype=str)
    data["skill_success"] = np.array(row.skill_success, dtype=bool)
    spec = row.spec
    meta = {"task": spec["task"], "params": spec["params"], "seed": spec["seed"],
            "instruction": row.instruction, "plan": "\n".join(row.plan), "success": row.success,
            "n_objects": spec["n_objects"], "level": spec["level"], "refer": spec["refer"]}
    return Episode(data=data, meta=meta)


def evaluate(env: Embodiment, planner: Planner, specs: Sequence[EpisodeSpec], recorder=None,
             progress: bool = True) -> list[EpisodeRow]:
    rows = []
    bar = tqdm(specs, desc=f"eval {planner.name}", unit="ep", disable=not progress, dynamic_ncols=True)
    n_ok = 0
    for spec in bar:
        row = run_episode(env, planner, spec, recorder)
        rows.append(row)
        n_ok += row.success
        bar.set_postfix(success=f"{n_ok / len(rows):.0%}", refresh=False)
    return rows


def summarize(rows: Sequence[EpisodeRow]) -> tuple[dict[str, dict[str, dict[str, Any]]], dict[str, Any]]:
    """Per family × level cells (results.json ``families``) and the overall summary."""
    cells: dict[tuple[str, str], list[EpisodeRow]] = defaultdict(list)
    for r in rows:
        cells[(r.spec["task"], r.spec["level"])].append(r)
    families: dict[str, dict[str, dict[str, Any]]] = defaultdict(dict)
    for (fam, level), rs in sorted(cells.items()):
        families[fam][level] = {
            "episodes": len(rs),
            "success_rate": round(float(np.mean([r.success for r in rs])), 4),
            "plan_success_rate": round(float(np.mean([r.plan_success for r in rs])), 4),
            "mean_steps": round(float(np.mean([r.steps for r in rs])), 2),
        }
    by_n: dict[str, dict[str, list[bool]]] = defaultdict(lambda: defaultdict(list))
    for r in rows:
        by_n[r.spec["task"]][str(r.spec["n_objects"])].append(r.success)
    summary = {"success_rate": round(float(np.mean([r.success for r in rows])), 4) if rows else 0.0,
               "episodes": len(rows),
               "success_by_n_objects": {f: {n: round(float(np.mean(v)), 4) for n, v in sorted(d.items())}
                                        for f, d in sorted(by_n.items())}}
    return dict(families), summary


def row_dict(row: EpisodeRow) -> dict[str, Any]:
    return asdict(row)
