"""What ``experiments/run.py`` dispatches to.

``stage=all`` with ``planner=embodied_lm``: collect oracle demonstrations into zarr (train seeds) ->
train the model -> evaluate closed loop on test seeds at every level.  Other planners only evaluate.
``stage=collect|train|eval`` runs one stage, ``stage=train+eval`` several (``dataset=``, ``checkpoint=``
point at earlier outputs).
"""

from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path
from typing import Any

from embodied_lm.config import ConfigError, RunConfig
from embodied_lm.evaluate import evaluate
from embodied_lm.planners import make_planner, planner_class
from embodied_lm.results import build_results, format_table, plot_results, versions, write_results
from sim.env import EnvConfig, TabletopEnv
from sim.tasks import EpisodeSpec, generate_specs, load_specs
from sim.world import World, WorldConfig


def make_env_config(cfg: RunConfig, observe_images: bool, faults: dict | None = None, perception: bool = False,
                    jitter: bool = False) -> EnvConfig:
    """The sim's config (``faults``: sim.faults; ``perception``: observed like a robot, sim.perceived;
    ``jitter``: cameras moved and relit per episode, sim.camera.Jitter)."""
    from sim.camera import Jitter

    w = cfg.task.world
    world = WorldConfig(image_size=tuple(w.image_size), cameras=tuple(w.cameras), renderer=w.renderer)
    return EnvConfig(families=tuple(cfg.task.families) or None, world=world, skills=dict(cfg.task.skills),
                     observe_images=observe_images or perception, faults=dict(faults or {}),
                     perception=perception, jitter=Jitter() if jitter else None)


def make_env(cfg: RunConfig, observe_images: bool, faults: dict | None = None, perception: bool = False,
             jitter: bool = False):
    """The Embodiment to evaluate on: the sim (see ``make_env_config``), or a robot over ROS
    (``embodiment=ros``; its faults, perception and cameras are its own)."""
    if cfg.embodiment.get("kind", "sim") == "ros":
        from embodied_lm.ros import RosConfig, RosEmbodiment

        return RosEmbodiment(RosConfig.from_dict(cfg.embodiment))
    return TabletopEnv(make_env_config(cfg, observe_images, faults, perception, jitter))


def rollouts(cfg: RunConfig, specs, planner_name: str, planner_kwargs: dict, observe_images: bool, recorder,
             faults: dict | None = None, perception: bool = False, jitter: bool = False, batch: int = 1):
    """Run ``specs`` here, or on Ray actors (``ray.num_workers`` / ``ray.address``); ``batch`` episodes side
    by side per process (evaluate.run_lockstep; a robot runs one).  Returns (rows in spec order, Ray stats
    or None)."""
    if cfg.ray.enabled:
        from embodied_lm.distributed import run_parallel

        env_config = make_env_config(cfg, observe_images, faults, perception, jitter)
        return run_parallel(specs, planner_name, planner_kwargs, env_config,
                            num_workers=cfg.ray.num_workers or None, address=cfg.ray.address, recorder=recorder,
                            progress=cfg.eval.progress, max_retries=cfg.ray.max_retries,
                            num_gpus_per_worker=cfg.ray.gpus_per_worker,
                            episode_timeout_s=cfg.ray.episode_timeout_s, batch=batch)
    env = make_env(cfg, observe_images, faults, perception, jitter)
    robot = cfg.embodiment.get("kind", "sim") == "ros"
    try:
        return evaluate(env, make_planner(planner_name, **planner_kwargs), specs, recorder,
                        progress=cfg.eval.progress, batch=1 if robot else batch,
                        make_env=lambda: make_env(cfg, observe_images, faults, perception, jitter)), None
    finally:
        env.close()


def eval_specs(cfg: RunConfig) -> list[EpisodeSpec]:
    if cfg.eval.spec:
        return load_specs(cfg.eval.spec)
    families = cfg.eval.families or (cfg.collect.families if cfg.planner.name == "embodied_lm" else None)
    families = families or cfg.task.families or None
    return generate_specs(families, cfg.eval.levels, cfg.eval.episodes, cfg.seed, cfg.eval.split, cfg.eval.refer)


