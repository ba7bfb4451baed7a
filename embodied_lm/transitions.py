"""Questions about a transition, over two observations in one sentence (PaLM-E Table 4, Kosmos-1):

``success`` -- "Before: Scene: ... After: Scene: ... Q: Was pick obj_3 <obj_3> successful? A:"
               "obj_3 is held, so yes" | "obj_3 is on the table, so no" (the called object's place, then
               the verdict: the verdict is read off one object's token next to the question; push: yes | no)
``change``  -- "Before: Scene: ... After: Scene: ... Q: What changed? A:" "obj_3 is now on obj_1"

The labels are the simulator's: a skill's own verdict (``skill_success``, truthful in the sim, including
the deliberate failures of ``sim.faults``) and the support relations of the two ``objects`` arrays.  The
planner asks ``success`` after each skill where no oracle says how it went (``decode.detect``): a step
judged failed leaves the plan so far and the next decision replans it from what is observed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from embodied_lm.config import TRANSITIONS
from embodied_lm.data import Example, cameras_from_attrs, encoder_keys, present_slots, scene_text
from embodied_lm.sentence import Sentence, join
from skills.vocab import KINDS, Col

SKILL_VERBS = ("pick", "place", "push")  # calls whose outcome is a question (answers and done are not)
MOVED = 0.03  # m: a block on the table that moved this far "moved"


def _where(objects: np.ndarray, support: int) -> str:
    """A support value of an ``objects`` row in words: "held", "on the table", "on obj_1", "in obj_5"."""
    if support < 0:
        return "held"
    if support == 0:
        return "on the table"
    return f"{'in' if KINDS[int(objects[support - 1, Col.KIND])] == 'bowl' else 'on'} obj_{support}"


def change_text(before: np.ndarray, after: np.ndarray) -> str:
    """What changed between two ``objects`` arrays (16, 12), from their support relations:
    "obj_3 is now on obj_1" / "... in obj_5" / "... on the table" / "... held", "obj_2 moved" (on the
    table, >= 3 cm), joined by " and " in slot order; "nothing changed" when none."""
    parts = []
    for k in sorted(set(present_slots(before)) | set(present_slots(after))):
        sb, sa = int(before[k - 1, Col.SUPPORT]), int(after[k - 1, Col.SUPPORT])
        if sb != sa:
            parts.append(f"obj_{k} is now {_where(after, sa)}")
        elif sa == 0 and np.linalg.norm(after[k - 1, Col.XYZ][:2] - before[k - 1, Col.XYZ][:2]) >= MOVED:
            parts.append(f"obj_{k} moved")
    return " and ".join(parts) or "nothing changed"


def question(which: str, call: str) -> str:
    """The question text (``call``: the skill call that ran between the observations)."""
    if which == "success":
        return f"Was {call} successful?"
    if which == "change":
        return "What changed?"
    raise ValueError(f"unknown transition question {which!r}; known: {', '.join(TRANSITIONS)}")


def transition_sentence(model_or_sentence, which: str, call: str, before: np.ndarray, after: np.ndarray,
                        kind: str, answer: str | None = None) -> Sentence:
    """One sentence over two observations: the before part's slots index observation 0, the after
    part's observation 1 (``join``).  Mentions in the question carry the *after* observation's token.
    ``model_or_sentence``: anything with ``sentence(prompt, answer)`` (an EmbodiedLM)."""
    mention = call
    if kind == "objects":
        on = set(present_slots(after))
        mention = " ".join(f"{w} <{w}>" if w.startswith("obj_") and int(w[4:]) in on else w for w in call.split())
    first = model_or_sentence.sentence(f"Before: {scene_text(kind, before)}", None)
    second = model_or_sentence.sentence(
        f"\nAfter: {scene_text(kind, after)}\nQ: {question(which, mention)}\nA:", answer)
    return join([first, second])


def holds(call: str, after: np.ndarray) -> bool | None:
    """Whether ``after`` shows what ``call`` was for (pick: held; place: on / in its target, or on the
    table); None for a call whose outcome the relations do not show (push)."""
    w = call.split(" ")
    slot = int(w[1][4:])
    if w[0] == "pick":
        return int(after[slot - 1, Col.SUPPORT]) == -1
    if w[0] == "place":
        want = 0 if w[-1] == "table" else int(w[-1][4:])
        return int(after[slot - 1, Col.SUPPORT]) == want
    return None


def _moved(call: str) -> int | None:
    """k of the obj_k a pick or place call moves; None for a call whose outcome is not a place (push)."""
    w = call.split(" ")
    return int(w[1][4:]) if w[0] in ("pick", "place") else None


def outcome(call: str, after: np.ndarray) -> str | None:
    """Where ``after`` shows the called object ("obj_3 is held", "obj_3 is on obj_1"): the reason a
    success answer gives before its verdict; None for a push."""
    slot = _moved(call)
    if slot is None:
        return None
    return f"obj_{slot} is {_where(after, int(after[slot - 1, Col.SUPPORT]))}"


def success_answer(call: str, ok: bool, after: np.ndarray) -> str:
    """"obj_3 is on obj_1, so yes": the called object's place, then the verdict (push: the verdict)."""
    reason = outcome(call, after)
    return f"{reason}, so {'yes' if ok else 'no'}" if reason else ("yes" if ok else "no")


