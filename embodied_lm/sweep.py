"""Combine the jobs of a Hydra multirun into one table, one JSON and one plot.

As a Hydra callback (runs once, in the process that launched the sweep)::

    python experiments/run.py -m planner=oracle,random \
        ++hydra.callbacks.combine._target_=embodied_lm.sweep.CombineResults

or after the fact, on any sweep directory (also one whose sweep crashed)::

    python -m embodied_lm.sweep multirun/2026-11-22/21-43-31

Writes ``<sweep dir>/sweep_results.json``, ``sweep_table.md`` and ``sweep.png``. Each run is labelled
by the overrides that differ between the sweep's jobs (``planner=random``,
``sensors=state backbone=tiny train.mode=lora``). A job without ``results.json`` is listed as
``failed``; a job of the sweep that never started (the sweep stopped early) as ``not run``.
"""

from __future__ import annotations

import argparse
import atexit
import json
import sys
from pathlib import Path
from typing import Any

import yaml
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from embodied_lm.atomic import write_text
from embodied_lm.results import plot_results
from sim.tasks import LEVELS

SCHEMA = 1
RESULTS_JSON = "sweep_results.json"
TABLE_MD = "sweep_table.md"
PLOT_PNG = "sweep.png"
_BASIC_SWEEPER = "hydra._internal.core_plugins.basic_sweeper.BasicSweeper"


# ----------------------------------------------------------------------------- finding the jobs


def _load_yaml(path: Path) -> Any:
    with open(path) as f:
        return yaml.safe_load(f)


def _job_dirs(sweep_dir: Path) -> dict[int, tuple[Path, list[str]]]:
    """job.num -> (job dir, its task overrides), from every ``.hydra/`` below the sweep dir."""
    jobs: dict[int, tuple[Path, list[str]]] = {}
    extra = 10**6  # dirs whose hydra.yaml is unreadable get numbers after the real ones
    for ov in sorted(sweep_dir.rglob(".hydra/overrides.yaml")):
        job_dir = ov.parent.parent
        overrides = [str(o) for o in (_load_yaml(ov) or [])]
        try:
            num = int(_load_yaml(ov.parent / "hydra.yaml")["hydra"]["job"]["num"])
        except Exception:
            num, extra = extra, extra + 1
        jobs[num] = (job_dir, overrides)
    return jobs


def _expected_jobs(sweep_dir: Path) -> list[list[str]] | None:
    """The override list of every job the basic sweeper would launch, from ``multirun.yaml``.

    None when that cannot be known (no multirun.yaml, another sweeper, a sweep the parser needs the
    config loader for, such as ``glob(...)``); then only the job dirs on disk count.
    """
    path = sweep_dir / "multirun.yaml"
    if not path.is_file():
        return None
    try:
        hydra_cfg = _load_yaml(path)["hydra"]
        sweeper = hydra_cfg.get("sweeper") or {}
        if sweeper.get("_target_") != _BASIC_SWEEPER:
            return None
        from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
        from hydra.core.override_parser.overrides_parser import OverridesParser

        params = [f"{k}={v}" for k, v in (sweeper.get("params") or {}).items()]
        args = params + [str(o) for o in hydra_cfg["overrides"]["task"]]
        batches = BasicSweeper.split_arguments(OverridesParser.create().parse_overrides(args), None)
        return [job for batch in batches for job in batch]
    except Exception:
        return None


def _split(override: str) -> tuple[str, str | None]:
    key, sep, value = override.partition("=")
    return key.lstrip("+"), (value if sep else None)