def store_attrs(cfg: RunConfig, cfg_dict: dict[str, Any]) -> dict[str, Any]:
    world = World(make_env_config(cfg, False).world)  # camera parameters without a full env
    try:
        cameras = {cam: world.camera_params(cam) for cam in world.config.cameras}
    finally:
        world.close()
    return {"versions": versions(), "cameras": cameras, "renderer": world.config.renderer,
            "time_step": world.config.time_step, "env_config": cfg_dict}


def collect(cfg: RunConfig, cfg_dict: dict[str, Any], path: Path) -> float:
    """Oracle demonstrations on train seeds, recorded to ``path``."""
    from embodied_lm.datasets import ReplayWriter

    c = cfg.collect
    specs = generate_specs(c.families, c.levels, c.episodes, cfg.seed, "train", c.refer)
    images = cfg.collect.images if cfg.collect.images is not None else cfg.sensors.name != "state"
    images = images or c.perception
    t0 = time.perf_counter()
    specs = _not_yet_collected(cfg_dict, path, specs, images)
    if not specs:
        return time.perf_counter() - t0
    # "images": false marks blank frames (the env skips rendering), which no image encoder may train on
    with ReplayWriter(path, attrs=store_attrs(cfg, cfg_dict) | {"images": images}) as writer:
        rows, _ = rollouts(cfg, specs, "oracle", {}, images, writer, faults=c.faults, perception=c.perception,
                           jitter=c.jitter)
    ok = sum(r.success for r in rows)
    print(f"collect: {ok}/{len(rows)} successful oracle episodes -> {path}")
    return time.perf_counter() - t0


def _collection_settings(cfg_dict: dict[str, Any], images: bool) -> dict[str, Any]:
    """What makes two collections one dataset: everything but the episode count."""
    collect = {f"collect.{k}": v for k, v in cfg_dict.get("collect", {}).items() if k != "episodes"}
    return {"task": cfg_dict.get("task"), "seed": cfg_dict.get("seed"), "images": images} | collect


def _not_yet_collected(cfg_dict: dict[str, Any], path: Path, specs: list, images: bool) -> list:
    """Collecting into a store that already holds episodes resumes it: specs recorded there are not
    collected twice (a re-run, or a killed collection, adds only what is missing).  A store made with other
    settings is refused rather than mixed into one dataset."""
    from embodied_lm.datasets import InvalidStoreError, ReplayReader

    try:
        reader = ReplayReader(path)
    except InvalidStoreError:
        return specs  # nothing valid there: the writer creates (or repairs) the store
    if reader.n_episodes == 0:
        return specs
    old = _collection_settings(reader.attrs.get("env_config", {}), bool(reader.attrs.get("images")))
    new = _collection_settings(cfg_dict, images)
    diff = [k for k in new if old.get(k) != new[k]]
    if diff:
        raise ConfigError(f"{path} holds {reader.n_episodes} demonstrations collected with other settings "
                          f"({', '.join(diff)}): collect into a new run dir or dataset=..., or delete it")
    key = ("task", "seed", "level", "refer", "n_objects")
    have = {tuple(reader.meta(i).get(k) for k in key) for i in range(reader.n_episodes)}
    todo = [s for s in specs if tuple(getattr(s, k) for k in key) not in have]
    print(f"collect: {path} already holds {reader.n_episodes} demonstrations; "
          f"{len(specs) - len(todo)} of the {len(specs)} episodes are there, collecting the other {len(todo)}")
    return todo


