"""Simulator throughput benchmark: physics, rendering, skills and oracle episodes.

Measures, on the CPU this runs on (wall time via ``time.perf_counter``, medians via ``statistics.median``):

1. physics   -- ``World.step(n)`` steps/s with the Panda holding its pose and N resting blocks, and the
                real-time factor (simulated s per wall s; time_step = 1/240 s);
2. rendering -- ms per ``World.render(camera)`` frame (RGB + metric depth + object mask, i.e. including the
                numpy conversion) per camera, resolution and renderer (``tiny`` TinyRenderer, ``egl`` plugin);
3. skills    -- wall ms and simulated s per scripted ``pick`` / ``place`` / ``push`` call (each ends with the
                arm going home, as in the env);
4. episodes  -- oracle-planner episodes/s over ``generate_specs(levels=["L1"])`` for every family, state-only
                (``observe_images=False``, what oracle evaluation pays) and with 128x128 images from both
                cameras (what recording a dataset pays).

Run::

    .venv/bin/python -m benchmarks.bench_sim --quick          # ~20 s on 2 cores
    .venv/bin/python -m benchmarks.bench_sim                  # ~50 s
    .venv/bin/python -m benchmarks.bench_sim --json bench.json

Single process, single thread (PyBullet DIRECT + TinyRenderer); the EGL plugin renders on whatever GL driver
it finds (CPU Mesa llvmpipe on a machine without GPU).  Numbers move with machine load: the header prints the
load average so a busy machine is visible.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from contextlib import contextmanager
from functools import partial
from importlib.metadata import version

SIZES = (64, 128, 224)
CAMS = ("top", "front")


@contextmanager
def captured_fds(sink: list[str]):
    """Silence C-level stdout/stderr (pybullet/EGL banners) and append what was printed to ``sink``."""
    libc = ctypes.CDLL(None)
    sys.stdout.flush(), sys.stderr.flush(), libc.fflush(None)
    saved = [os.dup(1), os.dup(2)]
    with tempfile.TemporaryFile("w+") as tmp:
        os.dup2(tmp.fileno(), 1), os.dup2(tmp.fileno(), 2)
        try:
            yield
        finally:
            libc.fflush(None)
            os.dup2(saved[0], 1), os.dup2(saved[1], 2)
            [os.close(fd) for fd in saved]
            tmp.seek(0)
            sink.append(tmp.read())


_banner: list[str] = []
with captured_fds(_banner):  # "pybullet build time: ..." on import
    import pybullet as p  # noqa: F401

    from embodied_lm.evaluate import run_episode
    from embodied_lm.planners import make_planner
    from sim.env import EnvConfig, TabletopEnv
    from sim.tasks import generate_specs
    from sim.world import World, WorldConfig
    from skills import SkillLibrary


def timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def machine() -> dict:
    with open("/proc/cpuinfo") as fh:
        first = fh.read().split("\n\n")[0]  # the first processor's block
    info = {key.strip(): v.strip() for key, v in (ln.split(":", 1) for ln in first.splitlines() if ":" in ln)}
    cpu = f"{info.get('model name', '?')} (family {info.get('cpu family', '?')}, model {info.get('model', '?')})"
    return {"cpu": cpu, "cores": os.cpu_count(), "usable_cores": len(os.sched_getaffinity(0)),
            "loadavg_1m": os.getloadavg()[0], "python": platform.python_version(),
            "pybullet": version("pybullet"), "numpy": version("numpy"), "platform": platform.platform()}


def block_grid(world: World, n: int) -> None:
    """n blocks 8 cm apart on a 4-wide grid in the middle of the workspace."""
    colors = ("red", "green", "blue", "yellow", "purple", "orange", "pink", "cyan", "brown", "white")
    for i in range(n):
        world.add_block(colors[i % len(colors)], (0.40 + 0.08 * (i // 4), -0.12 + 0.08 * (i % 4)))


# -- 1. physics ---------------------------------------------------------------------------------------------
def bench_physics(blocks: list[int], steps: int, repeats: int) -> list[dict]:
    rows = []
    for n in blocks:
        with World(WorldConfig()) as w:
            block_grid(w, n)
            w.settle(0.5)  # blocks at rest, arm holding HOME under position control
            walls = [timed(partial(w.step, steps)) for _ in range(repeats)]
            sps = steps / statistics.median(walls)
            rows.append({"blocks": n, "steps": steps, "repeats": repeats, "steps_per_s": sps,
                         "us_per_step": 1e6 / sps, "realtime_factor": sps * w.config.time_step})
    return rows


# -- 2. rendering -------------------------------------------------------------------------------------------
def open_world(renderer: str, log: list[str]) -> World:
    with captured_fds(log):
        w = World(WorldConfig(renderer=renderer))
    if renderer == "egl" and (w._egl is None or w._egl < 0):
        w.close()
        raise RuntimeError(f"p.loadPlugin(eglRenderer) returned {w._egl}")
    return w


def bench_render(frames: int) -> tuple[list[dict], dict[str, str]]:
    rows, notes = [], {}
    for renderer in ("tiny", "egl"):
        log: list[str] = []
        try:
            w = open_world(renderer, log)
        except Exception as e:  # plugin missing / no EGL display: report and go on
            notes[renderer] = f"unavailable: {type(e).__name__}: {e}"
            continue
        gl = [ln.split("=", 1)[1] for ln in "".join(log).splitlines() if ln.startswith("GL_RENDERER=")]
        notes[renderer] = gl[0] if gl else ("TinyRenderer (CPU)" if renderer == "tiny" else "?")
        block_grid(w, 4)
        w.add_bowl("white", (0.62, 0.0))
        w.settle(0.2)
        with captured_fds(log):  # EGL prints on its first renders of a scene
            [w.render(cam) for cam in CAMS for _ in range(2)]
        for size in SIZES:
            w.config.image_size = (size, size)  # World.render reads the size on every call
            for cam in CAMS:
                with captured_fds(log):  # warm-up (EGL: context and buffers for this size; prints)
                    w.render(cam)
                ms = [1e3 * timed(partial(w.render, cam)) for _ in range(frames)]
                rows.append({"renderer": renderer, "camera": cam, "size": size, "frames": frames,
                             "ms": statistics.median(ms)})
        with captured_fds(log):
            w.close()
    return rows, notes


# -- 3. skills ----------------------------------------------------------------------------------------------
SKILL_CALLS = (("pick", "pick obj_1"), ("place", "place obj_1 on obj_2"), ("push", "push obj_3 left"))


def bench_skills(repeats: int) -> list[dict]:
    lib = SkillLibrary()
    wall: dict[str, list[float]] = {v: [] for v, _ in SKILL_CALLS}
    sim: dict[str, list[float]] = {v: [] for v, _ in SKILL_CALLS}
    ok: dict[str, int] = {v: 0 for v, _ in SKILL_CALLS}
    with World(WorldConfig()) as w:
        for r in range(repeats):
            w.reset(seed=r)
            for color, xy in (("red", (0.45, -0.15)), ("green", (0.55, 0.12)), ("blue", (0.50, -0.02))):
                w.add_block(color, xy)
            w.settle(0.3)
            for verb, text in SKILL_CALLS:
                t = time.perf_counter()
                res = lib.run(text, w.robot)
                wall[verb].append(time.perf_counter() - t)
                sim[verb].append(res.sim_time)
                ok[verb] += res.success
    return [{"skill": verb, "call": text, "repeats": repeats, "wall_ms": 1e3 * statistics.median(wall[verb]),
             "sim_s": statistics.median(sim[verb]), "success": ok[verb] / repeats} for verb, text in SKILL_CALLS]


# -- 4. oracle episodes -------------------------------------------------------------------------------------
def bench_episodes(k: int, images: bool) -> dict:
    specs = generate_specs(episodes=k, levels=["L1"])
    env = TabletopEnv(EnvConfig(observe_images=images, world=WorldConfig(image_size=(128, 128))))
    planner = make_planner("oracle")
    run_episode(env, planner, specs[0])  # warm-up
    fams: dict[str, dict] = {}
    for spec in specs:
        t = time.perf_counter()
        row = run_episode(env, planner, spec)
        f = fams.setdefault(spec.task, {"episodes": 0, "wall_s": 0.0, "steps": 0, "sim_s": 0.0, "success": 0})
        f["wall_s"] += time.perf_counter() - t
        f["episodes"] += 1
        f["steps"] += row.steps
        f["sim_s"] += env.world.sim_time  # world.reset zeroes the clock; includes the scene's settling
        f["success"] += row.success
    env.close()
    total = {key: sum(f[key] for f in fams.values()) for key in next(iter(fams.values()))}
    for f in (*fams.values(), total):
        n = f["episodes"]
        f |= {"eps_per_s": n / f["wall_s"], "mean_steps": f["steps"] / n, "mean_sim_s": f["sim_s"] / n,
              "success_rate": f["success"] / n}
    return {"images": images, "image_size": 128 if images else None, "episodes_per_family": k,
            "families": fams, "overall": total}


# -- output -------------------------------------------------------------------------------------------------
def table(headers: list[str], rows: list[list], md: bool = False) -> str:
    """Plain text (first column left, the rest right-aligned) or a markdown table (left-aligned)."""
    cells = [[str(c) for c in r] for r in [headers, *rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]

    def line(r: list[str]) -> str:
        pairs = enumerate(zip(r, widths, strict=True))
        cols = [c.ljust(wd) if md or i == 0 else c.rjust(wd) for i, (c, wd) in pairs]
        return "| " + " | ".join(cols) + " |" if md else "  " + "  ".join(cols)

    rule = ("|" + "|".join("-" * (wd + 2) for wd in widths) + "|" if md
            else "  " + "  ".join("-" * wd for wd in widths))
    return "\n".join([line(cells[0]), rule, *map(line, cells[1:])])


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer repeats/frames/episodes (~20 s)")
    ap.add_argument("--blocks", default="3,8", help="block counts for the physics benchmark (default 3,8)")
    ap.add_argument("--episodes", type=int, help="oracle episodes per family (default 5, quick 2)")
    ap.add_argument("--json", metavar="PATH", help="also write every figure as JSON")
    a = ap.parse_args(argv)
    q = a.quick
    steps, reps, frames, skill_reps = (1200, 3, 5, 2) if q else (2400, 7, 10, 5)
    k = a.episodes or (2 if q else 5)
    t_start = time.perf_counter()

    m = machine()
    print(f"# bench_sim{' --quick' if q else ''}  ({time.strftime('%Y-%m-%d %H:%M')})")
    print(f"cpu: {m['cpu']}  cores: {m['cores']} (usable {m['usable_cores']})  load avg 1m: {m['loadavg_1m']:.2f}")
    print(f"python {m['python']}  pybullet {m['pybullet']}  numpy {m['numpy']}  {m['platform']}")

    phys = bench_physics([int(b) for b in a.blocks.split(",")], steps, reps)
    print(f"\n## 1. Physics: World.step, Panda holding HOME + N blocks (median of {reps} x {steps} steps)")
    print(table(["blocks", "steps/s", "us/step", "real-time factor"],
                [[r["blocks"], f"{r['steps_per_s']:,.0f}", f"{r['us_per_step']:.1f}",
                  f"{r['realtime_factor']:.0f}x"] for r in phys]))

    rend, notes = bench_render(frames)
    print(f"\n## 2. Rendering: ms per World.render (rgb+depth+mask; Panda, 4 blocks, 1 bowl; "
          f"median of {frames} frames after 1 warm-up)")
    for r_name, note in notes.items():
        print(f"  {r_name}: {note}")
    by = {(r["renderer"], r["camera"], r["size"]): r["ms"] for r in rend}
    renderers = [r for r in ("tiny", "egl") if any(key[0] == r for key in by)]
    print(table(["camera", "size"] + [f"{r} ms" for r in renderers],
                [[cam, f"{s}x{s}", *(f"{by[(r, cam, s)]:.1f}" for r in renderers)]
                 for cam in CAMS for s in SIZES]))

    sk = bench_skills(skill_reps)
    print(f"\n## 3. Skills: scripted SkillLibrary.run (incl. return home; median of {skill_reps})")
    print(table(["skill", "call", "wall ms", "sim s", "sim/wall", "success"],
                [[r["skill"], r["call"], f"{r['wall_ms']:.0f}", f"{r['sim_s']:.2f}",
                  f"{r['sim_s'] / (r['wall_ms'] / 1e3):.0f}x", f"{r['success']:.0%}"] for r in sk]))

    eps = {mode: bench_episodes(k, mode == "images") for mode in ("state", "images")}
    print(f"\n## 4. Oracle episodes: L1, {k} per family, state-only vs. 2 cameras at 128x128 (tiny)")
    st, im = eps["state"], eps["images"]
    o = st["overall"]
    rows = [[fam, f["episodes"], f"{f['mean_steps']:.1f}", f"{f['mean_sim_s']:.1f}", f"{f['success_rate']:.0%}",
             f"{f['eps_per_s']:.2f}", f"{i['eps_per_s']:.2f}"]
            for fam, f, i in [*((n, st["families"][n], im["families"][n]) for n in st["families"]),
                              ("overall", o, im["overall"])]]
    print(table(["family", "eps", "steps/ep", "sim s/ep", "success", "state ep/s", "images ep/s"], rows))

    elapsed = time.perf_counter() - t_start
    m["loadavg_1m_end"] = os.getloadavg()[0]
    phys_s = ", ".join(f"{r['steps_per_s']:,.0f} ({r['blocks']} blocks, {r['realtime_factor']:.0f}x real time)"
                       for r in phys)
    summary = [["Physics steps/s", phys_s]]
    for rn in renderers:
        summary.append([f"Render ms/frame, {rn}, 64² / 128² / 224² (top)",
                        " / ".join(f"{by[(rn, 'top', s)]:.1f}" for s in SIZES)])
    summary.append(["Skill wall ms (sim s): " + " / ".join(r["skill"] for r in sk),
                    " / ".join(f"{r['wall_ms']:.0f} ({r['sim_s']:.1f})" for r in sk)])
    summary.append(["Oracle episodes/s, L1 all families: state-only / 128² images",
                    f"{o['eps_per_s']:.2f} / {im['overall']['eps_per_s']:.2f} ({o['mean_steps']:.1f} steps/ep)"])
    print(f"\n## Summary ({m['cpu']}, {m['cores']} cores, single process; pybullet {m['pybullet']}; "
          f"load avg {m['loadavg_1m']:.2f} -> {m['loadavg_1m_end']:.2f})\n")
    print(table(["Measure", "Value"], summary, md=True))
    print(f"\n(total {elapsed:.0f} s)")

    if a.json:
        with open(a.json, "w") as fh:
            json.dump({"machine": m, "quick": q, "total_s": elapsed, "physics": phys, "render": rend,
                       "render_notes": notes, "skills": sk, "episodes": eps}, fh, indent=2)
        print(f"wrote {a.json}")


if __name__ == "__main__":
    main()
