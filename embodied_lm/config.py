"""Typed, validated run configuration behind the Hydra YAML (experiments/conf).

``load_run_config(cfg)`` merges the composed DictConfig into these dataclasses (OmegaConf checks
types and refuses unknown keys), then each ``__post_init__`` checks values.  Every problem is a
``ConfigError`` whose message names the key.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException


class ConfigError(ValueError):
    """A configuration value that cannot be used; the message names the key."""


@dataclass
class WorldSettings:
    image_size: list[int] = field(default_factory=lambda: [128, 128])
    cameras: list[str] = field(default_factory=lambda: ["top", "front"])
    renderer: str = "tiny"


@dataclass
class TaskConfig:
    name: str = "tabletop"
    families: list[str] = field(default_factory=list)  # empty = every registered family
    world: WorldSettings = field(default_factory=WorldSettings)
    skills: dict[str, str] = field(default_factory=dict)  # verb -> implementation

    def __post_init__(self) -> None:
        from sim.tasks import FAMILIES

        unknown = [f for f in self.families if f not in FAMILIES]
        if unknown:
            raise ConfigError(f"task.families: unknown {unknown}; known: {', '.join(sorted(FAMILIES))}")


@dataclass
class PlannerConfig:
    name: str = "oracle"
    seed: int = 0

    def __post_init__(self) -> None:
        from embodied_lm.planners import planner_names

        if self.name not in planner_names():
            raise ConfigError(f"planner.name: unknown {self.name!r}; known: {', '.join(planner_names())}")


@dataclass
class EvalConfig:
    episodes: int = 10  # per family and level
    levels: list[str] = field(default_factory=lambda: ["L1", "L2", "L3", "L4"])
    families: list[str] | None = None  # None = task.families
    spec: str | None = None  # a JSONL spec file replaces generated specs
    split: str = "test"
    progress: bool = True

    def __post_init__(self) -> None:
        from sim.tasks import FAMILIES, LEVELS, SEED_SPLITS

        if self.episodes < 1:
            raise ConfigError(f"eval.episodes must be >= 1, got {self.episodes}")
        bad = [lv for lv in self.levels if lv not in LEVELS]
        if bad or not self.levels:
            raise ConfigError(f"eval.levels must be a non-empty subset of {list(LEVELS)}, got {self.levels}")
        unknown = [f for f in self.families or [] if f not in FAMILIES]
        if unknown:
            raise ConfigError(f"eval.families: unknown {unknown}; known: {', '.join(sorted(FAMILIES))}")
        if self.split not in SEED_SPLITS:
            raise ConfigError(f"eval.split must be one of {list(SEED_SPLITS)}, got {self.split!r}")


STAGES = ("collect", "train", "eval")
TAMP_FAMILIES = ["q1_color", "q2_on_table", "q3_on_object", "q4_feasible", "p1_grasp", "p2_stack"]


@dataclass
class SensorsConfig:
    name: str = "state"  # state | vit | object | pointcloud
    encoder: dict[str, Any] = field(default_factory=dict)  # encoder config fields (dim, camera, ...)
    relation_loss: float = 0.0  # weight of the fact-word anchor loss (state with tokens_per_object: 4)

    def __post_init__(self) -> None:
        from sensors import ENCODERS

        if self.name not in ENCODERS:
            raise ConfigError(f"sensors.name: unknown {self.name!r}; known: {', '.join(sorted(ENCODERS))}")
        if self.relation_loss < 0:
            raise ConfigError(f"sensors.relation_loss must be >= 0, got {self.relation_loss}")


@dataclass
class BackboneConfig:
    name: str = "smollm2"  # smollm2 | tiny | a local Hugging Face model directory


@dataclass
class CollectConfig:
    episodes: int = 30  # oracle demonstrations per family (train seeds, L1)
    families: list[str] = field(default_factory=lambda: list(TAMP_FAMILIES))
    levels: list[str] = field(default_factory=lambda: ["L1"])
    images: bool | None = None  # record camera images; None = only when the sensors need them (not `state`)

    def __post_init__(self) -> None:
        from sim.tasks import FAMILIES

        unknown = [f for f in self.families if f not in FAMILIES]
        if unknown or not self.families:
            raise ConfigError(f"collect.families: unknown {unknown}; known: {', '.join(sorted(FAMILIES))}")
        if self.episodes < 1:
            raise ConfigError(f"collect.episodes must be >= 1, got {self.episodes}")


@dataclass
class TrainSettings:
    mode: str = "lora"  # frozen | lora | full
    steps: int = 150
    batch_size: int = 8
    lr: float = 1e-3
    sensor_lr: float = 1e-3
    warmup: int = 30
    lora_r: int = 16
    lora_targets: list[str] = field(default_factory=lambda: ["q_proj", "v_proj"])
    relation_steps: int = 0  # encoder-only pretraining steps on the relation loss
    precision: str = "auto"  # auto (bf16 autocast where the CPU/GPU has native bf16) | bf16 | fp32
    balance: str = "family"  # family: task families equally likely in a batch | step: every example
    family_weights: dict[str, float] = field(default_factory=dict)  # balance=family: relative odds (default 1)
    projector: str = "mlp"
    checkpoint_every: int = 200
    resume: bool = False  # continue from `checkpoint` if it exists
    backend: str = "local"  # local | ray (Ray Train TorchTrainer, DDP)
    num_workers: int = 1  # Ray Train workers (train.backend=ray)
    use_gpu: bool = False  # one GPU per Ray Train worker

    def __post_init__(self) -> None:
        if self.backend not in ("local", "ray"):
            raise ConfigError(f"train.backend must be local or ray, got {self.backend!r}")
        if self.num_workers < 1:
            raise ConfigError("train.num_workers must be >= 1")
        if self.mode not in ("frozen", "lora", "full"):
            raise ConfigError(f"train.mode must be frozen, lora or full, got {self.mode!r}")
        if self.steps < 1 or self.batch_size < 1:
            raise ConfigError("train.steps and train.batch_size must be >= 1")
        if self.precision not in ("auto", "bf16", "fp32"):
            raise ConfigError(f"train.precision must be auto, bf16 or fp32, got {self.precision!r}")
        if self.balance not in ("family", "step"):
            raise ConfigError(f"train.balance must be family or step, got {self.balance!r}")
        from sim.tasks import FAMILIES

        for fam, w in self.family_weights.items():
            if fam not in FAMILIES:
                raise ConfigError(f"train.family_weights: unknown family {fam!r} "
                                  f"(families: {', '.join(FAMILIES)})")
            if not isinstance(w, (int, float)) or isinstance(w, bool) or w <= 0:
                raise ConfigError(f"train.family_weights.{fam} must be a positive number, got {w!r}")
        if any(w != 1 for w in self.family_weights.values()) and self.balance != "family":
            raise ConfigError("train.family_weights other than 1 need train.balance=family")
        if self.relation_steps < 0:
            raise ConfigError(f"train.relation_steps must be >= 0, got {self.relation_steps}")


@dataclass
class RayConfig:
    num_workers: int = 0  # 0 = serial in this process; N = N Ray actors, each with its own PyBullet world
    address: str | None = None  # None = a private local Ray; "auto" / "host:6379" = join a cluster
    max_retries: int = 3  # re-runs of an episode whose worker died
    gpus_per_worker: float = 0.0
    episode_timeout_s: float | None = None

    def __post_init__(self) -> None:
        if self.num_workers < 0 or self.max_retries < 0 or self.gpus_per_worker < 0:
            raise ConfigError("ray.num_workers, ray.max_retries and ray.gpus_per_worker must be >= 0")

    @property
    def enabled(self) -> bool:
        return self.num_workers > 0 or self.address is not None


@dataclass
class DecodeConfig:
    constrained: bool = True  # grammar-constrained decoding of every step


@dataclass
class RunConfig:
    task: TaskConfig = field(default_factory=TaskConfig)
    planner: PlannerConfig = field(default_factory=PlannerConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    sensors: SensorsConfig = field(default_factory=SensorsConfig)
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    collect: CollectConfig = field(default_factory=CollectConfig)
    train: TrainSettings = field(default_factory=TrainSettings)
    decode: DecodeConfig = field(default_factory=DecodeConfig)
    ray: RayConfig = field(default_factory=RayConfig)
    # conf/embodiment/{sim,ros}.yaml: kind + (for ros) the keys of embodied_lm.ros.RosConfig
    embodiment: dict[str, Any] = field(default_factory=lambda: {"kind": "sim"})
    stage: str = "all"  # all | collect | train | eval, or stages joined by "+" (train+eval)
    dataset: str | None = None  # zarr store of demonstrations (default: <run dir>/demos.zarr)
    checkpoint: str | None = None  # checkpoint directory (default: <run dir>/checkpoint)
    seed: int = 0
    record: str | None = None  # zarr store to append every evaluated episode to
    threads: int | None = None  # torch threads; None = the cores not already busy (pipeline.free_cores)

    def __post_init__(self) -> None:
        parts = self.stage.split("+")
        if self.stage != "all" and (not set(parts) <= set(STAGES) or len(set(parts)) != len(parts)):
            raise ConfigError(f"stage must be all, collect, train or eval, or several joined by '+' "
                              f"(train+eval), got {self.stage!r}")
        kind = self.embodiment.get("kind", "sim")
        if kind == "ros":
            from embodied_lm.ros import RosConfig

            try:
                RosConfig.from_dict(self.embodiment)
            except (TypeError, ValueError) as e:
                raise ConfigError(f"embodiment: {e}") from None
            if self.ray.enabled:
                raise ConfigError("embodiment=ros drives one robot: it cannot run on Ray workers (ray.enabled)")
        elif kind != "sim" or set(self.embodiment) - {"kind"}:
            raise ConfigError(f"embodiment: kind must be 'sim' (no other keys) or 'ros', got {self.embodiment}")


def run_stages(stage: str) -> list[str]:
    """``all`` -> every stage; ``train+eval`` -> those, in pipeline order."""
    parts = STAGES if stage == "all" else stage.split("+")
    return [s for s in STAGES if s in parts]


def load_run_config(cfg: DictConfig | dict[str, Any]) -> RunConfig:
    """Validate a composed config into ``RunConfig``; raises ConfigError naming the bad key."""
    try:
        merged = OmegaConf.merge(OmegaConf.structured(RunConfig), cfg)
        return OmegaConf.to_object(merged)  # runs every __post_init__
    except ConfigError:
        raise
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", None)
        msg = str(e).splitlines()[0]
        raise ConfigError(f"{key}: {msg}" if key else msg) from None
