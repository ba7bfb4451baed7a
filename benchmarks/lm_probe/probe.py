"""LM recipe probe: train EmbodiedLM on dumped oracle steps (dump_steps.py), report teacher-forced exact
next-step accuracy per family on test seeds (L1 and 8-object L2) -- the table "How the default model was
chosen" in the README.  A research script, not part of the product.  E6 (the default) was:

    .venv/bin/python benchmarks/lm_probe/probe.py --data . --name E6 --device cpu --steps 150 --bs 16 \
        --evals 75 --slr 3e-3 --relation 1.0 --pre 300 --enc '{"tokens_per_object": 2}' --ktest 25
"""
import argparse, json, math, os, pickle, sys, time
from collections import defaultdict
import numpy as np, torch
sys.path.insert(0, os.getcwd())
from embodied_lm.model import EmbodiedLM, ModelConfig

from embodied_lm.data import prompt_text
from embodied_lm.sentence import build_sentence, collate, IGNORE
from sensors import collate as collate_sensors

p = argparse.ArgumentParser()
p.add_argument("--name", default="run"); p.add_argument("--data", default="."); p.add_argument("--steps", type=int, default=600)
p.add_argument("--bs", type=int, default=16); p.add_argument("--lr", type=float, default=1e-3)
p.add_argument("--slr", type=float, default=1e-3); p.add_argument("--warmup", type=int, default=30)
p.add_argument("--targets", default="q_proj,v_proj"); p.add_argument("--r", type=int, default=16)
p.add_argument("--mode", default="lora"); p.add_argument("--backbone", default="smollm2")
p.add_argument("--ntrain", type=int, default=400); p.add_argument("--enc", default="{}")
p.add_argument("--sensors", default="state"); p.add_argument("--projector", default="mlp")
p.add_argument("--evals", default=""); p.add_argument("--seed", type=int, default=0)
p.add_argument("--weights", default="")  # family sampling weights, e.g. q1_color=2,p2_stack=2
p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
p.add_argument("--ktest", type=int, default=40)
p.add_argument("--threads", type=int, default=2)
p.add_argument("--relation", type=float, default=0.0)
p.add_argument("--pre", type=int, default=0)
a = p.parse_args()
dev = a.device
torch.set_num_threads(a.threads)
torch.backends.cuda.matmul.allow_tf32 = False
m = EmbodiedLM(ModelConfig(backbone=a.backbone, sensors=a.sensors, encoder=json.loads(a.enc), projector=a.projector,
                           mode=a.mode, lora_r=a.r, lora_alpha=2 * a.r, lora_targets=a.targets.split(","), relation_loss=a.relation), seed=a.seed).to(dev)
tok = m.tok
def mk(rows):
    out = []
    for r in rows:
        prompt = prompt_text(r["instruction"], r["history"], m.kind, r["objects"])
        s = m.sentence(prompt, r["answer"])
        out.append((s, {"objects": r["objects"]}, r))
    return out
train_rows = pickle.load(open(os.path.join(a.data, "probe_train.pkl"), "rb"))
test_rows = pickle.load(open(os.path.join(a.data, "probe_test.pkl"), "rb"))
keep = defaultdict(set)
for r in train_rows: keep[r["task"]].add(r["seed"])
allowed = {t: set(sorted(s)[:a.ntrain]) for t, s in keep.items()}
train_rows = [r for r in train_rows if r["seed"] in allowed[r["task"]]]
test_rows = [r for r in test_rows if r["level"] == "L1" or r["n"] == 8]
_eps = defaultdict(list)
for r in test_rows:
    k = (r["task"], r["level"])
    if r["seed"] not in _eps[k]: _eps[k].append(r["seed"])
_keep = {k: set(v[:a.ktest]) for k, v in _eps.items()}
test_rows = [r for r in test_rows if r["seed"] in _keep[(r["task"], r["level"])]]
tr, te = mk(train_rows), mk(test_rows)
w = dict(kv.split("=") for kv in a.weights.split(",") if kv)
pw = np.array([float(w.get(r["task"], 1.0)) for _, _, r in tr]); pw /= pw.sum()
print(a.name, "train examples", len(tr), "test", len(te), flush=True)
def batch_of(items):
    b = collate([s for s, _, _ in items], tok.pad_token_id)
    b["sensors"] = collate_sensors([x for _, x, _ in items])
    return {k: ({kk: vv.to(dev) for kk, vv in v.items()} if isinstance(v, dict) else v.to(dev)) for k, v in b.items()}
