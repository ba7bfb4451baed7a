"""Deliberate skill failures (sim.faults), transition questions over two observations
(embodied_lm.transitions), the planner's failure detection, and the ROS endpoint's silent faults."""

import numpy as np
import pytest
import torch

from embodied_lm.config import ConfigError, TrainConfig, load_run_config
from embodied_lm.data import examples_from_store as plan_examples
from embodied_lm.evaluate import run_episode
from embodied_lm.lm_planner import BAR_AFTER, EmbodiedLMPlanner
from embodied_lm.model import EmbodiedLM, ModelConfig
from embodied_lm.planners import make_planner
from embodied_lm.sentence import collate, inject
from embodied_lm.transitions import (
    TransitionJudge,
    TransitionRow,
    change_text,
    counterfactual,
    examples_from_store,
    holds,
    success_answer,
    success_answers,
    transition_metrics,
    transition_sentence,
    verdict,
)
from sim.env import EnvConfig, TabletopEnv
from sim.tasks import EpisodeSpec, generate_specs
from skills.vocab import Col

P1 = generate_specs(["p1_grasp"], ["L1"], episodes=1, split="test")[0]
P2 = EpisodeSpec("p2_stack", {"order": ["red", "blue"]}, 4, 11)


@pytest.fixture(scope="module")
def tiny():
    cfg = ModelConfig(backbone="tiny", sensors="state", mode="full", transitions=["success", "change"])
    return EmbodiedLM(cfg, seed=0)


def _oracle_steps(env, spec):
    obs, info = env.reset(options={"spec": spec})
    out = []
    for _ in range(info["max_steps"]):
        call = env.oracle_action()
        nxt, _, term, trunc, info = env.step(call)
        out.append((call, obs, nxt, info))
        obs = nxt
        if term or trunc:
            break
    return out


@pytest.mark.parametrize("fault,verb", [("slip", "pick"), ("drop", "place"), ("topple", "place")])
def test_a_fault_makes_its_skill_fail_truthfully_and_the_oracle_recovers(fault, verb):
    env = TabletopEnv(EnvConfig(observe_images=False, faults={fault: 1.0}))
    try:
        steps = _oracle_steps(env, P2)
    finally:
        env.close()
    # a slip strikes every pick; a drop or a topple needs a target (placed "on table", a block is on the table)
    affected = [(c, o, n, i) for c, o, n, i in steps if c.startswith(verb) and not c.endswith("table")]
    hit = affected
    assert hit and all(i["fault"] == fault for _, _, _, i in affected)
    assert all(i["fault"] is None for c, _, _, i in steps if (c, i) not in [(a, b) for a, _, _, b in affected])
    call, before, after, info = hit[0]
    assert not info["skill_success"]  # the sim's verdict stays the truth
    assert holds(call, after["objects"]) is False
    if fault == "slip":  # the block fell back where it was
        k = int(call.split("_")[1]) - 1
        assert after["objects"][k, Col.SUPPORT] == before["objects"][k, Col.SUPPORT]


def test_faults_replay_with_their_episode_and_no_faults_draw_nothing():
    def run(faults):
        env = TabletopEnv(EnvConfig(observe_images=False, faults=faults))
        try:
            steps = _oracle_steps(env, P2)
            return [(c, i["fault"], i["skill_success"], n["objects"].tobytes()) for c, _, n, i in steps]
        finally:
            env.close()

    mixed = {"slip": 0.4, "drop": 0.2, "topple": 0.3}
    assert run(mixed) == run(mixed)
    assert any(f for _, f, _, _ in run(mixed))
    assert run({}) == run({"slip": 0.0, "drop": 0.0, "topple": 0.0})
    assert all(f is None and ok for _, f, ok, _ in run({}))


@pytest.mark.parametrize("faults,why", [({"melt": 0.1}, "unknown fault"), ({"slip": 1.5}, "probability"),
                                        ({"drop": 0.6, "topple": 0.6}, "place faults sum to 1.2")])