def success_answers(call: str, after: np.ndarray) -> list[str]:
    """Every well-formed answer to the success question about ``call`` in the scene ``after``: the object
    held, on the table or on / in any other present object, each with either verdict, and the bare
    verdicts (a model trained before the reasons)."""
    slot = _moved(call)
    if slot is None:
        return ["yes", "no"]
    places = ["held", "on the table"] + [_where(after, k) for k in present_slots(after) if k != slot]
    return ["yes", "no"] + [f"obj_{slot} is {p}, so {v}" for p in places for v in ("yes", "no")]


def verdict(answer: str | None, call: str | None = None) -> str | None:
    """"yes" | "no" of a success answer.  Given the ``call`` it is about, an answer with a reason is judged
    by its reason: "yes" when the reason puts the called object where the call was for, whatever verdict
    word follows ("obj_2 is on the table, so yes" about "place obj_2 on obj_4" is a "no").  The model reads
    where the object is far more reliably than it compares that with the call (every run on record: F1
    0.990-1.000 from the reason, 0.820-1.000 from the word), so the comparison is done here, by rule."""
    if answer is None:
        return None
    said = answer.rsplit(" ", 1)[-1]
    if call is None or ", so " not in answer or _moved(call) is None:
        return said
    obj, _, where = answer.rsplit(", so ", 1)[0].partition(" is ")
    w = call.split(" ")
    goal = ["held"] if w[0] == "pick" else ["on the table"] if w[-1] == "table" else [f"on {w[-1]}", f"in {w[-1]}"]
    return "yes" if obj == w[1] and where in goal else "no"


def counterfactual(call: str, after: np.ndarray, rng: np.random.Generator) -> str | None:
    """The call with its last object swapped for another present object (another block picked, another
    target placed on): a question whose answer is usually "no" although the scene changed -- so a
    detector must read which call it is asked about, not only whether something happened."""
    w = call.split(" ")
    if w[0] not in ("pick", "place") or w[-1] == "table":  # "on table": any block on the table would be "yes"
        return None
    last = len(w) - 1 if w[0] == "place" else 1
    kind = KINDS[int(after[int(w[last][4:]) - 1, Col.KIND])]  # a bowl target is swapped for a bowl
    others = [f"obj_{k}" for k in present_slots(after) if f"obj_{k}" not in (w[1], w[last])
              and KINDS[int(after[k - 1, Col.KIND])] == kind]
    if not others:
        return None
    w[last] = others[int(rng.integers(len(others)))]
    return " ".join(w)


def affirmative(call: str, after: np.ndarray, rng: np.random.Generator) -> str | None:
    """A call of the same kind as ``call`` whose goal ``after`` shows for another object (a block that does
    rest on another, for a place onto an object; a block on the table, for a table place): a question
    answered "yes", so that every call type and reason comes with both verdicts (without it "on the
    table, so no" outnumbered "on the table, so yes" 5 to 1, and one seed learned that prior)."""
    w = call.split(" ")
    if w[0] != "place":
        return None  # one object can be held: a pick has no other "yes"
    to_table = w[-1] == "table"
    asks = [f"place obj_{k} on table" if on == 0 else f"place obj_{k} {_where(after, on)}"
            for k in present_slots(after) if k != int(w[1][4:]) and KINDS[int(after[k - 1, Col.KIND])] == "block"
            and (on := int(after[k - 1, Col.SUPPORT])) >= 0 and (on == 0) == to_table]  # -1: held
    return asks[int(rng.integers(len(asks)))] if asks else None


