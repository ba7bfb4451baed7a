import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


@pytest.fixture(scope="session")
def ray_session():
    """One small local Ray (num_cpus=2) shared by every Ray test of the session (init ~3 s)."""
    import ray

    # address="local": never join a `ray start` cluster that may be running on this host
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
             object_store_memory=256 * 2**20)
    yield
    ray.shutdown()
