"""The embodied LM's speed per backbone: training throughput (tokens/s) and planner latency (ms per step).

Training: the main job's model (state sensors with referral tokens, relation loss, LoRA as in
experiments/conf/config.yaml: r=16 on every linear layer)
on real oracle steps from the sim
(L1, all TAMP families), batch 16, bf16 autocast where the CPU has it (``precision=auto``) and fp32;
median over timed steps after warm-up.  Planner: ``EmbodiedLMPlanner.act`` (sentence, encoder, KV-cache
greedy decoding, grammar constraint) on real observations, untrained weights (the latency of a step
does not depend on what was learned, only on prompt and answer lengths, which are those of real
steps here); median and p90 over steps.

Run::

    .venv/bin/python -m benchmarks.bench_lm                 # smollm2 and tiny, ~3 min
    .venv/bin/python -m benchmarks.bench_lm --backbones tiny --json lm_bench.json
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import torch
import yaml

from benchmarks.bench_ray_rollouts import load, machine
from embodied_lm.data import Example, prompt_text
from embodied_lm.evaluate import run_episode
from embodied_lm.lm_planner import EmbodiedLMPlanner
from embodied_lm.model import EmbodiedLM, ModelConfig, autocast, native_bf16
from embodied_lm.planners import make_planner
from embodied_lm.train import TrainConfig, _optimizer, make_batch
from sim.env import EnvConfig, TabletopEnv
from sim.tasks import generate_specs

CONF = Path(__file__).resolve().parents[1] / "experiments/conf"
STATE = yaml.safe_load((CONF / "sensors/state.yaml").read_text())
TRAIN = yaml.safe_load((CONF / "config.yaml").read_text())["train"]
FAMILIES = ["q1_color", "q2_on_table", "q3_on_object", "q4_feasible", "p1_grasp", "p2_stack"]


class _Recorder:
    """The oracle, noting every observation it acted on."""

    def __init__(self):
        self.oracle, self.steps = make_planner("oracle"), []

    def reset(self, env, obs, info):
        self.oracle.reset(env, obs, info)
        self.history = []

    def act(self, obs, info):
        action = self.oracle.act(obs, info)
        self.steps.append((obs, list(self.history), action))
        self.history.append(action)
        return action


def oracle_steps(episodes_per_family: int):
    env = TabletopEnv(EnvConfig(observe_images=False))
    rec = _Recorder()
    try:
        for spec in generate_specs(FAMILIES, ["L1"], episodes_per_family, 0, "train"):
            run_episode(env, rec, spec)
    finally:
        env.close()
    return rec.steps


def train_speed(model: EmbodiedLM, steps, precision: str, batch: int, n_steps: int) -> dict:
    examples = []
    for obs, history, action in steps:
        prompt = prompt_text(obs["instruction"], history, model.kind, obs["objects"])
        sent = model.sentence(prompt, action)
        examples.append(Example(sent, model.encoder.preprocess(obs, {}), ""))
    opt = _optimizer(model, TrainConfig())
    rng = np.random.default_rng(0)
    rates = []
    model.train()
    for i in range(n_steps + 2):
        b = make_batch(examples, rng.integers(len(examples), size=batch), model.tok.pad_token_id)
        t = time.perf_counter()
        with autocast("cpu", precision):
            loss = model(b)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if i >= 2:  # warm-up steps excluded
            rates.append(int(b["attention_mask"].sum()) / (time.perf_counter() - t))
    model.eval()
    return {"tokens_per_s": round(float(np.median(rates)), 1),
            "mean_tokens_per_example": round(float(np.mean([len(e.sentence.ids) for e in examples])), 1)}


def planner_latency(model: EmbodiedLM, steps, n: int) -> dict:
    planner = EmbodiedLMPlanner(model=model)
    ms = []
    for obs, history, _ in steps[:n]:
        planner.reset(None, obs, {})
        planner.history = list(history)
        t = time.perf_counter()
        planner.act(obs, {})
        ms.append(1000 * (time.perf_counter() - t))
    ms = ms[2:]  # first calls build tries and warm caches
    return {"median_ms": round(float(np.median(ms)), 1), "p90_ms": round(float(np.percentile(ms, 90)), 1),
            "steps": len(ms)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--backbones", nargs="+", default=["smollm2", "tiny"])
    ap.add_argument("--train-steps", type=int, default=8)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--planner-steps", type=int, default=40)
    ap.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print("machine:", machine(), f"| torch {torch.__version__}, {args.threads} threads, "
          f"native bf16: {native_bf16('cpu')}")
    steps = oracle_steps(4)
    rng = np.random.default_rng(0)
    steps = [steps[i] for i in rng.permutation(len(steps))]
    out = {"machine": machine(), "threads": args.threads, "backbones": {}}
    print(f"{'backbone':10} {'train tok/s bf16':>16} {'fp32':>8} {'planner ms/step median':>22} {'p90':>7}  load")
    for name in args.backbones:
        # the main job's model: state sensors and LoRA as configured in experiments/conf
        model = EmbodiedLM(ModelConfig(backbone=name, encoder=dict(STATE["encoder"]),
                                       relation_loss=STATE["relation_loss"], lora_r=TRAIN["lora_r"],
                                       lora_alpha=2 * TRAIN["lora_r"], lora_targets=TRAIN["lora_targets"]),
                           seed=0)
        row = {"train_bf16": train_speed(model, steps, "auto", args.batch, args.train_steps),
               "train_fp32": train_speed(model, steps, "fp32", args.batch, args.train_steps),
               "planner": planner_latency(model, steps, args.planner_steps)}
        out["backbones"][name] = row
        print(f"{name:10} {row['train_bf16']['tokens_per_s']:>16.0f} {row['train_fp32']['tokens_per_s']:>8.0f} "
              f"{row['planner']['median_ms']:>22.1f} {row['planner']['p90_ms']:>7.1f}  {load()}", flush=True)
    print(f"(mean {out['backbones'][args.backbones[0]]['train_bf16']['mean_tokens_per_example']} tokens per "
          f"training example; LoRA r={TRAIN['lora_r']} on {', '.join(TRAIN['lora_targets'])}; planner = "
          "constrained greedy decoding with a KV cache, LoRA merged)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)
        print("wrote", args.json)


if __name__ == "__main__":
    main()
