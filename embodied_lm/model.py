"""EmbodiedLM: a sensor encoder + projector whose tokens are injected into a decoder LM (PaLM-E).

    obs ──encoder──▶ (B, S, d) ──projector──▶ (B, S, D) ─┐
    prompt ids ──LM embedding──▶ (B, T, D) ──inject────────┴──▶ LM body ──▶ (B, T, D) ──LM head at answer positions

Training modes: ``frozen`` (only encoder + projector train), ``lora`` (peft LoRA adapters + encoder +
projector), ``full`` (everything).  The LM head runs only at answer positions: with a 49k vocabulary,
full-sequence logits would dominate the cost on a CPU.
"""

from __future__ import annotations

import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from embodied_lm.config import (
    CALLS,
    CONTEXTS,
    LORA_ALL_LINEAR,
    MODES,
    PRECISIONS,
    PROJECTORS,
    TRANSITIONS,
    BackboneConfig,
    ConfigError,
    SensorsConfig,
    TrainConfig,
    check_choice,
)
from embodied_lm.sentence import IGNORE, inject
from skills.vocab import Col


def native_bf16(device_type: str) -> bool:
    """Whether bf16 matmuls run natively: CPUs with AVX512-BF16/AMX (oneDNN), CUDA GPUs from Ampere on."""
    if device_type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    return (device_type == "cpu" and torch.backends.mkldnn.is_available()
            and torch.ops.mkldnn._is_mkldnn_bf16_supported())


def resolve_precision(device_type: str, precision: str = "auto") -> str:
    """What ``precision`` means on this machine: ``bf16`` or ``fp32``."""
    check_choice("precision", precision, PRECISIONS)
    return "bf16" if precision == "bf16" or (precision == "auto" and native_bf16(device_type)) else "fp32"


def autocast(device_type: str, precision: str = "auto"):
    """bf16 autocast (fp32 master weights) where it is native, or as asked; ``fp32`` (or ``auto``
    without native bf16) disables it (speed-ups per CPU kind: benchmarks/README.md)."""
    on = resolve_precision(device_type, precision) == "bf16"
    return torch.autocast(device_type, dtype=torch.bfloat16, enabled=on)


@contextmanager
def bf16_training(model: nn.Module, device_type: str, precision: str = "auto"):
    """What a bf16 autocast training loop changes on the LM, undone on exit (fp32: nothing).  The frozen
    LM's linear weights are held in bf16 (autocast would cast each one again in every forward; the same
    numbers, gradients bit-identical).  On a CPU, eager attention: SDPA's flash kernel makes bf16 steps
    ~27 % slower in its backward on ~100-token sentences (fp32: no difference, so fp32 keeps SDPA and
    the numbers its recipe was measured with).  Embeddings stay fp32 (the head reads them in fp32)."""
    if resolve_precision(device_type, precision) != "bf16":
        yield
        return
    lm = _base_lm(model)
    attention = lm.config._attn_implementation
    frozen = [p for p in _linear_weights(model) if not p.requires_grad]
    fp32 = [p.data for p in frozen]
    for p in frozen:
        p.data = p.data.to(torch.bfloat16)
    if device_type == "cpu":
        lm.set_attn_implementation("eager")
    try:
        yield
    finally:
        for p, data in zip(frozen, fp32):
            p.data = data
        lm.set_attn_implementation(attention)


def _base_lm(model: nn.Module) -> nn.Module:
    """The causal LM under any peft wrapper."""
    return model.lm.get_base_model() if hasattr(model.lm, "get_base_model") else model.lm


def _linear_weights(model: nn.Module) -> list[nn.Parameter]:
    """The LM's 2-D weights but the embedding / head, which stay fp32 (the head reads them in fp32)."""
    skip = {id(model.embed.weight), id(model.head.weight)}
    return [p for p in _base_lm(model).parameters() if p.dim() == 2 and id(p) not in skip]


@contextmanager
def decoding(model: nn.Module, precision: str = "auto", device_type: str = "cpu"):
    """``autocast`` for decoding; in bf16 the LM's linear weights are held in bf16 meanwhile (a copy kept
    on the model, remade when a weight changes), as autocast would cast each one again in every forward.
    The same matmul inputs, so the same texts: 1.25x per bf16 planner step (benchmarks/README.md)."""
    with autocast(device_type, precision):
        if resolve_precision(device_type, precision) != "bf16":
            yield
            return
        held = _bf16_linear_weights(model)
        fp32 = [p.data for p, _ in held]
        for p, w in held:
            p.data = w
        try:
            yield
        finally:
            for (p, _), w in zip(held, fp32):
                p.data = w


