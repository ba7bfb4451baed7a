"""Relation facts (sensors/relations.py) and the auxiliary relation loss on the state encoder's tokens."""

import numpy as np
import pytest
import torch

from sensors.base import COLOR_NAMES
from sensors.relations import HAND, IGNORE, NOTHING, TABLE, relation_facts


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


def test_relation_pretraining_makes_tokens_carry_the_facts():
    """Encoder-only steps on real oracle scenes: every fact is predicted from the tokens."""
    from embodied_lm.data import Example
    from embodied_lm.model import EmbodiedLM, ModelConfig
    from embodied_lm.train import TrainConfig, pretrain_relations
    from sim.env import EnvConfig, TabletopEnv
    from sim.tasks import generate_specs

    env = TabletopEnv(EnvConfig(observe_images=False))
    scenes = []
    for spec in generate_specs(["p1_grasp", "q2_on_table", "q4_feasible"], ["L1"], 12, 0, "train"):
        obs, _ = env.reset(options={"spec": spec})
        scenes.append(obs["objects"])
    env.close()
    m = EmbodiedLM(ModelConfig(backbone="tiny", sensors="state", mode="frozen", relation_loss=1.0), seed=0)
    examples = [Example(None, {"objects": o}, "") for o in scenes]
    acc = pretrain_relations(m, examples, TrainConfig(relation_steps=200))
    assert min(acc.values()) > 0.9, acc
    batch = torch.from_numpy(np.stack(scenes[:4]))
    tokens = m.sensor_tokens({"objects": batch})
    assert tokens.shape == (4, 16, m.embed.weight.shape[1])
    enc, _ = m.encoder({"objects": batch})
    assert torch.isfinite(m.relation_loss(enc, tokens, batch))


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
