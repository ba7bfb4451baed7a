"""results.json / episodes.jsonl (schema in DESIGN.md), the printed table and the PNG plot."""

from __future__ import annotations

import json
import os
import platform
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

from embodied_lm.atomic import write_text
from embodied_lm.evaluate import EpisodeRow, row_dict, summarize
from sim.tasks import LEVELS

SCHEMA = 1
_PACKAGES = ("torch", "pybullet", "transformers", "numpy", "gymnasium", "hydra-core", "zarr", "ray", "peft")


def versions() -> dict[str, str]:
    """Versions recorded in every results file and dataset."""
    out = {"python": platform.python_version()}
    for pkg in _PACKAGES:
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def machine_info() -> dict[str, Any]:
    """The CPU that made a figure: model, usable cores and its bf16 paths (AVX512-BF16, AMX), from Linux's
    /proc/cpuinfo; a training step's cost differs by ~3x between such CPUs (benchmarks/README.md)."""
    info: dict[str, Any] = {"cpu": platform.processor() or "?", "cores": len(os.sched_getaffinity(0))}
    try:
        first_cpu = Path("/proc/cpuinfo").read_text().split("\n\n")[0]
    except OSError:
        return info
    pairs = (line.split(":", 1) for line in first_cpu.splitlines() if ":" in line)
    fields = {k.strip(): v.strip() for k, v in pairs}
    flags = set(fields.get("flags", "").split())
    info.update(cpu=fields.get("model name", info["cpu"]), avx512_bf16="avx512_bf16" in flags,
                amx_bf16="amx_bf16" in flags)
    return info


def build_results(task: str, planner: str, config: dict[str, Any], rows: Sequence[EpisodeRow],
                  timing: dict[str, float]) -> dict[str, Any]:
    families, summary = summarize(rows)
    return {"schema": SCHEMA, "task": task, "planner": planner, "config": config, "families": families,
            "summary": summary, "timing": timing, "versions": versions(), "machine": machine_info()}


def write_results(run_dir: str | Path, results: dict[str, Any], rows: Sequence[EpisodeRow]) -> Path:
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / "episodes.jsonl", "w") as f:
        for r in rows:
            f.write(json.dumps(row_dict(r)) + "\n")
    return write_text(run_dir / "results.json", json.dumps(results, indent=2))  # never half-written


def format_table(families: dict[str, dict[str, dict[str, Any]]]) -> str:
    """Success (plan success) per family × level as fixed-width text."""
    levels = [lv for lv in LEVELS if any(lv in cells for cells in families.values())]
    width = max([len("family")] + [len(f) for f in families]) + 2
    head = "family".ljust(width) + "".join(f"{lv:>14}" for lv in levels)
    lines = [head, "-" * len(head)]
    counts = set()
    for fam in sorted(families):
        row = fam.ljust(width)
        for lv in levels:
            c = families[fam].get(lv)
            if c is None:
                row += f"{'-':>14}"
                continue
            counts.add(c["episodes"])
            row += f"{c['success_rate']:.0%} ({c['plan_success_rate']:.0%})".rjust(14)
        lines.append(row)
    n = f"{counts.pop()} episodes per cell" if len(counts) == 1 else "see results.json for episodes per cell"
    lines.append(f"cells: success (plan success); {n}")
    return "\n".join(lines)


def plot_results(results_by_planner: dict[str, dict[str, Any]], path: str | Path) -> Path:
    """Grouped bars: success by family × level, one colour per planner, each bar labelled with its
    percentage (so 0 % is visible) and cells a family does not have marked n/a."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    planners = list(results_by_planner)
    fams = sorted({f for r in results_by_planner.values() for f in r["families"]})
    levels = [lv for lv in LEVELS if any(lv in r["families"].get(f, {}) for r in results_by_planner.values()
                                         for f in fams)]
    fig, axes = plt.subplots(len(levels), 1, figsize=(max(8, 0.9 * len(fams) + 2), 2.4 * len(levels)),
                             sharex=True, squeeze=False)
    x = np.arange(len(fams))
    w = 0.8 / max(len(planners), 1)
    for ax, lv in zip(axes[:, 0], levels, strict=False):
        for i, pl in enumerate(planners):
            fam_cells = results_by_planner[pl]["families"]
            vals = [fam_cells.get(f, {}).get(lv, {}).get("success_rate", np.nan) for f in fams]
            xs = x + (i - (len(planners) - 1) / 2) * w
            bars = ax.bar(xs, vals, w, label=pl)
            ax.bar_label(bars, labels=["" if np.isnan(v) else f"{v:.0%}" for v in vals], fontsize=7, padding=1)
            for xi, v in zip(xs, vals, strict=True):
                if np.isnan(v):
                    ax.text(xi, 0.02, "n/a", ha="center", va="bottom", fontsize=7, color="0.5")
        ax.set_ylim(0, 1.15)
        ax.set_ylabel(f"{lv} success")
        ax.grid(axis="y", alpha=0.3)
    axes[0, 0].legend(loc="lower left", bbox_to_anchor=(0, 1.0), ncol=len(planners), fontsize=8, frameon=False)
    axes[-1, 0].set_xticks(x, fams, rotation=30, ha="right")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
