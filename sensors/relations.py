"""Relation facts of each object: auxiliary supervision for the state encoder's tokens (training only).

The ``state`` encoder sees poses, never what rests on what.  At training time the simulator's contact
graph (column ``support`` of ``obs["objects"]``) is free supervision: the auxiliary loss in
``EmbodiedLM.relation_loss`` makes each object's token predict these facts (indices into ``WORDS``):

* ``colour``:  its colour                                  (" red")
* ``support``: what it rests on: " table", a colour, or " hand" when held
* ``above``:   what rests directly on it: a colour, or " nothing"
* ``top``:     the colour of the topmost object of its stack (its own colour when nothing is on it)

The colour is read through the LM's own embedding of the colour word (the token is pulled toward
" red"), the others through linear heads.  The facts never enter the encoder's input: at test time it
infers them from poses alone.
"""

from __future__ import annotations

import torch
from torch import Tensor

from sensors.base import COLOR_NAMES, MAX_OBJECTS

FACTS = ("colour", "support", "above", "top")
WORDS = (*COLOR_NAMES, "table", "nothing", "hand")
TABLE, NOTHING, HAND = len(COLOR_NAMES), len(COLOR_NAMES) + 1, len(COLOR_NAMES) + 2
IGNORE = -100


def relation_facts(objects: Tensor) -> Tensor:
    """(B, N, 12) object rows -> (B, N, len(FACTS)) long indices into ``WORDS``; IGNORE for absent rows."""
    present = objects[..., 0] > 0.5  # (B, N)
    color = objects[..., 2].long().clamp(0, len(COLOR_NAMES) - 1)  # (B, N)
    support = objects[..., 10].round().long()  # (B, N): 0 table, k = obj_k, -1 none (held)
    B, N = support.shape
    slot = torch.arange(1, N + 1, device=objects.device)  # obj_k of row k-1
    rows = torch.arange(N, device=objects.device).expand(B, N)
    # on[b, i, j]: object j rests on object i
    on = (support[:, None, :] == slot[None, :, None]) & present[:, None, :] & present[:, :, None]  # (B, N, N)
    covered = on.any(-1)  # (B, N)
    above = torch.where(covered, on.float().argmax(-1), rows)  # (B, N): the object on i (i itself if none)
    top = rows
    for _ in range(MAX_OBJECTS):  # walk up the stack
        top = above.gather(1, top)
    on_color = color.gather(1, (support - 1).clamp(0, N - 1))
    facts = torch.stack([
        color,
        torch.where(support == 0, TABLE, torch.where(support > 0, on_color, HAND)),
        torch.where(covered, color.gather(1, above), NOTHING),
        color.gather(1, top),
    ], -1)  # (B, N, 4)
    return torch.where(present[..., None], facts, IGNORE)
