"""The embodied LM on the tiny backbone: exact injection, constrained decoding, checkpoints, resume."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from embodied_lm.decode import Trie, greedy
from embodied_lm.model import EmbodiedLM, ModelConfig
from embodied_lm.sentence import IGNORE, SentenceError, build_sentence, collate, inject
from skills import parse
from skills.vocab import Col, all_calls

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny():
    return EmbodiedLM(ModelConfig(backbone="tiny", sensors="state", mode="full"), seed=0)


def test_injection_places_sensor_tokens_exactly_and_masks_labels(tiny):
    tok = tiny.tok
    s = build_sentence(tok, "Obj 1 is <obj_1>. Obj 3 is <obj_3>.\nTask: stack.\nNext:", "pick obj_3",
                       kind="objects", n_slots=16)
    batch = collate([s], tok.pad_token_id)
    slots = batch["slots"][0]
    assert (slots >= 0).sum() == 2 and sorted(slots[slots >= 0].tolist()) == [0, 2]
    # the slot takes the place of the space before it (a space token would cost a position)
    assert s.ids[:slots.tolist().index(0)] == tok("Obj 1 is", add_special_tokens=False)["input_ids"]
    emb = tiny.embed(batch["ids"])  # (1, T, D)
    sensor = torch.randn(1, 16, emb.shape[-1])
    out = inject(emb, batch["slots"], sensor)
    for t in range(out.shape[1]):
        k = int(slots[t])
        want = sensor[0, k] if k >= 0 else emb[0, t]
        assert torch.equal(out[0, t], want)
    labels = batch["labels"][0]
    assert (labels[: s.n_prompt] == IGNORE).all() and (labels[slots >= 0] == IGNORE).all()
    answer = tok.decode(labels[labels != IGNORE].tolist())
    assert answer.strip().startswith("pick obj_3") and labels[-1] == tok.eos_token_id


@pytest.mark.parametrize("prompt,why", [("Obj 1 is <obj_1>. <cat>", "unknown placeholder <cat>"),
                                        ("Scene: <img>.", "unknown placeholder <img>"),
                                        ("Obj 17 is <obj_17>.", "only 16 object slots")])
def test_bad_placeholders_are_one_line_errors(tiny, prompt, why):
    with pytest.raises(SentenceError, match=why) as e:
        build_sentence(tiny.tok, prompt, None, kind="objects", n_slots=16)
    assert "\n" not in str(e.value)


class _RandomLogits:
    """Stands in for the LM's logits only: the decoder must stay inside the grammar whatever they are."""

    def __init__(self, vocab: int, seed: int):
        self.g = torch.Generator().manual_seed(seed)
        self.vocab = vocab

    def body(self, inputs_embeds, **kw):
        class Out:
            pass

        o = Out()
        o.last_hidden_state = torch.zeros(inputs_embeds.shape[0], inputs_embeds.shape[1], 1)
        o.cache = None
        return o

    def head(self, h):
        return torch.randn(*h.shape[:-1], self.vocab, generator=self.g) * 10

    def embed(self, ids):
        return torch.zeros(*ids.shape, 1)


def test_constrained_decoding_never_emits_an_unparsable_step(tiny):
    rng = np.random.default_rng(0)
    for trial in range(150):
        n = int(rng.integers(1, 9))
        names = [f"obj_{k}" for k in sorted(rng.choice(np.arange(1, 17), size=n, replace=False))]
        kinds = [["block", "bowl"][int(rng.random() < 0.3)] for _ in names]
        fake = _RandomLogits(len(tiny.tok), seed=trial)
        text = greedy(fake, torch.zeros(1, 3, 1), tiny.tok, Trie(tiny.tok, all_calls(names, kinds)))
        call = parse(text)  # raises if unparsable
        objs = [w for w in str(call).split() if w.startswith("obj_")]
        assert all(o in names for o in objs), (text, names)
    # Unconstrained, random logits give garbage: the constraint is what guarantees the grammar.
    free = greedy(_RandomLogits(len(tiny.tok), 1), torch.zeros(1, 3, 1), tiny.tok, None)
    with pytest.raises(ValueError):
        parse(free)


