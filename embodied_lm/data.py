"""Training examples from a zarr trajectory store: one example per executed step.

    prompt  = "Obj 1 is <obj_1>. ... Task: <instruction> Done so far: <steps>. Next:"
    answer  = the oracle's next skill call (or answer)
    sensors = the encoder's preprocessed observation before that step
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from embodied_lm.sentence import Sentence, build_sentence


def prompt_text(instruction: str, history: Sequence[str], kind: str, present: Sequence[int]) -> str:
    """The multimodal prompt.  ``present``: 1-based object slots to introduce (objects encoders)."""
    if kind == "objects":
        scene = " ".join(f"Obj {k} is <obj_{k}>." for k in present)
    else:
        scene = "Scene: <img>."
    done = "; ".join(history) if history else "nothing"
    return f"{scene}\nTask: {instruction}\nDone so far: {done}.\nNext:"


def present_slots(objects: np.ndarray) -> list[int]:
    """1-based slots of the objects present in an ``objects`` array (16, 12)."""
    return [i + 1 for i in np.nonzero(objects[:, 0] > 0.5)[0]]


@dataclass
class Example:
    sentence: Sentence
    sensors: dict[str, np.ndarray]
    task: str


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


def examples_from_store(path, tok, encoder, families: Sequence[str] | None = None) -> list[Example]:
    """Every step of every successful episode in the store (optionally only some families)."""
    from embodied_lm.datasets import ReplayReader

    reader = ReplayReader(path)
    if reader.n_episodes == 0:
        return []
    cameras = cameras_from_attrs(reader.attrs)
    probe = _KeyRecorder(reader.step(0))
    encoder.preprocess(probe, cameras)
    columns = {k: reader.column(k) for k in sorted(probe.used | {"objects"})}  # one read per needed key
    objects = columns["objects"]
    ends = reader.episode_ends
    starts = np.concatenate([[0], ends[:-1]])
    out: list[Example] = []
    for i in range(reader.n_episodes):
        meta = reader.meta(i)
        if not meta["success"] or (families and meta["task"] not in families):
            continue
        plan = meta["plan"].split("\n")
        for t, g in enumerate(range(int(starts[i]), int(ends[i]))):
            obs = {k: col[g] for k, col in columns.items()}
            prompt = prompt_text(meta["instruction"], plan[:t], encoder.kind, present_slots(objects[g]))
            sent = build_sentence(tok, prompt, plan[t], kind=encoder.kind, n_slots=encoder.num_tokens)
            out.append(Example(sent, encoder.preprocess(obs, cameras), meta["task"]))
    return out