def train_stage(cfg: RunConfig, dataset: Path, checkpoint: Path) -> tuple[Any, dict]:
    from embodied_lm.train import load_trained, train

    t = cfg.train
    resume = t.resume and checkpoint.exists()
    if t.backend == "ray":  # DDP on Ray Train workers; the driver loads the result afterwards
        from embodied_lm.distributed.train_ray import train_on_ray

        state = train_on_ray(cfg.model_config(), t, str(dataset), str(checkpoint), num_workers=t.num_workers,
                             use_gpu=t.use_gpu, families=cfg.collect.families, resume=resume,
                             address=cfg.ray.address, progress=cfg.eval.progress)
        model, n_examples = load_trained(checkpoint, seed=cfg.seed), state["examples"]
    else:
        from embodied_lm.data import training_examples
        from embodied_lm.model import EmbodiedLM

        model = EmbodiedLM(cfg.model_config(), seed=cfg.seed)
        examples = training_examples(dataset, model, cfg.collect.families)
        state = train(model, examples, t, checkpoint, resume=checkpoint if resume else None,
                      progress=cfg.eval.progress)
        n_examples = len(examples)
    tps = state["tokens"] / max(state["train_s"], 1e-9)
    print(f"train: {state['step']} steps on {n_examples} examples, final loss {state['losses'][-1]:.3f}, "
          f"{tps:.0f} tokens/s -> {checkpoint}")
    return model, state


def eval_stage(cfg: RunConfig, cfg_dict: dict[str, Any], run_dir: Path, specs: list[EpisodeSpec], model=None,
               timing: dict[str, float] | None = None) -> Path:
    import torch

    name = cfg.planner.name
    checkpoint = None
    if name == "embodied_lm":  # Ray workers load the checkpoint themselves
        checkpoint = str(_checkpoint(cfg, run_dir, must_exist=model is None or cfg.ray.enabled))
    kwargs, needs_images = planner_class(name).run_args(cfg, model=model, checkpoint=checkpoint)
    with contextlib.ExitStack() as stack:
        recorder = None
        if cfg.record:
            from embodied_lm.datasets import ReplayWriter

            attrs = store_attrs(cfg, cfg_dict) | {"images": True}  # a recording renders every camera
            recorder = stack.enter_context(ReplayWriter(cfg.record, attrs=attrs))
        t0 = time.perf_counter()
        rows, ray_stats = rollouts(cfg, specs, name, kwargs, needs_images or bool(cfg.record), recorder,
                                   faults=cfg.eval.faults, perception=cfg.eval.perception, jitter=cfg.eval.jitter,
                                   batch=cfg.eval.batch)
        eval_s = time.perf_counter() - t0
    n_steps = sum(r.steps for r in rows)
    timing = {"collect_s": 0.0, "train_s": 0.0, **(timing or {}), "eval_s": round(eval_s, 2),
              "planner_ms_per_step": round(sum(r.planner_ms * r.steps for r in rows) / max(n_steps, 1), 3),
              "sim_steps_per_s": round(sum(r.physics_steps for r in rows) / max(eval_s, 1e-9), 1),
              # threads=null picks the idle cores; bf16 sums differ with the thread count, and so can a model
              "torch_threads": torch.get_num_threads()}
    results = build_results(cfg.task.name, name, cfg_dict, rows, timing)
    if name == "embodied_lm":  # what kind of machine made these figures
        from embodied_lm.model import native_bf16, resolve_precision

        trained = timing.get("train_s", 0) > 0
        results["precision"] = {"native_bf16_cpu": native_bf16("cpu"),
                                "planner": resolve_precision("cpu", cfg.decode.precision),
                                "train": resolve_precision("cpu", cfg.train.precision) if trained else None}
        results["decode"] = {"detect": kwargs.get("detect", False), "reports": kwargs.get("reports", False)}
        from embodied_lm.train import load_trained, read_checkpoint_config

        here = kwargs.get("model", model)  # None when only Ray workers loaded it
        learned = here.cfg.transitions if here is not None else \
            read_checkpoint_config(checkpoint)["model"].get("transitions", [])
        if learned and cfg.eval.transition_episodes:
            here = here if here is not None else load_trained(checkpoint, seed=cfg.seed)
            results["transitions"] = transition_stage(cfg, here, run_dir)
    if ray_stats is not None:
        keys = ("workers", "nodes", "retries", "retried_specs", "worker_deaths", "startup_s", "wall_s")
        results["ray"] = {k: ray_stats[k] for k in keys if k in ray_stats}
    path = write_results(run_dir, results, rows)
    plot_results({name: results}, run_dir / "success.png")
    print(format_table(results["families"]))
    retries = f"; {ray_stats['retries']} episode retries on Ray" if ray_stats else ""
    print(f"summary: {name} success {results['summary']['success_rate']:.1%} over {len(rows)} episodes "
          f"in {eval_s:.0f} s" + (f"; recorded to {cfg.record}" if cfg.record else "") + retries)
    return path


