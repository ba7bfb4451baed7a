"""The embodied LM's speed per backbone: training throughput against the machine's matmul peak, and
planner latency (ms per step).

Training: the main job's model (``RunConfig()``'s defaults: state sensors with referral tokens,
relation loss, LoRA r=16 on every linear layer) on real oracle steps from the sim (L1, all TAMP
families, both reference styles), batches of ``train.batch_size`` run as the trainer runs them
(``train.micro_batches`` length-sorted parts), bf16 autocast and fp32; median over timed steps after
warm-up.  FLOPs per step are counted by ``torch.utils.flop_counter`` (matmuls and attention, forward
and backward) and set against the measured peak of one large matmul in the same precision and
threads.  Planner: ``EmbodiedLMPlanner.act`` (sentence, encoder, KV-cache greedy decoding, grammar
constraint) on real observations, untrained weights (the latency of a step does not depend on what was
learned, only on prompt and answer lengths, which are those of real steps here); median and p90.

Run::

    .venv/bin/python -m benchmarks.bench_lm                 # smollm2 and tiny, ~4 min
    .venv/bin/python -m benchmarks.bench_lm --backbones smollm2 --micro-batches 1 2 --json lm_bench.json
"""

from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import replace

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from benchmarks.bench_ray_rollouts import load, machine
from embodied_lm.config import RunConfig
from embodied_lm.data import Example, prompt_text
from embodied_lm.evaluate import run_episode
from embodied_lm.lm_planner import EmbodiedLMPlanner
from embodied_lm.model import EmbodiedLM, autocast, bf16_training, compiled_layers, native_bf16
from embodied_lm.planners import make_planner
from embodied_lm.train import _optimizer, length_groups, make_batch
from sim.env import EnvConfig, TabletopEnv
from sim.tasks import generate_specs

RUN = RunConfig()  # the main job's defaults
FAMILIES = RUN.collect.families


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
        for spec in generate_specs(FAMILIES, ["L1"], episodes_per_family, 0, "train", refer=RUN.collect.refer):
            run_episode(env, rec, spec)
    finally:
        env.close()
    return rec.steps


def matmul_peak(precision: str, n: int = 2048, reps: int = 6) -> float:
    """FLOP/s of one large (n x n) @ (n x n) matmul, median of ``reps`` (the kernel's practical peak)."""
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b  # warm-up
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - t)
    return 2 * n**3 / float(np.median(times))


