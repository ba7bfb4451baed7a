"""Live demo page (issue 15): pick a scene or paste an episode-spec line, type an instruction, and watch the
planner act: the camera frames after each step, the plan as it is decided with each skill's ✓/✗, and the
final success.  A second tab replays any episode of a zarr store the same way.

    python -m embodied_lm.demo checkpoint=PATH [port=7860] [planner=embodied_lm|oracle|random]

Serves on 127.0.0.1 only, offline, on CPU.  Bad input shows a one-line message on the page; a bad
argument or checkpoint at start-up exits with a one-line ``error:`` (code 2), like experiments/run.py.
"""

from __future__ import annotations

import os

# Before gradio/transformers are imported: no telemetry, no version checks, no Hub look-ups.
os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import json  # noqa: E402
import re  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import traceback  # noqa: E402
from collections.abc import Iterator, Sequence  # noqa: E402
from dataclasses import dataclass, fields, replace  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402

from embodied_lm.evaluate import episode_steps  # noqa: E402
from embodied_lm.grounding import UnresolvedReference, ground  # noqa: E402
from embodied_lm.planners import Planner, make_planner  # noqa: E402
from sim.env import EnvConfig, TabletopEnv  # noqa: E402
from sim.tasks import FAMILIES, LEVELS, REFERS, EpisodeSpec, SpecError  # noqa: E402
from skills.vocab import Col  # noqa: E402

SCALE = 3  # 128 px camera frames are too small to watch
REPLAY_DELAY_S = 0.3  # between replayed steps, so a replay plays out like a live run
_MENTION = re.compile(r"\bobj_([1-9][0-9]*)\b")
# What a user can get wrong (spec, store, index, checkpoint, reference): a one-line message, no traceback.
USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, IndexError, OSError)

Frame = np.ndarray  # (H, W, 3) uint8
Update = tuple[Frame | None, str, str]  # (camera frame, plan lines, status line)


@dataclass
class DemoArgs:
    checkpoint: str | None = None
    planner: str = "embodied_lm"
    port: int = 7860


def parse_args(argv: Sequence[str]) -> DemoArgs:
    """``key=value`` arguments, as experiments/run.py takes them; ValueError (one line) when bad."""
    known = {f.name: f for f in fields(DemoArgs)}
    values: dict[str, Any] = {}
    for arg in argv:
        key, eq, value = arg.partition("=")
        if not eq or key not in known:
            raise ValueError(f"unknown argument {arg!r}; use {' '.join(f'{k}=...' for k in known)}")
        if key == "port":
            if not value.isdigit() or not 0 < int(value) < 65536:
                raise ValueError(f"port must be an integer in 1..65535, got {value!r}")
            values[key] = int(value)
        else:
            values[key] = value
    args = DemoArgs(**values)
    if args.planner == "embodied_lm" and not args.checkpoint:
        raise ValueError("planner=embodied_lm needs checkpoint=PATH (or use planner=oracle)")
    return args


def build_planner(args: DemoArgs) -> Planner:
    if args.planner == "embodied_lm":
        from embodied_lm.train import load_trained, read_checkpoint_config

        read_checkpoint_config(args.checkpoint)  # one-line CheckpointError before the slow model load
        return make_planner("embodied_lm", model=load_trained(args.checkpoint))
    return make_planner(args.planner)  # baselines take no arguments here; unknown names raise ValueError


def one_line(e: BaseException) -> str:
    text = str(e).strip()
    return (text.splitlines()[0] if text else type(e).__name__)[:500]


# ----------------------------------------------------------------------------- inputs


