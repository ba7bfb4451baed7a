"""Data-parallel training on Ray Train (``TorchTrainer``, DDP: gloo on CPU, nccl on GPU).

A launcher: every worker runs :func:`embodied_lm.train.train` -- the one training loop -- with its
rank and the world size, the model wrapped by ``ray.train.torch.prepare_model`` (DDP when there is
more than one worker).  What that loop does per rank:

* Every rank draws the **global** batch indices from the same ``numpy`` Generator (the
  single-process draw) and takes its slice (``np.array_split(idx, world_size)[rank]``).  The union
  of the slices is the batch one process would use at that step, and every rank's Generator stays
  in the same state.
* Each rank's loss is its slice's mean cross-entropy, scaled by ``world_size * n_rank / n_global``
  (``n`` = answer tokens).  DDP averages gradients over ranks, so the averaged gradient is the
  gradient of the global batch's mean loss -- what the single process computes -- and gradient
  clipping sees the same norm.  The reported loss is the all-reduced global mean.
* One worker reproduces one process's loss curve bit for bit (same thread count: each worker uses
  ``cpus_per_worker`` threads).  N workers differ from it only by float summation order and padding
  length (each slice is padded to its own longest sentence): on the tiny backbone, 8 steps, 2
  workers gave the same logged losses (rounded to 1e-5) and weights within 3e-6
  (tests/test_ray_train.py, ``precision=fp32``).  Under bf16 autocast (``precision=auto`` on a CPU
  with native bf16) rounding differs with the slice size: losses within 7e-4, weights within 1.5e-3.
* Rank 0 writes the checkpoints to ``checkpoint_dir`` (persistent, not Ray's temp dir), so either
  trainer resumes the other's checkpoints, and Ray resumes with any number of workers (the global
  batch does not depend on the world size).
* At each checkpoint step all ranks call ``ray.train.report``; rank 0 attaches a small Ray
  checkpoint (a manifest: ``state.json`` + where the real checkpoint is) so Ray records the metrics.
  Ray Train V2 returns ``Result.metrics`` only for reports that carry a checkpoint, and each report
  can block for up to ``RAY_TRAIN_HEALTH_CHECK_INTERVAL_S`` (2 s: the controller drains a
  one-slot queue at that interval), so reporting every step would cost ~2 s per step.

Multi-node: every node needs the repo installed and must see ``dataset``; ``checkpoint_dir`` is
written on rank 0's node and read by every rank on resume, so put it on a shared filesystem.
GPU: ``optimizer.pt`` then holds CUDA tensors; ``load_checkpoint`` maps them to the CPU, so a GPU
run resumes anywhere.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import tempfile
import time
import uuid
from dataclasses import asdict
from pathlib import Path

import torch

from embodied_lm.model import ModelConfig
from embodied_lm.train import TrainConfig, check_checkpoint

__all__ = ["train_on_ray"]


def train_on_ray(model_cfg: ModelConfig, train_cfg: TrainConfig, dataset: str | os.PathLike,
                 checkpoint_dir: str | os.PathLike, *, num_workers: int = 1, use_gpu: bool = False,
                 families=None, resume: bool = False, address: str | None = None,
                 storage_path: str | None = None, cpus_per_worker: int = 1, model_seed: int | None = None,
                 stop_after: int | None = None, progress: bool = False) -> dict:
    """Train ``EmbodiedLM(model_cfg, seed=train_cfg.seed if model_seed is None else model_seed)`` on the
    examples of the zarr store ``dataset`` with ``num_workers`` Ray Train workers; returns the final state
    ``{step, losses, tokens, train_s, world_size, examples, wall_s, checkpoint}`` (``losses``: global-batch
    mean per step, as ``train()`` logs them; ``train_s``: rank 0's training-loop time, cumulative
    over resumes; ``wall_s``: this call, Ray start-up included).

    resume        continue from the checkpoint in ``checkpoint_dir`` (weights, optimizer, sampler RNG);
                  raises ``CheckpointError`` at once if there is none or it is for another model config.
    address       None: a private local Ray sized to this machine (or the Ray this process already
                  runs); "auto" / "host:6379": join a cluster (see ``embodied_lm.distributed.init_ray``).
    storage_path  Ray Train's run directory (metrics + small manifests); None: a temporary one,
                  deleted afterwards.  The model checkpoint always goes to ``checkpoint_dir``.
    use_gpu       one GPU per worker, nccl; fails at once (RuntimeError) if the cluster has too few.
    cpus_per_worker  CPUs reserved per worker = torch threads in each worker.
    stop_after    stop (and checkpoint) after this many steps -- for tests, like ``train()``.
    """
    t_wall = time.perf_counter()
    checkpoint_dir = Path(checkpoint_dir).resolve()
    dataset = Path(dataset).resolve()
    if num_workers < 1:
        raise ValueError(f"num_workers must be >= 1, got {num_workers}")
    if cpus_per_worker < 1:
        raise ValueError(f"cpus_per_worker must be >= 1, got {cpus_per_worker}")
    if train_cfg.batch_size < num_workers:
        raise ValueError(f"train.batch_size ({train_cfg.batch_size}) must be >= num_workers ({num_workers}): "
                         "every worker takes a slice of the global batch")
    if not dataset.exists():
        raise FileNotFoundError(f"dataset {dataset} does not exist")
    if resume:
        check_checkpoint(checkpoint_dir, model_cfg)
    if use_gpu and address is None and not torch.cuda.is_available() and not _ray_initialized():
        # a local Ray on a machine without CUDA would never place a GPU worker: Ray Train waits forever
        raise RuntimeError(f"use_gpu=True but torch.cuda.is_available() is False on this machine "
                           f"({socket.gethostname()}): no GPU to train on. Use use_gpu=False "
                           "(train.use_gpu=false) or join a cluster with GPU nodes (address=...)")

    import ray
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from embodied_lm.distributed.rollouts import init_ray

    started = init_ray(address, log_to_driver=progress)
    tmp_storage = None
    try:
        _check_resources(ray.cluster_resources(), num_workers, cpus_per_worker, use_gpu)
        if storage_path is None:
            tmp_storage = tempfile.mkdtemp(prefix="embodied_lm_ray_train_")
        per_worker: dict[str, float] = {"CPU": cpus_per_worker}
        if use_gpu:
            per_worker["GPU"] = 1
        loop_config = {
            "model_cfg": asdict(model_cfg), "train_cfg": asdict(train_cfg), "dataset": str(dataset),
            "families": list(families) if families else None, "checkpoint_dir": str(checkpoint_dir),
            "resume": bool(resume), "model_seed": train_cfg.seed if model_seed is None else model_seed,
            "threads": cpus_per_worker, "stop_after": stop_after, "progress": progress,
        }
        trainer = TorchTrainer(
            _train_loop, train_loop_config=loop_config,
            torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
            scaling_config=ScalingConfig(num_workers=num_workers, use_gpu=use_gpu,
                                         resources_per_worker=per_worker),
            run_config=RunConfig(name=f"embodied_lm_train_{time.strftime('%Y%m%d-%H%M%S')}_{uuid.uuid4().hex[:6]}",
                                 storage_path=_storage(storage_path or tmp_storage),
                                 failure_config=FailureConfig(max_failures=0)),
        )
        try:
            result = trainer.fit()
        except Exception as e:  # noqa: BLE001 -- re-raise the worker's own error when there is one
            raise _worker_error(e) from e
        metrics = result.metrics or {}
        if "losses" not in metrics:
            raise RuntimeError(f"Ray Train finished without a final report (metrics: {sorted(metrics)})")
    finally:
        if tmp_storage is not None:
            shutil.rmtree(tmp_storage, ignore_errors=True)
        if started:
            ray.shutdown()
    keys = ("step", "losses", "tokens", "train_s", "world_size", "examples")
    return {**{k: metrics[k] for k in keys}, "wall_s": round(time.perf_counter() - t_wall, 2),
            "checkpoint": str(checkpoint_dir)}


# ----------------------------------------------------------------------------- driver-side checks


def _storage(path: str) -> str:
    """Local paths absolute (workers may run in another cwd); URIs (s3://, gs://, ...) as given."""
    return path if "://" in path else str(Path(path).resolve())


def _ray_initialized() -> bool:
    import sys

    return "ray" in sys.modules and sys.modules["ray"].is_initialized()


def _check_resources(total: dict, num_workers: int, cpus: int, use_gpu: bool) -> None:
    """A request larger than the cluster would leave Ray Train waiting forever: fail instead."""
    if use_gpu and total.get("GPU", 0) < num_workers:
        raise RuntimeError(f"use_gpu=True needs {num_workers} GPU(s) (one per worker) but the Ray cluster "
                           f"has {total.get('GPU', 0):g}: no GPU to train on. Use use_gpu=False or a cluster "
                           "with GPUs")
    if total.get("CPU", 0) < num_workers * cpus:
        raise ValueError(f"{num_workers} workers x {cpus} CPU need {num_workers * cpus} CPUs but the Ray cluster "
                         f"has {total.get('CPU', 0):g}")


def _worker_error(e: Exception) -> Exception:
    """The exception a worker raised (rank 0's first), instead of Ray's wrapper, when Ray kept it."""
    failures = getattr(e, "worker_failures", None)
    if failures:
        rank = min(failures)
        err = failures[rank]
        cause = getattr(err, "cause", None)  # RayTaskError wraps the user exception
        err = cause if isinstance(cause, Exception) else err
        if isinstance(err, Exception):
            return err
    return e


# ----------------------------------------------------------------------------- the worker loop


def _train_loop(config: dict) -> None:
    """Runs in every Ray Train worker (rank r of world W): ``embodied_lm.train.train`` on its slices."""
    import ray.train
    import ray.train.torch

    from embodied_lm.data import training_examples
    from embodied_lm.model import EmbodiedLM
    from embodied_lm.train import train

    torch.set_num_threads(config["threads"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    ckpt_dir = Path(config["checkpoint_dir"])
    model = EmbodiedLM(ModelConfig(**config["model_cfg"]), seed=config["model_seed"])  # the same on every rank
    examples = training_examples(config["dataset"], model, config["families"])

    def report(state: dict, lr_scale: float | None) -> None:  # all ranks: a barrier
        metrics = {**state, "loss": state["losses"][-1] if state["losses"] else None, "world_size": world,
                   "lr_scale": lr_scale, "examples": len(examples),
                   "tokens_per_s": state["tokens"] / max(state["train_s"], 1e-9)}
        if rank != 0:
            ray.train.report(metrics)
            return
        with tempfile.TemporaryDirectory(prefix="embodied_lm_manifest_") as d:
            manifest = {**metrics, "checkpoint_dir": str(ckpt_dir), "host": socket.gethostname()}
            (Path(d) / "state.json").write_text(json.dumps(manifest))
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(d))

    # prepare_model after relation pretraining (on the CPU, as one process does it): DDP then
    # broadcasts rank 0's result; progress=False: log lines (rank 0), no bar in the worker logs
    train(model, examples, TrainConfig(**config["train_cfg"]), ckpt_dir,
          resume=ckpt_dir if config["resume"] else None, progress=False, stop_after=config["stop_after"],
          rank=rank, world_size=world, prepare=ray.train.torch.prepare_model, report=report)