def _bf16_linear_weights(model: nn.Module) -> list[tuple[nn.Parameter, torch.Tensor]]:
    """(parameter, its bf16 copy) for each of ``_linear_weights``, kept on the model."""
    params = _linear_weights(model)
    key = [(id(p), p._version) for p in params]  # an in-place update (merge_lora, training) bumps _version
    cached = model.__dict__.get("_bf16_held")
    if cached is None or cached[0] != key:
        cached = model.__dict__["_bf16_held"] = (key, [(p, p.data.to(torch.bfloat16)) for p in params])
    return cached[1]


@contextmanager
def compiled_layers(model: nn.Module, on: bool = True):
    """The LM's decoder layers run through ``torch.compile`` (fused elementwise kernels), undone on exit.
    Every layer has the same code, so one compile (~10 s on 2 cores, dynamic shapes: every sentence length)
    serves all of them -- compiling the whole body instead took 220 s.  Training only: the planner's
    KV-cache forwards would recompile per layer.  Without a C++ compiler (Inductor's CPU kernels are C++)
    the layers run eagerly, with a warning; a forward Dynamo cannot compile runs eagerly too.  Why: 1.24x
    per fp32 training step on 2 cores, losses equal to 1e-6 (benchmarks/README.md, "LM speed")."""
    lm = _base_lm(model)
    on = on and (next(model.parameters()).device.type != "cpu" or _cpp_compiler())
    layers = list(lm.model.layers) if on else []
    import torch._dynamo

    suppress = torch._dynamo.config.suppress_errors
    torch._dynamo.config.suppress_errors = True  # a failed compile falls back to eager, it does not stop a run
    for layer in layers:
        layer.compile(dynamic=True)
    try:
        yield
    finally:
        for layer in layers:
            layer._compiled_call_impl = None
        torch._dynamo.config.suppress_errors = suppress


def _cpp_compiler() -> bool:
    """Whether Inductor finds a working C++ compiler ($CXX, else g++); warns when it does not."""
    from torch._inductor.cpp_builder import get_cpp_compiler

    try:
        get_cpp_compiler()
        return True
    except Exception as e:  # InvalidCxxCompiler, or a compiler that does not run
        warnings.warn(f"train.compile: {e}; the LM's layers train eagerly (install g++ or set CXX)", stacklevel=3)
        return False


@dataclass
class ModelConfig:
    """Everything that shapes the parameters; a checkpoint refuses to load into a different one.
    Defaults and checks are the run config's (embodied_lm.config.TrainConfig / SensorsConfig)."""

    backbone: str = BackboneConfig.name
    backbone_layers: int = BackboneConfig.layers  # 0 = all (embodied_lm.backbones.truncate)
    sensors: str = SensorsConfig.name
    encoder: dict = field(default_factory=dict)  # extra encoder config fields (dim, camera, ...)
    projector: str = TrainConfig.projector
    mode: str = TrainConfig.mode
    lora_r: int = TrainConfig.lora_r
    lora_alpha: int | None = None  # None = 2 * lora_r
    lora_targets: list[str] = field(default_factory=lambda: list(LORA_ALL_LINEAR))
    relation_loss: float = SensorsConfig.relation_loss  # fact-word anchor loss weight (sensors/relations.py)
    context: str = TrainConfig.context  # what a sentence holds (embodied_lm.data): the planner decodes likewise
    transitions: list[str] = field(default_factory=list)  # transition questions it learned (TRANSITIONS)
    calls: str = TrainConfig.calls  # how its plans name objects (CALLS): the planner's grammar follows

    def __post_init__(self) -> None:
        check_choice("mode", self.mode, MODES)
        check_choice("context", self.context, CONTEXTS)
        for q in self.transitions:
            check_choice("transitions[]", q, TRANSITIONS)
        if self.transitions and self.context == "episode":  # a step judged failed cannot leave a KV cache
            raise ConfigError("transitions need context=step or scene")
        check_choice("calls", self.calls, CALLS)
        if self.transitions and self.calls != "obj":
            raise ConfigError("transitions need calls=obj")
        check_choice("projector", self.projector, PROJECTORS)
        if self.relation_loss < 0:
            raise ConfigError(f"relation_loss must be >= 0, got {self.relation_loss}")
        if self.backbone_layers < 0:
            raise ConfigError(f"backbone_layers must be >= 0 (0 = all), got {self.backbone_layers}")
        if self.lora_r < 1:
            raise ConfigError(f"lora_r must be >= 1, got {self.lora_r}")
        if self.lora_alpha is None:
            self.lora_alpha = 2 * self.lora_r