def transition_stage(cfg: RunConfig, model, run_dir: Path) -> dict[str, Any]:
    """Success detection and "what changed" on the skill steps of oracle episodes on test seeds (with
    ``eval.faults``, else ``collect.faults``): metrics for results.json, rows to transitions.jsonl."""
    from embodied_lm.transitions import evaluate_transitions, row_dict

    faults = cfg.eval.faults if any(cfg.eval.faults.values()) else cfg.collect.faults
    levels = [lv for lv in cfg.eval.levels if lv in ("L1", "L2")] or ["L1"]
    specs = generate_specs(cfg.collect.families, levels, cfg.eval.transition_episodes, cfg.seed, "test")
    env = TabletopEnv(make_env_config(cfg, model.cfg.sensors != "state", faults, cfg.eval.perception,
                                      cfg.eval.jitter))
    t0 = time.perf_counter()
    try:
        metrics, rows = evaluate_transitions(model, env, specs, model.cfg.transitions, cfg.decode.precision,
                                             progress=cfg.eval.progress)
    finally:
        env.close()
    with open(run_dir / "transitions.jsonl", "w") as f:
        f.writelines(json.dumps(row_dict(r)) + "\n" for r in rows)
    metrics |= {"faults": dict(faults), "wall_s": round(time.perf_counter() - t0, 1)}
    print(f"transitions: {json.dumps(metrics)}")
    return metrics


def _dataset(cfg: RunConfig, run_dir: Path, must_exist: bool = False) -> Path:
    path = Path(cfg.dataset) if cfg.dataset else run_dir / "demos.zarr"
    if must_exist:
        from embodied_lm.datasets import ReplayReader

        ReplayReader(path)  # raises a one-line InvalidStoreError when it is not a valid store
    return path


def _check_dataset_fits(cfg: RunConfig, path: Path) -> None:
    """A one-line ValueError when the configured encoder cannot read the store (no images for an
    image encoder): found before training, not after the model has loaded."""
    from embodied_lm.data import encoder_keys
    from embodied_lm.datasets import ReplayReader
    from sensors import build_encoder

    reader = ReplayReader(path)
    if reader.n_episodes:
        encoder_keys(reader, build_encoder(cfg.sensors.name, **{"seed": cfg.seed, **cfg.sensors.encoder}), path)


def _checkpoint(cfg: RunConfig, run_dir: Path, must_exist: bool = False) -> Path:
    path = Path(cfg.checkpoint) if cfg.checkpoint else run_dir / "checkpoint"
    if must_exist:
        from embodied_lm.train import read_checkpoint_config

        read_checkpoint_config(path)  # one-line CheckpointError when missing or incomplete
    return path