def _labels(jobs: dict[int, list[str]]) -> tuple[list[str], dict[int, str]]:
    """The override keys whose value differs between jobs, and each job's label made of them."""
    parsed = {n: dict(_split(o) for o in ovs) for n, ovs in jobs.items()}
    keys: list[str] = []
    for n in sorted(parsed):
        keys += [k for k in parsed[n] if k not in keys]
    varied = [k for k in keys if len({parsed[n].get(k, "\0absent") for n in parsed}) > 1]
    labels: dict[int, str] = {}
    for n in sorted(jobs):
        parts = [k if parsed[n].get(k) is None else f"{k}={parsed[n][k]}" for k in varied if k in parsed[n]]
        label = " ".join(parts) or " ".join(jobs[n]) or f"job {n}"
        if label in labels.values():  # identical overrides twice (a re-used sweep dir)
            label = f"{label} #{n}"
        labels[n] = label
    return varied, labels


# ----------------------------------------------------------------------------- the table


def _pct(x: Any) -> str:
    return "-" if x is None else f"{x:.0%}"


def _secs(x: Any) -> str:
    return "-" if x is None else f"{x:.1f}"


def format_sweep_table(runs: list[dict[str, Any]]) -> str:
    """Markdown: one row per job (failed ones included), success per family × level, overall, seconds."""
    ok = [r for r in runs if r["status"] == "ok"]
    fams = sorted({f for r in ok for f in r["families"]})
    cols = [(f, lv) for f in fams for lv in LEVELS if any(lv in r["families"].get(f, {}) for r in ok)]
    head = ["run", *[f"{f} {lv}" for f, lv in cols], "overall", "episodes", "train s", "eval s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] + ["---:"] * (len(head) - 1)) + "|"]
    for r in runs:
        label = r["label"].replace("|", "\\|")
        if r["status"] != "ok":
            cells = [r["status"].upper()] + [""] * (len(head) - 2)
        else:
            cells = [_pct(r["families"].get(f, {}).get(lv, {}).get("success_rate")) for f, lv in cols]
            cells += [_pct(r["summary"].get("success_rate")), str(r["summary"].get("episodes", "-")),
                      _secs(r["timing"].get("train_s")), _secs(r["timing"].get("eval_s"))]
        lines.append("| " + " | ".join([label, *cells]) + " |")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- combine


def combine(sweep_dir: str | Path, *, plot: bool = True) -> dict[str, Any]:
    """Read every job of the sweep in ``sweep_dir``, write the combined files, return the combined dict.

    Returned (and written to ``sweep_results.json``)::

        {"schema": 1, "sweep_dir": str, "varied": [override keys that differ between jobs],
         "runs":   [{"job", "label", "overrides", "job_dir", "status": "ok", "planner", "task",
                     "summary", "families", "timing"}, ...],          # jobs with a results.json
         "failed": [{"job", "label", "overrides", "job_dir", "status": "failed" | "not run"}, ...],
         "table": markdown str, "files": {"json", "table", "plot"}}  # table/files: returned only

    Raises FileNotFoundError when ``sweep_dir`` is not a directory or holds no job.
    """
    sweep_dir = Path(sweep_dir).resolve()
    if not sweep_dir.is_dir():
        raise FileNotFoundError(f"sweep dir {sweep_dir} not found")
    found = _job_dirs(sweep_dir)
    expected = _expected_jobs(sweep_dir)
    overrides = {n: ovs for n, (_, ovs) in found.items()}
    for n, ovs in enumerate(expected or []):
        overrides.setdefault(n, ovs)
    if not overrides:
        raise FileNotFoundError(f"no Hydra jobs under {sweep_dir} (no */.hydra/overrides.yaml)")
    varied, labels = _labels(overrides)

    rows: list[dict[str, Any]] = []
    for n in sorted(overrides):
        job_dir = found[n][0] if n in found else None
        row: dict[str, Any] = {"job": n, "label": labels[n], "overrides": overrides[n],
                               "job_dir": str(job_dir) if job_dir else None}
        res_path = job_dir / "results.json" if job_dir else None
        if res_path is None:
            row["status"] = "not run"
        elif not res_path.is_file():
            row["status"] = "failed"
        else:
            try:
                res = json.loads(res_path.read_text())
                row.update(status="ok", planner=res.get("planner"), task=res.get("task"),
                           summary=res.get("summary", {}), families=res.get("families", {}),
                           timing=res.get("timing", {}))
            except (OSError, ValueError) as e:
                row.update(status="failed", error=f"unreadable results.json: {e}")
        rows.append(row)

    ok = [r for r in rows if r["status"] == "ok"]
    table = format_sweep_table(rows)
    out = {"schema": SCHEMA, "sweep_dir": str(sweep_dir), "varied": varied, "runs": ok,
           "failed": [r for r in rows if r["status"] != "ok"]}
    json_path, table_path, plot_path = sweep_dir / RESULTS_JSON, sweep_dir / TABLE_MD, sweep_dir / PLOT_PNG
    write_text(json_path, json.dumps(out, indent=2))
    table_path.write_text(table + "\n")
    if plot and ok:
        plot_results({r["label"]: r for r in ok}, plot_path)
    else:
        plot_path.unlink(missing_ok=True)  # never leave a plot of an older combine next to new tables
        plot_path = None
    out["table"] = table
    out["files"] = {"json": str(json_path), "table": str(table_path),
                    "plot": str(plot_path) if plot_path else None}
    return out


def report(combined: dict[str, Any], file: Any = None) -> None:
    """Print the table, the failed jobs and the written paths."""
    file = file or sys.stdout
    print(combined["table"], file=file)
    n_ok, bad = len(combined["runs"]), combined["failed"]
    print(f"sweep: {n_ok} of {n_ok + len(bad)} jobs have results", file=file)
    for r in bad:
        why = r.get("error", "no results.json")
        where = f" ({r['job_dir']}: {why})" if r["status"] == "failed" else ""
        print(f"  {r['status']}: job {r['job']} {r['label']}{where}", file=file)
    for path in combined["files"].values():
        if path:
            print(path, file=file)


# ----------------------------------------------------------------------------- the Hydra callback


class CombineResults(Callback):
    """``on_multirun_end``: combine the sweep's jobs (see :func:`combine`) and print the table.

    Enable with ``hydra.callbacks.combine._target_: embodied_lm.sweep.CombineResults`` (optional
    ``plot: false``). The basic sweeper raises after a batch with a failed job, and a job that calls
    ``sys.exit`` ends the whole process, so Hydra never calls ``on_multirun_end`` then; this callback
    therefore also combines at interpreter exit when the sweep did not finish, listing the failed job
    and the ones that never ran. It does nothing for single runs.
    """

    def __init__(self, plot: bool = True) -> None:
        self.plot = plot
        self._sweep_dir: Path | None = None
        self._done = False

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._sweep_dir = Path(str(config.hydra.sweep.dir)).resolve()  # ${now:} is cached: same dir
        self._done = False
        atexit.register(self._at_exit)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        self._done = True
        self._combine(Path(str(config.hydra.sweep.dir)).resolve())

    def _at_exit(self) -> None:
        if self._done or self._sweep_dir is None or not self._sweep_dir.is_dir():
            return
        self._done = True
        print(f"sweep stopped early; combining what is in {self._sweep_dir}", file=sys.stderr)
        self._combine(self._sweep_dir)

    def _combine(self, sweep_dir: Path) -> None:
        try:
            report(combine(sweep_dir, plot=self.plot))
        except Exception as e:  # the jobs' own results are on disk already: never fail the sweep here
            print(f"warning: combining {sweep_dir} failed ({type(e).__name__}: {e}); "
                  f"retry with: python -m embodied_lm.sweep {sweep_dir}", file=sys.stderr)


# ----------------------------------------------------------------------------- CLI


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m embodied_lm.sweep", description=__doc__.splitlines()[0])
    ap.add_argument("sweep_dir", help="a Hydra multirun dir (holds multirun.yaml and one dir per job)")
    ap.add_argument("--no-plot", action="store_true", help="skip sweep.png")
    args = ap.parse_args(argv)
    try:
        combined = combine(args.sweep_dir, plot=not args.no_plot)
    except FileNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    report(combined)
    return 0


if __name__ == "__main__":
    sys.exit(main())