def pointer_words() -> list[str]:
    """What a pointer can name, in the order of its logits: the specials as words, then object k as the
    digits the LM reads after "obj_" ("3" for obj_3)."""
    from sensors.relations import POINTER_SPECIALS
    from skills.vocab import MAX_OBJECTS

    return [" " + w for w in POINTER_SPECIALS] + [str(k) for k in range(1, MAX_OBJECTS + 1)]


class EmbodiedLM(nn.Module):
    def __init__(self, cfg: ModelConfig, seed: int = 0):
        super().__init__()
        from embodied_lm.backbones import load_backbone, truncate
        from sensors import build_encoder, build_projector

        self.cfg = cfg
        torch.manual_seed(seed)
        lm, self.tok = load_backbone(cfg.backbone)
        if cfg.backbone_layers:
            truncate(lm, cfg.backbone_layers)
        if self.tok.pad_token_id is None:
            self.tok.pad_token = self.tok.eos_token
        width = lm.config.hidden_size
        self.encoder = build_encoder(cfg.sensors, **{"seed": seed, **cfg.encoder})
        self.projector = build_projector(cfg.projector, self.encoder.out_dim, width)
        relation_ids = pointer_ids = None  # word ids of sensors.relations.WORDS / pointer words in this LM
        self.relation_heads = None
        pointers = self.encoder.pointer_facts
        if pointers and cfg.relation_loss <= 0:
            raise ValueError(f"encoder pointers {list(pointers)} are trained by the relation loss: "
                             "set sensors.relation_loss > 0")
        if cfg.relation_loss > 0:
            from sensors.relations import FACTS, WORDS

            if not getattr(self.encoder, "relation_targets", False) or self.encoder.tokens_per_object > 2:
                raise ValueError("model.relation_loss needs 1 or 2 tokens per object aligned with obs['objects'] "
                                 f"(sensors=state); sensors={cfg.sensors!r} has none")
            relation_ids = torch.tensor(self._word_ids([" " + w for w in WORDS]))[:, 0]
            if pointers:
                pointer_ids = torch.tensor(self._word_ids(pointer_words()))  # (3 + MAX_OBJECTS, L)
            else:  # relations as linear heads on the last token
                self.relation_heads = nn.ModuleDict({f: nn.Linear(self.encoder.out_dim, len(WORDS))
                                                     for f in FACTS[1:]})
        self.register_buffer("pointer_ids", pointer_ids, persistent=False)
        self.register_buffer("relation_ids", relation_ids, persistent=False)
        for p in lm.parameters():
            p.requires_grad = cfg.mode == "full"
        if cfg.mode == "lora":
            from peft import LoraConfig, get_peft_model

            with warnings.catch_warnings():  # peft calls it, not this project (transformers 5.24 deprecates it)
                warnings.filterwarnings("ignore", "`is_gradient_checkpointing` is deprecated", FutureWarning)
                lm = get_peft_model(lm, LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=0.0,
                                                   target_modules=list(cfg.lora_targets), task_type="CAUSAL_LM"))
            for m in lm.modules():  # peft would cast a bf16 input up to the fp32 adapter and autocast back
                if hasattr(m, "cast_input_dtype_enabled"):  # down: two copies per layer, same numbers
                    m.cast_input_dtype_enabled = False
            base = lm.get_base_model()
        else:
            base = lm
        self.lm = lm
        # LoRA layers are injected in place, so these stay the live modules.
        self.body = base.model  # LlamaModel: embeddings -> hidden states
        self.head = base.lm_head
        self.embed = base.get_input_embeddings()

    def _word_ids(self, words: list[str]) -> list[list[int]]:
        """Token ids of each word, padded to equal length by repeating the last id (so that the mean of a
        word's embeddings is its embedding when it is one token, as every relation word must be here)."""
        ids = [self.tok(w, add_special_tokens=False)["input_ids"] for w in words]
        if any(not i for i in ids) or any(len(i) != 1 for w, i in zip(words, ids) if not w.strip().isdigit()):
            raise ValueError(f"backbone {self.cfg.backbone!r}: relation words must be single tokens, "
                             f"got {dict(zip(words, ids))}")
        width = max(len(i) for i in ids)
        return [i + i[-1:] * (width - len(i)) for i in ids]

    @property
    def lora_merged(self) -> bool:
        from peft.tuners.lora import LoraLayer

        return any(isinstance(m, LoraLayer) and m.merged for m in self.lm.modules())

    def merge_lora(self) -> None:
        """Fold the LoRA updates into the base weights for inference (planner steps ~20 % faster, same
        plans on the checks in the README); ``train()`` takes them out again."""
        if self.cfg.mode == "lora" and not self.lora_merged:
            self.lm.merge_adapter()

    def train(self, mode: bool = True):
        if mode and self.cfg.mode == "lora" and self.lora_merged:
            self.lm.unmerge_adapter()
        return super().train(mode)

    @property
    def kind(self) -> str:
        return self.encoder.kind

    @property
    def n_slots(self) -> int:
        return self.encoder.num_slots

    def encode(self, sensors: dict[str, torch.Tensor]):
        """-> encoder outputs (B, S, d), their projections (B, S, D), pointer logits (B, N, F, 3+N) or None,
        and the sentence tokens (B, n_slots, D): per object its projected tokens, then one referral token
        per pointer fact = the pointer's distribution over ``pointer_words`` times their LM embeddings."""
        enc, _, logits = self.encoder.forward_with_pointers(sensors)  # (B, S, d), (B, N, F, 3+N) or None
        tokens = self.projector(enc)  # (B, S, D)
        if self.pointer_ids is None:
            return enc, tokens, None, tokens
        B, N, F_, K = logits.shape
        words = self.embed(self.pointer_ids[:K]).mean(1)  # (K, D)
        present = (sensors["objects"][..., Col.PRESENT] > 0.5)[..., None, None]  # (B, N, 1, 1)
        probs = logits.float().masked_fill(~present, 0).softmax(-1)  # absent rows: no all -inf softmax
        refer = probs.to(words.dtype) @ words  # (B, N, F, D)
        per_object = torch.cat([tokens.reshape(B, N, -1, tokens.shape[-1]), refer.to(tokens.dtype) * present], 2)
        return enc, tokens, logits, per_object.reshape(B, -1, tokens.shape[-1])  # (B, N*(m+F), D)

    def sensor_tokens(self, sensors: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.encode(sensors)[-1]  # (B, n_slots, D)

    def embed_sentence(self, ids: torch.Tensor, slots: torch.Tensor, sensors: dict[str, torch.Tensor]):
        """ids, slots (B, T); sensors: the sentences' observations, in order (``sentence.collate``)."""
        return inject(self.embed(ids), slots, self.sensor_tokens(sensors))  # (B, T, D)

    def forward(self, batch: dict[str, torch.Tensor], answer_share: float = 1.0,
                obs_share: float = 1.0) -> torch.Tensor:
        """Mean cross-entropy over answer tokens (+ the weighted relation loss, if configured).  A
        micro-batch of a larger batch passes its share of the batch's answer tokens and observations, so
        that the micro-batch losses sum to the batch's.  ``batch["sensors"]`` holds the observations of
        every sentence in order (one each, or one per step in the episode context)."""
        enc, tokens, pointers, slots = self.encode(batch["sensors"])
        x = inject(self.embed(batch["ids"]), batch["slots"], slots)  # (B, T, D)
        # no KV cache while training: nothing reads it
        h = self.body(inputs_embeds=x, attention_mask=batch["attention_mask"], use_cache=False)
        h = h.last_hidden_state  # (B, T, D)
        target = batch["labels"][:, 1:]  # position t predicts token t+1
        sel = target != IGNORE  # (B, T-1)
        # fp32 logits, outside autocast: no bf16 copy of the (V, D) head per micro-batch (~0.1 s on 2 cores)
        with torch.autocast(h.device.type, enabled=False):
            logits = self.head(h[:, :-1][sel].float())  # (N, V): answer positions only
        loss = answer_share * F.cross_entropy(logits, target[sel])
        if self.relation_ids is not None:
            loss = loss + obs_share * self.cfg.relation_loss * self.relation_loss(
                enc, tokens, pointers, batch["sensors"]["objects"])
        return loss

    def sentence(self, prompt: str, answer: str | None):
        """``build_sentence`` with this model's placeholder layout."""
        from embodied_lm.sentence import build_sentence

        return build_sentence(self.tok, prompt, answer, kind=self.kind, n_slots=self.n_slots,
                              per_object=self.encoder.slots_per_object)

    def relation_logits(self, enc: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """Encoder outputs (B, N*m, d) and their projections (B, N*m, D), m = 1 or 2 tokens per object ->
        fact logits over ``WORDS`` (B, N, F, W): the colour, then (without pointers) support, above, top.
        The colour is the cosine similarity of the object's first projected token with the LM's
        colour-word embeddings (x10): that token carries " red" in the LM's own coordinates.  Support, above
        and top are linear heads on the encoder output of its last token, where the relational block
        computes them (with m = 2 that token is left free of the colour pull)."""
        from sensors.relations import FACTS

        m = self.encoder.tokens_per_object
        B, S, _ = enc.shape
        first = tokens.reshape(B, S // m, m, -1)[:, :, 0]  # (B, N, D)
        words = F.normalize(self.embed(self.relation_ids).detach().float(), dim=-1)  # (W, D)
        colour = 10 * F.normalize(first.float(), dim=-1) @ words.T  # (B, N, W)
        if self.relation_heads is None:
            return colour[:, :, None]  # (B, N, 1, W)
        last = enc.reshape(B, S // m, m, -1)[:, :, -1]  # (B, N, d)
        return torch.stack([colour, *(self.relation_heads[f](last.float()) for f in FACTS[1:])], 2)

    def _relation_preds(self, enc, tokens, pointers, objects) -> list[tuple[str, torch.Tensor, torch.Tensor]]:
        """(fact, logits (B, N, K), targets (B, N)) of every supervised fact."""
        from sensors.relations import FACTS, pointer_targets, relation_facts

        facts = relation_facts(objects)  # (B, N, 4)
        logits = self.relation_logits(enc, tokens)  # (B, N, 1 or 4, W)
        out = [(f, logits[:, :, i], facts[..., i]) for i, f in enumerate(FACTS[:logits.shape[2]])]
        if pointers is not None:
            names = self.encoder.pointer_facts
            targets = pointer_targets(objects, names)  # (B, N, F)
            out += [(f"{f} pointer", pointers[:, :, i].float(), targets[..., i]) for i, f in enumerate(names)]
        return out

    def relation_loss(self, enc: torch.Tensor, tokens: torch.Tensor, pointers: torch.Tensor | None,
                      objects: torch.Tensor) -> torch.Tensor:
        """Mean over facts of the cross-entropy of every present object (sensors/relations.py)."""
        from sensors.relations import IGNORE

        losses = [F.cross_entropy(lg.flatten(0, 1).masked_fill(t.flatten()[:, None] == IGNORE, 0), t.flatten(),
                                  ignore_index=IGNORE)
                  for _, lg, t in self._relation_preds(enc, tokens, pointers, objects)]
        return torch.stack(losses).sum() / 4  # the scale of the four-fact loss without pointers

    @torch.no_grad()
    def relation_accuracy(self, sensors: dict[str, torch.Tensor]) -> dict[str, float]:
        """Per fact, how often the auxiliary heads (or pointers) get it right on a batch of observations."""
        from sensors.relations import IGNORE

        enc, tokens, pointers, _ = self.encode(sensors)
        return {f: float((lg.argmax(-1) == t)[t != IGNORE].float().mean())
                for f, lg, t in self._relation_preds(enc, tokens, pointers, sensors["objects"])}

    def trainable_state(self) -> dict[str, torch.Tensor]:
        """The parameters a checkpoint stores: what trains in this mode."""
        return {k: v.detach().clone() for k, v in self.named_parameters() if v.requires_grad}