def scene_spec(spec_line: str, family: str, seed: float | None, n_objects: float | None, level: str,
               refer: str) -> EpisodeSpec:
    """The pasted spec line when there is one, else the picked scene; SpecError (one line) when bad."""
    if spec_line and spec_line.strip():
        try:
            d = json.loads(spec_line)
        except json.JSONDecodeError as e:
            raise SpecError(f"spec line is not valid JSON ({e.msg} at column {e.colno})") from None
        return EpisodeSpec.from_dict(d)
    if family not in FAMILIES:
        raise SpecError(f"unknown task family {family!r}; known: {', '.join(sorted(FAMILIES))}")
    fam = FAMILIES[family]
    if level not in fam.levels:
        raise SpecError(f"{family} has no level {level}; its levels: {', '.join(fam.levels)}")
    if seed is None or seed < 0 or seed != int(seed):
        raise SpecError(f"seed must be a non-negative integer, got {seed!r}")
    counts = fam.object_counts(level)
    if n_objects not in counts:
        raise SpecError(f"{family} at {level} takes {', '.join(map(str, counts))} objects, not {n_objects}")
    seed, n = int(seed), int(n_objects)
    params = fam.sample_params(np.random.default_rng([seed, 1]), n, level)  # as generate_specs draws them
    return EpisodeSpec.from_dict({"task": family, "params": params, "n_objects": n, "seed": seed,
                                  "refer": refer, "level": level})


def check_instruction(instruction: str, objects: np.ndarray) -> None:
    """A typed instruction must name objects the scene holds: the grounding's refusal (colours, places),
    and obj_k handles (which grounding leaves to the LM).  Checked for every planner, since a baseline
    would silently ignore the text."""
    ground(instruction, objects)
    present = {int(k) + 1 for k in np.flatnonzero(objects[:, Col.PRESENT] > 0.5)}
    for m in _MENTION.finditer(instruction):
        if int(m.group(1)) not in present:
            names = ", ".join(f"obj_{k}" for k in sorted(present))
            raise UnresolvedReference(f"the instruction names {m.group(0)} but the scene holds {names}")


# ----------------------------------------------------------------------------- display


def camera_frame(images: dict[str, np.ndarray]) -> Frame | None:
    """Every camera side by side (top first), scaled up: nearest, since the pixels are what a model sees."""
    rgbs = [v[..., :3] for _, v in sorted(images.items(), key=lambda kv: (kv[0] != "rgb_top", kv[0]))]
    if not rgbs:
        return None
    h = max(r.shape[0] for r in rgbs)
    gap = np.full((h, 2, 3), 255, np.uint8)
    parts = [np.pad(r, ((0, h - r.shape[0]), (0, 0), (0, 0)), constant_values=255) for r in rgbs]
    frame = np.concatenate([x for r in parts for x in (r, gap)][:-1], axis=1)
    return frame.repeat(SCALE, axis=0).repeat(SCALE, axis=1)


def _obs_frame(obs: dict[str, Any]) -> Frame | None:
    return camera_frame({k: v for k, v in obs.items() if k.startswith("rgb_")})


def plan_line(i: int, action: str, ok: bool, message: str = "") -> str:
    note = message if message and message != "ok" else ""  # the skill library says "ok" on every success
    return f"{i}. {'✓' if ok else '✗'} {action}" + (f"  ({note})" if note else "")


def verdict(success: bool, steps: int, what: str) -> str:
    mark = "✓ success" if success else "✗ failed"
    return f"**{mark}**: {what} in {steps} step{'s' * (steps != 1)}"


def error(e: BaseException) -> str:
    return f"error: {one_line(e)}"


# ----------------------------------------------------------------------------- handlers


