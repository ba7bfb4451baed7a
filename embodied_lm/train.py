"""Training: AdamW with linear warm-up and cosine decay over mixed batches of every task family;
checkpoints that resume exactly and refuse a mismatched config.  One loop for one process and for
data-parallel ranks (``embodied_lm.distributed.train_ray`` runs it on Ray Train workers).

A checkpoint directory holds ``model.safetensors`` (the parameters that train in this mode),
``optimizer.pt``, ``state.json`` (step, sampler RNG state, loss history) and ``config.json`` (the
resolved model + train config).  It is written beside its place and renamed into it
(:func:`embodied_lm.atomic.staged_dir`), so a killed run never leaves a checkpoint that looks valid.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from embodied_lm.atomic import staged_dir
from embodied_lm.config import TrainConfig  # the one train config: defaults and checks
from embodied_lm.data import Example
from embodied_lm.model import EmbodiedLM, ModelConfig, autocast, bf16_training, compiled_layers
from embodied_lm.sentence import IGNORE, collate

SENSOR_PARAMS = ("encoder.", "projector.", "relation_heads.")  # trained at train.sensor_lr


class CheckpointError(ValueError):
    """A checkpoint that is missing, incomplete or made for another config."""


def make_batch(examples: list[Example], idx: np.ndarray, pad_id: int) -> dict:
    from sensors import collate as collate_sensors

    batch = collate([examples[i].sentence for i in idx], pad_id)
    batch["sensors"] = collate_sensors([o for i in idx for o in examples[i].observations])  # in sentence order
    return batch


def length_groups(idx: np.ndarray, lengths: np.ndarray, n: int) -> list[np.ndarray]:
    """``idx`` sorted by sentence length and cut into ``n`` runs, each padded only to its own longest
    (a batch padded to its longest example spends about a third of its positions on padding on the
    main job's data; two runs under a fifth: benchmarks/README.md, "LM speed")."""
    order = idx[np.argsort(lengths[idx], kind="stable")]
    return [g for g in np.array_split(order, n) if len(g)]


def _optimizer(model: EmbodiedLM, cfg: TrainConfig) -> torch.optim.Optimizer:
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    sensor = [p for n, p in named if n.startswith(SENSOR_PARAMS)]
    lm = [p for n, p in named if not n.startswith(SENSOR_PARAMS)]
    groups = [{"params": sensor, "lr": cfg.sensor_lr}] + ([{"params": lm, "lr": cfg.lr}] if lm else [])
    return torch.optim.AdamW(groups, weight_decay=cfg.weight_decay)


def pretrain_relations(model: EmbodiedLM, examples: list[Example], cfg: TrainConfig,
                       device: torch.device | str = "cpu") -> dict[str, float]:
    """Train the encoder + projector alone on the relation loss (no LM pass: ~0.1 s a step) on the scenes
    of ``examples``, so the LM's first steps already read tokens that carry the facts.  Returns each
    fact's accuracy on those scenes.  Deterministic in ``cfg.seed``."""
    if model.relation_ids is None or cfg.relation_steps == 0:
        return {}
    from sensors import collate as collate_sensors

    scenes = collate_sensors([o for e in examples for o in e.observations])  # "objects" (E, N, 12), ...
    heads = model.relation_heads.parameters() if model.relation_heads is not None else []
    params = [*model.encoder.parameters(), *model.projector.parameters(), *heads]
    opt = torch.optim.AdamW(params, lr=3e-3)
    rng = np.random.default_rng([cfg.seed, 1])
    for _ in range(cfg.relation_steps):
        pick = rng.integers(len(scenes["objects"]), size=128)
        ob = {k: v[pick].to(device) for k, v in scenes.items()}
        enc, tokens, pointers, _ = model.encode(ob)
        loss = model.relation_loss(enc, tokens, pointers, ob["objects"])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return model.relation_accuracy({k: v[:1024].to(device) for k, v in scenes.items()})


def batch_sampler(examples: list[Example], cfg: TrainConfig):
    """-> draw(rng) giving the example indices of one batch.  ``balance=family``: each family's decisions
    (steps) equally likely (a question is one decision, a 4-step plan four: per step they would be
    under-trained), or as likely as ``cfg.family_weights`` says (relative odds, 1 for a family not
    named; weights of families absent from ``examples`` are unused).  An example is drawn in proportion
    to its decisions (one per step example; an episode example holds all of its steps), so both contexts
    train each family's decisions in the same proportions."""
    n = len(examples)
    if cfg.balance == "step":
        return lambda rng: rng.integers(n, size=cfg.batch_size)
    tasks = np.array([e.task for e in examples])
    decisions = np.array([e.decisions for e in examples], dtype=np.float64)
    names, inverse = np.unique(tasks, return_inverse=True)
    per_family = np.bincount(inverse, weights=decisions)  # decisions of each family
    odds = np.array([cfg.family_weights.get(f, 1.0) for f in names])
    p = odds[inverse] / per_family[inverse]  # (n,): my family's odds / decisions of my family
    return lambda rng: rng.choice(n, size=cfg.batch_size, p=p / p.sum())


def _lr_scale(step: int, cfg: TrainConfig) -> float:
    if step < cfg.warmup:
        return (step + 1) / cfg.warmup
    t = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(t, 1.0)))