def test_greedy_equals_full_recompute_and_lora_merge_keeps_the_model(tiny):
    """KV-cache greedy that skips forward passes for forced tokens picks exactly what argmax over the
    allowed tokens of a full, cache-free forward gives at every position; folding LoRA into the weights
    for inference keeps logits and plans, and train() takes it out again."""
    cfg = ModelConfig(backbone="tiny", sensors="state", mode="lora", lora_targets=["q_proj", "v_proj"])
    model = EmbodiedLM(cfg, seed=0).eval()
    g = torch.Generator().manual_seed(0)
    for name, p in model.lm.named_parameters():
        if "lora_B" in name:  # zero at init: make the adapters matter
            p.data = torch.randn(p.shape, generator=g) * 0.05
    objects = np.zeros((16, 12), np.float32)
    objects[:6, Col.PRESENT] = 1
    objects[:6, 3:6] = np.random.default_rng(0).uniform(0, 0.5, (6, 3))
    sent = model.sentence("Scene: obj_1 is <obj_1>. obj_2 is <obj_2>. obj_5 is <obj_5>.\nNext:", None)
    sensors = {"objects": torch.from_numpy(objects)[None]}

    def brute(trie, embeds):
        node, ids = trie.root, []
        while True:
            x = torch.cat([embeds, model.embed(torch.tensor([ids], dtype=torch.long))], 1)
            logits = model.head(model.body(inputs_embeds=x).last_hidden_state[:, -1])[0]
            allowed = [t for t in node if t is not None]
            nxt = allowed[int(torch.argmax(logits[allowed]))]
            node = node[nxt]
            if nxt == model.tok.eos_token_id:
                return node[None]
            ids.append(nxt)

    rng = np.random.default_rng(1)
    with torch.no_grad():
        embeds = model.embed_sentence(torch.tensor([sent.ids]), torch.tensor([sent.slots]), sensors)
        before = model.head(model.body(inputs_embeds=embeds).last_hidden_state)
        tries = []
        for _ in range(12):
            names = [f"obj_{k}" for k in sorted(rng.choice(np.arange(1, 17), size=int(rng.integers(2, 9)),
                                                           replace=False))]
            tries.append(Trie(model.tok, all_calls(names, ["block"] * len(names))))
        plans = [greedy(model, embeds, model.tok, t) for t in tries]
        assert plans == [brute(t, embeds) for t in tries]
        assert len(set(plans)) > 1  # the scenes lead to different calls: the comparison has teeth
        model.merge_lora()
        assert model.lora_merged
        merged = model.head(model.body(inputs_embeds=embeds).last_hidden_state)
        torch.testing.assert_close(merged, before, atol=1e-4, rtol=1e-4)
        assert [greedy(model, embeds, model.tok, t) for t in tries] == plans
        model.train()
        assert not model.lora_merged
        model.eval()
        torch.testing.assert_close(model.head(model.body(inputs_embeds=embeds).last_hidden_state), before,
                                   atol=1e-5, rtol=1e-5)


def _examples(model, n=12):
    from embodied_lm.data import Example

    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        objects = np.zeros((16, 12), np.float32)
        objects[:4, Col.PRESENT] = 1
        objects[:4, 3:6] = rng.uniform(0, 0.5, (4, 3))
        s = model.sentence("Obj 1 is <obj_1>. Obj 2 is <obj_2>.\nNext:", f"pick obj_{1 + i % 2}")
        task = "p1_grasp" if i % 3 == 0 else "q2_on_table"
        out.append(Example(s, model.encoder.preprocess({"objects": objects}, {}), task))
    return out


POINTERS = {"tokens_per_object": 1, "pointers": ["support", "above", "top"]}


@pytest.mark.parametrize("cfg, tcfg", [
    (ModelConfig(backbone="tiny", sensors="state", mode="full"), {}),
    # the default recipe's parts: referral tokens, relation pretraining, family-balanced batches
    (ModelConfig(backbone="tiny", sensors="state", mode="full", encoder=POINTERS, relation_loss=1.0),
     {"relation_steps": 3, "balance": "family"}),
], ids=["plain", "pointers"])
def test_save_load_identical_logits_and_exact_resume(tmp_path, cfg, tcfg):
    from embodied_lm.sentence import collate as collate_text
    from embodied_lm.train import TrainConfig, load_checkpoint, train
    from sensors import collate as collate_sensors

    tcfg = TrainConfig(steps=6, batch_size=4, warmup=2, checkpoint_every=100, **tcfg)
    a = EmbodiedLM(cfg, seed=0)
    ex = _examples(a)
    full = train(a, ex, tcfg, tmp_path / "a", progress=False)

    b = EmbodiedLM(cfg, seed=0)
    train(b, ex, tcfg, tmp_path / "b", progress=False, stop_after=4)  # mid-decay: the lr scale is not 1
    c = EmbodiedLM(cfg, seed=1)  # different init: resume must overwrite everything that trains
    resumed = train(c, ex, tcfg, tmp_path / "c", resume=tmp_path / "b", progress=False)
    assert resumed["losses"] == full["losses"]

    d = EmbodiedLM(cfg, seed=5)
    load_checkpoint(d, tmp_path / "a")
    batch = collate_text([e.sentence for e in ex[:3]], a.tok.pad_token_id)
    sensors = collate_sensors([e.sensors for e in ex[:3]])
    def logits(m):
        x = m.embed_sentence(batch["ids"], batch["slots"], sensors)  # (B, T, D)
        return m.head(m.body(inputs_embeds=x, attention_mask=batch["attention_mask"]).last_hidden_state)

    with torch.no_grad():
        assert torch.equal(logits(a), logits(d))


