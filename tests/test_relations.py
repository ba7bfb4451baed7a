"""Relation facts (sensors/relations.py) and the auxiliary relation loss on the state encoder's tokens."""

import numpy as np
import pytest
import torch

from sensors.base import COLOR_NAMES
from sensors.relations import HAND, IGNORE, NOTHING, POINTER_SPECIALS, TABLE, pointer_targets, relation_facts


def _row(color: str, z: float, support: int) -> list[float]:
    return [1, 0, COLOR_NAMES.index(color), 0.5, 0.0, z, 0, 0, 0, 1, support, 0.04]


def scene() -> torch.Tensor:
    """obj_1 red on obj_3 blue on obj_2 green on the table; obj_4 yellow on the table; obj_5 pink held."""
    objects = np.zeros((1, 16, 12), np.float32)
    objects[0, 0] = _row("red", 0.10, 3)
    objects[0, 1] = _row("green", 0.02, 0)
    objects[0, 2] = _row("blue", 0.06, 2)
    objects[0, 3] = _row("yellow", 0.02, 0)
    objects[0, 4] = _row("pink", 0.30, -1)
    return torch.from_numpy(objects)


def test_relation_facts_of_a_known_scene():
    c = {name: COLOR_NAMES.index(name) for name in COLOR_NAMES}
    facts = relation_facts(scene())[0, :6].tolist()  # colour, support, above, top per object
    assert facts == [
        [c["red"], c["blue"], NOTHING, c["red"]],  # obj_1 red on blue, top of the stack
        [c["green"], TABLE, c["blue"], c["red"]],  # obj_2 green: bottom of the stack
        [c["blue"], c["green"], c["red"], c["red"]],  # obj_3 blue: middle
        [c["yellow"], TABLE, NOTHING, c["yellow"]],  # obj_4 alone
        [c["pink"], HAND, NOTHING, c["pink"]],  # obj_5 held
        [IGNORE] * 4,  # absent
    ]


def test_pointer_targets_of_a_known_scene():
    table, hand, nothing = (POINTER_SPECIALS.index(w) for w in ("table", "hand", "nothing"))
    obj = {k: len(POINTER_SPECIALS) + k - 1 for k in range(1, 6)}  # pointer index of obj_k
    ptr = pointer_targets(scene(), ("support", "above", "top"))[0, :6].tolist()
    assert ptr == [
        [obj[3], nothing, obj[1]],  # obj_1 on obj_3, the top of its stack
        [table, obj[3], obj[1]],
        [obj[2], obj[1], obj[1]],
        [table, nothing, obj[4]],
        [hand, nothing, obj[5]],
        [IGNORE] * 3,
    ]
    with pytest.raises(ValueError, match="pointer facts must be among"):
        pointer_targets(scene(), ("colour",))


def test_match_points_a_block_at_the_bowl_of_its_colour():
    """``match``: the object of its colour and the other kind (block <-> bowl), else nothing -- never an
    object of its own kind, however its colour."""
    from skills.vocab import KINDS

    nothing, n_sp = POINTER_SPECIALS.index("nothing"), len(POINTER_SPECIALS)
    objects = scene()  # red, green, blue, yellow, pink blocks
    bowl = KINDS.index("bowl")
    objects[0, 5] = torch.tensor(_row("blue", 0.02, 0))  # obj_6: a blue bowl
    objects[0, 6] = torch.tensor(_row("red", 0.02, 0))  # obj_7: a red bowl
    objects[0, 7] = torch.tensor(_row("red", 0.02, 0))  # obj_8: a red block (obj_1's colour, its kind)
    objects[0, 5:7, 1] = bowl
    ptr = pointer_targets(objects, ("match",))[0, :9, 0].tolist()
    assert ptr == [n_sp + 6, nothing, n_sp + 5, nothing, nothing, n_sp + 2, n_sp, n_sp + 6, IGNORE]


def _scenes(families, n, split="train", levels=("L1",)):
    from sim.env import EnvConfig, TabletopEnv
    from sim.tasks import generate_specs

    env = TabletopEnv(EnvConfig(observe_images=False))
    scenes = []
    for spec in generate_specs(list(families), list(levels), n, 0, split):
        obs, _ = env.reset(options={"spec": spec})
        scenes.append(obs["objects"])
    env.close()
    return scenes


def test_relation_pretraining_makes_tokens_carry_the_facts():
    """Encoder-only steps on real oracle scenes: every fact is predicted from the tokens."""
    from embodied_lm.data import Example
    from embodied_lm.model import EmbodiedLM, ModelConfig
    from embodied_lm.train import TrainConfig, pretrain_relations

    scenes = _scenes(["p1_grasp", "q2_on_table", "q4_feasible"], 12)
    m = EmbodiedLM(ModelConfig(backbone="tiny", sensors="state", mode="frozen", relation_loss=1.0), seed=0)
    examples = [Example(None, {"objects": o}, "") for o in scenes]
    acc = pretrain_relations(m, examples, TrainConfig(relation_steps=200))
    assert min(acc.values()) > 0.9, acc
    batch = torch.from_numpy(np.stack(scenes[:4]))
    tokens = m.sensor_tokens({"objects": batch})
    assert tokens.shape == (4, 16, m.embed.weight.shape[1])
    enc, _ = m.encoder({"objects": batch})
    assert torch.isfinite(m.relation_loss(enc, tokens, None, batch))


