"""Relation facts of each object: auxiliary supervision for the state encoder's tokens (training only).

The ``state`` encoder sees poses, never what rests on what.  At training time the simulator's contact
graph (column ``support`` of ``obs["objects"]``) is free supervision: the auxiliary loss in
``EmbodiedLM.relation_loss`` makes each object's token predict these facts (indices into ``WORDS``):

* ``colour``:  its colour                                  (" red")
* ``support``: what it rests on: " table", a colour, or " hand" when held
* ``above``:   what rests directly on it: a colour, or " nothing"
* ``top``:     the colour of the topmost object of its stack (its own colour when nothing is on it)
* ``match``:   (pointer only) the object of its colour and the other kind -- a block's bowl, a bowl's
  block -- or " nothing"

The colour is read through the LM's own embedding of the colour word (the token is pulled toward
" red"), the others through linear heads -- or, for the encoder's ``pointer_facts``, as pointers: a
distribution over ``POINTER_SPECIALS`` + the objects in the scene, turned by EmbodiedLM into a referral
token, the LM's own embedding of the word pointed at (" table", or "3" for obj_3: the digit it reads in
"obj_3").  The facts never enter the encoder's input: at test time it infers them from poses alone.
"""

from __future__ import annotations

import torch
from torch import Tensor

from skills.vocab import COLOR_NAMES, MAX_OBJECTS, Col

FACTS = ("colour", "support", "above", "top")
WORDS = (*COLOR_NAMES, "table", "nothing", "hand")
TABLE, NOTHING, HAND = len(COLOR_NAMES), len(COLOR_NAMES) + 1, len(COLOR_NAMES) + 2
IGNORE = -100
POINTER_FACTS = ("support", "above", "top", "match")
POINTER_SPECIALS = ("table", "hand", "nothing")  # pointer index s < 3: these; 3 + k: the object in row k
SPECIALS_OF = {"support": ("table", "hand"), "above": ("nothing",), "top": (), "match": ("nothing",)}


def _stacks(objects: Tensor) -> tuple[Tensor, ...]:
    """(B, N, 12) object rows -> present, support (0 table, k = obj_k, -1 held), covered, above (row of
    the object on each, itself if none) and top (row of the top of its stack); each (B, N)."""
    present = objects[..., Col.PRESENT] > 0.5
    support = objects[..., Col.SUPPORT].round().long()
    B, N = support.shape
    slot = torch.arange(1, N + 1, device=objects.device)  # obj_k of row k-1
    rows = torch.arange(N, device=objects.device).expand(B, N)
    # on[b, i, j]: object j rests on object i
    on = (support[:, None, :] == slot[None, :, None]) & present[:, None, :] & present[:, :, None]  # (B, N, N)
    covered = on.any(-1)
    above = torch.where(covered, on.float().argmax(-1), rows)
    top = rows
    for _ in range(MAX_OBJECTS):  # walk up the stack
        top = above.gather(1, top)
    return present, support, covered, above, top


def relation_facts(objects: Tensor) -> Tensor:
    """(B, N, 12) object rows -> (B, N, len(FACTS)) long indices into ``WORDS``; IGNORE for absent rows."""
    present, support, covered, above, top = _stacks(objects)
    color = objects[..., Col.COLOR].long().clamp(0, len(COLOR_NAMES) - 1)  # (B, N)
    on_color = color.gather(1, (support - 1).clamp(0, support.shape[1] - 1))
    facts = torch.stack([
        color,
        torch.where(support == 0, TABLE, torch.where(support > 0, on_color, HAND)),
        torch.where(covered, color.gather(1, above), NOTHING),
        color.gather(1, top),
    ], -1)  # (B, N, 4)
    return torch.where(present[..., None], facts, IGNORE)


def pointer_targets(objects: Tensor, facts: tuple[str, ...]) -> Tensor:
    """(B, N, 12) object rows -> (B, N, len(facts)) pointer indices: ``POINTER_SPECIALS`` index, or 3 + row
    of the object pointed at; IGNORE for absent rows."""
    present, support, covered, above, top = _stacks(objects)
    n_sp = len(POINTER_SPECIALS)
    table, hand, nothing = (POINTER_SPECIALS.index(w) for w in ("table", "hand", "nothing"))
    color, kind = objects[..., Col.COLOR].long(), objects[..., Col.KIND].long()
    same = ((color[:, :, None] == color[:, None, :]) & (kind[:, :, None] != kind[:, None, :])
            & present[:, None, :] & present[:, :, None])  # (B, N_i, N_j): j has i's colour, not its kind
    by_fact = {
        "support": torch.where(support == 0, table, torch.where(support > 0, n_sp + support - 1, hand)),
        "above": torch.where(covered, n_sp + above, nothing),
        "top": n_sp + top,
        "match": torch.where(same.any(-1), n_sp + same.float().argmax(-1), nothing),
    }
    unknown = set(facts) - set(by_fact)
    if unknown:
        raise ValueError(f"pointer facts must be among {POINTER_FACTS}, got {sorted(unknown)}")
    out = torch.stack([by_fact[f] for f in facts], -1)  # (B, N, F)
    return torch.where(present[..., None], out, IGNORE)