named = [(n, q) for n, q in m.named_parameters() if q.requires_grad]
groups = [{"params": [q for n, q in named if n.startswith(("encoder.", "projector."))], "lr": a.slr}]
lmp = [q for n, q in named if not n.startswith(("encoder.", "projector."))]
if lmp: groups.append({"params": lmp, "lr": a.lr})
opt = torch.optim.AdamW(groups, weight_decay=0.0); base = [g["lr"] for g in opt.param_groups]
def sched(step):
    if step < a.warmup: return (step + 1) / a.warmup
    t = (step - a.warmup) / max(1, a.steps - a.warmup); return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(t, 1)))
@torch.no_grad()
def evaluate():
    m.eval(); res = defaultdict(lambda: [0, 0]); steps_ok = {}
    for i in range(0, len(te), 128):
        items = te[i:i + 128]; b = batch_of(items)
        with torch.autocast(dev, dtype=torch.bfloat16):
            x = m.embed_sentence(b["ids"], b["slots"], b["sensors"])
            h = m.body(inputs_embeds=x, attention_mask=b["attention_mask"]).last_hidden_state
            tgt = b["labels"][:, 1:]; sel = tgt != IGNORE
            pred = torch.full_like(tgt, -1); pred[sel] = m.head(h[:, :-1][sel]).argmax(-1)
        ok = ((pred == tgt) | ~sel).all(1).cpu().numpy()
        for (s, _, r), o in zip(items, ok):
            key = f"{r['task']}/{'L1' if r['level']=='L1' else 'L2_8'}"; res[key][0] += int(o); res[key][1] += 1
            steps_ok.setdefault((r["task"], r["level"], r["seed"]), []).append(bool(o))
    ep = defaultdict(lambda: [0, 0])
    for (t, l, s), v in steps_ok.items():
        k = f"{t}/{'L1' if l=='L1' else 'L2_8'}"; ep[k][0] += all(v); ep[k][1] += 1
    if m.relation_ids is not None:
        b = batch_of(te[:256]); print("relation acc", m.relation_accuracy(b["sensors"]), flush=True)
    m.train()
    return {k: round(v[0] / v[1], 3) for k, v in sorted(res.items())}, {k: round(v[0] / v[1], 3) for k, v in sorted(ep.items())}
if a.pre:
    from embodied_lm.train import pretrain_relations, TrainConfig
    from embodied_lm.data import Example
    tp = time.time()
    acc = pretrain_relations(m, [Example(s_, x, r["task"]) for s_, x, r in tr], TrainConfig(relation_steps=a.pre), dev)
    b = batch_of(te[:256])
    print("pretrain", a.pre, "steps %.1fs" % (time.time() - tp), "train acc", acc, "test acc", m.relation_accuracy(b["sensors"]), flush=True)
rng = np.random.default_rng(a.seed); tokens = 0; t0 = time.time(); losses = []
evals = {int(x) for x in a.evals.split(",") if x} | {a.steps}
m.train()
for step in range(a.steps):
    idx = rng.choice(len(tr), size=a.bs, p=pw)
    b = batch_of([tr[i] for i in idx])
    for g, lr in zip(opt.param_groups, base): g["lr"] = lr * sched(step)
    with torch.autocast(dev, dtype=torch.bfloat16):
        loss = m(b)
    opt.zero_grad(set_to_none=True); loss.backward()
    torch.nn.utils.clip_grad_norm_([q for _, q in named], 1.0); opt.step()
    tokens += int(b["attention_mask"].sum()); losses.append(loss.item())
    if (step + 1) % 25 == 0: print("step", step + 1, "loss %.3f" % np.mean(losses[-25:]), "tok/s %.0f" % (tokens / (time.time() - t0)), flush=True)
    if step + 1 in evals:
        steps_acc, ep_acc = evaluate()
        print(json.dumps({"name": a.name, "step": step + 1, "examples": (step + 1) * a.bs, "tokens": tokens,
                          "cpu_min_at_600tps": round(tokens / 600 / 60, 1), "loss": round(float(np.mean(losses[-20:])), 4),
                          "wall": round(time.time() - t0, 1), "step_acc": steps_acc, "episode_acc": ep_acc}), flush=True)