class Demo:
    """One env and one planner, shared by every run (Gradio queues runs one at a time: concurrency 1)."""

    def __init__(self, planner: Planner, planner_name: str):
        self.planner, self.planner_name = planner, planner_name
        self.env = TabletopEnv(EnvConfig(observe_images=True))  # the page shows frames, whatever the planner

    def preview(self, spec_line: str, family: str, seed: float | None, n_objects: float | None, level: str,
                refer: str) -> tuple[Frame | None, str, str]:
        """Reset to the scene: its first frame and its own instruction (to edit)."""
        try:
            spec = scene_spec(spec_line, family, seed, n_objects, level, refer)
            obs, info = self.env.reset(options={"spec": spec})
        except USER_ERRORS as e:
            return None, "", error(e)
        except Exception as e:  # a bug, not the user's input: the traceback goes to the server log only
            traceback.print_exc()
            return None, "", f"error: internal ({type(e).__name__}: {one_line(e)})"
        return _obs_frame(obs), info["instruction"], f"scene {spec.task} {spec.level}, seed {spec.seed}: ready"

    def run(self, spec_line: str, family: str, seed: float | None, n_objects: float | None, level: str,
            refer: str, instruction: str) -> Iterator[Update]:
        """Stream the episode: one update per decided step, then the verdict."""
        try:
            yield from self._run(scene_spec(spec_line, family, seed, n_objects, level, refer), instruction)
        except USER_ERRORS as e:
            yield None, "", error(e)
        except Exception as e:
            traceback.print_exc()
            yield None, "", f"error: internal ({type(e).__name__}: {one_line(e)})"

    def _run(self, spec: EpisodeSpec, instruction: str) -> Iterator[Update]:
        obs, info = self.env.reset(options={"spec": spec})
        typed = (instruction or "").strip()
        if typed and typed != info["instruction"]:
            check_instruction(typed, obs["objects"])
            spec = replace(spec, instruction=typed)
        text = typed or info["instruction"]
        yield _obs_frame(obs), "", f"running {self.planner_name} on: {text}"
        lines: list[str] = []
        frame = _obs_frame(obs)
        steps = episode_steps(self.env, self.planner, spec)
        while True:
            try:
                step = next(steps)
            except StopIteration as end:
                row = end.value
                break
            lines.append(plan_line(len(lines) + 1, step.action, step.ok, step.message))
            if step.next_obs is not None:
                frame = _obs_frame(step.next_obs)
            yield frame, "\n".join(lines), f"running {self.planner_name}: step {len(lines)}"
        status = verdict(row.success, row.steps, f"{spec.task} {spec.level}, seed {spec.seed}")
        if row.plan and row.plan[-1] == "refuse":
            status += f" (the planner {row.messages[-1]})"
        yield frame, "\n".join(lines), status


def replay(store: str, index: float | None) -> Iterator[Update]:
    """Play back a recorded episode: the frame each skill started from, its plan line, the verdict."""
    try:
        from embodied_lm.datasets import ReplayReader

        if not store or not store.strip():
            raise ValueError("give the path of a zarr store")
        if index is None or index != int(index):
            raise ValueError(f"episode index must be an integer, got {index!r}")
        reader = ReplayReader(store.strip())
        ep = reader.episode(int(index))
        oks = [bool(x) for x in ep.data.get("skill_success", [])]
        plan = str(ep.meta.get("plan", "")).split("\n")[: len(oks)]
        cams = sorted(k for k in ep.data if k.startswith("rgb_"))
        blank = reader.attrs.get("images") is False  # recorded state-only: the frames are zeros
        what = f"episode {int(index)} of {reader.n_episodes}: {ep.meta.get('task', '?')}"
        lines: list[str] = []
        frame = None
        for i, (action, ok) in enumerate(zip(plan, oks)):
            if cams and not blank and i < len(ep.data[cams[0]]):
                frame = camera_frame({c: np.asarray(ep.data[c][i]) for c in cams})
            lines.append(plan_line(i + 1, action, ok))
            yield frame, "\n".join(lines), f"replaying {what}, step {i + 1}/{len(oks)}"
            time.sleep(REPLAY_DELAY_S)
        note = " (recorded without images)" if blank else ""
        yield frame, "\n".join(lines), verdict(bool(ep.meta.get("success", False)), len(oks), what) + note
    except USER_ERRORS as e:
        yield None, "", error(e)
    except Exception as e:
        traceback.print_exc()
        yield None, "", f"error: internal ({type(e).__name__}: {one_line(e)})"


# ----------------------------------------------------------------------------- page