def test_micro_batches_train_the_same_model(tmp_path):
    """A batch cut into length-sorted parts (less padding) gives the batch's loss and gradient."""
    from embodied_lm.data import Example
    from embodied_lm.train import TrainConfig, train

    cfg = ModelConfig(backbone="tiny", sensors="state", mode="full")
    runs = []
    for parts in (1, 2, 3):
        model = EmbodiedLM(cfg, seed=0)
        ex = [Example(model.sentence("Obj 1 is <obj_1>." + " Obj 2 is <obj_2>. Then more words." * (i % 4)
                                     + "\nNext:", f"pick obj_{1 + i % 2}"), e.sensors, e.task)
              for i, e in enumerate(_examples(model))]  # 4 prompt lengths
        tcfg = TrainConfig(steps=4, batch_size=6, warmup=1, checkpoint_every=100, precision="fp32",
                           micro_batches=parts)
        runs.append(train(model, ex, tcfg, tmp_path / str(parts), progress=False)["losses"])
    assert len(set(map(len, runs))) == 1
    np.testing.assert_allclose(runs[1], runs[0], atol=1e-4)
    np.testing.assert_allclose(runs[2], runs[0], atol=1e-4)


def test_compiled_layers_train_the_same_model_and_the_planner_gets_eager_ones(tmp_path):
    """train.compile: the decoder layers run through torch.compile while training -- the same losses as
    eager (fused kernels sum in another order) -- and are eager again afterwards (the planner's KV-cache
    forwards would recompile)."""
    from torch._dynamo import config as dynamo_config

    from embodied_lm.train import TrainConfig, train

    runs, compiled = {}, {False: [], True: []}
    for on in (False, True):
        model = EmbodiedLM(ModelConfig(backbone="tiny", sensors="state", mode="lora"), seed=0)
        layer = model.body.layers[0]
        model.body.register_forward_hook(lambda *_, c=compiled[on], x=layer: c.append(x._compiled_call_impl))
        tcfg = TrainConfig(steps=3, batch_size=4, warmup=1, checkpoint_every=100, compile=on)
        with dynamo_config.patch(disable=False):  # tests/conftest.py turns compiling off elsewhere
            runs[on] = train(model, _examples(model), tcfg, tmp_path / str(on), progress=False)["losses"]
        assert layer._compiled_call_impl is None
    assert compiled[False] and all(c is None for c in compiled[False])
    assert compiled[True] and all(c is not None for c in compiled[True])
    np.testing.assert_allclose(runs[True], runs[False], rtol=1e-5)


def test_without_a_cpp_compiler_the_layers_train_eagerly_with_a_warning(tmp_path, monkeypatch):
    from torch._dynamo import config as dynamo_config

    from embodied_lm.train import TrainConfig, train

    monkeypatch.setenv("CXX", str(tmp_path / "no-such-g++"))
    monkeypatch.setattr("torch._inductor.config.cpp.cxx", (None, str(tmp_path / "no-such-g++")))
    model = EmbodiedLM(ModelConfig(backbone="tiny", sensors="state", mode="lora"), seed=0)
    tcfg = TrainConfig(steps=2, batch_size=4, warmup=1, checkpoint_every=100, compile=True)
    with dynamo_config.patch(disable=False), pytest.warns(UserWarning, match="train eagerly"):
        losses = train(model, _examples(model), tcfg, tmp_path / "ck", progress=False)["losses"]
    assert len(losses) == 2 and np.isfinite(losses).all()