def to_device(x: Any, device: torch.device | str) -> Any:
    """A batch (tensors in nested dicts) on ``device``; anything else as it is."""
    if isinstance(x, torch.Tensor):
        return x.to(device, non_blocking=True)
    if isinstance(x, dict):
        return {k: to_device(v, device) for k, v in x.items()}
    return x


def _answer_tokens(examples: list[Example], pad_id: int) -> np.ndarray:
    """Per example, the tokens its loss averages over (as ``EmbodiedLM.forward`` selects them:
    ``labels[:, 1:] != IGNORE``), from the project's own collate."""
    return np.array([int((collate([e.sentence], pad_id)["labels"][0, 1:] != IGNORE).sum()) for e in examples])


def train(model: EmbodiedLM, examples: list[Example], cfg: TrainConfig, out_dir: str | Path,
          resume: str | Path | None = None, progress: bool = True, stop_after: int | None = None, *,
          rank: int = 0, world_size: int = 1, prepare: Callable[[EmbodiedLM], torch.nn.Module] | None = None,
          report: Callable[[dict, float | None], None] | None = None) -> dict:
    """Train for ``cfg.steps`` (or until ``stop_after`` steps, for tests); returns the training state
    ``{step, losses, tokens, train_s}`` and writes it with the weights to ``out_dir`` at every
    ``cfg.checkpoint_every`` steps and at the end.  ``progress``: a progress bar, else a log line
    every 25 steps.

    Data parallel: ``world_size`` processes (``torch.distributed`` initialised), this one ``rank``.
    Every rank draws the *global* batch from the same Generator -- the batch one process would
    draw -- and trains on its slice ``np.array_split(idx, world_size)[rank]``; its loss (the mean
    over the slice's answer tokens) is scaled by ``world_size * n_mine / n_global``, so the
    gradient DDP averages over ranks is the global batch's, and gradient clipping sees the
    single-process norm.  The logged loss is the all-reduced global mean.  Rank 0 alone writes
    checkpoints; they hold no world size, so a run resumes with any number of ranks.

    prepare  ``prepare(model)`` after relation pretraining: moves the model to its device and
             returns the module whose forward trains it (Ray Train's ``prepare_model``: DDP).
    report   ``report(state, lr_scale)`` on every rank at each checkpoint step (once at the end if
             there was none: a resumed run that had already finished).
    """
    if not examples:
        raise ValueError("no training examples (is the dataset empty or were all episodes failures?)")
    out_dir = Path(out_dir)
    if resume is None and cfg.relation_steps:  # every rank the same: the same seed, the same scenes
        t = time.perf_counter()
        acc = pretrain_relations(model, examples, cfg, device=next(model.parameters()).device)
        if rank == 0:
            print(f"relation pretraining: {cfg.relation_steps} steps in {time.perf_counter() - t:.0f} s, accuracy "
                  + ", ".join(f"{k} {v:.3f}" for k, v in acc.items()), flush=True)
    forward = model if prepare is None else prepare(model)
    device = next(model.parameters()).device
    opt = _optimizer(model, cfg)
    base_lrs = [g["lr"] for g in opt.param_groups]  # before loading: saved groups carry a scheduled lr
    draw = batch_sampler(examples, cfg)
    rng = np.random.default_rng(cfg.seed)
    state = {"step": 0, "losses": [], "tokens": 0, "train_s": 0.0}
    if resume is not None:
        state = load_checkpoint(model, resume, opt)
        rng.bit_generator.state = state.pop("rng")
    pad = model.tok.pad_token_id
    n_answer = _answer_tokens(examples, pad)
    lengths = np.array([len(e.sentence.ids) for e in examples])
    n_obs = np.array([len(e.observations) for e in examples])
    params = [p for p in model.parameters() if p.requires_grad]
    lr_scale, reported = None, False
    model.train()
    bar = tqdm(total=cfg.steps, initial=state["step"], desc="train", unit="step",
               disable=not progress or rank != 0, dynamic_ncols=True)
    t0 = time.perf_counter() - state["train_s"]
    with bf16_training(model, device.type, cfg.precision), compiled_layers(model, cfg.compile):
        while state["step"] < cfg.steps:
            idx = draw(rng)  # the global batch: the same on every rank
            mine = np.array_split(idx, world_size)[rank]
            lr_scale = _lr_scale(state["step"], cfg)
            for g, lr in zip(opt.param_groups, base_lrs):
                g["lr"] = lr * lr_scale
            n_mine, n_global = int(n_answer[mine].sum()), int(n_answer[idx].sum())
            # DDP averages over ranks -> scaled, the gradient of the global batch's mean loss
            scale = world_size * n_mine / n_global
            opt.zero_grad(set_to_none=True)
            loss = 0.0
            parts = length_groups(mine, lengths, cfg.micro_batches)
            for i, part in enumerate(parts):
                batch = to_device(make_batch(examples, part, pad), device)
                sync = i == len(parts) - 1 or not hasattr(forward, "no_sync")  # DDP: all-reduce once per step
                with nullcontext() if sync else forward.no_sync():
                    with autocast(device.type, cfg.precision):
                        part_loss = forward(batch, answer_share=float(n_answer[part].sum() / n_mine),
                                            obs_share=float(n_obs[part].sum() / n_obs[mine].sum()))
                    (part_loss * scale).backward()
                loss = loss + part_loss.detach()  # this slice's mean over its answer tokens
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            if world_size > 1:
                total = (loss * (n_mine / n_global)).reshape(1)
                torch.distributed.all_reduce(total)
                loss_value = total.item()
            else:
                loss_value = loss.item()
            state["step"] += 1
            state["losses"].append(round(loss_value, 5))
            state["tokens"] += sum(len(examples[i].sentence.ids) for i in idx)
            state["train_s"] = time.perf_counter() - t0
            bar.update(1)
            bar.set_postfix(loss=f"{state['losses'][-1]:.3f}", refresh=False)
            if not progress and rank == 0 and state["step"] % 25 == 0:  # logs without a bar still show progress
                recent = np.mean(state["losses"][-25:])
                print(f"train step {state['step']}/{cfg.steps} loss {recent:.3f} "
                      f"{state['tokens'] / state['train_s']:.0f} tokens/s"
                      + (f" ({world_size} workers)" if world_size > 1 else ""), flush=True)
            last = state["step"] == cfg.steps or (stop_after is not None and state["step"] >= stop_after)
            if state["step"] % cfg.checkpoint_every == 0 or last:
                if rank == 0:
                    save_checkpoint(model, opt, cfg, {**state, "rng": rng.bit_generator.state}, out_dir)
                if report is not None:
                    report(state, lr_scale)
                    reported = True
            if last:
                break
    bar.close()
    if report is not None and not reported:
        report(state, lr_scale)
    model.eval()
    return state


