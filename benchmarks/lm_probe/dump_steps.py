"""Dump oracle steps (objects, instruction, history, answer) to a pickle for the LM recipe probe.

    .venv/bin/python benchmarks/lm_probe/dump_steps.py train 400 L1 probe_train.pkl   # ~5 min
    .venv/bin/python benchmarks/lm_probe/dump_steps.py test 100 L1,L2 probe_test.pkl  # ~3 min
"""
import pickle, sys, time
import numpy as np
from embodied_lm.evaluate import run_episode
from embodied_lm.planners import make_planner
from sim.env import EnvConfig, TabletopEnv
from sim.tasks import generate_specs
fams = ["q1_color","q2_on_table","q3_on_object","q4_feasible","p1_grasp","p2_stack"]
split, n, levels, out = sys.argv[1], int(sys.argv[2]), sys.argv[3].split(","), sys.argv[4]
class Rec:
    def __init__(s): s.o = make_planner("oracle"); s.rows = []
    def reset(s, env, obs, info): s.o.reset(env, obs, info); s.h = []; s.spec = info.get("spec")
    def act(s, obs, info):
        a = s.o.act(obs, info)
        s.rows.append(dict(objects=obs["objects"].astype(np.float32), instruction=obs["instruction"], history=list(s.h), answer=a, task=s.cur.task, level=s.cur.level, seed=s.cur.seed, n=s.cur.n_objects))
        s.h.append(a); return a
env = TabletopEnv(EnvConfig(observe_images=False))
specs = generate_specs(fams, levels, n, 0, split)
rec = Rec(); t = time.time(); ok = 0
for i, sp in enumerate(specs):
    rec.cur = sp
    r = run_episode(env, rec, sp); ok += r.success
print(len(specs), "episodes", ok, "ok", len(rec.rows), "steps", time.time() - t, "s")
pickle.dump(rec.rows, open(out, "wb"))