def test_bf16_training_stores_frozen_weights_in_bf16_only_while_it_trains(tmp_path, monkeypatch):
    """A bf16 training loop holds the frozen LM's linear weights in bf16 (no cast in every forward) and
    attends eagerly: the same losses as casting each time under eager attention, and the fp32 weights
    and the loaded attention are back afterwards."""
    from contextlib import nullcontext

    from embodied_lm import train as train_module

    tcfg = train_module.TrainConfig(steps=3, batch_size=4, warmup=1, checkpoint_every=100, precision="bf16")
    runs = {}
    for stored in (True, False):
        model = EmbodiedLM(ModelConfig(backbone="tiny", sensors="state", mode="lora"), seed=0)
        lm = model.lm.get_base_model()
        loaded = lm.config._attn_implementation
        if not stored:  # the reference: weights cast by autocast in every forward, eager attention
            monkeypatch.setattr(train_module, "bf16_training", lambda *a: nullcontext())
            lm.set_attn_implementation("eager")
        frozen = {n: p.detach().clone() for n, p in model.lm.named_parameters() if not p.requires_grad}
        q_proj = model.body.layers[0].self_attn.q_proj.base_layer
        seen = []
        model.body.register_forward_hook(
            lambda *_, w=q_proj.weight, seen=seen, lm=lm: seen.append((w.dtype, lm.config._attn_implementation)))
        runs[stored] = train_module.train(model, _examples(model), tcfg, tmp_path / str(stored),
                                          progress=False)["losses"]
        assert set(seen) == {(torch.bfloat16 if stored else torch.float32, "eager")}
        now = dict(model.lm.named_parameters())
        assert all(now[n].dtype == torch.float32 and torch.equal(now[n], w) for n, w in frozen.items())
        if stored:
            assert loaded != "eager" and lm.config._attn_implementation == loaded
    assert runs[True] == runs[False]


def test_checkpoint_from_another_config_is_refused(tmp_path):
    from embodied_lm.train import CheckpointError, TrainConfig, load_checkpoint, train

    a = EmbodiedLM(ModelConfig(backbone="tiny", sensors="state", mode="full"), seed=0)
    train(a, _examples(a, 4), TrainConfig(steps=1, batch_size=2, warmup=1), tmp_path / "ck", progress=False)
    other = EmbodiedLM(ModelConfig(backbone="tiny", sensors="state", mode="full", projector="linear"), seed=0)
    with pytest.raises(CheckpointError, match="projector: checkpoint 'mlp' vs config 'linear'") as e:
        load_checkpoint(other, tmp_path / "ck")
    assert "\n" not in str(e.value)
    with pytest.raises(CheckpointError, match="not a checkpoint"):
        load_checkpoint(other, tmp_path)


@pytest.mark.parametrize("context", ["step", "episode"])
def test_smoke_preset_end_to_end(tmp_path, context):
    out = subprocess.run([sys.executable, str(ROOT / "experiments" / "run.py"), "preset=smoke",
                          f"hydra.run.dir={tmp_path}", "eval.progress=false", "train.precision=auto",
                          f"train.context={context}"],
                         capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-2000:]
    res = json.loads((tmp_path / "results.json").read_text())
    assert res["planner"] == "embodied_lm" and res["summary"]["episodes"] == 2
    assert res["timing"]["train_s"] > 0 and res["timing"]["collect_s"] > 0
    from embodied_lm.model import native_bf16

    native = native_bf16("cpu")  # what kind of machine made the figures
    expected = "bf16" if native else "fp32"
    assert res["precision"] == {"native_bf16_cpu": native, "planner": "fp32", "train": expected}  # default fp32
    assert (tmp_path / "checkpoint" / "model.safetensors").is_file()
    saved = json.loads((tmp_path / "checkpoint" / "config.json").read_text())
    assert saved["model"]["context"] == context  # the planner decodes in the context it trained in
    if context == "episode":
        return
    bad = subprocess.run([sys.executable, str(ROOT / "experiments" / "run.py"), "preset=smoke", "stage=train",
                          f"dataset={tmp_path / 'checkpoint'}", f"hydra.run.dir={tmp_path / 'b'}"],
                         capture_output=True, text=True, timeout=300, cwd=ROOT)
    err = bad.stderr.strip().splitlines()
    assert bad.returncode == 2 and len(err) == 1 and err[0].startswith("error:"), bad.stderr


def test_family_balanced_batches():
    """balance=family draws every task family equally often (or at its family_weights odds), however
    many steps its examples have; absent families' weights are unused."""
    from embodied_lm.config import ConfigError, TrainConfig
    from embodied_lm.data import Example
    from embodied_lm.train import batch_sampler

    examples = [Example(None, {}, "p2_stack")] * 90 + [Example(None, {}, "q1_color")] * 10
    rng = np.random.default_rng(0)
    for kw, q1_share in (({"balance": "family", "family_weights": {}}, 0.5),
                         ({"balance": "step", "family_weights": {}}, 0.1),
                         ({"balance": "family", "family_weights": {"p2_stack": 3, "p1_grasp": 9}}, 0.25)):
        draw = batch_sampler(examples, TrainConfig(batch_size=1000, **kw))
        idx = draw(rng)
        assert abs(np.mean([examples[i].task == "q1_color" for i in idx]) - q1_share) < 0.05
    with pytest.raises(ConfigError, match="train.balance"):
        TrainConfig(balance="task")
    with pytest.raises(ConfigError, match="unknown.*p2_stak"):
        TrainConfig(family_weights={"p2_stak": 3})
    with pytest.raises(ConfigError, match="p2_stack must be a positive number"):
        TrainConfig(family_weights={"p2_stack": 0})
    with pytest.raises(ConfigError, match="need train.balance=family"):
        TrainConfig(balance="step", family_weights={"p2_stack": 3})


