"""EmbodiedLM: a sensor encoder + projector whose tokens are injected into a decoder LM (PaLM-E).

    obs ──encoder──▶ (B, S, d) ──projector──▶ (B, S, D) ─┐
    prompt ids ──LM embedding──▶ (B, T, D) ──inject────────┴──▶ LM body ──▶ (B, T, D) ──LM head at answer positions

Training modes: ``frozen`` (only encoder + projector train), ``lora`` (peft LoRA on q/v + encoder +
projector), ``full`` (everything).  The LM head runs only at answer positions: with a 49k vocabulary,
full-sequence logits would dominate the cost on a CPU.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from embodied_lm.sentence import IGNORE, inject

MODES = ("frozen", "lora", "full")
PRECISIONS = ("auto", "bf16", "fp32")


def native_bf16(device_type: str) -> bool:
    """Whether bf16 matmuls run natively: CPUs with AVX512-BF16/AMX (oneDNN), CUDA GPUs from Ampere on."""
    if device_type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    return (device_type == "cpu" and torch.backends.mkldnn.is_available()
            and torch.ops.mkldnn._is_mkldnn_bf16_supported())


def autocast(device_type: str, precision: str = "auto"):
    """bf16 autocast (fp32 master weights) where it is native -- LoRA training ran 2.2x faster with it on
    the 2-core EPYC dev machine -- or as asked; ``fp32`` (or ``auto`` without native bf16) disables it."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    on = precision == "bf16" or (precision == "auto" and native_bf16(device_type))
    return torch.autocast(device_type, dtype=torch.bfloat16, enabled=on)


@dataclass
class ModelConfig:
    """Everything that shapes the parameters; a checkpoint refuses to load into a different one."""

    backbone: str = "smollm2"
    sensors: str = "state"
    encoder: dict = field(default_factory=dict)  # extra encoder config fields (dim, camera, ...)
    projector: str = "mlp"  # linear | mlp
    mode: str = "lora"
    lora_r: int = 16
    lora_alpha: int = 32
    lora_targets: list[str] = field(default_factory=lambda: ["q_proj", "v_proj"])
    relation_loss: float = 0.0  # weight of the fact-word anchor loss on object tokens (sensors/relations.py)

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"model.mode must be one of {MODES}, got {self.mode!r}")
        if self.projector not in ("linear", "mlp"):
            raise ValueError(f"model.projector must be 'linear' or 'mlp', got {self.projector!r}")
        if self.relation_loss < 0:
            raise ValueError(f"model.relation_loss must be >= 0, got {self.relation_loss}")
        if self.lora_r < 1:
            raise ValueError(f"model.lora_r must be >= 1, got {self.lora_r}")


