"""Training examples from a zarr trajectory store, in one of three contexts (``CONTEXTS``):

``step``: one example per executed step, the whole prompt again at every step --
    prompt  = "Scene: obj_1 is <obj_1>. ... Task: <instruction> Done so far: <steps>. Next:"
    answer  = the oracle's next skill call (or answer)
    sensors = the encoder's preprocessed observation before that step
``episode``: one example per episode, each step's observation where the step begins and the loss on
    every step's answer (PaLM-E / Kosmos-1 interleaving; about half the tokens per decision) --
    "Scene: ... Task: <instruction> Next: <answer 1></s>Scene: ... Next: <answer 2></s>..."
    The planner keeps the episode's KV cache and adds only each new step (``EmbodiedLMPlanner``).
``scene``: as ``step`` without the "Done so far" line: each decision is read off the scene and the
    instruction alone, so it cannot count steps (a demonstration's length is no cue for ``done``).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from types import SimpleNamespace

import numpy as np

from embodied_lm.grounding import UnresolvedReference, ground, scene_objects
from embodied_lm.sentence import Sentence, build_sentence, join
from skills.calls import colour_named, colour_refs, parse
from skills.vocab import Col

_MENTION = re.compile(r"\bobj_([1-9][0-9]*)\b")


def prompt_text(instruction: str, history: Sequence[str] | None, kind: str,
                objects: np.ndarray | None = None) -> str:
    """The multimodal prompt (``history`` None: no "Done so far" line, the episode context's).
    ``objects``: the observed object rows (objects encoders), whose present objects are introduced by
    name and whose colours resolve the instruction's colour references.

    Objects are introduced by the name plans and instructions use (``Scene: obj_3 is <obj_3>.``), and
    every mention of a present object in the instruction carries its token too (``Pick up obj_3 <obj_3>.``):
    a 135M LM does not learn, within the CPU budget, to look a mention up in the scene list, but it reads
    a token placed where it is asked about.  A colour reference is a mention too: ``ground`` writes the
    name of the object it names after it ("the red block obj_3 <obj_3>") or refuses the instruction
    (``UnresolvedReference``) when the scene holds no such object or several."""
    if kind == "objects":
        on = set(present_slots(objects))
        instruction = _MENTION.sub(lambda m: f"{m.group(0)} <{m.group(0)}>" if int(m.group(1)) in on
                                   else m.group(0), ground(instruction, objects))
    done = "" if history is None else f"\nDone so far: {'; '.join(history) if history else 'nothing'}."
    return f"{scene_text(kind, objects)}\nTask: {instruction}{done}\nNext:"


def step_prompt(context: str, instruction: str, history: Sequence[str], kind: str,
                objects: np.ndarray | None = None) -> str:
    """``prompt_text`` for a step-sentence context: ``scene`` shows no history, ``step`` the steps done."""
    return prompt_text(instruction, None if context == "scene" else history, kind, objects)


def scene_text(kind: str, objects: np.ndarray | None = None) -> str:
    """``Scene: obj_1 is <obj_1>. ...`` (objects encoders: the present objects) or ``Scene: <img>.``"""
    if kind == "objects":
        return "Scene:" + "".join(f" obj_{k} is <obj_{k}>." for k in present_slots(objects))
    return "Scene: <img>."


def episode_prompt(instruction: str, step: int, kind: str, objects: np.ndarray | None = None) -> str:
    """The text before step ``step``'s answer in the ``episode`` context: the first step introduces the
    scene and the task (as ``prompt_text``, without a history), each later one only its new scene."""
    if step == 0:
        return prompt_text(instruction, None, kind, objects)
    return scene_text(kind, objects) + "\nNext:"


def present_slots(objects: np.ndarray) -> list[int]:
    """1-based slots of the objects present in an ``objects`` array (16, 12)."""
    return [i + 1 for i in np.nonzero(objects[:, Col.PRESENT] > 0.5)[0]]


def colour_names(objects: np.ndarray) -> dict[str, str]:
    """``obj_k`` -> "the red block" for each present object that no other shares its colour and kind with
    (the references a colour-named call may use, ``skills.calls.resolve``)."""
    return colour_refs({o.name: SimpleNamespace(color=o.colour, kind=o.kind) for o in scene_objects(objects)})


def by_colour(step: str, objects: np.ndarray) -> str | None:
    """A plan step with its objects named by colour ("pick obj_3" -> "pick the red block"); None when one
    of them shares its colour and kind with another object (no colour name picks it out)."""
    named = colour_named(parse(step), colour_names(objects))
    return None if named is None else str(named)


@dataclass
class Example:
    sentence: Sentence
    sensors: dict[str, np.ndarray] | list[dict[str, np.ndarray]]  # one observation, or one per step
    task: str

    @property
    def observations(self) -> list[dict[str, np.ndarray]]:
        return self.sensors if isinstance(self.sensors, list) else [self.sensors]

    @property
    def decisions(self) -> int:
        """Supervised answers (steps) in this example (one without a sentence: a scene only)."""
        return len(self.sentence.spans) if self.sentence is not None else 1


class _KeyRecorder(dict):
    """A dict that notes which keys were read (to learn what an encoder needs)."""

    def __init__(self, *a):
        super().__init__(*a)
        self.used: set[str] = set()

    def __getitem__(self, key):
        self.used.add(key)
        return super().__getitem__(key)


def cameras_from_attrs(attrs: dict) -> dict[str, dict[str, np.ndarray]]:
    return {cam: {k: np.asarray(v, dtype=np.float64) if k in ("K", "world_from_camera") else v
                  for k, v in p.items()} for cam, p in attrs.get("cameras", {}).items()}


def encoder_keys(reader, encoder, path) -> set[str]:
    """The observation keys ``encoder`` reads, probed on the store's first step (``reader``: a
    ReplayReader).  A one-line ValueError when the store lacks them (demonstrations recorded without
    the images an image encoder needs), so a run can refuse the store before it trains."""
    probe = _KeyRecorder(reader.step(0))
    try:
        encoder.preprocess(probe, cameras_from_attrs(reader.attrs))
    except ValueError as e:
        if "obs: missing" not in str(e):
            raise
        raise ValueError(f"{path}: the {encoder.name!r} encoder cannot read this store ({e}); "
                         f"{encoder.store_hint}") from None
    frames = sorted(k for k in probe.used if k.startswith(("rgb_", "depth_", "mask_")))
    if frames and reader.attrs.get("images") is False:
        raise ValueError(f"{path}: the {encoder.name!r} encoder reads {', '.join(frames)}, but this store was "
                         "recorded without images (blank frames); record the demonstrations with images "
                         "(collect.images=true)")
    return probe.used


def examples_from_store(path, tok, encoder, families: Sequence[str] | None = None,
                        context: str = "step", calls: str = "obj") -> list[Example]:
    """Every step of every successful episode in the store (optionally only some families): one
    example per step (``context="step"``, ``"scene"``) or per episode (``"episode"``).  "Done so far"
    lists the steps that worked: after a failed skill (``collect.faults``) the demonstration's retry is decided
    from a history without it, as the planner's is once it judges the step failed (``decode.detect``).
    ``calls="colour"``: plan steps name objects by colour (``by_colour``); an episode that acts on an
    object no colour picks out (one of two red blocks) is left out."""
    from embodied_lm.datasets import ReplayReader

    reader = ReplayReader(path)
    if reader.n_episodes == 0:
        return []
    cameras = cameras_from_attrs(reader.attrs)
    used = encoder_keys(reader, encoder, path)
    columns = {k: reader.column(k) for k in sorted(used | {"objects"})}  # one read per needed key
    objects = columns["objects"]
    ok = reader.column("skill_success")
    ends = reader.episode_ends
    starts = np.concatenate([[0], ends[:-1]])
    out: list[Example] = []
    # With perceived rows a colour misread under relit cameras can hide what the instruction names: such
    # a step is skipped (and counted).  The sim's rows always show it: there it is a bug, and raises.
    perceived = bool(reader.attrs.get("env_config", {}).get("collect", {}).get("perception"))
    unseen: list[str] = []
    unnamed = 0  # calls="colour": episodes with an object no colour picks out
    for i in range(reader.n_episodes):
        meta = reader.meta(i)
        if not meta["success"] or (families and meta["task"] not in families):
            continue
        plan = meta["plan"].split("\n")
        if calls == "colour":
            plan = [by_colour(a, objects[g]) for a, g in zip(plan, range(int(starts[i]), int(ends[i])))]
            if None in plan:
                unnamed += 1
                continue
        steps = []
        done: list[str] = []  # the steps that worked: a failed one (sim.faults) is retried, not history
        for t, g in enumerate(range(int(starts[i]), int(ends[i]))):
            obs, history = {k: col[g] for k, col in columns.items()}, list(done)
            if ok[g]:
                done.append(plan[t])
            try:
                if context == "episode":
                    prompt = episode_prompt(meta["instruction"], t, encoder.kind, objects[g])
                else:
                    prompt = step_prompt(context, meta["instruction"], history, encoder.kind, objects[g])
            except UnresolvedReference as e:
                if not perceived:
                    raise UnresolvedReference(f"{path}: episode {i} step {t}: {e}") from None
                unseen.append(f"episode {i} step {t}: {e}")
                if context == "episode":
                    break  # an episode sentence needs every step
                continue
            sent = build_sentence(tok, prompt, plan[t], kind=encoder.kind, n_slots=encoder.num_slots,
                                  per_object=encoder.slots_per_object)
            steps.append(Example(sent, encoder.preprocess(obs, cameras), meta["task"]))
        if context == "episode":
            if len(steps) == int(ends[i] - starts[i]):
                out.append(Example(join([e.sentence for e in steps]), [e.sensors for e in steps], meta["task"]))
        else:
            out += steps
    if unnamed:
        print(f"training data: left out {unnamed} episodes that act on an object no colour name picks out")
    if unseen:
        print(f"training data: skipped {len(unseen)} steps whose observation does not show an object the "
              f"instruction names (first: {unseen[0]})")
    return out


def training_examples(path, model, families: Sequence[str] | None = None) -> list[Example]:
    """What ``model`` trains on from the store: its plans in its context, plus the transition questions
    its config names (``model.cfg.transitions``, embodied_lm.transitions)."""
    out = examples_from_store(path, model.tok, model.encoder, families, context=model.cfg.context,
                              calls=model.cfg.calls)
    if model.cfg.transitions:
        from embodied_lm import transitions

        out += transitions.examples_from_store(path, model, model.cfg.transitions, families)
    return out