def test_episode_context_planner_extends_the_training_sentence(env, monkeypatch):
    """In the episode context the planner's KV cache after each step holds exactly what training's
    interleaved sentence holds at that point (same ids, positions and injected observation tokens):
    the keys of every layer equal a cache-free forward over the joined training sentence."""
    from embodied_lm import lm_planner
    from embodied_lm.data import episode_prompt
    from embodied_lm.evaluate import run_episode
    from embodied_lm.lm_planner import EmbodiedLMPlanner
    from embodied_lm.sentence import join
    from sensors import collate as collate_sensors
    from sim.tasks import generate_specs

    model = EmbodiedLM(ModelConfig(backbone="tiny", sensors="state", mode="full", context="episode"), seed=0)

    class Recording(EmbodiedLMPlanner):
        def act(self, obs, info):
            self.seen.append(obs)
            return super().act(obs, info)

    # an untrained model says "done" at once: offer it only picks and places, so episodes run on
    monkeypatch.setattr(lm_planner, "all_calls", lambda names, kinds: [
        c for c in all_calls(names, kinds) if c.startswith(("pick", "place"))])
    planner = Recording(model=model, precision="fp32")  # the reference forward is fp32
    longest = 0
    for spec in generate_specs(["p2_stack"], ["L1"], episodes=2):
        planner.seen = []
        row = run_episode(env, planner, spec)
        parts = [model.sentence(episode_prompt(row.instruction, t, model.kind, o["objects"]), a)
                 for t, (o, a) in enumerate(zip(planner.seen, row.plan))]
        sent = join(parts)
        sensors = collate_sensors([model.encoder.preprocess(o, {}) for o in planner.seen])
        with torch.no_grad():
            x = model.embed_sentence(torch.tensor([sent.ids]), torch.tensor([sent.slots]), sensors)
            full = model.body(inputs_embeds=x, use_cache=True).cache
        n = planner.cache.get_seq_length()  # all but the last answer's tokens still waiting to be fed
        assert 0 < len(sent.ids) - n <= 8 and len(sent.spans) == len(row.plan)
        for mine, ref in zip(planner.cache.layers, full.layers):
            torch.testing.assert_close(mine.keys, ref.keys[:, :, :n], atol=1e-5, rtol=1e-5)
        longest = max(longest, len(row.plan))
    assert longest >= 2  # the cache was extended across steps at least once


def test_a_refused_instruction_is_recorded_as_one_refuse_step(env, tiny):
    """A refusal at the first step still records a well-formed episode: one frame, action "refuse"."""
    from embodied_lm.evaluate import run_episode
    from embodied_lm.lm_planner import EmbodiedLMPlanner
    from sim.tasks import EpisodeSpec

    spec = EpisodeSpec("p1_grasp", {"target": "red"}, 3, 5, "Pick up the white block.")
    recorded = []  # a recorder is anything with append(episode)
    row = run_episode(env, EmbodiedLMPlanner(model=tiny, precision="fp32"), spec, recorder=recorded)
    assert row.plan == ["refuse"] and not row.success and row.messages[0].startswith("refused:")
    (episode,) = recorded
    assert list(episode.data["action"]) == ["refuse"] and episode.data["objects"].shape[0] == 1


def test_batched_greedy_decodes_each_prompt_as_if_alone():
    """``greedy_batch`` (left-padded prompts, forced tokens fed in ragged right-padded chunks) gives every
    prompt what ``greedy`` gives it alone, constrained and unconstrained."""
    from embodied_lm.decode import greedy_batch

    tiny = EmbodiedLM(ModelConfig(backbone="tiny", sensors="state", mode="full"), seed=2).eval()
    for name, p in tiny.lm.named_parameters():  # sharp attention: positions and masked slots matter
        if name.endswith(("q_proj.weight", "k_proj.weight")):
            p.data *= 8
    rng = np.random.default_rng(3)
    prompts, tries = [], []
    for i in range(7):
        ids = torch.from_numpy(rng.integers(100, len(tiny.tok), size=int(rng.integers(3, 25))))[None]
        prompts.append(tiny.embed(ids).detach())
        names = [f"obj_{k}" for k in sorted(rng.choice(np.arange(1, 17), size=int(rng.integers(2, 9)),
                                                       replace=False))]
        kinds = [["block", "bowl"][int(rng.random() < 0.3)] for _ in names]
        tries.append(None if i == 2 else Trie(tiny.tok, all_calls(names, kinds)))
    with torch.no_grad():
        alone = [greedy(tiny, p, tiny.tok, t) for p, t in zip(prompts, tries)]
        assert greedy_batch(tiny, prompts, tiny.tok, tries) == alone
    assert len(set(alone)) > 2 and len({len(a.split()) for a in alone}) > 1  # calls of several shapes