def test_bad_faults_are_one_line_errors_naming_the_key(faults, why):
    with pytest.raises(ValueError, match=why):
        EnvConfig(faults=faults)
    with pytest.raises(ConfigError, match=f"collect.faults.*{why}|{why}") as e:
        load_run_config({"collect": {"faults": faults}})
    assert "collect.faults" in str(e.value) and "\n" not in str(e.value)


def test_transition_config_is_checked():
    with pytest.raises(ConfigError, match="train.transitions"):
        TrainConfig(transitions=["why"])
    with pytest.raises(ConfigError, match="context=step"):
        TrainConfig(transitions=["success"], context="episode")
    TrainConfig(transitions=["success"], family_weights={"success": 2.0})  # weighted like a family
    with pytest.raises(ConfigError, match="train.transitions=\\[success\\]"):  # before collecting, not after
        load_run_config({"decode": {"detect": "on"}})
    load_run_config({"decode": {"detect": "on"}, "train": {"transitions": ["success"]}})
    with pytest.raises(ConfigError, match="--fault"):
        load_run_config({"embodiment": {"kind": "ros"}, "eval": {"faults": {"drop": 0.2}}})
    with pytest.raises(ConfigError, match="context=step"):  # a judged-failed step cannot leave a KV cache
        ModelConfig(context="episode", transitions=["success"])


def _objects(*rows):
    """(16, 12) objects array from (slot, kind, support, x, y) rows."""
    arr = np.zeros((16, 12), np.float32)
    for k, kind, sup, x, y in rows:
        arr[k - 1, Col.PRESENT], arr[k - 1, Col.KIND], arr[k - 1, Col.SUPPORT] = 1, kind, sup
        arr[k - 1, Col.XYZ] = (x, y, 0.02)
    return arr


def test_what_changed_reads_the_support_relations():
    before = _objects((1, 0, 0, 0.0, 0.0), (2, 0, 0, 0.1, 0.0), (3, 1, 0, 0.2, 0.0))
    assert change_text(before, before) == "nothing changed"
    held = _objects((1, 0, 0, 0.0, 0.0), (2, 0, -1, 0.1, 0.0), (3, 1, 0, 0.2, 0.0))
    assert change_text(before, held) == "obj_2 is now held"
    on = _objects((1, 0, 0, 0.0, 0.0), (2, 0, 1, 0.0, 0.0), (3, 1, 0, 0.2, 0.0))
    assert change_text(held, on) == "obj_2 is now on obj_1"
    inside = _objects((1, 0, 0, 0.0, 0.0), (2, 0, 3, 0.2, 0.0), (3, 1, 0, 0.2, 0.0))
    assert change_text(held, inside) == "obj_2 is now in obj_3"
    assert change_text(on, before) == "obj_2 is now on the table"
    pushed = _objects((1, 0, 0, 0.05, 0.0), (2, 0, 0, 0.1, 0.0), (3, 1, 0, 0.2, 0.0))
    assert change_text(before, pushed) == "obj_1 moved"
    two = _objects((1, 0, 0, 0.0, 0.0), (2, 0, 1, 0.0, 0.0), (3, 1, 0, 0.25, 0.0))
    assert change_text(before, two) == "obj_2 is now on obj_1 and obj_3 moved"
    assert holds("place obj_2 on obj_1", on) and not holds("place obj_2 on obj_3", on)
    # the success answer: the called object's place in the after scene, then the verdict
    assert success_answer("place obj_2 on obj_1", True, on) == "obj_2 is on obj_1, so yes"
    assert success_answer("place obj_2 in obj_3", False, on) == "obj_2 is on obj_1, so no"
    assert success_answer("pick obj_2", True, held) == "obj_2 is held, so yes"
    assert success_answer("pick obj_1", False, held) == "obj_1 is on the table, so no"
    assert success_answer("push obj_1 to obj_2", True, pushed) == "yes"
    assert verdict("obj_2 is on obj_1, so no") == "no" and verdict("yes") == "yes"
    # given the call, the reason decides: is the called object where the call was for?
    assert verdict("obj_2 is on the table, so yes", "place obj_2 on obj_4") == "no"
    assert verdict("obj_2 is on obj_4, so no", "place obj_2 on obj_4") == "yes"
    assert verdict("obj_2 is in obj_5, so no", "place obj_2 in obj_5") == "yes"
    assert verdict("obj_3 is on obj_1, so yes", "place obj_3 on table") == "no"
    assert verdict("obj_1 is held, so no", "pick obj_1") == "yes"
    assert verdict("obj_2 is held, so yes", "pick obj_1") == "no"  # another object's place says nothing
    assert verdict("no", "pick obj_1") == "no" and verdict("yes", "push obj_1 to obj_2") == "yes"  # no reason
    answers = success_answers("place obj_2 in obj_3", inside)  # what the judge's decoding may say
    assert "obj_2 is in obj_3, so yes" in answers and "obj_2 is on obj_1, so no" in answers
    assert "obj_2 is held, so no" in answers and "obj_2 is on obj_2, so yes" not in answers
    assert {"yes", "no"} <= set(answers) and success_answers("push obj_1 left", inside) == ["yes", "no"]
    assert holds("pick obj_2", held) and not holds("pick obj_1", held)
    other = counterfactual("place obj_2 on obj_1", on, np.random.default_rng(0))
    assert other is None  # no third block to swap in (obj_3 is a bowl)
    assert counterfactual("pick obj_1", held, np.random.default_rng(0)) == "pick obj_2"


