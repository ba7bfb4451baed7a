"""What ``experiments/run.py`` dispatches to: evaluate a planner on the task suite, write results."""

from __future__ import annotations

import contextlib
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from embodied_lm.config import RunConfig
from embodied_lm.evaluate import evaluate
from embodied_lm.planners import make_planner
from embodied_lm.results import build_results, format_table, plot_results, versions, write_results
from sim.env import EnvConfig, TabletopEnv
from sim.tasks import EpisodeSpec, generate_specs, load_specs
from sim.world import WorldConfig


def make_env(cfg: RunConfig, observe_images: bool) -> TabletopEnv:
    w = cfg.task.world
    world = WorldConfig(image_size=tuple(w.image_size), cameras=tuple(w.cameras), renderer=w.renderer)
    families = tuple(cfg.task.families) or None
    return TabletopEnv(EnvConfig(families=families, world=world, skills=dict(cfg.task.skills),
                                 observe_images=observe_images))


def eval_specs(cfg: RunConfig) -> list[EpisodeSpec]:
    if cfg.eval.spec:
        return load_specs(cfg.eval.spec)
    families = cfg.eval.families or cfg.task.families or None
    return generate_specs(families, cfg.eval.levels, cfg.eval.episodes, cfg.seed, cfg.eval.split)


def store_attrs(env: TabletopEnv, cfg_dict: dict[str, Any]) -> dict[str, Any]:
    world = env.world
    return {
        "versions": versions(),
        "cameras": {cam: world.camera_params(cam) for cam in env.config.world.cameras},
        "renderer": env.config.world.renderer,
        "time_step": env.config.world.time_step,
        "env_config": cfg_dict,
    }


def run_eval(cfg: RunConfig, cfg_dict: dict[str, Any], run_dir: Path) -> Path:
    specs = eval_specs(cfg)  # validated before anything runs
    planner = make_planner(cfg.planner.name, seed=cfg.planner.seed)
    env = make_env(cfg, observe_images=planner.needs_images or bool(cfg.record))
    with contextlib.ExitStack() as stack:
        recorder = None
        if cfg.record:
            from embodied_lm.datasets import ReplayWriter

            recorder = stack.enter_context(ReplayWriter(cfg.record, attrs=store_attrs(env, cfg_dict)))
        t0 = time.perf_counter()
        rows = evaluate(env, planner, specs, recorder, progress=cfg.eval.progress)
        eval_s = time.perf_counter() - t0
    env.close()
    n_steps = sum(r.steps for r in rows)
    timing = {"collect_s": 0.0, "train_s": 0.0, "eval_s": round(eval_s, 2),
              "planner_ms_per_step": round(sum(r.planner_ms * r.steps for r in rows) / max(n_steps, 1), 3),
              "sim_steps_per_s": round(sum(r.physics_steps for r in rows) / max(eval_s, 1e-9), 1)}
    results = build_results(cfg.task.name, cfg.planner.name, cfg_dict, rows, timing)
    path = write_results(run_dir, results, rows)
    plot_results({cfg.planner.name: results}, run_dir / "success.png")
    print(format_table(results["families"]))
    print(f"summary: success {results['summary']['success_rate']:.1%} over {len(rows)} episodes "
          f"in {eval_s:.0f} s" + (f"; recorded to {cfg.record}" if cfg.record else ""))
    return path


def run(cfg: RunConfig, cfg_dict: dict[str, Any], run_dir: str | Path) -> Path:
    """Entry point behind experiments/run.py; returns the results.json path."""
    return run_eval(cfg, cfg_dict or asdict(cfg), Path(run_dir))
