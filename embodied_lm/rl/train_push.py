"""Train the push skill with RLlib PPO (new API stack, torch) and export it as a plain torch MLP.

    python -m embodied_lm.rl.train_push --timesteps 300000 --max-minutes 60

Sampling runs in the driver (``num_env_runners=0``, a few vectorised envs) and the learner too
(``num_learners=0``): on a 2-core machine extra processes only add overhead.  Every iteration prints
the sampled env steps, mean return, training success rate (stochastic policy) and wall time.  At the end
the actor (encoder + mean rows of the action head) is copied into ``skills.learned.build_policy_mlp``,
checked to reproduce the RLModule's mean action, evaluated deterministically on fresh seeds
(``--eval-episodes``, default 100) and written to ``--out`` as ``policy.pt`` (state dict) and
``config.json`` (observation/action contract, training figures, evaluation, versions).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from skills.learned import (
    ACT_DIM,
    CHECKPOINT_DIR,
    CONTROL_HZ,
    FORMAT,
    MAX_SPEED,
    MAX_TARGET_DIST,
    OBS_DIM,
    OBS_NAMES,
    POLICY_HZ,
    STEP_M,
    SUCCESS_TOL,
    WAYPOINTS_PER_ACTION,
    PushPolicy,
    build_policy_mlp,
)

EVAL_SEED0 = 1_000_000  # final evaluation seeds start here; training episodes are seeded by RLlib from --seed
SELECT_SEED0 = 500_000  # periodic model-selection evaluations use these (disjoint from the final evaluation)


def on_episode_end(*, episode, metrics_logger, **kwargs) -> None:
    """RLlib callback: log the env's ``success`` flag of every finished episode."""
    metrics_logger.log_value("success", float(episode.get_infos(-1).get("success", False)), reduce="mean",
                             window=100)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m embodied_lm.rl.train_push", description=__doc__.splitlines()[0])
    ap.add_argument("--timesteps", type=int, default=300_000, help="env steps to sample (upper bound)")
    ap.add_argument("--max-minutes", type=float, default=60.0, help="wall-clock bound for training")
    ap.add_argument("--stop-success", type=float, default=0.95,
                    help="stop early once a model-selection evaluation reaches this success rate")
    ap.add_argument("--select-every", type=int, default=10,
                    help="every N iterations, evaluate the deterministic policy on --select-episodes seeds "
                         "(disjoint from the final evaluation) and keep the best one for export; 0 = off")
    ap.add_argument("--select-episodes", type=int, default=40)
    ap.add_argument("--batch", type=int, default=4000, help="train_batch_size_per_learner")
    ap.add_argument("--minibatch", type=int, default=500)
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--gamma", type=float, default=0.98)
    ap.add_argument("--lambda", dest="lambda_", type=float, default=0.95)
    ap.add_argument("--entropy", type=float, default=0.0)
    ap.add_argument("--hiddens", default="64,64", help="actor/critic hidden widths, comma-separated")
    ap.add_argument("--activation", default="tanh", choices=["tanh", "relu"])
    ap.add_argument("--env-runners", type=int, default=0, choices=[0, 1])
    ap.add_argument("--envs", type=int, default=4, help="vectorised envs per env runner")
    ap.add_argument("--env-config", default="{}", help="JSON overrides of sim.push_env.DEFAULTS")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--eval-episodes", type=int, default=100)
    ap.add_argument("--eval-control", default="fast,move_ee",
                    help="PushEnv control modes to evaluate the exported policy in (first one is headline)")
    ap.add_argument("--out", default=str(CHECKPOINT_DIR), help="export directory")
    ap.add_argument("--save-algo", default=None, help="also save the full RLlib checkpoint here (large; keep it "
                                                     "out of the repository)")
    ap.add_argument("--restore", default=None, help="continue from an RLlib checkpoint saved with --save-algo")
    ap.add_argument("--threads", type=int, default=1, help="torch threads in the driver")
    args = ap.parse_args(argv)
    args.hiddens_list = [int(h) for h in args.hiddens.split(",") if h]
    try:
        args.env_config_dict = json.loads(args.env_config)
    except json.JSONDecodeError as e:
        ap.error(f"--env-config is not JSON: {e}")
    return args


