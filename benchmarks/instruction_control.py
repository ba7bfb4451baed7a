"""Does the planner read the instruction?  p2_stack scenes, each run three times on the same scene:

* ``as written``: the generated instruction (success: the tower stands in the named order);
* ``reversed``: the instruction names the order reversed (success judged against the reversed order),
  so a planner that reads the instruction builds the other tower in the very same scene;
* ``vague``: "Stack some blocks." (success judged against the generated order): a planner that reads
  the instruction cannot beat the ``floor``, the scenes that already stand in that order before any
  step.

A planner that ignores the instruction (the oracle reads the spec's params) scores 100 % as written,
~0 % reversed and 100 % vague; tests/test_tasks.py checks exactly that, so the control can fail.

Run::

    .venv/bin/python -m benchmarks.instruction_control --checkpoint outputs/.../checkpoint --json out.json
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace

import numpy as np
from tqdm import tqdm

from embodied_lm.evaluate import run_episode
from sim.env import EnvConfig, TabletopEnv
from sim.tasks import build_episode, generate_specs

VAGUE = "Stack some blocks."


def reversed_instruction(env: TabletopEnv, spec) -> str:
    """The instruction the generator writes for the reversed order (colour references: the text does
    not depend on the scene's object names)."""
    return build_episode(env.world, replace(spec, params={"order": spec.params["order"][::-1]})).instruction


def _stands_in(env: TabletopEnv, order: list[str]) -> bool:
    ep = env.episode
    judged = replace(ep, spec=replace(ep.spec, params={"order": order}))
    return ep.family.success(judged, env.world.object_infos(), env.world.robot.held(), None)


def run_control(planner, episodes: int = 50, seed: int = 0, progress: bool = True) -> dict:
    """Success rates as written / reversed / vague and the vague floor, over ``episodes`` L1 test scenes."""
    specs = generate_specs(["p2_stack"], ["L1"], episodes, seed, "test", refer="color")
    env = TabletopEnv(EnvConfig(observe_images=False))
    out = {k: [] for k in ("as_written", "reversed", "vague", "floor")}
    try:
        for spec in tqdm(specs, desc="instruction control", disable=not progress):
            order = spec.params["order"]
            out["as_written"].append(run_episode(env, planner, spec).success)
            rev = replace(spec, instruction=reversed_instruction(env, spec))
            row = run_episode(env, planner, rev)
            out["reversed"].append(_stands_in(env, order[::-1]) and row.plan[-1:] != ["refuse"])
            env.reset(options={"spec": spec})
            out["floor"].append(env.success())  # already standing in the named order
            out["vague"].append(run_episode(env, planner, replace(spec, instruction=VAGUE)).success)
    finally:
        env.close()
    return {k: round(float(np.mean(v)), 4) for k, v in out.items()} | {"episodes": len(specs)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--episodes", type=int, default=50)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    import torch

    from embodied_lm.planners import make_planner

    torch.set_num_threads(args.threads)
    planner = make_planner("embodied_lm", checkpoint=args.checkpoint)
    res = run_control(planner, args.episodes)
    print(f"p2_stack L1, {res['episodes']} test scenes, colour references: as written {res['as_written']:.0%}, "
          f"order reversed {res['reversed']:.0%}, \"{VAGUE}\" {res['vague']:.0%} (floor {res['floor']:.0%})")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"checkpoint": args.checkpoint, **res}, f, indent=2)


if __name__ == "__main__":
    main()
