"""ROS bridge latency: observation received -> skill command sent, the model excluded.

The robot is the sim endpoint (``python -m embodied_lm.ros.testing.sim_endpoint``, a separate process by
default) on 127.0.0.1; the bridge (roslibpy, asyncio transport) drives oracle episodes through it.  Per
command:

* decode      - validating and decoding the observation's messages in the roslibpy thread (images:
                base64 -> numpy) — overlaps with the arrival of the others, reported separately;
* build       - last sensor message accepted -> observation dict ready (segmentation of every camera,
                fusion into objects, masks, robot vector);
* prepare     - ``step(action)`` called -> command published (parse, resolve poses, safety checks, JSON);
* bridge      - build + prepare: what the bridge adds between the robot's sensors and its command;
* round trip  - command published -> result received -> fresh observation built (includes the robot's
                motion in the sim, its rendering and the transport both ways).

Run:  python benchmarks/bench_ros.py [--samples 60] [--objects 5] [--inprocess]
Expect (2-core CPU, 128x128 top+front cameras): bridge latency median ~15-25 ms, dominated by the
open3d segmentation of two RGB-D frames.
"""

from __future__ import annotations

import argparse
import contextlib
import platform
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from embodied_lm.results import machine_info  # noqa: E402


def machine() -> str:
    info = machine_info()
    cpu, cores = info["cpu"], info["cores"]
    system = f"{platform.system()} {platform.release()}, Python {platform.python_version()}"
    return f"{cpu}, {cores} usable cores, {system}"


@contextlib.contextmanager
def endpoint(inprocess: bool, size: tuple[int, int]):
    if inprocess:
        from embodied_lm.ros.testing.sim_endpoint import SimRobotEndpoint
        from sim.env import EnvConfig
        from sim.world import WorldConfig

        with SimRobotEndpoint(EnvConfig(world=WorldConfig(image_size=size))) as ep:
            yield ep.port
        return
    cmd = [sys.executable, "-m", "embodied_lm.ros.testing.sim_endpoint", "--port", "0", "--image-size",
           *map(str, size)]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(x) for x in proc.stdout], daemon=True).start()
    try:
        while True:
            m = re.search(r"listening on ws://[\d.]+:(\d+)", lines.get(timeout=60))
            if m:
                break
        yield int(m.group(1))
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


def stats(xs: list[float]) -> str:
    a = np.asarray(xs) * 1000
    return f"median {np.median(a):6.1f} ms   p90 {np.percentile(a, 90):6.1f} ms   max {a.max():6.1f} ms"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=60, help="commands to time (>= 50)")
    ap.add_argument("--objects", type=int, default=5, help="objects per scene")
    ap.add_argument("--image-size", type=int, nargs=2, default=(128, 128), metavar=("H", "W"))
    ap.add_argument("--inprocess", action="store_true", help="run the endpoint in this process (shares the GIL)")
    args = ap.parse_args()

    import roslibpy

    from embodied_lm.planners import make_planner
    from embodied_lm.ros import RosConfig, RosEmbodiment
    from sim.tasks import generate_specs

    specs = [s for s in generate_specs(["p2_stack", "p1_grasp", "bowl_match", "push_to_block"], ["L1", "L2"],
                                       episodes=30, split="test") if s.n_objects >= min(args.objects, 5)]
    planner = make_planner("oracle")
    samples, trips = [], []
    t_start = time.perf_counter()
    with endpoint(args.inprocess, tuple(args.image_size)) as port, RosEmbodiment(RosConfig(port=port)) as env:
        t0 = time.perf_counter()
        env.reset(options={"spec": specs[0]})  # warm-up: the first observation imports open3d
        first = time.perf_counter() - t0
        for spec in specs:
            obs, info = env.reset(options={"spec": spec})
            planner.reset(env, obs, info)
            done = False
            while not done and len(samples) < args.samples:
                action = planner.act(obs, info)  # the "model": not timed
                n = len(env.latencies)
                obs, _, term, trunc, info = env.step(action)
                done = term or trunc
                if len(env.latencies) > n:  # a command went out (refused calls send nothing)
                    lat = env.latencies[-1]
                    samples.append(lat)
                    trips.append(env._timing["obs_built"] - lat["sent"])
            if len(samples) >= args.samples:
                break
    wall = time.perf_counter() - t_start

    cams = "+".join(c.name for c in RosConfig().cameras)
    print(f"machine: {machine()}")
    where = "in-process" if args.inprocess else "subprocess"
    print(f"roslibpy {roslibpy.__version__} (asyncio transport), endpoint {where} on 127.0.0.1, cameras {cams} "
          f"at {args.image_size[0]}x{args.image_size[1]}, {len(samples)} commands over {wall:.0f} s "
          f"(first reset incl. open3d import: {first:.2f} s, not counted)")
    print(f"  decode      {stats([s['decode_s'] for s in samples])}   (roslibpy thread, per observation)")
    print(f"  build       {stats([s['obs_latency_s'] for s in samples])}   (last message -> observation)")
    print(f"  prepare     {stats([s['prepare_s'] for s in samples])}   (step() -> command published)")
    print(f"  bridge      {stats([s['obs_latency_s'] + s['prepare_s'] for s in samples])}   "
          "(observation received -> command sent, model excluded)")
    print(f"  round trip  {stats(trips)}   (command -> result -> fresh observation, incl. the sim's motion)")


if __name__ == "__main__":
    main()
