"""Multimodal sentences (PaLM-E's prefix injection).

Text carries placeholders — ``<img>`` for image tokens, ``<obj_k>`` for object k's token.  The LM's
own tokenizer reads the text; each placeholder becomes one position (``<img>``: ``n_image`` positions)
whose embedding is replaced by an encoder output in ``inject``.  Loss is on answer tokens only.

A sentence may hold several observations (``join``: an episode interleaves each step's observation
with the step's answer, as PaLM-E and Kosmos-1 interleave images and text): its slots index the tokens
of all its observations, observation j's at ``j * n_slots ...``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

IGNORE = -100
_PLACEHOLDER = re.compile(r"<([A-Za-z0-9_]+)>")


class SentenceError(ValueError):
    """A prompt the sentence builder cannot read (e.g. an unknown placeholder)."""


@dataclass(frozen=True)
class Sentence:
    ids: list[int]  # token ids; placeholder positions hold ``pad_id``
    slots: list[int]  # per position: -1 for text, else the index of the sensor token placed there
    n_prompt: int  # positions before the (first) answer
    n_slots: int = 0  # sensor tokens per observation
    n_obs: int = 1  # observations whose tokens the slots index (observation j: j * n_slots ...)
    answers: tuple[tuple[int, int], ...] | None = None  # [start, end) of each answer; None: [n_prompt, end)

    @property
    def spans(self) -> tuple[tuple[int, int], ...]:
        """Where the loss is: each answer's [start, end) positions."""
        if self.answers is not None:
            return self.answers
        return ((self.n_prompt, len(self.ids)),) if self.n_prompt < len(self.ids) else ()


def join(parts: list[Sentence]) -> Sentence:
    """One sentence of several, each with its own observations: slots are shifted past the earlier
    parts' observations, answers past their positions."""
    ids: list[int] = []
    slots: list[int] = []
    answers: list[tuple[int, int]] = []
    n_obs = 0
    for p in parts:
        if p.n_slots != parts[0].n_slots:
            raise SentenceError(f"cannot join sentences of {parts[0].n_slots} and {p.n_slots} slots per obs.")
        answers += [(a + len(ids), b + len(ids)) for a, b in p.spans]
        slots += [s + n_obs * p.n_slots if s >= 0 else -1 for s in p.slots]
        ids += p.ids
        n_obs += p.n_obs
    n_prompt = answers[0][0] if answers else len(ids)
    return Sentence(ids, slots, n_prompt, parts[0].n_slots, n_obs, tuple(answers))


def build_sentence(tok, prompt: str, answer: str | None, *, kind: str, n_slots: int,
                   per_object: int = 1) -> Sentence:
    """Tokenize ``prompt`` (+ `` answer`` + eos); a space before a placeholder is dropped.  ``kind``
    "objects": ``<obj_k>`` -> the ``per_object`` slots (k-1)*per_object ... k*per_object-1
    (k <= n_slots / per_object); "image": ``<img>`` -> slots 0..n_slots-1.  Anything else in angle
    brackets is an error."""
    ids: list[int] = []
    slots: list[int] = []
    pos = 0
    for m in _PLACEHOLDER.finditer(prompt):
        # "is <obj_1>": the space before a placeholder would be a token of its own; the slot replaces it
        text = prompt[pos:m.start()].removesuffix(" ")
        if text:
            part = tok(text, add_special_tokens=False)["input_ids"]
            ids += part
            slots += [-1] * len(part)
        ids_slots = _placeholder(m.group(1), kind, n_slots, per_object, m.start())
        ids += [tok.pad_token_id] * len(ids_slots)
        slots += ids_slots
        pos = m.end()
    tail = prompt[pos:]
    if tail:
        part = tok(tail, add_special_tokens=False)["input_ids"]
        ids += part
        slots += [-1] * len(part)
    n_prompt = len(ids)
    if answer is not None:
        part = tok(" " + answer, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        ids += part
        slots += [-1] * len(part)
    return Sentence(ids, slots, n_prompt, n_slots)


def _placeholder(name: str, kind: str, n_slots: int, per_object: int, at: int) -> list[int]:
    if name == "img" and kind == "image":
        return list(range(n_slots))
    m = re.fullmatch(r"obj_([1-9][0-9]*)", name)
    if m and kind == "objects":
        k = int(m.group(1))
        if k > n_slots // per_object:
            raise SentenceError(f"placeholder <{name}> at char {at}: only {n_slots // per_object} object slots")
        return list(range((k - 1) * per_object, k * per_object))
    known = "<img>" if kind == "image" else "<obj_k>"
    raise SentenceError(f"unknown placeholder <{name}> at char {at} (this encoder fills {known})")


def collate(sentences: list[Sentence], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded batch: ids, slots, attention_mask, labels (IGNORE on prompt, slots and padding).
    The batch's observations are its sentences' in order (sentence i's first is the sum of the earlier
    ones' ``n_obs``); ``slots`` index the tokens of all of them (``inject``)."""
    T = max(len(s.ids) for s in sentences)
    B = len(sentences)
    ids = torch.full((B, T), pad_id, dtype=torch.long)
    slots = torch.full((B, T), -1, dtype=torch.long)
    attn = torch.zeros((B, T), dtype=torch.long)
    labels = torch.full((B, T), IGNORE, dtype=torch.long)
    first_obs = 0
    for i, s in enumerate(sentences):
        n = len(s.ids)
        ids[i, :n] = torch.tensor(s.ids)
        local = torch.tensor(s.slots)
        slots[i, :n] = torch.where(local >= 0, local + first_obs * s.n_slots, -1)
        attn[i, :n] = 1
        for a, b in s.spans:
            labels[i, a:b] = torch.tensor(s.ids[a:b])
        first_obs += s.n_obs
    return {"ids": ids, "slots": slots, "attention_mask": attn, "labels": labels}


def inject(embeds: torch.Tensor, slots: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """Replace placeholder positions by sensor tokens.

    embeds (B, T, D) text embeddings; slots (B, T) long, -1 = keep; tokens (N, S, D) the sensor tokens
    of the batch's N observations (``collate``: one per sentence, or more for sentences that hold several).
    Returns (B, T, D) with ``out[b, t] = tokens.flatten(0, 1)[slots[b, t]]`` wherever ``slots[b, t] >= 0``.
    """
    flat = tokens.reshape(-1, tokens.shape[-1])  # (N * S, D)
    if tokens.shape[-1] != embeds.shape[-1] or (slots.numel() and int(slots.max()) >= len(flat)):
        raise SentenceError(f"sensor tokens {tuple(tokens.shape)} do not fit embeddings {tuple(embeds.shape)} "
                            f"and slots up to {int(slots.max()) if slots.numel() else -1}")
    picked = flat[slots.clamp(min=0)]  # (B, T, D)
    return torch.where((slots >= 0).unsqueeze(-1), picked.to(embeds.dtype), embeds)
