import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
# train.compile costs ~20 s per tiny training run (a dozen here); test_lm compares it with eager training
os.environ.setdefault("TORCH_COMPILE_DISABLE", "1")


@pytest.fixture(scope="module")
def env():
    """A state-only TabletopEnv (no rendering), one per test module."""
    from sim.env import EnvConfig, TabletopEnv

    e = TabletopEnv(EnvConfig(observe_images=False))
    yield e
    e.close()


@pytest.fixture(scope="session")
def ray_session():
    """One small local Ray (num_cpus=2) shared by every Ray test of the session (init ~3 s)."""
    import ray

    # address="local": never join a `ray start` cluster that may be running on this host
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
             object_store_memory=256 * 2**20)
    yield
    ray.shutdown()


def record_oracle_store(tmp, families: list[str]):
    """A real zarr store: one L1 oracle episode per family recorded by experiments/run.py (with images)."""
    import subprocess
    import sys
    from pathlib import Path

    path = Path(tmp) / "real.zarr"
    root = Path(__file__).resolve().parents[1]
    args = ["planner=oracle", "ray.num_workers=0", f"record={path}", "eval.episodes=1", "eval.levels=[L1]",
            f"eval.families=[{','.join(families)}]", "eval.progress=false", f"hydra.run.dir={Path(tmp) / 'run'}"]
    proc = subprocess.run([sys.executable, str(root / "experiments" / "run.py"), *args],
                          capture_output=True, text=True, timeout=300, cwd=root)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return path