def build_config(args: argparse.Namespace):
    from ray.rllib.algorithms.ppo import PPOConfig

    from sim.push_env import PushEnv

    return (
        PPOConfig()
        .environment(PushEnv, env_config=args.env_config_dict)
        .framework("torch")
        .env_runners(num_env_runners=args.env_runners, num_envs_per_env_runner=args.envs)
        .learners(num_learners=0)
        .training(train_batch_size_per_learner=args.batch, minibatch_size=args.minibatch,
                  num_epochs=args.epochs, lr=args.lr, gamma=args.gamma, lambda_=args.lambda_,
                  entropy_coeff=args.entropy, vf_clip_param=20.0)
        .rl_module(model_config={"fcnet_hiddens": args.hiddens_list, "fcnet_activation": args.activation,
                                 "head_fcnet_hiddens": []})
        .callbacks(on_episode_end=on_episode_end)
        .reporting(min_time_s_per_iteration=0, min_sample_timesteps_per_iteration=1)
        .debugging(seed=args.seed)
    )


def actor_state_dict(module_state: dict[str, Any], n_hidden: int) -> dict[str, Any]:
    """RLModule (DefaultPPOTorchRLModule) weights -> ``build_policy_mlp`` state dict: the actor encoder's
    linear layers, then the first ``ACT_DIM`` rows (the Gaussian means) of the action head."""
    out = {}
    for i in range(n_hidden):
        for k in ("weight", "bias"):
            out[f"{2 * i}.{k}"] = module_state[f"encoder.actor_encoder.net.mlp.{2 * i}.{k}"]
    out[f"{2 * n_hidden}.weight"] = module_state["pi.net.mlp.0.weight"][:ACT_DIM]
    out[f"{2 * n_hidden}.bias"] = module_state["pi.net.mlp.0.bias"][:ACT_DIM]
    return out


def export_actor(module, hiddens: list[int], activation: str) -> PushPolicy:
    """Copy the RLModule's actor into the plain MLP and check both give the same mean action."""
    import torch

    state = {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}
    net = build_policy_mlp(OBS_DIM, hiddens, ACT_DIM, activation)
    net.load_state_dict(actor_state_dict(state, len(hiddens)))
    net.eval()
    x = torch.randn(256, OBS_DIM)
    with torch.no_grad():
        ref = module.forward_inference({"obs": x})["action_dist_inputs"][:, :ACT_DIM]
        err = float((net(x) - ref).abs().max())
    if err > 1e-5:
        raise RuntimeError(f"exported MLP differs from the RLModule's mean action by {err:.2e}")
    return PushPolicy(net, {"hiddens": hiddens, "activation": activation})


def evaluate(policy: PushPolicy, episodes: int, env_config: dict[str, Any], control: str = "fast",
             seed0: int = EVAL_SEED0) -> dict[str, Any]:
    """Deterministic (mean-action) rollouts of the exported policy on seeds ``seed0 ..``."""
    from sim.push_env import PushEnv

    env = PushEnv(env_config | {"control": control, "move_ee_prob": 0.0})
    succ, returns, lengths, final = [], [], [], []
    t0 = time.perf_counter()
    try:
        for i in range(episodes):
            obs, info = env.reset(seed=seed0 + i)
            ret, n, done = 0.0, 0, False
            while not done:
                obs, r, term, trunc, info = env.step(policy.act(obs))
                ret, n, done = ret + r, n + 1, term or trunc
            succ.append(bool(info["success"]))
            returns.append(ret)
            lengths.append(n)
            final.append(info["distance"])
    finally:
        env.close()
    return {"control": control, "episodes": episodes, "success_rate": float(np.mean(succ)),
            "mean_return": float(np.mean(returns)), "mean_steps": float(np.mean(lengths)),
            "median_final_distance_m": float(np.median(final)), "seeds": [seed0, seed0 + episodes - 1],
            "wall_s": round(time.perf_counter() - t0, 1)}


def save(policy: PushPolicy, out: Path, meta: dict[str, Any]) -> None:
    import torch

    out.mkdir(parents=True, exist_ok=True)
    torch.save(policy.net.state_dict(), out / "policy.pt")
    (out / "config.json").write_text(json.dumps(meta, indent=2) + "\n")


