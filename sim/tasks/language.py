"""The language people use, generated from the project itself: instruction phrasings for training.

A task family keeps two pools: ``train_templates`` (what demonstrations and L1/L2 use) and
``heldout_templates`` (L3 only, never trained on).  The train pool is widened here the way the
literature finds paraphrases differ (most failures come from changed object references, not verbs):
verb and word-order variants per family, terse and polite wrappers, and referring expressions that
name a block as a block, a cube or "one".  The held-out pool is never touched
(tests/test_tasks.py checks that no generated phrasing is a held-out one).
"""

from __future__ import annotations

import numpy as np

# Referring expressions for a colour reference: {c} colour, {k} the kind's own word, {n} a synonym.
REF_FORMS = ("the {c} {k}", "the {c} {n}", "the {c} one", "the {c} {k}")
SYNONYMS = {"block": "cube", "bowl": "bowl"}
# Wrappers: (prefix, suffix).  A prefix lower-cases the template's first letter.
PLAN_WRAPPERS = (("", ""), ("", ""), ("Please ", ""), ("Robot, ", ""), ("", " Thanks."), ("Now ", ""))
QUESTION_WRAPPERS = (("", ""), ("", ""), ("Robot, ", ""), ("Quick question: ", ""))


def phrasing_rng(seed: int) -> np.random.Generator:
    """The phrasing stream of an episode: separate from its scene and params streams."""
    return np.random.default_rng([seed, 2])


def ref_form(rng: np.random.Generator) -> str:
    return REF_FORMS[int(rng.integers(len(REF_FORMS)))]


def colour_ref(form: str, colour: str, kind: str) -> str:
    return form.format(c=colour, k=kind, n=SYNONYMS.get(kind, kind))


def wrap(text: str, question: bool, rng: np.random.Generator) -> str:
    """A terse or polite variant of a filled template."""
    pool = QUESTION_WRAPPERS if question else PLAN_WRAPPERS
    prefix, suffix = pool[int(rng.integers(len(pool)))]
    if prefix and not text.startswith("obj_"):
        text = text[0].lower() + text[1:]
    return f"{prefix}{text}{suffix}"