def test_two_observations_in_one_sentence_inject_element_wise(tiny):
    before = _objects((1, 0, 0, 0.0, 0.0), (3, 0, 0, 0.1, 0.0))
    after = _objects((1, 0, 0, 0.0, 0.0), (3, 0, -1, 0.1, 0.0))
    sent = transition_sentence(tiny, "success", "pick obj_3", before, after, "objects", "yes")
    S = tiny.n_slots
    assert sent.n_obs == 2 and sent.n_slots == S
    batch = collate([sent], tiny.tok.pad_token_id)
    slots = batch["slots"][0]
    text = tiny.tok.decode([i for i, s in zip(sent.ids, sent.slots) if s < 0])
    assert text.startswith("Before: Scene: obj_1 is. obj_3 is.\nAfter: Scene: obj_1 is. obj_3 is.\n"
                           "Q: Was pick obj_3 successful?\nA: yes")
    # before's scene: obs 0 slots 0 and 2; after's scene and the question's mention: obs 1 (S + 0, S + 2, S + 2)
    assert slots[slots >= 0].tolist() == [0, 2, S + 0, S + 2, S + 2]
    emb = tiny.embed(batch["ids"])  # (1, T, D)
    tokens = torch.randn(2, S, emb.shape[-1])
    out = inject(emb, batch["slots"], tokens)
    for t in range(out.shape[1]):
        k = int(slots[t])
        want = tokens[k // S, k % S] if k >= 0 else emb[0, t]
        assert torch.equal(out[0, t], want)
    answer = batch["labels"][0][batch["labels"][0] >= 0]
    assert tiny.tok.decode(answer.tolist()).strip().startswith("yes")


@pytest.fixture(scope="module")
def faulted_store(tmp_path_factory):
    from embodied_lm.datasets import ReplayWriter
    from embodied_lm.evaluate import evaluate

    path = tmp_path_factory.mktemp("faults") / "demos.zarr"
    env = TabletopEnv(EnvConfig(observe_images=False, faults={"slip": 0.5, "topple": 0.3}))
    specs = generate_specs(["p2_stack", "p1_grasp"], ["L1"], episodes=3, split="train")
    with ReplayWriter(path, attrs={"images": False}) as w:
        rows = evaluate(env, make_planner("oracle"), specs, w, progress=False)
    env.close()
    assert any(not all(r.skill_success) for r in rows)
    return path, rows


def test_transition_examples_carry_the_simulator_s_labels(tiny, faulted_store):
    path, rows = faulted_store
    steps = [(r, t) for r in rows for t, a in enumerate(r.plan[:-1]) if a.split()[0] in ("pick", "place")]
    plain = examples_from_store(path, tiny, ["success", "change"], counterfactuals=False)
    assert [e.task for e in plain] == ["success", "change"] * len(steps)  # per step, in step order
    answer = [tiny.tok.decode(e.sentence.ids[e.sentence.n_prompt:-1]).strip() for e in plain]
    asked = [tiny.tok.decode([i for i, k in zip(e.sentence.ids[:e.sentence.n_prompt], e.sentence.slots) if k < 0])
             for e in plain[::2]]
    for (r, t), q, said, change in zip(steps, asked, answer[::2], answer[1::2]):
        assert f"Was {r.plan[t]} successful?" in q and verdict(said) == ("yes" if r.skill_success[t] else "no")
        assert said.startswith(f"{r.plan[t].split()[1]} is ")  # the called object's place, then the verdict
        assert change == "nothing changed" or change.startswith("obj_")
    assert [verdict(a) for a in answer[::2]].count("no") > 0 and all(e.sentence.n_obs == 2 for e in plain)
    more = examples_from_store(path, tiny, ["success"])  # + a "no" and a "yes" question per step, where there are
    assert len(steps) < len(more) <= 3 * len(steps) and {e.task for e in more} == {"success"}
    both = examples_from_store(path, tiny, ["change"])  # each step's pair, then the pair swapped
    assert len(both) == 2 * len(steps) and {e.task for e in both} == {"change"}
    for fwd, back, change in zip(both[::2], both[1::2], answer[1::2]):
        assert back.sensors[0] is fwd.sensors[1] and back.sensors[1] is fwd.sensors[0]
        said = tiny.tok.decode(back.sentence.ids[back.sentence.n_prompt:-1]).strip()
        if change.endswith("is now held"):  # a pick read backwards puts the block back down
            assert said.startswith(change.split(" is ")[0] + " is now ") and not said.endswith("held")
        if change == "nothing changed":
            assert said == change


def test_the_judge_answers_from_the_well_formed_answers_for_the_called_object(tiny):
    """Even an untrained model's answer is one of ``success_answers`` (constrained decoding), and the
    planner's verdict is that answer's reason checked against the call."""
    env = TabletopEnv(EnvConfig(observe_images=False, faults={"slip": 1.0}))
    try:
        steps = [s for s in _oracle_steps(env, P2) if s[0].split()[0] in ("pick", "place")]
    finally:
        env.close()
    judge = TransitionJudge(tiny)
    for call, before, after, _ in steps[:3]:
        said = judge.ask("success", call, before, after)
        assert said in success_answers(call, after["objects"]), (call, said)
        assert judge.judged(call, before, after) == (verdict(said, call) == "yes", said)


def test_plan_history_keeps_only_the_steps_that_worked(tiny, faulted_store):
    path, rows = faulted_store
    examples = plan_examples(path, tiny.tok, tiny.encoder)
    failed = next(r for r in rows if r.success and not all(r.skill_success))
    t = failed.skill_success.index(False)
    first = sum(len(r.plan) for r in rows[:rows.index(failed)] if r.success)
    retry = tiny.tok.decode(examples[first + t + 1].sentence.ids)
    worked = [a for a, ok in zip(failed.plan[:t + 1], failed.skill_success) if ok]
    assert f"Done so far: {'; '.join(worked) if worked else 'nothing'}." in retry


def test_detection_replans_a_step_judged_failed(tiny, monkeypatch):
    env = TabletopEnv(EnvConfig(observe_images=False))
    planner = EmbodiedLMPlanner(model=tiny, detect=True)
    asked = []
    try:
        obs, info = env.reset(options={"spec": P1})
        planner.reset(env, obs, info)
        monkeypatch.setattr(planner.judge, "ask", lambda *question: asked.append(question) or "no")
        first = env.oracle_action()  # stands for the planner's own first call (the tiny model says "done")
        assert first.startswith("pick")
        planner.history, planner.last = [first], (first, obs)
        nxt, *_ = env.step(first)
        second = planner.act(nxt, info)
    finally:
        env.close()
    assert asked == [("success", first, obs, nxt)]  # the call, the observation before it and the one after
    assert planner.judged_failed == [first] and planner.history == [second]  # judged failed: not history
    assert planner.episode_extra() == {"judged_failed": [first], "judge_answers": [[first, "no"]]}
    monkeypatch.setattr(planner.judge, "ask", lambda *a: "yes")
    planner.last = (first, obs)
    planner.history = [first]
    planner.act(nxt, info)
    assert planner.history[0] == first and planner.judged_failed == [first]  # judged fine: it stays


def _calls(trie) -> set[str]:
    """Every call a trie allows."""
    stack, out = [trie.root], set()
    while stack:
        node = stack.pop()
        out |= {v for k, v in node.items() if k is None}
        stack += [v for k, v in node.items() if k is not None]
    return out


def test_detection_bars_a_call_judged_failed_three_times_until_a_skill_succeeds(tiny, monkeypatch):
    """A refused call leaves the scene as it was, so the same decision would come back to the step limit:
    after ``BAR_AFTER`` failures in a row constrained decoding leaves it out, until a skill succeeds."""
    env = TabletopEnv(EnvConfig(observe_images=False))
    planner = EmbodiedLMPlanner(model=tiny, detect=True)
    try:
        obs, info = env.reset(options={"spec": P1})
        planner.reset(env, obs, info)
        call = env.oracle_action()
        verdicts = iter(["no"] * BAR_AFTER + ["yes"])
        monkeypatch.setattr(planner.judge, "ask", lambda *question: next(verdicts))
        allowed = []
        for _ in range(BAR_AFTER + 1):
            planner.history, planner.last = [call], (call, obs)
            planner.act(obs, info)
            allowed.append(call in _calls(planner._prompt(obs)[1]))
    finally:
        env.close()
    assert planner.judged_failed == [call] * BAR_AFTER
    assert allowed == [True] * (BAR_AFTER - 1) + [False, True]  # barred after the third; a success lifts it


def test_a_skill_the_robot_reports_failed_is_replanned_and_barred_without_a_judge():
    plain = EmbodiedLM(ModelConfig(backbone="tiny", sensors="state", mode="full"), seed=0)
    env = TabletopEnv(EnvConfig(observe_images=False))
    planner = EmbodiedLMPlanner(model=plain, reports=True)  # no success detection learned: none needed
    try:
        obs, info = env.reset(options={"spec": P1})
        planner.reset(env, obs, info)
        call = env.oracle_action()
        allowed = []
        for reported in [True] + [False] * BAR_AFTER + [True]:
            planner.history, planner.last = [call], (call, obs)
            planner.act(obs, {**info, "skill_success": reported})
            allowed.append(call in _calls(planner._prompt(obs)[1]))
    finally:
        env.close()
    assert planner.judged_failed == [call] * BAR_AFTER
    assert allowed == [True] * BAR_AFTER + [False, True]  # barred after the third; a reported success lifts it
    assert planner.episode_extra()["judge_answers"] == []  # nobody was asked


def test_detection_needs_a_model_that_learned_it():
    plain = EmbodiedLM(ModelConfig(backbone="tiny", sensors="state", mode="full"), seed=0)
    with pytest.raises(ConfigError, match="train.transitions"):
        EmbodiedLMPlanner(model=plain, detect=True)


def test_metrics_count_failure_as_the_positive_class():
    def row(ok, ans, change="nothing changed", said="nothing changed"):
        return TransitionRow({}, 0, "pick obj_1", None, ok, ans, change, said)

    rows = [row(False, "no"), row(False, "yes"), row(True, "no"), row(True, "yes", said="obj_1 moved")]
    m = transition_metrics(rows)
    assert m["failed_share"] == 0.5 and m["success"]["precision"] == 0.5 and m["success"]["recall"] == 0.5
    assert m["success"]["f1_failure"] == 0.5 and m["success"]["accuracy"] == 0.5 and m["change"]["exact"] == 0.75
    # a reason that contradicts its verdict word: the reason counts, the word alone is reported beside it
    rows = [row(False, "obj_1 is on the table, so yes"), row(True, "obj_1 is held, so no"), row(False, "no")]
    m = transition_metrics(rows)["success"]
    assert m["f1_failure"] == 1.0 and m["accuracy"] == 1.0 and m["f1_failure_word"] == 0.5


def test_ros_endpoint_reports_a_faulted_skill_as_success(caplog):
    from embodied_lm.ros import RosConfig, RosEmbodiment
    from embodied_lm.ros.testing.sim_endpoint import SimRobotEndpoint

    with SimRobotEndpoint(EnvConfig(faults={"drop": 1.0})) as ep, RosEmbodiment(RosConfig(port=ep.port)) as bridge:
        row = run_episode(bridge, make_planner("oracle"), P2)
    assert ep.stats.faults and all(f["fault"] == "drop" and not f["sim_success"] for f in ep.stats.faults)
    placed = [ok for a, ok in zip(row.plan, row.skill_success) if a.startswith("place")]
    assert placed and all(placed)  # the robot said it worked; the sim knows it did not
    assert not row.success


def test_a_run_trained_on_transitions_reports_them(tmp_path):
    import json
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, str(root / "experiments" / "run.py"), "preset=smoke",
                          f"hydra.run.dir={tmp_path}", "eval.progress=false", "collect.faults.slip=1.0",
                          "train.transitions=[success,change]", "eval.transition_episodes=1"],
                         capture_output=True, text=True, timeout=600, cwd=root)
    assert out.returncode == 0, out.stderr[-2000:]
    res = json.loads((tmp_path / "results.json").read_text())
    tr = res["transitions"]
    assert tr["faults"]["slip"] == 1.0 and tr["steps"] >= 1 and tr["failed_share"] == 1.0  # every grasp slips
    assert 0 <= tr["success"]["f1_failure"] <= 1
    assert 0 <= tr["change"]["exact"] <= 1
    assert res["decode"] == {"detect": False, "reports": True}  # detect auto: off in the sim
    rows = [json.loads(line) for line in (tmp_path / "transitions.jsonl").read_text().splitlines()]
    assert len(rows) == tr["steps"] and {"call", "skill_success", "success_answer", "change_truth"} <= set(rows[0])
    saved = json.loads((tmp_path / "checkpoint" / "config.json").read_text())
    assert saved["model"]["transitions"] == ["success", "change"]


def test_affirmative_questions_ask_a_goal_the_after_scene_shows():
    """For a place, another object whose goal the after scene shows (answered yes); none for a pick."""
    from embodied_lm.transitions import affirmative

    rng = np.random.default_rng(0)
    on = _objects((1, 0, 0, 0.0, 0.0), (2, 0, 1, 0.0, 0.0), (3, 0, 0, 0.2, 0.0), (4, 0, 3, 0.2, 0.0))
    asked = {affirmative("place obj_2 on obj_1", on, rng) for _ in range(20)}
    assert asked == {"place obj_4 on obj_3"}  # the only other block resting on a block
    assert {affirmative("place obj_2 on table", on, rng) for _ in range(20)} == {"place obj_1 on table",
                                                                                 "place obj_3 on table"}
    assert all(holds(a, on) for a in asked) and affirmative("pick obj_2", on, rng) is None