def test_relation_loss_needs_object_tokens():
    from embodied_lm.model import EmbodiedLM, ModelConfig

    with pytest.raises(ValueError, match="needs 1 or 2 tokens per object"):
        EmbodiedLM(ModelConfig(backbone="tiny", sensors="state", mode="frozen", relation_loss=1.0,
                               encoder={"tokens_per_object": 3}), seed=0)
    with pytest.raises(ValueError, match="needs 1 or 2 tokens per object"):
        EmbodiedLM(ModelConfig(backbone="tiny", sensors="vit", mode="frozen", relation_loss=1.0), seed=0)


def test_multi_token_placeholders_take_consecutive_slots():
    from embodied_lm.model import EmbodiedLM, ModelConfig
    from embodied_lm.sentence import SentenceError

    m = EmbodiedLM(ModelConfig(backbone="tiny", sensors="state", mode="frozen", encoder={"tokens_per_object": 2}))
    s = m.sentence("Scene: obj_1 is <obj_1>. obj_3 is <obj_3>.", "pick obj_3")
    assert [x for x in s.slots if x >= 0] == [0, 1, 4, 5]
    assert m.sensor_tokens({"objects": torch.zeros(1, 16, 12)}).shape[1] == 32
    with pytest.raises(SentenceError, match="only 16 object slots"):
        m.sentence("obj_17 is <obj_17>.", None)


def test_referral_tokens_name_what_the_pointers_point_at():
    """With pointers, each object's tokens end with one referral token per fact: after encoder-only
    pretraining on real scenes, on unseen test scenes (up to 8 objects) every pointer is right and the
    referral token is the LM's own embedding of the word pointed at ("3" for obj_3, " table")."""
    import torch.nn.functional as F

    from embodied_lm.data import Example
    from embodied_lm.model import EmbodiedLM, ModelConfig, pointer_words
    from embodied_lm.train import TrainConfig, pretrain_relations

    facts = ("support", "top")
    m = EmbodiedLM(ModelConfig(backbone="tiny", sensors="state", mode="frozen", relation_loss=1.0,
                               encoder={"tokens_per_object": 1, "pointers": list(facts)}), seed=0)
    train = _scenes(["p1_grasp", "p2_stack", "q3_on_object"], 12)
    examples = [Example(None, {"objects": o}, "") for o in train]
    acc = pretrain_relations(m, examples, TrainConfig(relation_steps=150))
    assert min(acc.values()) > 0.95, acc
    test = torch.from_numpy(np.stack(_scenes(["p1_grasp", "q3_on_object"], 4, "test", ("L1", "L2"))))
    assert min(m.relation_accuracy({"objects": test}).values()) > 0.95
    with torch.no_grad():
        slots = m.sensor_tokens({"objects": test})  # (B, 16 * 3, D)
    assert slots.shape == (len(test), 16 * 3, m.embed.weight.shape[1]) and m.n_slots == 48
    target = pointer_targets(test, facts)  # (B, 16, 2)
    words = m.embed(m.pointer_ids).mean(1)  # (3 + 16, D)
    refer = slots.reshape(len(test), 16, 3, -1)[:, :, 1:]  # (B, 16, 2, D)
    present = target[..., 0] != IGNORE
    cos = F.cosine_similarity(refer[present], words[target[present]], dim=-1)  # (P, 2)
    assert (cos > 0.9).float().mean() > 0.95, cos  # a near one-hot pointer: the word's embedding itself
    assert (refer[~present] == 0).all()
    assert pointer_words()[:4] == [" table", " hand", " nothing", "1"]


def test_pointers_layout_and_errors():
    from embodied_lm.model import EmbodiedLM, ModelConfig

    m = EmbodiedLM(ModelConfig(backbone="tiny", sensors="state", mode="frozen", relation_loss=1.0,
                               encoder={"tokens_per_object": 1, "pointers": ["support", "above", "top"]}))
    s = m.sentence("Scene: obj_1 is <obj_1>. obj_2 is <obj_2>.", "pick obj_2")
    assert [x for x in s.slots if x >= 0] == [0, 1, 2, 3, 4, 5, 6, 7]
    with pytest.raises(ValueError, match="trained by the relation loss"):
        EmbodiedLM(ModelConfig(backbone="tiny", sensors="state", mode="frozen",
                               encoder={"pointers": ["top"]}))
    with pytest.raises(ValueError, match="pointers must be distinct facts"):
        EmbodiedLM(ModelConfig(backbone="tiny", sensors="state", mode="frozen", relation_loss=1.0,
                               encoder={"pointers": ["colour"]}))