def train_speed(model: EmbodiedLM, steps, precision: str, micro_batches: int, n_steps: int,
                compile: bool = False) -> dict:
    """One optimiser step as ``embodied_lm.train.train`` takes it: the batch sorted by length into
    ``micro_batches`` parts, each padded to its own longest; in bf16 the frozen weights held in bf16;
    with ``compile`` the decoder layers compiled (``train.compile``; the compile itself is in the warm-up)."""
    examples = []
    for obs, history, action in steps:
        prompt = prompt_text(obs["instruction"], history, model.kind, obs["objects"])
        examples.append(Example(model.sentence(prompt, action), model.encoder.preprocess(obs, {}), ""))
    lengths = np.array([len(e.sentence.ids) for e in examples])
    opt = _optimizer(model, RUN.train)
    rng = np.random.default_rng(0)
    secs, tokens, padded = [], [], []

    def step(counter=None) -> tuple[np.ndarray, list[dict]]:
        idx = rng.integers(len(examples), size=RUN.train.batch_size)
        parts = [make_batch(examples, p, model.tok.pad_token_id)
                 for p in length_groups(idx, lengths, micro_batches)]
        with counter or torch.enable_grad(), bf16_training(model, "cpu", precision):
            opt.zero_grad(set_to_none=True)
            for b in parts:
                with autocast("cpu", precision):
                    loss = model(b, answer_share=1 / len(parts), obs_share=1 / len(parts))
                loss.backward()
            opt.step()
        return idx, parts

    model.train()
    counter = FlopCounterMode(display=False)  # counted eagerly (the same FLOPs), not timed: its hooks cost time
    _, parts = step(counter)
    flops = counter.get_total_flops() / int(sum(b["attention_mask"].sum() for b in parts))
    with compiled_layers(model, compile):
        t = time.perf_counter()
        step()
        first_s = time.perf_counter() - t  # with compile: the compile included
        step()  # the first steps warm caches and oneDNN kernels
        for _ in range(n_steps):
            t = time.perf_counter()
            idx, parts = step()
            secs.append(time.perf_counter() - t)
            tokens.append(int(lengths[idx].sum()))
            padded.append(sum(b["ids"].numel() for b in parts))
    model.eval()
    step_s = float(np.median(secs))
    tokens_per_s = float(np.median(np.array(tokens) / np.array(secs)))
    return {"ms_per_step": round(1000 * step_s, 1), "tokens_per_s": round(tokens_per_s, 1),
            "padded_share": round(1 - sum(tokens) / sum(padded), 3),
            "gflop_per_token": round(flops / 1e9, 3), "gflop_per_s": round(flops * tokens_per_s / 1e9, 1),
            "mean_tokens_per_example": round(float(lengths.mean()), 1), "compile": compile,
            "first_step_s": round(first_s, 1)}


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
    ap.add_argument("--micro-batches", type=int, nargs="+", default=[RUN.train.micro_batches])
    ap.add_argument("--compile", nargs="+", choices=["off", "on"], default=["off", "on"],
                    help="train.compile: decoder layers eager and / or compiled")
    ap.add_argument("--planner-steps", type=int, default=40)
    ap.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    bf16 = native_bf16("cpu")
    print("machine:", machine(), f"| torch {torch.__version__}, {args.threads} threads, native bf16: {bf16}")
    peak = {p: matmul_peak(p) for p in ("bf16", "fp32")}
    print(f"matmul peak (2048^3): bf16 {peak['bf16'] / 1e9:.0f} GFLOP/s, fp32 {peak['fp32'] / 1e9:.0f} GFLOP/s")
    steps = oracle_steps(4)
    rng = np.random.default_rng(0)
    steps = [steps[i] for i in rng.permutation(len(steps))]
    out = {"machine": machine(), "threads": args.threads, "native_bf16": bf16,
           "matmul_peak_gflop_per_s": {k: round(v / 1e9, 1) for k, v in peak.items()}, "backbones": {}}
    print(f"{'backbone':9} {'precision':9} {'parts':>5} {'compile':>7} {'ms/step':>8} {'tok/s':>6} {'padding':>7} "
          f"{'GFLOP/tok':>9} {'GFLOP/s':>8} {'of peak':>7} {'1st step':>8}")
    for name in args.backbones:
        model = EmbodiedLM(replace(RUN.model_config(), backbone=name), seed=0)
        row = {}
        for precision in ("bf16", "fp32"):
            for parts in args.micro_batches:
                for comp in args.compile:
                    r = train_speed(model, steps, precision, parts, args.train_steps, compile=comp == "on")
                    r["share_of_peak"] = round(r["gflop_per_s"] * 1e9 / peak[precision], 3)
                    row[f"train_{precision}_{parts}" + ("_compiled" if comp == "on" else "")] = r
                    print(f"{name:9} {precision:9} {parts:>5} {comp:>7} {r['ms_per_step']:>8.0f} "
                          f"{r['tokens_per_s']:>6.0f} {r['padded_share']:>7.0%} {r['gflop_per_token']:>9.2f} "
                          f"{r['gflop_per_s']:>8.1f} {r['share_of_peak']:>7.0%} {r['first_step_s']:>7.1f}s  "
                          f"load {load()}", flush=True)
        row["planner"] = planner_latency(model, steps, args.planner_steps)
        out["backbones"][name] = row
        p = row["planner"]
        print(f"{name:9} planner: {p['median_ms']:.1f} ms/step median, p90 {p['p90_ms']:.1f}", flush=True)
    print(f"(mean {row[next(iter(row))]['mean_tokens_per_example']} tokens per training example; batch "
          f"{RUN.train.batch_size}; LoRA r={RUN.train.lora_r} on {', '.join(RUN.train.lora_targets)}; planner = "
          "constrained greedy decoding with a KV cache, LoRA merged)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)
        print("wrote", args.json)


if __name__ == "__main__":
    main()