class EmbodiedLM(nn.Module):
    def __init__(self, cfg: ModelConfig, seed: int = 0):
        super().__init__()
        from embodied_lm.backbones import load_backbone
        from sensors import build_encoder, build_projector

        self.cfg = cfg
        torch.manual_seed(seed)
        lm, self.tok = load_backbone(cfg.backbone)
        if self.tok.pad_token_id is None:
            self.tok.pad_token = self.tok.eos_token
        width = lm.config.hidden_size
        self.encoder = build_encoder(cfg.sensors, **{"seed": seed, **cfg.encoder})
        self.projector = build_projector(cfg.projector, self.encoder.out_dim, width)
        relation_ids = None  # word ids of sensors.relations.WORDS in this LM's vocabulary
        self.relation_heads = None
        if cfg.relation_loss > 0:
            from sensors.relations import FACTS, WORDS

            if not getattr(self.encoder, "relation_targets", False) or self.encoder.tokens_per_object > 2:
                raise ValueError("model.relation_loss needs 1 or 2 tokens per object aligned with obs['objects'] "
                                 f"(sensors=state); sensors={cfg.sensors!r} has none")
            ids = [self.tok(" " + w, add_special_tokens=False)["input_ids"] for w in WORDS]
            if any(len(i) != 1 for i in ids):
                raise ValueError(f"backbone {cfg.backbone!r}: relation words must be single tokens, got {ids}")
            relation_ids = torch.tensor([i[0] for i in ids])
            self.relation_heads = nn.ModuleDict({f: nn.Linear(self.encoder.out_dim, len(WORDS))
                                                 for f in FACTS[1:]})
        self.register_buffer("relation_ids", relation_ids, persistent=False)
        for p in lm.parameters():
            p.requires_grad = cfg.mode == "full"
        if cfg.mode == "lora":
            from peft import LoraConfig, get_peft_model

            lm = get_peft_model(lm, LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=0.0,
                                               target_modules=list(cfg.lora_targets), task_type="CAUSAL_LM"))
            base = lm.get_base_model()
        else:
            base = lm
        self.lm = lm
        # LoRA layers are injected in place, so these stay the live modules.
        self.body = base.model  # LlamaModel: embeddings -> hidden states
        self.head = base.lm_head
        self.embed = base.get_input_embeddings()

    @property
    def kind(self) -> str:
        return self.encoder.kind

    @property
    def n_slots(self) -> int:
        return self.encoder.num_tokens

    def sensor_tokens(self, sensors: dict[str, torch.Tensor]) -> torch.Tensor:
        tokens, _ = self.encoder(sensors)  # (B, S, d)
        return self.projector(tokens)  # (B, S, D)

    def embed_sentence(self, ids: torch.Tensor, slots: torch.Tensor, sensors: dict[str, torch.Tensor]):
        return inject(self.embed(ids), slots, self.sensor_tokens(sensors))  # (B, T, D)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Mean cross-entropy over answer tokens (+ the weighted relation loss, if configured)."""
        enc, _ = self.encoder(batch["sensors"])  # (B, S, d)
        tokens = self.projector(enc)  # (B, S, D)
        x = inject(self.embed(batch["ids"]), batch["slots"], tokens)  # (B, T, D)
        h = self.body(inputs_embeds=x, attention_mask=batch["attention_mask"]).last_hidden_state  # (B, T, D)
        target = batch["labels"][:, 1:]  # position t predicts token t+1
        sel = target != IGNORE  # (B, T-1)
        logits = self.head(h[:, :-1][sel])  # (N, V): answer positions only
        loss = F.cross_entropy(logits.float(), target[sel])
        if self.relation_ids is not None:
            loss = loss + self.cfg.relation_loss * self.relation_loss(enc, tokens, batch["sensors"]["objects"])
        return loss

    def sentence(self, prompt: str, answer: str | None):
        """``build_sentence`` with this model's placeholder layout."""
        from embodied_lm.sentence import build_sentence

        return build_sentence(self.tok, prompt, answer, kind=self.kind, n_slots=self.n_slots,
                              per_object=self.encoder.tokens_per_object)

    def relation_logits(self, enc: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """Encoder outputs (B, N*m, d) and their projections (B, N*m, D), m = 1 or 2 tokens per object ->
        fact logits over ``WORDS`` (B, N, 4, W).  The colour is the cosine similarity of the object's first
        projected token with the LM's colour-word embeddings (x10): that token carries " red" in the LM's
        own coordinates.  Support, above and top are linear heads on the encoder output of its last token,
        where the relational block computes them (with m = 2 that token is left free of the colour pull)."""
        from sensors.relations import FACTS

        m = self.encoder.tokens_per_object
        B, S, _ = enc.shape
        first = tokens.reshape(B, S // m, m, -1)[:, :, 0]  # (B, N, D)
        last = enc.reshape(B, S // m, m, -1)[:, :, -1]  # (B, N, d)
        words = F.normalize(self.embed(self.relation_ids).detach().float(), dim=-1)  # (W, D)
        colour = 10 * F.normalize(first.float(), dim=-1) @ words.T  # (B, N, W)
        return torch.stack([colour, *(self.relation_heads[f](last.float()) for f in FACTS[1:])], 2)

    def relation_loss(self, enc: torch.Tensor, tokens: torch.Tensor, objects: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy of the four facts of every present object (sensors/relations.py)."""
        from sensors.relations import IGNORE, relation_facts

        facts = relation_facts(objects)  # (B, N, 4)
        logits = self.relation_logits(enc, tokens)  # (B, N, 4, W)
        return F.cross_entropy(logits.flatten(0, 2), facts.flatten(), ignore_index=IGNORE)

    @torch.no_grad()
    def relation_accuracy(self, sensors: dict[str, torch.Tensor]) -> dict[str, float]:
        """Per fact, how often the auxiliary heads get it right on a batch of observations."""
        from sensors.relations import FACTS, IGNORE, relation_facts

        enc, _ = self.encoder(sensors)
        facts = relation_facts(sensors["objects"])
        pred = self.relation_logits(enc, self.projector(enc)).argmax(-1)
        return {f: float((pred[..., i] == facts[..., i])[facts[..., i] != IGNORE].float().mean())
                for i, f in enumerate(FACTS)}

    def trainable_state(self) -> dict[str, torch.Tensor]:
        """The parameters a checkpoint stores: what trains in this mode."""
        return {k: v.detach().clone() for k, v in self.named_parameters() if v.requires_grad}
