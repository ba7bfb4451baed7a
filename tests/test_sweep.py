"""embodied_lm.sweep: the CombineResults Hydra callback on real multiruns, and combine() on synthetic sweeps."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from embodied_lm.sweep import PLOT_PNG, RESULTS_JSON, TABLE_MD, combine, main

ROOT = Path(__file__).resolve().parents[1]
RUN = [sys.executable, str(ROOT / "experiments" / "run.py"), "-m", "ray.num_workers=0"]
# "++" (add or override): a plain "+" fails once config.yaml enables the callback itself
CALLBACK = "++hydra.callbacks.combine._target_=embodied_lm.sweep.CombineResults"
TINY = ["eval.families=[p1_grasp]", "eval.levels=[L1]", "eval.episodes=1"]
BASIC = "hydra._internal.core_plugins.basic_sweeper.BasicSweeper"


def _multirun(*args, timeout=240):
    return subprocess.run([*RUN, *args, CALLBACK], capture_output=True, text=True, timeout=timeout, cwd=ROOT)


def test_callback_combines_a_real_multirun(tmp_path):
    out = _multirun("planner=oracle,random", *TINY, f"hydra.sweep.dir={tmp_path}")
    assert out.returncode == 0, out.stderr[-3000:]
    combined = json.loads((tmp_path / RESULTS_JSON).read_text())
    assert combined["varied"] == ["planner"] and combined["failed"] == []
    runs = {r["label"]: r for r in combined["runs"]}
    assert list(runs) == ["planner=oracle", "planner=random"]
    assert runs["planner=oracle"]["planner"] == "oracle" and runs["planner=random"]["planner"] == "random"
    assert runs["planner=oracle"]["families"]["p1_grasp"]["L1"]["success_rate"] == 1.0
    assert runs["planner=oracle"]["summary"]["success_rate"] == 1.0
    assert runs["planner=random"]["overrides"] == ["ray.num_workers=0", "planner=random", *TINY]
    table = (tmp_path / TABLE_MD).read_text()
    assert "| run | p1_grasp L1 | overall | episodes | train s | eval s |" in table
    assert "| planner=oracle | 100% | 100% | 1 | 0.0 |" in table
    assert (tmp_path / PLOT_PNG).stat().st_size > 1000
    assert table.strip() in out.stdout and str(tmp_path / RESULTS_JSON) in out.stdout  # printed too


def test_callback_lists_the_failed_job_when_the_sweep_stops(tmp_path):
    """eval.episodes=0 is a config error: run.py exits in job 0, Hydra never calls on_multirun_end."""
    out = _multirun("planner=oracle", "eval.episodes=0,1", "eval.families=[p1_grasp]", "eval.levels=[L1]",
                    f"hydra.sweep.dir={tmp_path}")
    assert out.returncode != 0
    combined = json.loads((tmp_path / RESULTS_JSON).read_text())
    jobs = {r["label"]: r for r in combined["runs"] + combined["failed"]}
    assert set(jobs) == {"eval.episodes=0", "eval.episodes=1"}
    assert jobs["eval.episodes=0"]["status"] == "failed"
    assert jobs["eval.episodes=1"]["status"] in ("not run", "ok")  # "ok" if run.py stops exiting mid-sweep
    assert "| eval.episodes=0 | FAILED |" in (tmp_path / TABLE_MD).read_text()
    assert "failed: job 0 eval.episodes=0" in out.stdout


# ----------------------------------------------------------------------------- synthetic sweeps


def _results(planner, success, families=("p1_grasp", "q1_color"), levels=("L1", "L2")):
    fams = {f: {lv: {"episodes": 2, "success_rate": success, "plan_success_rate": success, "mean_steps": 3.0}
                for lv in levels} for f in families}
    return {"schema": 1, "task": "tabletop", "planner": planner, "config": {"planner": {"name": planner}},
            "families": fams, "summary": {"success_rate": success, "episodes": 2 * len(families) * len(levels)},
            "timing": {"collect_s": 1.0, "train_s": 12.34, "eval_s": 5.0}}


def _job(sweep, num, overrides, results=None, subdir=None):
    d = sweep / (subdir or str(num))
    (d / ".hydra").mkdir(parents=True)
    (d / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    (d / ".hydra" / "hydra.yaml").write_text(yaml.safe_dump({"hydra": {"job": {"num": num}}}))
    if results is not None:
        (d / "results.json").write_text(json.dumps(results))
    return d


def _multirun_yaml(sweep, task_overrides, params=None):
    cfg = {"hydra": {"sweeper": {"_target_": BASIC, "max_batch_size": None, "params": params},
                     "overrides": {"hydra": [f"hydra.sweep.dir={sweep}"], "task": task_overrides}}}
    sweep.mkdir(parents=True, exist_ok=True)
    (sweep / "multirun.yaml").write_text(yaml.safe_dump(cfg))


def test_combine_labels_by_varied_overrides_and_lists_failed_and_unrun_jobs(tmp_path, capsys):
    sweep = tmp_path / "sweep"
    # 2 x 2 grid, fixed sensors; job 1 crashed (dir, no results.json); job 3 never started
    _multirun_yaml(sweep, ["sensors=state", "backbone=tiny,smollm2", "train.mode=lora,full"])
    grid = [["sensors=state", f"backbone={b}", f"train.mode={m}"]
            for b in ("tiny", "smollm2") for m in ("lora", "full")]
    _job(sweep, 0, grid[0], _results("embodied_lm", 0.5))
    _job(sweep, 1, grid[1])
    _job(sweep, 2, grid[2], _results("embodied_lm", 0.75, families=("p1_grasp",), levels=("L1",)))

    c = combine(sweep)
    assert c["varied"] == ["backbone", "train.mode"]
    assert [r["label"] for r in c["runs"]] == ["backbone=tiny train.mode=lora", "backbone=smollm2 train.mode=lora"]
    assert [(r["job"], r["label"], r["status"]) for r in c["failed"]] == [
        (1, "backbone=tiny train.mode=full", "failed"), (3, "backbone=smollm2 train.mode=full", "not run")]
    assert c["failed"][0]["job_dir"] == str(sweep / "1") and c["failed"][1]["job_dir"] is None
    assert c["runs"][0]["overrides"] == grid[0]
    assert c["runs"][0]["families"]["q1_color"]["L2"]["success_rate"] == 0.5

    on_disk = json.loads((sweep / RESULTS_JSON).read_text())
    assert on_disk["runs"] == c["runs"] and on_disk["failed"] == c["failed"]
    lines = (sweep / TABLE_MD).read_text().splitlines()
    assert lines[0] == ("| run | p1_grasp L1 | p1_grasp L2 | q1_color L1 | q1_color L2 | overall | episodes "
                        "| train s | eval s |")
    assert lines[2] == "| backbone=tiny train.mode=lora | 50% | 50% | 50% | 50% | 50% | 8 | 12.3 | 5.0 |"
    assert lines[3].startswith("| backbone=tiny train.mode=full | FAILED |")
    assert lines[4] == "| backbone=smollm2 train.mode=lora | 75% | - | - | - | 75% | 2 | 12.3 | 5.0 |"
    assert lines[5].startswith("| backbone=smollm2 train.mode=full | NOT RUN |") and len(lines) == 6
    assert (sweep / PLOT_PNG).stat().st_size > 1000

    assert main([str(sweep), "--no-plot"]) == 0  # the CLI: same files, table and failures printed
    printed = capsys.readouterr().out
    assert "sweep: 2 of 4 jobs have results" in printed and "not run: job 3 backbone=smollm2" in printed
    assert not (sweep / PLOT_PNG).exists()


def test_combine_without_multirun_yaml_scans_job_dirs(tmp_path):
    """Another sweeper / a copied sweep: job dirs alone (any subdir layout), a single varied key."""
    _job(tmp_path, 0, ["planner=oracle", "seed=1"], _results("oracle", 1.0), subdir="a/planner=oracle")
    _job(tmp_path, 1, ["planner=random", "seed=1"], _results("random", 0.0), subdir="a/planner=random")
    _job(tmp_path, 2, ["planner=saycan", "seed=1"], subdir="a/planner=saycan")
    (tmp_path / "a" / "planner=random" / "results.json").write_text("{truncated")
    c = combine(tmp_path, plot=False)
    assert [(r["label"], r["summary"]["success_rate"]) for r in c["runs"]] == [("planner=oracle", 1.0)]
    assert [(r["label"], r["status"]) for r in c["failed"]] == [("planner=random", "failed"),
                                                               ("planner=saycan", "failed")]
    assert "unreadable results.json" in c["failed"][0]["error"]


def test_single_job_sweep_label_and_errors(tmp_path, capsys):
    _job(tmp_path, 0, ["planner=oracle", "eval.episodes=1"], _results("oracle", 1.0))
    assert combine(tmp_path, plot=False)["runs"][0]["label"] == "planner=oracle eval.episodes=1"  # nothing varied
    assert main([str(tmp_path / "missing")]) == 2
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="no Hydra jobs"):
        combine(empty)
    assert capsys.readouterr().err.startswith("error: sweep dir")