def label(which: str, call: str, ok: bool, before: np.ndarray, after: np.ndarray) -> str:
    return success_answer(call, ok, after) if which == "success" else change_text(before, after)


def examples_from_store(path, model, which: Sequence[str], families: Sequence[str] | None = None,
                        counterfactuals: bool = True) -> list[Example]:
    """Every skill step of every episode (failed ones too: they hold the negatives; optionally only some
    families) that has a next frame: one example per question in ``which``, in step order, task = the
    question's name (the batch sampler's family).  With ``counterfactuals``, "what changed" is asked of
    the pair swapped too (after, before), and ``success`` adds a ``counterfactual`` ("no") and an
    ``affirmative`` ("yes") question where there is one."""
    from embodied_lm.datasets import ReplayReader

    reader = ReplayReader(path)
    if reader.n_episodes == 0 or not which:
        return []
    enc = model.encoder
    cameras = cameras_from_attrs(reader.attrs)
    used = encoder_keys(reader, enc, path)
    columns = {k: reader.column(k) for k in sorted(used | {"objects", "action", "skill_success"})}
    objects, actions, oks = columns["objects"], columns["action"], columns["skill_success"]
    ends = reader.episode_ends
    starts = np.concatenate([[0], ends[:-1]])
    out: list[Example] = []
    rng = np.random.default_rng(0)
    for i, (s, e) in enumerate(zip(starts, ends)):
        if families and reader.meta(i)["task"] not in families:
            continue
        for g in range(int(s), int(e) - 1):
            call = str(actions[g])
            if call.split(" ")[0] not in SKILL_VERBS:
                continue
            obs = [enc.preprocess({k: col[i] for k, col in columns.items()}, cameras) for i in (g, g + 1)]
            for w in which:
                answer = label(w, call, bool(oks[g]), objects[g], objects[g + 1])
                sent = transition_sentence(model, w, call, objects[g], objects[g + 1], enc.kind, answer)
                out.append(Example(sent, obs, w))
            if not counterfactuals:
                continue
            if "change" in which:  # the pair swapped: a pick read backwards is a place, so both images count
                answer = change_text(objects[g + 1], objects[g])
                sent = transition_sentence(model, "change", call, objects[g + 1], objects[g], enc.kind, answer)
                out.append(Example(sent, obs[::-1], "change"))
            if "success" not in which:
                continue
            for other in (counterfactual(call, objects[g + 1], rng), affirmative(call, objects[g + 1], rng)):
                if other is not None:
                    answer = success_answer(other, bool(holds(other, objects[g + 1])), objects[g + 1])
                    sent = transition_sentence(model, "success", other, objects[g], objects[g + 1], enc.kind,
                                               answer)
                    out.append(Example(sent, obs, "success"))
    return out


class TransitionJudge:
    """Asks a trained model a transition question about two observations (``obs`` dicts of an env)."""

    def __init__(self, model, cameras: dict | None = None, precision: str = "fp32"):
        self.model, self.cameras, self.precision = model, cameras or {}, precision

    def ask(self, which: str, call: str, before: dict[str, Any], after: dict[str, Any]) -> str:
        import torch

        from embodied_lm.decode import Trie, greedy
        from embodied_lm.model import decoding
        from sensors import collate

        m = self.model
        sent = transition_sentence(m, which, call, before["objects"], after["objects"], m.kind)
        sensors = collate([m.encoder.preprocess(o, self.cameras) for o in (before, after)])
        with torch.no_grad(), decoding(m, self.precision):
            embeds = m.embed_sentence(torch.tensor([sent.ids]), torch.tensor([sent.slots]), sensors)  # (1, T, D)
            trie = Trie(m.tok, success_answers(call, after["objects"])) if which == "success" else None
            return greedy(m, embeds, m.tok, trie, max_new=32)

    def judged(self, call: str, before: dict[str, Any], after: dict[str, Any]) -> tuple[bool, str]:
        """(did ``call`` succeed, the answer that says so): the answer's reason checked against the call."""
        answer = self.ask("success", call, before, after)
        return verdict(answer, call) == "yes", answer


@dataclass
class TransitionRow:
    spec: dict[str, Any]
    step: int
    call: str
    fault: str | None
    skill_success: bool
    success_answer: str | None
    change_truth: str
    change_answer: str | None