def test_bf16_decoding_holds_the_linear_weights_in_bf16_and_decodes_as_autocast_does():
    """``decoding(model, "bf16")``: the LM's linear weights are bf16 inside (a kept copy, remade after an
    in-place update), fp32 after; the hidden states equal plain autocast's, which casts every weight in
    every forward."""
    from embodied_lm.model import autocast, decoding

    tiny = EmbodiedLM(ModelConfig(backbone="tiny", sensors="state", mode="full"), seed=2).eval()
    q = tiny.body.layers[0].self_attn.q_proj.weight
    x = tiny.embed(torch.arange(100, 120)[None]).detach()  # (1, 20, D)
    with torch.no_grad():
        with autocast("cpu", "bf16"):
            cast = tiny.body(inputs_embeds=x).last_hidden_state
        with decoding(tiny, "bf16"):
            assert q.dtype == torch.bfloat16 and tiny.head.weight.dtype == torch.float32
            held = tiny.body(inputs_embeds=x).last_hidden_state
        assert q.dtype == torch.float32 and torch.equal(held, cast)
        q.mul_(2)  # the model changes (merge_lora, more training): the copy is remade
        with autocast("cpu", "bf16"):
            cast = tiny.body(inputs_embeds=x).last_hidden_state
        with decoding(tiny, "bf16"):
            assert torch.equal(tiny.body(inputs_embeds=x).last_hidden_state, cast)
        with decoding(tiny, "fp32"):
            assert q.dtype == torch.float32 and not torch.is_autocast_enabled("cpu")


def test_lockstep_evaluation_gives_each_episode_its_serial_row(env, monkeypatch):
    """``evaluate(batch=4)`` runs episodes side by side and decodes their steps in one batch; every row
    and recorded episode equals the one-at-a-time run's, a refused instruction included."""
    from embodied_lm import lm_planner
    from embodied_lm.distributed import row_trace
    from embodied_lm.evaluate import evaluate
    from embodied_lm.lm_planner import EmbodiedLMPlanner
    from sim.env import EnvConfig, TabletopEnv
    from sim.tasks import EpisodeSpec, generate_specs

    model = EmbodiedLM(ModelConfig(backbone="tiny", sensors="state", mode="full"), seed=1)
    # an untrained model says "done" at once: offer it only picks and places, so episodes run on
    monkeypatch.setattr(lm_planner, "all_calls", lambda names, kinds: [
        c for c in all_calls(names, kinds) if c.startswith(("pick", "place"))])
    specs = generate_specs(["p1_grasp", "p2_stack", "q2_on_table"], ["L1"], episodes=2, seed=5)
    specs.insert(2, EpisodeSpec("p1_grasp", {"target": "red"}, 3, 5, "Pick up the white block."))
    runs = []
    for batch in (1, 4):
        recorded = []
        planner = EmbodiedLMPlanner(model=model, precision="fp32")
        rows = evaluate(env, planner, specs, recorded, progress=False, batch=batch,
                        make_env=lambda: TabletopEnv(EnvConfig(observe_images=False)))
        runs.append((rows, recorded))
    (serial, rec_a), (batched, rec_b) = runs
    assert [row_trace(r) for r in batched] == [row_trace(r) for r in serial]
    assert serial[2].plan == ["refuse"] and max(r.steps for r in serial) >= 3
    for a, b in zip(rec_a, rec_b):
        assert a.meta == b.meta and a.data.keys() == b.data.keys()
        for k in a.data:
            np.testing.assert_array_equal(a.data[k], b.data[k], err_msg=k)


