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

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"model.mode must be one of {MODES}, got {self.mode!r}")
        if self.projector not in ("linear", "mlp"):
            raise ValueError(f"model.projector must be 'linear' or 'mlp', got {self.projector!r}")
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
        """Mean cross-entropy over answer tokens."""
        x = self.embed_sentence(batch["ids"], batch["slots"], batch["sensors"])  # (B, T, D)
        h = self.body(inputs_embeds=x, attention_mask=batch["attention_mask"]).last_hidden_state  # (B, T, D)
        target = batch["labels"][:, 1:]  # position t predicts token t+1
        sel = target != IGNORE  # (B, T-1)
        logits = self.head(h[:, :-1][sel])  # (N, V): answer positions only
        return F.cross_entropy(logits, target[sel])

    def trainable_state(self) -> dict[str, torch.Tensor]:
        """The parameters a checkpoint stores: what trains in this mode."""
        return {k: v.detach().clone() for k, v in self.named_parameters() if v.requires_grad}
