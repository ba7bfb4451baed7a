"""Child process for the kill test: appends deterministic episodes, printing "committed N".

Usage: python _zarr_writer_child.py STORE N_EPISODES [--stall-after K]

With --stall-after K, the append of episode K writes all data and meta, prints "stalled" and
sleeps before committing episode_ends -- so a SIGKILL then lands exactly mid-append.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from embodied_lm.datasets.zarr_store import Episode, ReplayWriter  # noqa: E402


def make_episode(i: int) -> Episode:
    """Deterministic episode i with large-ish frames (~0.5 MB of incompressible pixels)."""
    rng = np.random.default_rng(i)
    T = 10 + i % 3
    return Episode(
        data={
            "rgb": rng.integers(0, 256, (T, 96, 128, 3), dtype=np.uint8),
            "state": rng.standard_normal((T, 16)).astype(np.float32),
            "action": np.array([f"ep{i} step{t}" for t in range(T)]),
        },
        meta={"seed": i, "task": f"task{i}", "params": {"i": i, "xs": [i, i + 1]}, "success": i % 2 == 0},
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("store")
    ap.add_argument("n", type=int)
    ap.add_argument("--stall-after", type=int, default=-1)
    args = ap.parse_args()

    if args.stall_after >= 0:
        orig_commit = ReplayWriter._commit

        def stalling_commit(self: ReplayWriter, n_steps: int) -> None:
            if self.n_episodes >= args.stall_after:
                print("stalled", flush=True)
                time.sleep(3600)
            orig_commit(self, n_steps)

        ReplayWriter._commit = stalling_commit  # type: ignore[method-assign]

    with ReplayWriter(args.store, attrs={"run": "child"}) as w:
        for i in range(w.n_episodes, w.n_episodes + args.n):
            w.append(make_episode(i))
            print(f"committed {w.n_episodes}", flush=True)


if __name__ == "__main__":
    main()
