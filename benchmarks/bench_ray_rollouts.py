"""Rollout throughput: serial in-process vs 1 and 2 Ray workers (``embodied_lm.distributed``).

Same oracle episodes (``generate_specs(levels=["L1"])`` over the chosen families) in three ways:

* serial   -- ``evaluate`` in this process with one ``TabletopEnv`` (what ``run.py`` does today);
* ray x1   -- ``run_parallel(num_workers=1)``: the same work through one actor (shows Ray's overhead);
* ray x2   -- ``run_parallel(num_workers=2)``.

in two settings: state-only (``observe_images=False``, oracle evaluation) and ``images+record``
(128x128 RGB-D-mask from both cameras, every episode recorded to a zarr store through the one
driver-side writer -- what demonstration collection pays).  Episodes/s is over rollout time only
(workers already up; their start-up is printed apart).  ``util`` = time spent inside episodes /
(rollout time x workers): close to 1 means workers never waited for the driver.  Successes and
plans must be identical in all three; the script exits 1 if not.

Expected on an idle 2-core machine: ray x2 / ray x1 >= 1.7 (two PyBullet processes on two cores;
the driver only waits and writes).  Numbers move with machine load: the load average is printed
before and after every measurement.

Run::

    .venv/bin/python -m benchmarks.bench_ray_rollouts --quick    # 1 episode per family, ~1 min
    .venv/bin/python -m benchmarks.bench_ray_rollouts            # 3 per family
    .venv/bin/python -m benchmarks.bench_ray_rollouts --json ray_bench.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from importlib.metadata import version
from pathlib import Path

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

from embodied_lm.datasets import ReplayReader, ReplayWriter  # noqa: E402
from embodied_lm.distributed import episode_planner, init_ray, row_trace, run_parallel  # noqa: E402
from embodied_lm.evaluate import evaluate  # noqa: E402
from embodied_lm.results import machine_info  # noqa: E402
from sim.env import EnvConfig, TabletopEnv  # noqa: E402
from sim.tasks import FAMILIES, generate_specs  # noqa: E402
from sim.world import WorldConfig  # noqa: E402


def machine() -> str:
    cpu = machine_info()["cpu"]
    return (f"{platform.node()} | {cpu} | {os.cpu_count()} CPUs ({len(os.sched_getaffinity(0))} usable) | "
            f"Python {platform.python_version()} | ray {version('ray')} | pybullet {version('pybullet')}")


def load() -> str:
    return "/".join(f"{x:.2f}" for x in os.getloadavg())


def serial(specs, cfg: EnvConfig, store: Path | None):
    env = TabletopEnv(cfg)
    writer = ReplayWriter(store) if store else None
    try:
        t0 = time.perf_counter()
        rows = evaluate(env, episode_planner("oracle"), specs, writer, progress=False)
        run_s = time.perf_counter() - t0
        return rows, run_s, 0.0, sum(r.wall_s for r in rows) / run_s
    finally:
        env.close()
        if writer:
            writer.close()


def on_ray(specs, cfg: EnvConfig, store: Path | None, workers: int):
    writer = ReplayWriter(store) if store else None
    try:
        rows, stats = run_parallel(specs, "oracle", {}, cfg, num_workers=workers, recorder=writer, progress=False)
        return rows, stats["run_s"], stats["startup_s"], stats["utilization"]
    finally:
        if writer:
            writer.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--episodes", type=int, default=3, help="episodes per family (L1)")
    ap.add_argument("--quick", action="store_true", help="1 episode per family")
    ap.add_argument("--families", nargs="*", default=None, help="default: every family")
    ap.add_argument("--settings", nargs="*", default=["state", "images"], choices=["state", "images"])
    ap.add_argument("--image-size", type=int, default=128)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    n = 1 if args.quick else args.episodes
    specs = generate_specs(args.families or list(FAMILIES), ["L1"], episodes=n, seed=args.seed)

    print(f"machine: {machine()}")
    print(f"load average (1/5/15 min) at start: {load()}")
    print(f"{len(specs)} oracle episodes ({n} per family, L1); Ray: local, num_cpus=2, 1 CPU per worker")
    t = time.perf_counter()
    init_ray(num_cpus=2)
    print(f"ray.init: {time.perf_counter() - t:.1f} s")

    results, ok = {}, True
    for setting in args.settings:
        images = setting == "images"
        cfg = EnvConfig(observe_images=images, world=WorldConfig(image_size=(args.image_size,) * 2))
        label = f"images {args.image_size}px x2 cams + record" if images else "state-only"
        print(f"\n[{label}]")
        head = f"  {'mode':<8} {'episodes/s':>10} {'rollout s':>9} {'startup s':>9} {'util':>5}"
        print(f"{head}  load before -> after")
        res, traces = {}, {}
        with tempfile.TemporaryDirectory() as tmp:
            for mode, workers in (("serial", 0), ("ray x1", 1), ("ray x2", 2)):
                before = load()
                store = Path(tmp) / f"{mode.replace(' ', '')}.zarr" if images else None
                if workers:
                    rows, run_s, startup_s, util = on_ray(specs, cfg, store, workers)
                else:
                    rows, run_s, startup_s, util = serial(specs, cfg, store)
                eps = len(rows) / run_s
                res[mode] = {"episodes_per_s": round(eps, 3), "rollout_s": round(run_s, 2),
                             "startup_s": round(startup_s, 2), "utilization": round(util, 3),
                             "load_before": before, "load_after": load(),
                             "successes": sum(r.success for r in rows)}
                traces[mode] = [row_trace(r) for r in rows]
                if store is not None:
                    res[mode]["recorded_episodes"] = ReplayReader(store).n_episodes
                line = f"  {mode:<8} {eps:>10.2f} {run_s:>9.2f} {startup_s:>9.2f} {util:>5.2f}"
                print(f"{line}  {before} -> {load()}")
        same = traces["serial"] == traces["ray x1"] == traces["ray x2"]
        ok &= same
        r21 = res["ray x2"]["episodes_per_s"] / res["ray x1"]["episodes_per_s"]
        r2s = res["ray x2"]["episodes_per_s"] / res["serial"]["episodes_per_s"]
        print(f"  ray x2 / ray x1 = {r21:.2f}x (target >= 1.7 on an idle 2-core machine); "
              f"ray x2 / serial = {r2s:.2f}x")
        print(f"  successes {res['serial']['successes']}/{len(specs)} (serial); identical plans and "
              f"successes in all three: {'yes' if same else 'NO'}")
        results[setting] = {**res, "x2_over_x1": round(r21, 3), "x2_over_serial": round(r2s, 3), "identical": same}

    print(f"\nload average at end: {load()}")
    if args.json:
        out = {"machine": machine(), "episodes": len(specs), "results": results}
        args.json.write_text(json.dumps(out, indent=2))
        print(f"wrote {args.json}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
