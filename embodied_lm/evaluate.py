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


@dataclass
class Decide:
    """``episode_loop`` asks for the next action on ``obs``; it is sent back ``(action, planner
    seconds)`` or the planner's ``PlannerRefusal``."""

    obs: dict[str, Any]
    info: dict[str, Any]


def episode_loop(env: Embodiment, planner: Planner,
                 spec: EpisodeSpec) -> Generator[Decide | EpisodeStep, Any, EpisodeRow]:
    """One episode with the deciding left to the caller: yields a ``Decide`` for each action (send the
    answer) and an ``EpisodeStep`` once it ran (``next``); returns the episode's row.  ``planner`` is
    reset on the first observation and asked for ``episode_extra`` at the end, not to act: one caller
    (``episode_steps``) acts with it, another (``run_lockstep``) decides for many episodes at once."""
    t0 = time.perf_counter()
    obs, info = env.reset(options={"spec": spec})
    planner.reset(env, obs, info)
    plan, oks, msgs, fault_log = [], [], [], []
    planner_s, ended, physics = 0.0, False, 0
    refused = False
    while True:
        reply = yield Decide(obs, info)
        if isinstance(reply, PlannerRefusal):  # a clear failure, not a guess: no skill runs
            plan.append("refuse")
            oks.append(False)
            msgs.append(f"refused: {reply}")
            refused = True
            yield EpisodeStep(obs, "refuse", False, msgs[-1], info, None)
            break
        action, seconds = reply
        planner_s += seconds
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


def episode_steps(env: Embodiment, planner: Planner,
                  spec: EpisodeSpec) -> Generator[EpisodeStep, None, EpisodeRow]:
    """Drive one episode, yielding each step as it is decided and run (live views watch these);
    returns the episode's row.  ``run_episode`` is this generator run to its end."""
    loop = episode_loop(env, planner, spec)
    msg = next(loop)
    while True:
        if isinstance(msg, Decide):
            t = time.perf_counter()
            try:
                action = planner.act(msg.obs, msg.info)
            except PlannerRefusal as e:
                msg = loop.send(e)
                continue
            msg = loop.send((action, time.perf_counter() - t))
        else:
            yield msg
            try:
                msg = next(loop)
            except StopIteration as end:
                return end.value


def act_each(planners: Sequence[Planner], obs: Sequence[dict], infos: Sequence[dict]) -> list:
    """``run_lockstep``'s decision for planners that cannot batch: each acts alone."""
    out = []
    for p, o, i in zip(planners, obs, infos):
        try:
            out.append(p.act(o, i))
        except PlannerRefusal as e:
            out.append(e)
    return out


def run_lockstep(envs: Sequence[Embodiment], planners: Sequence[Planner], specs: Sequence[EpisodeSpec],
                 act_batch, record: bool = False) -> tuple[list[EpisodeRow], list | None]:
    """Episodes ``specs`` side by side, episode i in ``envs[i]`` with ``planners[i]``: each round, every
    episode still running is decided in one call ``act_batch(planners, obs, infos)`` (a list of actions
    or ``PlannerRefusal``s, e.g. ``EmbodiedLMPlanner.act_batch``) and its step run.  Each episode's row is
    what ``run_episode`` gives for it alone (its planner seconds: its share of each batch); with
    ``record``, also each episode as ``run_episode`` records it (spec order)."""
    loops = [episode_loop(e, p, s) for e, p, s in zip(envs, planners, specs)]
    frames: list[list] = [[] for _ in specs]
    rows: list[EpisodeRow | None] = [None] * len(specs)
    asks = {i: next(loop) for i, loop in enumerate(loops)}  # episode -> its open Decide
    while asks:
        order = sorted(asks)
        t = time.perf_counter()
        replies = act_batch([planners[i] for i in order], [asks[i].obs for i in order],
                            [asks[i].info for i in order])
        share = (time.perf_counter() - t) / len(order)
        for i, reply in zip(order, replies):
            step = loops[i].send(reply if isinstance(reply, PlannerRefusal) else (reply, share))
            frames[i].append(step.obs)
            try:
                asks[i] = next(loops[i])
            except StopIteration as end:
                rows[i] = end.value
                del asks[i]
    return rows, [_to_record(f, r) for f, r in zip(frames, rows)] if record else None


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
             progress: bool = True, batch: int = 1, make_env=None) -> list[EpisodeRow]:
    """Every spec in order.  ``batch`` > 1 (with ``make_env`` for the extra envs): runs of ``batch``
    consecutive specs go side by side (``run_lockstep``), the planner's steps decided together where
    it can (``act_batch``: the embodied LM decodes them in one batch); rows are the same."""
    rows = []
    bar = tqdm(total=len(specs), desc=f"eval {planner.name}", unit="ep", disable=not progress, dynamic_ncols=True)
    n_ok = 0
    if batch > 1 and (make_env is None or not hasattr(planner, "spawn")):
        batch = 1
    envs, planners = [env], [planner]
    try:
        for start in range(0, len(specs), batch):
            group = specs[start:start + batch]
            if batch == 1:
                done = [run_episode(env, planner, group[0], recorder)]
            else:
                while len(envs) < len(group):
                    envs.append(make_env())
                    planners.append(planner.spawn())
                done, episodes = run_lockstep(envs, planners, group, getattr(planner, "act_batch", act_each),
                                              record=recorder is not None)
                for episode in episodes or ():
                    recorder.append(episode)
            for row in done:
                rows.append(row)
                n_ok += row.success
            bar.update(len(done))
            bar.set_postfix(success=f"{n_ok / len(rows):.0%}", refresh=False)
    finally:
        bar.close()
        for e in envs[1:]:
            e.close()
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