def _versions() -> dict[str, str]:
    import gymnasium
    import pybullet  # noqa: F401
    import ray
    import torch

    return {"python": platform.python_version(), "ray": ray.__version__, "torch": torch.__version__,
            "gymnasium": gymnasium.__version__, "numpy": np.__version__}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray
    import torch

    from sim.push_env import DEFAULTS

    torch.set_num_threads(args.threads)
    env_config = {k: (list(v) if isinstance(v, tuple) else v) for k, v in DEFAULTS.items()}
    env_config |= args.env_config_dict
    t_start = time.perf_counter()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        algo = build_config(args).build_algo()
        if args.restore:
            algo.restore_from_path(str(Path(args.restore).resolve()))
        history, selections, it, steps = [], [], 0, 0
        best: tuple[float, int, PushPolicy] | None = None
        print(f"{'iter':>4} {'env_steps':>9} {'return':>7} {'success':>7} {'ep_len':>6} {'wall_s':>7}", flush=True)
        while True:
            res = algo.train()
            it += 1
            er = res["env_runners"]
            steps = int(res.get("num_env_steps_sampled_lifetime", er.get("num_env_steps_sampled_lifetime", 0)))
            row = {"iteration": it, "env_steps": steps, "return": float(er.get("episode_return_mean", np.nan)),
                   "success": float(er.get("success", np.nan)),
                   "ep_len": float(er.get("episode_len_mean", np.nan)),
                   "wall_s": round(time.perf_counter() - t_start, 1)}
            history.append(row)
            print(f"{it:4d} {steps:9d} {row['return']:7.2f} {row['success']:7.2f} {row['ep_len']:6.1f} "
                  f"{row['wall_s']:7.1f}", flush=True)
            out_of_budget = steps >= args.timesteps or time.perf_counter() - t_start > 60 * args.max_minutes
            if args.select_every and (it % args.select_every == 0 or out_of_budget):
                cand = export_actor(algo.get_module(), args.hiddens_list, args.activation)
                ev = evaluate(cand, args.select_episodes, env_config, "fast", seed0=SELECT_SEED0)
                selections.append({"iteration": it, "env_steps": steps, "success_rate": ev["success_rate"]})
                print(f"     select: deterministic success {ev['success_rate']:.3f} on {args.select_episodes} "
                      f"episodes ({ev['wall_s']} s)", flush=True)
                if best is None or ev["success_rate"] > best[0]:
                    best = (ev["success_rate"], it, cand)
                if ev["success_rate"] >= args.stop_success:
                    stop = "stop_success"
                    break
            if steps >= args.timesteps:
                stop = "timesteps"
            elif time.perf_counter() - t_start > 60 * args.max_minutes:
                stop = "max_minutes"
            else:
                continue
            break
        train_s = time.perf_counter() - t_start
        if best is not None:
            policy, chosen = best[2], best[1]
        else:
            policy, chosen = export_actor(algo.get_module(), args.hiddens_list, args.activation), it
        if args.save_algo:
            algo.save_to_path(str(Path(args.save_algo).resolve()))
        algo.stop()
    finally:
        ray.shutdown()
    print(f"training stopped ({stop}) after {it} iterations, {steps} env steps, {train_s:.0f} s; "
          f"exporting the policy of iteration {chosen}", flush=True)

    evals = []
    for control in [c for c in args.eval_control.split(",") if c]:
        ev = evaluate(policy, args.eval_episodes, env_config, control)
        evals.append(ev)
        print(f"eval ({control}): success {ev['success_rate']:.3f} over {ev['episodes']} episodes, "
              f"mean return {ev['mean_return']:.2f}, mean steps {ev['mean_steps']:.1f} ({ev['wall_s']} s)",
              flush=True)
    hyper = ("batch", "minibatch", "epochs", "lr", "gamma", "lambda_", "entropy", "envs", "env_runners", "seed")
    command = "python -m embodied_lm.rl.train_push " + " ".join(sys.argv[1:] if argv is None else argv)
    meta = {
        "format": FORMAT, "obs_names": list(OBS_NAMES), "obs_dim": OBS_DIM, "act_dim": ACT_DIM,
        "hiddens": args.hiddens_list, "activation": args.activation,
        "deterministic": "mean action, clipped to [-1, 1]",
        "action": {"meaning": "fingertip planar velocity (along, across the block->target line); world speed "
                              "min(|a|, 1) * max_speed", "max_speed_m_s": MAX_SPEED,
                   "policy_hz": POLICY_HZ, "control_hz": CONTROL_HZ, "waypoints_per_action": WAYPOINTS_PER_ACTION},
        "step_m": STEP_M, "success_tol_m": SUCCESS_TOL, "max_target_dist_m": MAX_TARGET_DIST,
        "env": "sim.push_env.PushEnv", "env_config": env_config,
        "training": {"algorithm": "PPO (RLlib new API stack, torch)", "command": command.strip(),
                     "iterations": it, "env_steps": steps, "wall_s": round(train_s, 1), "stopped_by": stop,
                     "final_return_mean": history[-1]["return"], "final_success_rate": history[-1]["success"],
                     "exported_iteration": chosen, "selection": selections,
                     "hyperparameters": {k: getattr(args, k) for k in hyper},
                     "history": history},
        "evaluation": evals,
        "versions": _versions(),
    }
    out = Path(args.out)
    save(policy, out, meta)
    print(f"wrote {out / 'policy.pt'} and {out / 'config.json'}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
