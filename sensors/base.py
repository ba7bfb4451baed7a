"""Encoder base class, typed configs, the registry and input checks shared by every encoder.

An encoder turns ONE env observation (+ camera parameters) into fixed-shape numpy arrays
(``preprocess``; a collate stacks them) and a batch of those into tokens (``forward``):

    kind "image":   tokens (B, k, D) fill the ``<img>`` placeholder; mask all True.
    kind "objects": tokens (B, 16, D), slot j <-> ``<obj_{j+1}>``; mask False for absent objects.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor, nn

from sensors.checks import check_array
from sensors.layers import mlp
from skills.vocab import COLOR_NAMES, MAX_OBJECTS, OBJECT_FEATURES  # noqa: F401  (tests import COLOR_NAMES here)

Obs = dict[str, Any]
Cameras = dict[str, dict[str, Any]]


# -------------------------------------------------------------------------------------------------
# Input checks: one-line ValueErrors that name the key and the expected shape
# -------------------------------------------------------------------------------------------------
def get_obs(obs: Obs, key: str, shape: Sequence[int | None], dtypes: Sequence[Any]) -> np.ndarray:
    if not isinstance(obs, dict) or key not in obs:
        have = sorted(obs) if isinstance(obs, dict) else type(obs).__name__
        raise ValueError(f"obs: missing {key!r} (has {have})")
    return check_array(key, obs[key], shape, dtypes)


def get_objects(obs: Obs) -> np.ndarray:
    """``obs["objects"]``: (MAX_OBJECTS, OBJECT_FEATURES) rows, columns ``skills.vocab.Col``."""
    return get_obs(obs, "objects", (MAX_OBJECTS, OBJECT_FEATURES), (np.float32, np.float64))


def get_camera(cameras: Cameras, cam: str) -> tuple[np.ndarray, np.ndarray]:
    """(K (3, 3), world_from_camera (4, 4)) float64 from ``World.camera_params``-style dicts."""
    if not isinstance(cameras, dict) or cam not in cameras:
        have = sorted(cameras) if isinstance(cameras, dict) else type(cameras).__name__
        raise ValueError(f"cameras: missing {cam!r} (has {have})")
    out = []
    for key, shape in (("K", (3, 3)), ("world_from_camera", (4, 4))):
        try:
            a = np.asarray(cameras[cam][key], np.float64)
        except (KeyError, TypeError, ValueError):
            raise ValueError(f"cameras[{cam!r}]: bad or missing {key!r}, expected a {shape} matrix") from None
        out.append(check_array(f"cameras[{cam!r}][{key!r}]", a, shape, (np.float64,)))
    return out[0], out[1]


# -------------------------------------------------------------------------------------------------
# Configs and the base class
# -------------------------------------------------------------------------------------------------
@dataclass
class EncoderConfig:
    dim: int = 128  # token width (a projector maps it to the LM width)
    seed: int = 0  # parameter init (build_encoder) and any sampling in preprocess

    def __post_init__(self) -> None:
        if not isinstance(self.dim, int) or self.dim < 1:
            raise ValueError(f"{type(self).__name__}.dim must be a positive int, got {self.dim!r}")


@dataclass
class ImageConfig(EncoderConfig):
    camera: str = "top"
    image_size: tuple[int, int] = (128, 128)  # (H, W) the encoder accepts

    def __post_init__(self) -> None:
        super().__post_init__()
        if not isinstance(self.camera, str) or not self.camera:
            raise ValueError(f"{type(self).__name__}.camera must be a camera name, got {self.camera!r}")
        if len(self.image_size) != 2 or min(self.image_size) < 8:
            raise ValueError(f"{type(self).__name__}.image_size must be (H, W) >= 8, got {self.image_size!r}")
        self.image_size = (int(self.image_size[0]), int(self.image_size[1]))


class Encoder(nn.Module):
    name: ClassVar[str]
    kind: ClassVar[str]  # "image" | "objects"
    # how to record demonstrations this encoder can read (the error for a store that lacks its keys)
    store_hint: ClassVar[str] = "record the demonstrations with images (collect.images=true)"
    reads_images: ClassVar[bool] = True  # False: plans from object rows alone (no frames, no camera params)
    config_cls: ClassVar[type[EncoderConfig]]

    def __init__(self, config: EncoderConfig):
        super().__init__()
        if not isinstance(config, self.config_cls):
            want, got = self.config_cls.__name__, type(config).__name__
            raise TypeError(f"{type(self).__name__} needs a {want}, got {got}")
        self.config = config

    @property
    def out_dim(self) -> int:
        return self.config.dim

    @property
    def tokens_per_object(self) -> int:
        """Tokens each ``<obj_k>`` placeholder takes (objects encoders)."""
        return 1

    @property
    def num_tokens(self) -> int:
        return MAX_OBJECTS * self.tokens_per_object

    @property
    def pointer_facts(self) -> tuple[str, ...]:
        """Relation facts (sensors/relations.py) this encoder answers as pointers: EmbodiedLM
        appends one referral token per fact to each object's tokens (the LM's word for what is pointed at)."""
        return ()

    @property
    def slots_per_object(self) -> int:
        """Sentence slots per ``<obj_k>``: the encoder's tokens, then the referral tokens."""
        return self.tokens_per_object + len(self.pointer_facts)

    @property
    def num_slots(self) -> int:
        """Sentence slots of one observation (``num_tokens`` + referral tokens)."""
        return self.num_tokens + MAX_OBJECTS * len(self.pointer_facts)

    def forward_with_pointers(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor, Tensor | None]:
        """``forward`` plus, from the same pass, the logits of each object's pointers
        (B, N, len(pointer_facts), len(POINTER_SPECIALS) + N); None for encoders without pointer facts."""
        tokens, mask = self(batch)
        return tokens, mask, None

    def preprocess(self, obs: Obs, cameras: Cameras) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def forward(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def encode(self, obs: Obs, cameras: Cameras) -> tuple[Tensor, Tensor]:
        """Convenience: one observation -> (tokens (1, N, D), mask (1, N))."""
        p = next(self.parameters())
        return self(collate([self.preprocess(obs, cameras)], device=p.device))


def collate(samples: Sequence[dict[str, np.ndarray]], device: torch.device | str | None = None,
            ) -> dict[str, Tensor]:
    """Stack per-observation arrays from ``preprocess`` into a batch of tensors."""
    if not samples:
        raise ValueError("collate: no samples")
    return {k: torch.from_numpy(np.stack([s[k] for s in samples])).to(device) for k in samples[0]}


def image_check(obs: Obs, cfg: ImageConfig, key: str) -> np.ndarray:
    h, w = cfg.image_size
    if key.startswith("rgb_"):
        return get_obs(obs, key, (h, w, 3), (np.uint8,))
    if key.startswith("depth_"):
        return get_obs(obs, key, (h, w), (np.float32,))
    return get_obs(obs, key, (h, w), (np.int16, np.int32))


def rgbd(obs: Obs, cfg: ImageConfig, cameras: Cameras) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The configured camera's RGB (H, W, 3) uint8 and depth (H, W) float32, then its K and world_from_camera."""
    rgb, depth = image_check(obs, cfg, f"rgb_{cfg.camera}"), image_check(obs, cfg, f"depth_{cfg.camera}")
    return rgb, depth, *get_camera(cameras, cfg.camera)


class PooledObjectEncoder(Encoder):
    """An objects encoder that pools one feature per object from a camera and adds the object's geometry:
    (feature, geometry) -> MLP head -> LayerNorm; absent objects get zero tokens (``object``, ``pointcloud``)."""

    kind = "objects"

    def _build_head(self, in_dim: int) -> None:
        c = self.config
        self.head = mlp([in_dim, c.hidden, c.dim])
        self.ln = nn.LayerNorm(c.dim)

    def _tokens(self, feat: Tensor, geo: Tensor, present: Tensor) -> tuple[Tensor, Tensor]:
        present = present.bool()  # (B, N)
        return self.ln(self.head(torch.cat([feat, geo], -1))) * present[..., None], present


# -------------------------------------------------------------------------------------------------
# Registry
# -------------------------------------------------------------------------------------------------
ENCODERS: dict[str, type[Encoder]] = {}


def register_encoder(name: str) -> Callable[[type[Encoder]], type[Encoder]]:
    """Class decorator; refuses a name that is already taken."""

    def deco(cls: type[Encoder]) -> type[Encoder]:
        if name in ENCODERS:
            raise ValueError(f"encoder {name!r} is already registered (by {ENCODERS[name].__qualname__})")
        if getattr(cls, "kind", None) not in ("image", "objects"):
            raise ValueError(f"encoder {name!r}: kind must be 'image' or 'objects'")
        cls.name = name
        ENCODERS[name] = cls
        return cls

    return deco


def build_encoder(name: str, **cfg: Any) -> Encoder:
    """Build a registered encoder from config fields; parameters are initialised from ``cfg['seed']``
    without touching the global torch RNG."""
    if name not in ENCODERS:
        raise ValueError(f"unknown encoder {name!r}; known: {', '.join(sorted(ENCODERS))}")
    cls = ENCODERS[name]
    fields = {f.name for f in dataclasses.fields(cls.config_cls)}
    unknown = sorted(set(cfg) - fields)
    if unknown:
        raise ValueError(f"{name}: unknown config key(s) {unknown}; known: {sorted(fields)}")
    config = cls.config_cls(**cfg)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        return cls(config)