def test_truncated_backbone_keeps_first_and_last_layers_and_decodes_with_its_cache(tmp_path):
    """backbone.layers=3 of tiny's 4 keeps layers 0, 1 and 3 (the same weights), renumbered for the KV
    cache: cached greedy equals a cache-free forward; its checkpoint refuses the full model."""
    from embodied_lm.backbones import load_backbone, truncate
    from embodied_lm.train import CheckpointError, TrainConfig, load_checkpoint, train

    torch.manual_seed(0)
    full, _ = load_backbone("tiny")
    torch.manual_seed(0)
    cut, _ = load_backbone("tiny")
    truncate(cut, 3)
    assert cut.config.num_hidden_layers == 3 and [b.self_attn.layer_idx for b in cut.model.layers] == [0, 1, 2]
    for mine, theirs in zip(cut.model.layers, [full.model.layers[i] for i in (0, 1, 3)]):
        assert torch.equal(mine.mlp.up_proj.weight, theirs.mlp.up_proj.weight)
    with pytest.raises(ValueError, match="backbone.layers=5: this backbone has 3 decoder layers"):
        truncate(cut, 5)

    cfg = ModelConfig(backbone="tiny", backbone_layers=3, sensors="state", mode="full")
    model = EmbodiedLM(cfg, seed=0).eval()
    assert len(model.body.layers) == 3
    objects = np.zeros((16, 12), np.float32)
    objects[:4, Col.PRESENT] = 1
    sent = model.sentence("Scene: obj_1 is <obj_1>. obj_4 is <obj_4>.\nNext:", None)
    with torch.no_grad():
        embeds = model.embed_sentence(torch.tensor([sent.ids]), torch.tensor([sent.slots]),
                                      {"objects": torch.from_numpy(objects)[None]})
        trie = Trie(model.tok, all_calls(["obj_1", "obj_4"], ["block"] * 2))
        node, ids = trie.root, []
        while True:  # cache-free: argmax over the allowed tokens
            x = torch.cat([embeds, model.embed(torch.tensor([ids], dtype=torch.long))], 1)
            logits = model.head(model.body(inputs_embeds=x).last_hidden_state[:, -1])[0]
            allowed = [t for t in node if t is not None]
            ids.append(allowed[int(torch.argmax(logits[allowed]))])
            node = node[ids[-1]]
            if ids[-1] == model.tok.eos_token_id:
                break
        assert greedy(model, embeds, model.tok, trie) == node[None]
    train(model, _examples(model, 4), TrainConfig(steps=1, batch_size=2, warmup=1), tmp_path / "ck",
          progress=False)
    other = EmbodiedLM(ModelConfig(backbone="tiny", sensors="state", mode="full"), seed=0)
    with pytest.raises(CheckpointError, match="backbone_layers: checkpoint 3 vs config 0"):
        load_checkpoint(other, tmp_path / "ck")


@pytest.mark.parametrize("perceived", [False, True])
def test_demonstrations_whose_observation_misses_a_named_object(tiny, tmp_path, capsys, perceived):
    """An instruction naming a colour the observed rows lack: a bug in sim-truth demonstrations (raised,
    naming the episode), a colour misread in perceived ones (skipped and counted)."""
    from embodied_lm.data import examples_from_store
    from embodied_lm.datasets import ReplayWriter
    from embodied_lm.evaluate import evaluate
    from embodied_lm.grounding import UnresolvedReference
    from embodied_lm.planners import make_planner
    from sim.env import EnvConfig, TabletopEnv
    from sim.tasks import EpisodeSpec

    spec = EpisodeSpec("p1_grasp", {"target": "red"}, 3, 5, instruction="Pick up the purple block.")
    good = EpisodeSpec("p1_grasp", {"target": "red"}, 3, 5, refer="color")
    env = TabletopEnv(EnvConfig(observe_images=False))
    path = tmp_path / "demos.zarr"
    with ReplayWriter(path, attrs={"images": False, "env_config": {"collect": {"perception": perceived}}}) as w:
        rows = evaluate(env, make_planner("oracle"), [good, spec], w, progress=False)
    env.close()
    assert all(r.success for r in rows)
    if not perceived:
        with pytest.raises(UnresolvedReference, match="episode 1 step 0: the instruction names 'purple block'"):
            examples_from_store(path, tiny.tok, tiny.encoder)
        return
    examples = examples_from_store(path, tiny.tok, tiny.encoder)
    assert len(examples) == rows[0].steps  # the good episode's steps only
    assert f"skipped {rows[1].steps} steps whose observation does not show" in capsys.readouterr().out



