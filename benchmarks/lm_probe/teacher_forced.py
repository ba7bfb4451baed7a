"""Teacher-forced exact next step of a checkpoint on recorded oracle episodes (README: "How the default
model was chosen", the p2 table).  A research script, not part of the product.

    .venv/bin/python experiments/run.py stage=eval planner=oracle eval.families=[p1_grasp,p2_stack] \\
        eval.levels=[L1,L2] eval.episodes=50 record=test_oracle.zarr        # test seeds, as the eval uses
    .venv/bin/python benchmarks/lm_probe/teacher_forced.py CHECKPOINT test_oracle.zarr [--show p2_stack]

A step counts as right when the argmax at every answer position is the oracle's token (what greedy
decoding would emit, unconstrained); an episode when all its steps are.
"""
import argparse
import collections
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.getcwd())
from embodied_lm.data import examples_from_store  # noqa: E402
from embodied_lm.datasets import ReplayReader  # noqa: E402
from embodied_lm.model import autocast  # noqa: E402
from embodied_lm.sentence import IGNORE, collate, inject  # noqa: E402
from embodied_lm.train import load_trained  # noqa: E402
from sensors import collate as collate_sensors  # noqa: E402

p = argparse.ArgumentParser()
p.add_argument("checkpoint")
p.add_argument("store")
p.add_argument("--families", default="", help="comma-separated subset")
p.add_argument("--show", default="", help="print the wrong steps of this family")
p.add_argument("--threads", type=int, default=2)
a = p.parse_args()
torch.set_num_threads(a.threads)
families = a.families.split(",") if a.families else None
model = load_trained(a.checkpoint).eval()
examples = examples_from_store(a.store, model.tok, model.encoder, families)
reader = ReplayReader(a.store)
keys = []  # (task, level cell, episode, oracle step) per example, in examples_from_store's order
for i in range(reader.n_episodes):
    meta = reader.meta(i)
    if not meta["success"] or (families and meta["task"] not in families):
        continue
    cell = meta["level"] if meta["level"] == "L1" else f"{meta['level']}/{meta['n_objects']}"
    keys += [(meta["task"], cell, i, step) for step in meta["plan"].split("\n")]
assert len(keys) == len(examples)
right, said = [], []
with torch.no_grad(), autocast("cpu", "auto"):
    for s in range(0, len(examples), 32):
        chunk = examples[s:s + 32]
        batch = collate([e.sentence for e in chunk], model.tok.pad_token_id)
        slots = model.encode(collate_sensors([e.sensors for e in chunk]))[-1]
        x = inject(model.embed(batch["ids"]), batch["slots"], slots)  # (B, T, D)
        h = model.body(inputs_embeds=x, attention_mask=batch["attention_mask"]).last_hidden_state
        pred = model.head(h[:, :-1]).argmax(-1)  # (B, T-1)
        target = batch["labels"][:, 1:]
        sel = target != IGNORE
        right += ((pred == target) | ~sel).all(1).tolist()
        said += [model.tok.decode(p_[m], skip_special_tokens=True).strip() for p_, m in zip(pred, sel)]
steps = collections.defaultdict(list)
episodes = collections.defaultdict(lambda: collections.defaultdict(lambda: True))
for (task, cell, ep, _), ok in zip(keys, right):
    steps[task, cell].append(ok)
    episodes[task, cell][ep] &= ok
for k in sorted(steps):
    e = list(episodes[k].values())
    print(f"{k[0]:14} {k[1]:6} step {np.mean(steps[k]):6.1%} ({len(steps[k])})   "
          f"episode {np.mean(e):6.1%} ({len(e)})")
for (task, cell, _, step), ok, out, ex in zip(keys, right, said, examples):
    if task == a.show and not ok:
        prompt = model.tok.decode(ex.sentence.ids[:ex.sentence.n_prompt], skip_special_tokens=True)
        prompt = prompt.split("Task:")[-1]
        print(cell, " ".join(prompt.split()), "| oracle:", step, "| model:", out)
