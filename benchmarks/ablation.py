"""The ablation table (PaLM-E Tables 1 and 7 on our tasks), at one fixed budget (``preset=ablation``).

One command runs every row and writes the table::

    .venv/bin/python -m benchmarks.ablation --out ablation      # ~1 h on 2 cores

1. collect once: 40 oracle demonstrations per TAMP family, with images, into ``OUT/demos.zarr``;
2. train + evaluate ``sensors=state|vit|object|pointcloud`` × ``backbone=smollm2|tiny`` ×
   ``train.mode=frozen|lora`` on those same demonstrations (``stage=train+eval``);
3. the default model (state, smollm2, lora) again with ``decode.constrained=false``, same checkpoint;
4. the ``saycan`` (zero-shot SmolLM2) and ``random`` planners on the same test episodes.

Each row is ``experiments/run.py`` in its own run dir ``OUT/runs/<row>/`` (log in ``run.log``); a row whose
``results.json`` exists is skipped, so an interrupted sweep continues where it stopped (delete a row's
dir to re-run it).  ``--only A,B`` runs the rows whose label contains A or B.  Extra ``key=value``
arguments go to every run (``threads=1``).  Writes ``OUT/ablation_table.md``, ``ablation_results.json``
and ``ablation.png`` (a heatmap: rows × families).
"""

from __future__ import annotations

import argparse
import itertools
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SENSORS = ("state", "vit", "object", "pointcloud")
BACKBONES = ("smollm2", "tiny")
MODES = ("frozen", "lora")
DEFAULT = "sensors=state backbone=smollm2 train.mode=lora"


def rows(out: Path) -> list[tuple[str, list[str]]]:
    """(label, overrides) of every row, in run order (the checkpoint of DEFAULT before its unconstrained row)."""
    grid = [f"sensors={s} backbone={b} train.mode={m}" for s, b, m in itertools.product(SENSORS, BACKBONES, MODES)]
    table = [(label, ["stage=train+eval", *label.split()]) for label in grid]
    table.append((f"{DEFAULT} decode.constrained=false",
                  ["stage=eval", *DEFAULT.split(), f"checkpoint={out / 'runs' / slug(DEFAULT) / 'checkpoint'}",
                   "decode.constrained=false"]))
    table += [("planner=saycan", ["planner=saycan"]), ("planner=random", ["planner=random"])]
    return table


def slug(label: str) -> str:
    return label.replace("sensors=", "").replace("backbone=", "").replace("train.mode=", "").replace(
        "decode.constrained=false", "unconstrained").replace("planner=", "").replace(" ", "_").replace("=", "-")


def run_py(overrides: list[str], run_dir: Path) -> int:
    """experiments/run.py with ``overrides`` in ``run_dir``; its output goes to run_dir/run.log."""
    run_dir.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, str(ROOT / "experiments" / "run.py"), *overrides, f"hydra.run.dir={run_dir}",
           "eval.progress=false"]
    with open(run_dir / "run.log", "w") as log:
        log.write(" ".join(cmd) + "\n")
        log.flush()
        return subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT).returncode


def combine(out: Path, table: list[tuple[str, list[str]]]) -> dict:
    from embodied_lm.sweep import format_sweep_table

    runs = []
    for label, _ in table:
        path = out / "runs" / slug(label) / "results.json"
        row = {"label": label, "status": "not run", "job_dir": str(path.parent)}
        if path.is_file():
            res = json.loads(path.read_text())
            row.update(status="ok", planner=res["planner"], summary=res["summary"], families=res["families"],
                       timing=res["timing"], versions=res.get("versions", {}))
        elif path.parent.is_dir():
            row["status"] = "failed"
        runs.append(row)
    md = format_sweep_table(runs)
    (out / "ablation_table.md").write_text(md + "\n")
    (out / "ablation_results.json").write_text(json.dumps({"schema": 1, "preset": "ablation", "runs": runs},
                                                          indent=2))
    ok = [r for r in runs if r["status"] == "ok"]
    if ok:
        heatmap(ok, out / "ablation.png")
    return {"table": md, "runs": runs}


def heatmap(runs: list[dict], path: Path) -> None:
    """Rows × families, L1 success in each cell (19 runs side by side as bars would be unreadable)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fams = sorted({f for r in runs for f in r["families"]})
    grid = np.array([[r["families"].get(f, {}).get("L1", {}).get("success_rate", np.nan) for f in fams]
                     + [r["summary"]["success_rate"]] for r in runs])  # (runs, families + 1)
    fig, ax = plt.subplots(figsize=(10, 0.38 * len(runs) + 1.6))
    ax.imshow(grid, cmap="viridis", vmin=0, vmax=1, aspect="auto")
    for (i, j), v in np.ndenumerate(grid):
        if not np.isnan(v):
            ax.text(j, i, f"{v:.0%}", ha="center", va="center", fontsize=8, color="white" if v < 0.6 else "black")
    ax.set_xticks(range(len(fams) + 1), [*fams, "overall"], rotation=30, ha="right")
    ax.set_yticks(range(len(runs)), [r["label"] for r in runs], fontsize=8)
    ax.set_title("L1 success, preset=ablation, 10 test episodes per cell", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.ablation", description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("ablation"), help="output dir (default ./ablation)")
    ap.add_argument("--only", default=None,
                    help="run only the rows whose label contains one of these comma-separated strings")
    ap.add_argument("--combine-only", action="store_true", help="only rebuild the table from what is on disk")
    ap.add_argument("overrides", nargs="*", help="key=value overrides for every run (e.g. threads=1)")
    args = ap.parse_args(argv)
    out = args.out.resolve()
    table = rows(out)
    common = ["preset=ablation", f"dataset={out / 'demos.zarr'}", *args.overrides]
    if not args.combine_only:
        if not (out / "demos.zarr").exists():
            print(f"collecting the shared demonstrations -> {out / 'demos.zarr'}", flush=True)
            if run_py([*common, "stage=collect"], out / "collect") != 0:
                print(f"error: collection failed; see {out / 'collect' / 'run.log'}", file=sys.stderr)
                return 1
        for label, overrides in table:
            run_dir = out / "runs" / slug(label)
            wanted = not args.only or any(part in label for part in args.only.split(","))
            if not wanted or (run_dir / "results.json").is_file():
                continue
            t0 = time.perf_counter()
            rc = run_py([*common, *overrides], run_dir)
            status = "ok" if rc == 0 else f"FAILED (exit {rc}; see {run_dir / 'run.log'})"
            print(f"{label}: {status} in {time.perf_counter() - t0:.0f} s", flush=True)
    combined = combine(out, table)
    print(combined["table"])
    print(out / "ablation_table.md")
    return 0 if all(r["status"] == "ok" for r in combined["runs"]) else 1


if __name__ == "__main__":
    sys.exit(main())
