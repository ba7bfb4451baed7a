"""The headline check (slow, ~10 min on 2 cores): the oracle solves the whole suite, random does not.

Run with ``.venv/bin/python -m pytest -m slow``."""

import pytest

from embodied_lm.evaluate import evaluate, summarize
from embodied_lm.planners import make_planner
from sim.env import EnvConfig, TabletopEnv
from sim.tasks import FAMILIES, generate_specs

pytestmark = pytest.mark.slow


def test_oracle_solves_suite_and_random_is_far_below():
    env = TabletopEnv(EnvConfig(observe_images=False))
    specs = generate_specs(episodes=20, seed=0)
    rows = evaluate(env, make_planner("oracle"), specs, progress=False)
    families, summary = summarize(rows)
    for fam, cells in families.items():
        floor = 1.0 if FAMILIES[fam].kind == "question" else 0.98
        for level, cell in cells.items():
            assert cell["success_rate"] >= floor, (fam, level, cell)
        for n, rate in summary["success_by_n_objects"][fam].items():
            assert rate >= floor, (fam, n, rate)
    rnd = evaluate(env, make_planner("random"), generate_specs(episodes=4, levels=["L1"], seed=0),
                   progress=False)
    assert summarize(rnd)[1]["success_rate"] < 0.5
    env.close()