def free_cores(window_s: float = 0.5) -> int:
    """Cores not busy right now: the idle share of every core over ``window_s`` (/proc/stat), falling
    back to the 1-minute load average.  Torch threads beyond them spin against other processes
    (measured 4-6x slower training with 2 threads on a 2-core machine with one core busy).  The load
    average alone lags by a minute: a job that just ended would still count and halve our threads."""
    import os
    import time

    cores = len(os.sched_getaffinity(0))

    def idle_total() -> tuple[int, int]:
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
        return v[3] + v[4], sum(v)  # idle + iowait, all

    try:
        i0, t0 = idle_total()
        time.sleep(window_s)
        i1, t1 = idle_total()
        busy = (1 - (i1 - i0) / max(t1 - t0, 1)) * (os.cpu_count() or cores)
    except (OSError, ValueError, IndexError):
        busy = os.getloadavg()[0]
    return max(1, min(cores, round(cores - busy)))


class Interrupted(Exception):
    """Ctrl-C during a run; the message says what was kept and where."""


def kept_outputs(cfg: RunConfig, run_dir: Path) -> str:
    """What an interrupted run leaves that is valid: demonstrations, a checkpoint, recorded episodes."""
    from embodied_lm.datasets import ReplayReader
    from embodied_lm.train import CheckpointError, read_checkpoint_config

    kept = []
    for what, path in (("demonstrations", _dataset(cfg, run_dir)), ("recorded episodes", cfg.record)):
        if path and Path(path).exists():
            with contextlib.suppress(ValueError):  # not a valid store: nothing kept there
                kept.append(f"{ReplayReader(path).n_episodes} {what} in {path}")
    checkpoint = _checkpoint(cfg, run_dir)
    with contextlib.suppress(CheckpointError):  # no complete checkpoint: nothing kept there
        read_checkpoint_config(checkpoint)
        step = json.loads((checkpoint / "state.json").read_text())["step"]
        kept.append(f"checkpoint at step {step} in {checkpoint}")
    return "; ".join(kept) or "nothing"


def run(cfg: RunConfig, cfg_dict: dict[str, Any], run_dir: str | Path) -> Path | None:
    """Entry point behind experiments/run.py; returns the results.json path (None for collect/train only).
    Every input is checked before the first stage starts; Ctrl-C raises ``Interrupted``."""
    import torch

    run_dir = Path(run_dir)
    lm = cfg.planner.name == "embodied_lm"
    stages = cfg.stages if lm or cfg.stage != "all" else ["eval"]
    if not lm and "train" in stages:
        raise ConfigError(f"stage={cfg.stage} needs planner=embodied_lm ({cfg.planner.name} only evaluates)")
    # Validate before spending: a bad spec line or a missing input fails now, not after training.
    specs = eval_specs(cfg) if "eval" in stages else []
    if "train" in stages and "collect" not in stages:
        _check_dataset_fits(cfg, _dataset(cfg, run_dir, must_exist=True))
    if "eval" in stages and "train" not in stages and lm:
        _checkpoint(cfg, run_dir, must_exist=True)
    if "train" in stages and cfg.backbone.layers:
        from embodied_lm.backbones import decoder_layers

        if cfg.backbone.layers > (n := decoder_layers(cfg.backbone.name)):
            raise ConfigError(f"backbone.layers={cfg.backbone.layers}: {cfg.backbone.name} has {n} decoder layers")
    torch.set_num_threads(cfg.threads or free_cores())
    run_dir.mkdir(parents=True, exist_ok=True)
    timing: dict[str, float] = {}
    model = None
    try:
        if "collect" in stages:
            timing["collect_s"] = round(collect(cfg, cfg_dict, _dataset(cfg, run_dir)), 2)
        if "train" in stages:
            model, state = train_stage(cfg, _dataset(cfg, run_dir, must_exist=True), _checkpoint(cfg, run_dir))
            timing["train_s"] = round(state["train_s"], 2)
            timing["train_tokens_per_s"] = round(state["tokens"] / max(state["train_s"], 1e-9), 1)
            (run_dir / "train_losses.json").write_text(json.dumps(state["losses"]))
        if "eval" in stages:
            return eval_stage(cfg, cfg_dict, run_dir, specs, model, timing)
    except KeyboardInterrupt:
        raise Interrupted(f"interrupted; kept: {kept_outputs(cfg, run_dir)}") from None
    return None
