"""Command line for replay stores: export (MCAP / LeRobot v3), import LeRobot, render, inspect.

    python -m embodied_lm.datasets export --to mcap|lerobot STORE OUT [--episodes 0,2] [--fps N]
    python -m embodied_lm.datasets import-lerobot ROOT STORE [--episodes 0,2]
    python -m embodied_lm.datasets view STORE INDEX OUT.mp4|OUT.gif [--camera front] [--fps 2] [--scale 3]
    python -m embodied_lm.datasets info STORE

Errors print one line ``error: ...`` on stderr and exit with status 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

import numpy as np


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line instead of usage + message
        self.exit(2, f"error: {message} (see --help)\n")


def _episodes(text: str | None) -> list[int] | None:
    if text is None:
        return None
    try:
        out = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ValueError(f"--episodes {text!r}: expected comma-separated integers like 0,2") from None
    if not out:
        raise ValueError("--episodes is empty")
    return out


def _cmd_export(a: argparse.Namespace) -> str:
    eps = _episodes(a.episodes)
    if a.to == "mcap":
        from embodied_lm.datasets.mcap import export_mcap

        out = export_mcap(a.store, a.out, episodes=eps, distro=a.distro, fps=a.fps)
    else:
        from embodied_lm.datasets.lerobot import export_lerobot

        fps = None if a.fps is None else (int(a.fps) if float(a.fps).is_integer() else a.fps)
        out = export_lerobot(a.store, a.out, episodes=eps, fps=fps, robot_type=a.robot_type)
    return f"wrote {a.to} dataset {out}"


def _cmd_import(a: argparse.Namespace) -> str:
    from embodied_lm.datasets.lerobot import import_lerobot
    from embodied_lm.datasets.zarr_store import ReplayReader

    out = import_lerobot(a.root, a.store, episodes=_episodes(a.episodes))
    r = ReplayReader(out)
    return f"wrote store {out} ({r.n_episodes} episodes, {r.n_steps} steps)"


def _cmd_view(a: argparse.Namespace) -> str:
    from embodied_lm.datasets.viewer import render_episode

    out = render_episode(a.store, a.index, a.out, camera=a.camera, fps=a.fps, scale=a.scale, overwrite=a.overwrite)
    return f"wrote {out}"


def _short(value: Any, n: int = 60) -> str:
    s = value if isinstance(value, str) else json.dumps(value)
    s = s.replace("\n", " | ")
    return s if len(s) <= n else s[: n - 1] + "…"


def _cmd_info(a: argparse.Namespace) -> str:
    import zarr

    from embodied_lm.datasets.zarr_store import ReplayReader

    r = ReplayReader(a.store)  # validates; the on-disk layout is documented in zarr_store
    root = zarr.open_group(zarr.storage.LocalStore(r.path, read_only=True), mode="r")
    attrs = r.attrs
    lens = np.diff(np.concatenate([[0], r.episode_ends]))
    lines = [
        f"store     {r.path}",
        f"format    {attrs.get('layout')} v{attrs.get('format_version')}",
        f"episodes  {r.n_episodes}",
        f"steps     {r.n_steps}"
        + (f" (per episode: min {lens.min()}, mean {lens.mean():.1f}, max {lens.max()})" if len(lens) else ""),
    ]
    lines.append("data keys")
    for k in r.keys:
        z = root["data"][k]
        dtype = "str" if z.dtype.kind == "T" else str(z.dtype)
        lines.append(f"  {k:<16} {dtype:<8} step shape {tuple(z.shape[1:])}")
    lines.append("meta keys " + ", ".join(r.meta_keys))
    lines.append("attrs")
    for k, v in attrs.items():
        if k in ("layout", "format_version"):
            continue
        if k == "cameras" and isinstance(v, dict):
            v = ", ".join(f"{c} {p.get('width')}x{p.get('height')}" for c, p in v.items())
        elif k == "versions" and isinstance(v, dict):
            v = ", ".join(f"{n} {ver}" for n, ver in v.items())
        elif isinstance(v, (dict, list)):
            v = _short(v, 70)
        lines.append(f"  {k:<12} {v}")
    show = min(r.n_episodes, a.max_episodes)
    if show:
        lines.append("episodes (index, steps, task, success, instruction)")
        for i in range(show):
            m = {k: root["meta"][k][i] for k in ("task", "success", "instruction") if k in r.meta_keys}
            row = {k: v.item() if hasattr(v, "item") else v for k, v in m.items()}
            lines.append(
                f"  {i:>4} {int(lens[i]):>4}  {str(row.get('task', '')):<14} "
                f"{str(row.get('success', '')):<6} {_short(row.get('instruction', ''), 60)}"
            )
        if show < r.n_episodes:
            lines.append(f"  ... {r.n_episodes - show} more (--max-episodes)")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m embodied_lm.datasets", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True, parser_class=_Parser)

    e = sub.add_parser("export", help="export a replay store to a ROS 2 MCAP bag or a LeRobot v3.0 dataset")
    e.add_argument("--to", choices=["mcap", "lerobot"], required=True)
    e.add_argument("store", type=Path)
    e.add_argument("out", type=Path, help="output directory (must not exist)")
    e.add_argument("--episodes", help="comma-separated episode indices (default: all)")
    e.add_argument("--fps", type=float, help="frames (skill steps) per second; default store attr fps or 1")
    e.add_argument(
        "--distro", default="ROS2_HUMBLE", help="mcap: rosbags typestore (ROS2_HUMBLE, ROS2_JAZZY, ...)"
    )
    e.add_argument("--robot-type", default="franka_panda", help="lerobot: info.json robot_type")
    e.set_defaults(func=_cmd_export)

    i = sub.add_parser("import-lerobot", help="import a LeRobot v3.0 dataset into a new replay store")
    i.add_argument("root", type=Path)
    i.add_argument("store", type=Path, help="new store path (must not exist)")
    i.add_argument("--episodes", help="comma-separated episode indices (default: all)")
    i.set_defaults(func=_cmd_import)

    v = sub.add_parser("view", help="render one episode to an annotated .mp4 or .gif")
    v.add_argument("store", type=Path)
    v.add_argument("index", type=int)
    v.add_argument("out", type=Path)
    v.add_argument("--camera", default="top")
    v.add_argument("--fps", type=float, default=2.0)
    v.add_argument("--scale", type=int, default=3)
    v.add_argument("--overwrite", action="store_true")
    v.set_defaults(func=_cmd_view)

    n = sub.add_parser("info", help="summarise a replay store")
    n.add_argument("store", type=Path)
    n.add_argument("--max-episodes", type=int, default=20)
    n.set_defaults(func=_cmd_info)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        print(args.func(args))
    except (ValueError, IndexError, KeyError, OSError, RuntimeError) as e:  # InvalidStoreError is a ValueError
        msg = str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e)
        first = msg.strip().splitlines()[0] if msg.strip() else type(e).__name__
        print(f"error: {first}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