def build_page(demo: Demo):
    import gradio as gr

    families = sorted(FAMILIES)
    with gr.Blocks(title="embodied_lm demo") as page:
        acts_on = ("it reads the typed instruction" if demo.planner_name == "embodied_lm"
                   else f"the {demo.planner_name} planner ignores the typed text")
        gr.Markdown(f"## embodied_lm: watch it and talk to it\nPlanner: **{demo.planner_name}** ({acts_on}). "
                    "Success is the scene's task (family and params) at the end, whatever the instruction says.")
        with gr.Tab("Live"):
            with gr.Row():
                with gr.Column(scale=1):
                    family = gr.Dropdown(families, value="p2_stack", label="Task family", elem_id="family")
                    with gr.Row():
                        seed = gr.Number(value=1_000_000, precision=0, label="Seed", elem_id="seed")
                        n_objects = gr.Number(value=4, precision=0, label="Objects", elem_id="n_objects")
                    with gr.Row():
                        level = gr.Dropdown(list(LEVELS), value="L1", label="Level", elem_id="level")
                        refer = gr.Dropdown(list(REFERS), value="entity", label="Refer to objects by",
                                            elem_id="refer")
                    spec_line = gr.Textbox(label="…or an episode-spec JSON line (used when given)", lines=2,
                                           elem_id="spec_line")
                    show = gr.Button("Show scene", elem_id="show")
                    instruction = gr.Textbox(label="Instruction (empty: the scene's own)", elem_id="instruction")
                    run = gr.Button("Run", variant="primary", elem_id="run")
                with gr.Column(scale=2):
                    frame = gr.Image(label="Cameras, top first: after the latest step", type="numpy",
                                     interactive=False, elem_id="frame")
                    status = gr.Markdown("pick a scene and press Run", elem_id="status")
                    plan = gr.Textbox(label="Plan (✓/✗: the skill's own success)", lines=10, max_lines=40,
                                      interactive=False, elem_id="plan")
            scene = [spec_line, family, seed, n_objects, level, refer]
            # One env and one planner: every event that touches them shares one queue slot.
            show.click(demo.preview, scene, [frame, instruction, status], concurrency_id="sim",
                       concurrency_limit=1, show_progress="hidden")
            run.click(demo.run, [*scene, instruction], [frame, plan, status], concurrency_id="sim",
                      concurrency_limit=1, show_progress="hidden")
        with gr.Tab("Replay a store"):
            with gr.Row():
                with gr.Column(scale=1):
                    store = gr.Textbox(label="zarr store path", elem_id="store")
                    index = gr.Number(value=0, precision=0, label="Episode index", elem_id="episode")
                    play = gr.Button("Replay", variant="primary", elem_id="replay")
                with gr.Column(scale=2):
                    r_frame = gr.Image(label="Cameras, top first: where each skill started", type="numpy",
                                       interactive=False, elem_id="replay_frame")
                    r_status = gr.Markdown("", elem_id="replay_status")
                    r_plan = gr.Textbox(label="Plan", lines=10, max_lines=40, interactive=False,
                                        elem_id="replay_plan")
            play.click(replay, [store, index], [r_frame, r_plan, r_status], show_progress="hidden")
    return page


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = parse_args(sys.argv[1:] if argv is None else argv)
        planner = build_planner(args)
        demo = Demo(planner, args.planner)
    except ValueError as e:  # bad argument, unknown planner, missing or incomplete checkpoint
        print(f"error: {one_line(e)}", file=sys.stderr)
        return 2
    page = build_page(demo)
    print(f"demo: planner={args.planner} on http://127.0.0.1:{args.port}", flush=True)
    try:
        # Local only: no share tunnel, no server-side rendering (node), no MCP endpoint, no footer links out.
        page.queue().launch(server_name="127.0.0.1", server_port=args.port, share=False, ssr_mode=False,
                            mcp_server=False, run_history=False, footer_links=[], show_error=False,
                            inbrowser=False, quiet=True)
    except OSError as e:  # the port is taken
        print(f"error: {one_line(e)}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
