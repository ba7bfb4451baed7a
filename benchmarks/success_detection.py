"""Closed loop with injected faults: does success detection save the episodes a silent fault breaks?

The same specs run with the same checkpoint in each arm (``--arms``): ``decode.detect`` off and on, and
``reports`` (no judge; a skill the robot itself reports failed — a refused call — is replanned and barred
like one judged failed).  ``--embodiment ros``
(default): the sim-backed robot endpoint injects the faults and reports every faulted skill as a success
(a gripper that cannot sense a dropped block), the bridge's perception names the objects, and only the
planner's own question "Was <call> successful?" over the observations before and after can notice.
``--embodiment sim``: the same faults in-process (the planner ignores the env's verdict either way).

Run::

    .venv/bin/python -m benchmarks.success_detection --checkpoint outputs/.../checkpoint \\
        --fault drop=0.3 --episodes 20 --json out.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import time
from collections import defaultdict

import numpy as np

from embodied_lm.evaluate import evaluate, row_dict
from embodied_lm.lm_planner import EmbodiedLMPlanner
from embodied_lm.results import versions
from sim.env import EnvConfig, TabletopEnv
from sim.faults import parse_faults
from sim.tasks import generate_specs

# The loops compared: no failure signal; the robot's own failure reports; the model's judge.
ARMS = {"no_detect": {"reports": False}, "reports": {"reports": True},
        "detect": {"detect": True, "reports": False}, "detect_reports": {"detect": True, "reports": True}}


@contextlib.contextmanager
def embodiment(kind: str, faults: dict[str, float], images: bool, perception: bool = False):
    if kind == "sim":
        env = TabletopEnv(EnvConfig(faults=faults, observe_images=images or perception, perception=perception))
        try:
            yield env, None
        finally:
            env.close()
        return
    from embodied_lm.ros import RosConfig, RosEmbodiment
    from embodied_lm.ros.testing.sim_endpoint import SimRobotEndpoint

    with SimRobotEndpoint(EnvConfig(faults=faults)) as ep, RosEmbodiment(RosConfig(port=ep.port)) as bridge:
        yield bridge, ep


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--embodiment", choices=("ros", "sim"), default="ros")
    ap.add_argument("--fault", action="append", default=[], metavar="KIND=P", help="e.g. drop=0.3 (repeatable)")
    ap.add_argument("--families", nargs="+", default=["p1_grasp", "p2_stack"])
    ap.add_argument("--levels", nargs="+", default=["L1"])
    ap.add_argument("--episodes", type=int, default=20, help="per family and level")
    ap.add_argument("--refer", default="color", help="entity | color | mixed (a person names blocks by colour)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--arms", nargs="+", choices=tuple(ARMS), default=["no_detect", "detect"],
                    help="reports: no judge, but a skill the robot reports failed is replanned and barred too")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    try:
        faults = parse_faults(args.fault or ["drop=0.3"])
    except ValueError as e:
        ap.error(str(e))

    from embodied_lm.train import load_trained

    model = load_trained(args.checkpoint, seed=args.seed)
    specs = generate_specs(args.families, args.levels, args.episodes, args.seed, "test", args.refer)
    out = {"checkpoint": args.checkpoint, "embodiment": args.embodiment, "faults": faults, "refer": args.refer,
           "episodes": len(specs), "versions": versions(), "arms": {}}
    for name in args.arms:
        planner = EmbodiedLMPlanner(model=model, **ARMS[name])
        t0 = time.perf_counter()
        with embodiment(args.embodiment, faults, model.cfg.sensors != "state",
                        model.cfg.sensors == "perceived") as (env, ep):
            rows = evaluate(env, planner, specs, progress=True)
            in_rows = sum(len(r.extra.get("faults", [])) for r in rows)
            injected = len(ep.stats.faults) if ep is not None else in_rows
        by_family = defaultdict(list)
        for r in rows:
            by_family[r.spec["task"]].append(r.success)
        arm = {"success": round(float(np.mean([r.success for r in rows])), 4),
               "by_family": {f: round(float(np.mean(v)), 4) for f, v in sorted(by_family.items())},
               "faults_injected": injected,
               "judged_failed": sum(len(r.extra.get("judged_failed", [])) for r in rows),
               "mean_steps": round(float(np.mean([r.steps for r in rows])), 2),
               "planner_ms_per_step": round(float(np.mean([r.planner_ms for r in rows])), 1),
               "wall_s": round(time.perf_counter() - t0, 1)}
        out["arms"][name] = arm
        out.setdefault("rows", {})[name] = [row_dict(r) for r in rows]
        if ep is not None:
            out.setdefault("endpoint_faults", {})[name] = list(ep.stats.faults)
        print(f"{name}: {json.dumps(arm)}", flush=True)
    print("episode success: " + ", ".join(f"{k} {v['success']:.1%}" for k, v in out["arms"].items())
          + f" ({args.embodiment}, faults {faults}, {len(specs)} episodes)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