def save_checkpoint(model: EmbodiedLM, opt, cfg: TrainConfig, state: dict, out_dir: Path) -> Path:
    with staged_dir(out_dir, overwrite=True) as tmp:
        save_file({k: v.contiguous() for k, v in model.trainable_state().items()}, tmp / "model.safetensors")
        torch.save(opt.state_dict(), tmp / "optimizer.pt")
        (tmp / "state.json").write_text(json.dumps(state))
        (tmp / "config.json").write_text(json.dumps({"model": asdict(model.cfg), "train": asdict(cfg)}, indent=2))
    return Path(out_dir)


def read_checkpoint_config(path: str | Path) -> dict:
    path = Path(path)
    files = ("model.safetensors", "config.json", "state.json")
    if not path.is_dir() or not all((path / f).is_file() for f in files):
        raise CheckpointError(f"{path}: not a checkpoint (needs {', '.join(files)})")
    return json.loads((path / "config.json").read_text())


def check_checkpoint(path: str | Path, model_cfg: ModelConfig) -> None:
    """Raises ``CheckpointError`` unless ``path`` is a complete checkpoint made for ``model_cfg``."""
    saved = asdict(model_config_from_checkpoint(path))  # keys added since it was written: their defaults
    mine = asdict(model_cfg)
    diff = [f"{k}: checkpoint {saved.get(k)!r} vs config {mine[k]!r}" for k in mine if saved.get(k) != mine[k]]
    if diff:
        raise CheckpointError(f"{path}: made for another model config ({'; '.join(diff)})")


def load_checkpoint(model: EmbodiedLM, path: str | Path, opt: torch.optim.Optimizer | None = None) -> dict:
    """Load weights (and optimizer) into ``model``; refuses a checkpoint made for another model config."""
    path = Path(path)
    check_checkpoint(path, model.cfg)
    weights = load_file(path / "model.safetensors")
    expected = model.trainable_state()
    if set(weights) != set(expected) or any(weights[k].shape != expected[k].shape for k in weights):
        raise CheckpointError(f"{path}: parameter names/shapes do not match this model")
    model.load_state_dict(weights, strict=False)
    if opt is not None and (path / "optimizer.pt").is_file():
        opt.load_state_dict(torch.load(path / "optimizer.pt", weights_only=True, map_location="cpu"))
    return json.loads((path / "state.json").read_text())


def model_config_from_checkpoint(path: str | Path) -> ModelConfig:
    try:
        return ModelConfig(**read_checkpoint_config(path)["model"])
    except (TypeError, ValueError) as e:  # a key this version does not know, or a value it refuses
        raise CheckpointError(f"{path}: config.json is not a model config of this version ({e})") from None


def load_trained(path: str | Path, seed: int = 0) -> EmbodiedLM:
    """The model a checkpoint was trained as, with its weights."""
    model = EmbodiedLM(model_config_from_checkpoint(path), seed=seed)
    load_checkpoint(model, path)
    return model.eval()