def collect_transitions(env, specs, on_step=None) -> list[tuple[dict, int, str, str | None, bool, dict, dict]]:
    """Oracle episodes in ``env`` (faults on, typically): every skill step as (spec, step, call, fault,
    the skill's verdict, obs before, obs after)."""
    out = []
    for spec in specs:
        obs, info = env.reset(options={"spec": spec})
        for t in range(info["max_steps"]):
            call = env.oracle_action()
            nxt, _, term, trunc, info = env.step(call)
            if call.split(" ")[0] in SKILL_VERBS:
                out.append((spec.to_dict(), t, call, info.get("fault"), bool(info["skill_success"]), obs, nxt))
            obs = nxt
            if term or trunc:
                break
        if on_step is not None:
            on_step()
    return out


def evaluate_transitions(model, env, specs, which: Sequence[str], precision: str = "fp32",
                         progress: bool = True) -> tuple[dict[str, Any], list[TransitionRow]]:
    """The model's answers on every skill step of oracle episodes ``specs`` (held-out seeds, with
    faults): success detection precision / recall / F1 with *failure* as the positive class (what a
    detector is for), accuracy and the failed share; "what changed" exact-match accuracy."""
    from tqdm import tqdm

    from embodied_lm.lm_planner import _cameras

    bar = tqdm(total=len(specs), desc="transitions: rollouts", unit="ep", disable=not progress)
    steps = collect_transitions(env, specs, on_step=bar.update)
    bar.close()
    judge = TransitionJudge(model, _cameras(env) if model.cfg.sensors != "state" else {}, precision)
    rows = []
    for spec, t, call, fault, ok, before, after in tqdm(steps, desc="transitions: questions", unit="q",
                                                        disable=not progress):
        rows.append(TransitionRow(
            spec, t, call, fault, ok,
            judge.ask("success", call, before, after) if "success" in which else None,
            change_text(before["objects"], after["objects"]),
            judge.ask("change", call, before, after) if "change" in which else None))
    return transition_metrics(rows), rows


def transition_metrics(rows: Sequence[TransitionRow]) -> dict[str, Any]:
    out: dict[str, Any] = {"steps": len(rows),
                           "failed_share": round(float(np.mean([not r.skill_success for r in rows])), 4)
                           if rows else 0.0}
    judged = [r for r in rows if r.success_answer is not None]
    if judged:
        failed = [not r.skill_success for r in judged]
        said = [verdict(r.success_answer, r.call) for r in judged]
        prec, rec, f1 = _detection(failed, [v == "no" for v in said])
        out["success"] = {"f1_failure": f1, "precision": prec, "recall": rec,
                          "accuracy": round(float(np.mean([(v == "yes") == r.skill_success
                                                           for v, r in zip(said, judged)])), 4),
                          "by_fault": _by_fault(judged),
                          # the verdict word alone, not checked against the reason (``verdict``)
                          "f1_failure_word": _detection(failed, [verdict(r.success_answer) == "no"
                                                                 for r in judged])[2]}
    changed = [r for r in rows if r.change_answer is not None]
    if changed:
        out["change"] = {"exact": round(float(np.mean([r.change_answer == r.change_truth for r in changed])), 4),
                         "steps": len(changed)}
    return out


def _detection(failed: Sequence[bool], said_no: Sequence[bool]) -> tuple[float, float | None, float | None]:
    """Precision, recall and F1 with *failure* as the positive class; recall and F1 are None (undefined,
    not 0) when nothing failed."""
    tp = sum(f and n for f, n in zip(failed, said_no))
    fp = sum(n and not f for f, n in zip(failed, said_no))
    fn = sum(f and not n for f, n in zip(failed, said_no))
    prec, rec = tp / max(tp + fp, 1), tp / max(tp + fn, 1)
    if not tp + fn:
        return round(prec, 4), None, None
    return round(prec, 4), round(rec, 4), round(2 * prec * rec / max(prec + rec, 1e-9), 4)


def _by_fault(rows: Sequence[TransitionRow]) -> dict[str, dict[str, float]]:
    groups: dict[str, list[TransitionRow]] = {}
    for r in rows:
        groups.setdefault(r.fault or "none", []).append(r)
    return {k: {"steps": len(v), "accuracy": round(float(np.mean([(verdict(r.success_answer, r.call) == "yes")
                                                                   == r.skill_success for r in v])), 4)}
            for k, v in sorted(groups.items())}


def row_dict(row: TransitionRow) -> dict[str, Any]:
    return asdict(row)