def test_a_model_that_names_objects_by_colour_learns_and_plans_in_colour_calls(env, tmp_path, monkeypatch):
    """train.calls=colour (a model without object tokens, e.g. vit): its training answers and its
    constrained decoding name objects by colour, and the env runs those calls on the objects meant."""
    from embodied_lm import lm_planner
    from embodied_lm.data import examples_from_store
    from embodied_lm.datasets import ReplayWriter
    from embodied_lm.evaluate import evaluate
    from embodied_lm.lm_planner import EmbodiedLMPlanner
    from embodied_lm.planners import make_planner
    from sim.tasks import generate_specs
    from skills import parse

    specs = generate_specs(["p2_stack"], ["L1"], episodes=2, split="train", refer="color")
    path = tmp_path / "demos.zarr"
    with ReplayWriter(path, attrs={"images": False}) as w:
        rows = evaluate(env, make_planner("oracle"), specs, w, progress=False)
    model = EmbodiedLM(ModelConfig(backbone="tiny", sensors="state", mode="full", calls="colour"), seed=0)
    examples = examples_from_store(path, model.tok, model.encoder, calls="colour")
    answers = [model.tok.decode(e.sentence.ids[e.sentence.n_prompt:-1]).strip() for e in examples]
    assert len(answers) == sum(r.steps for r in rows) and "pick the " in answers[0]
    assert not any("obj_" in a for a in answers) and all(parse(a) for a in answers)
    obs, info = env.reset(options={"spec": specs[0]})
    offered, possible = [], set(env.valid_actions(by_colour=True))  # the planner's grammar, as it built it

    def calls(names, kinds):
        offered.extend(all_calls(names, kinds))
        return [c for c in offered if c in possible and c.startswith("pick")]

    monkeypatch.setattr(lm_planner, "all_calls", calls)  # possible picks only: an untrained model says "done"
    planner = EmbodiedLMPlanner(model=model, precision="fp32")
    planner.reset(env, obs, info)
    call = planner.act(obs, info)
    assert any(c.startswith("pick the ") for c in offered) and not any("obj_" in c for c in offered)
    assert call.startswith("pick the ")
    _, _, _, _, info = env.step(call)
    assert info["skill_success"], info["message"]  # the env resolved it to a real object and picked it
    assert env.world.object_infos()[info["held"]].color == call.split()[2]


def test_the_run_config_hands_the_planner_the_robot_s_reports_by_default(tiny):
    from embodied_lm.config import DecodeConfig, RayConfig, RunConfig
    from embodied_lm.lm_planner import EmbodiedLMPlanner

    serial = RayConfig(num_workers=0)
    on, _ = EmbodiedLMPlanner.run_args(RunConfig(ray=serial), model=tiny)
    off, _ = EmbodiedLMPlanner.run_args(RunConfig(ray=serial, decode=DecodeConfig(reports=False)), model=tiny)
    assert on["reports"] is True and off["reports"] is False
    assert EmbodiedLMPlanner(**on).reports and not EmbodiedLMPlanner(**off).reports


def test_an_episode_context_planner_keeps_refused_calls_in_its_sentence():
    """Reports would drop a refused call from the history, but the episode context's cache holds it."""
    from embodied_lm.lm_planner import EmbodiedLMPlanner

    model = EmbodiedLM(ModelConfig(backbone="tiny", sensors="state", mode="full", context="episode"), seed=0)
    assert not EmbodiedLMPlanner(model=model, reports=True).reports


def test_the_scene_context_trains_and_plans_without_the_history(env, tmp_path, monkeypatch):
    """train.context=scene: every training prompt is the step prompt without "Done so far", and the
    planner's prompt carries no history either, though the episode has one."""
    from embodied_lm import lm_planner
    from embodied_lm.data import examples_from_store
    from embodied_lm.datasets import ReplayWriter
    from embodied_lm.evaluate import evaluate
    from embodied_lm.lm_planner import EmbodiedLMPlanner
    from embodied_lm.planners import make_planner
    from sim.tasks import generate_specs

    specs = generate_specs(["p2_stack"], ["L1"], episodes=1, split="train")
    path = tmp_path / "demos.zarr"
    with ReplayWriter(path, attrs={"images": False}) as w:
        rows = evaluate(env, make_planner("oracle"), specs, w, progress=False)
    model = EmbodiedLM(ModelConfig(backbone="tiny", sensors="state", mode="full", context="scene"), seed=0)
    step = examples_from_store(path, model.tok, model.encoder, context="step")
    scene = examples_from_store(path, model.tok, model.encoder, context="scene")
    prompts = [model.tok.decode(e.sentence.ids[:e.sentence.n_prompt]) for e in scene]
    assert len(scene) == len(step) == rows[0].steps >= 3
    assert all("Done so far" in model.tok.decode(e.sentence.ids) for e in step)
    assert not any("Done so far" in p for p in prompts) and all(p.endswith("Next:") for p in prompts)

    seen = []
    sentence = model.sentence
    monkeypatch.setattr(model, "sentence", lambda prompt, answer: seen.append(prompt) or sentence(prompt, answer))
    monkeypatch.setattr(lm_planner, "all_calls", lambda names, kinds: [  # an untrained model would say done
        c for c in all_calls(names, kinds) if c.startswith(("pick", "place"))])
    planner = EmbodiedLMPlanner(model=model, precision="fp32")
    obs, info = env.reset(options={"spec": specs[0]})
    planner.reset(env, obs, info)
    for _ in range(2):
        call = planner.act(obs, info)
        obs, _, _, _, info = env.step(call)
    assert len(seen) == 2 and not any("Done so far" in p for p in seen) and len(planner.history) >= 1
