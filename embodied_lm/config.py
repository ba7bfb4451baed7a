"""The run configuration: typed dataclasses, the one place every setting has its default and its check.

Hydra (experiments/conf) composes on the ``RunConfig`` schema (``register_configs``): ``config.yaml``
only lists the config groups, and a group option (``sensors/vit.yaml``, ``preset/smoke.yaml``) writes
only what makes it different (tests/test_run.py checks that no YAML restates a default).
``load_run_config(cfg)`` turns the composed DictConfig into these dataclasses; every ``__post_init__``
checks values and a problem is a ``ConfigError`` whose message names the key.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException


class ConfigError(ValueError):
    """A configuration value that cannot be used; the message names the key."""


STAGES = ("collect", "train", "eval")
TAMP_FAMILIES = ["q1_color", "q2_on_table", "q3_on_object", "q4_feasible", "p1_grasp", "p2_stack"]
LORA_ALL_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
MODES = ("frozen", "lora", "full")  # frozen: encoder + projector train | lora: + LoRA adapters | full: all
PROJECTORS = ("linear", "mlp")
TRANSITIONS = ("success", "change")  # questions about a transition (embodied_lm.transitions)
NO_FAULTS = {"slip": 0.0, "drop": 0.0, "topple": 0.0}  # sim.faults.FAULTS, each off
CONTEXTS = ("step", "episode", "scene")  # a sentence per step, per episode, or per step without its history
CALLS = ("obj", "colour")  # how plans name objects: obj_k, or "the red block" (a model without object tokens)
PRECISIONS = ("auto", "bf16", "fp32")  # auto = bf16 autocast where the CPU/GPU has native bf16


def check_choice(key: str, value: Any, choices: tuple | list) -> None:
    if value not in choices:
        raise ConfigError(f"{key} must be one of {list(choices)}, got {value!r}")


def check_faults_config(key: str, faults: dict) -> None:
    from sim.faults import check_faults

    try:
        check_faults(dict(faults), key)
    except ValueError as e:
        raise ConfigError(str(e)) from None


def check_families(key: str, families: list[str] | dict, allow_empty: bool = True) -> None:
    from sim.tasks import FAMILIES

    unknown = [f for f in families if f not in FAMILIES]
    if unknown or (not allow_empty and not families):
        raise ConfigError(f"{key}: unknown {unknown}; known: {', '.join(sorted(FAMILIES))}")


@dataclass
class WorldSettings:
    image_size: list[int] = field(default_factory=lambda: [128, 128])
    cameras: list[str] = field(default_factory=lambda: ["top", "front"])
    renderer: str = "tiny"  # tiny | egl (EGL plugin; runs on CPU through Mesa)


@dataclass
class TaskConfig:
    """The PyBullet tabletop suite: PaLM-E TAMP, Language-Table push and Ravens bowl families."""

    name: str = "tabletop"
    families: list[str] = field(default_factory=list)  # empty = every registered family
    world: WorldSettings = field(default_factory=WorldSettings)
    # verb -> implementation in the skill registry (push: scripted | learned)
    skills: dict[str, str] = field(default_factory=lambda: {"pick": "scripted", "place": "scripted",
                                                             "push": "scripted"})

    def __post_init__(self) -> None:
        check_families("task.families", self.families)


@dataclass
class PlannerConfig:
    name: str = "embodied_lm"  # embodied_lm | oracle | random | saycan (embodied_lm.planners)
    seed: int = 0

    def __post_init__(self) -> None:
        from embodied_lm.planners import planner_names

        if self.name not in planner_names():
            raise ConfigError(f"planner.name: unknown {self.name!r}; known: {', '.join(planner_names())}")


@dataclass
class EvalConfig:
    episodes: int = 10  # per family and level
    levels: list[str] = field(default_factory=lambda: ["L1", "L2", "L3", "L4"])
    families: list[str] | None = None  # None = the trained families (embodied_lm), else task.families
    spec: str | None = None  # PATH.jsonl: evaluate exactly these episode specs instead
    split: str = "test"  # seeds from the test range (disjoint from train)
    refer: str | None = None  # entity | color | mixed for every level; None = L3 alternates, others entity
    progress: bool = True
    # episodes one worker runs side by side, the embodied LM's steps decoded in one batch (same rows as one at a
    # time; a robot, embodiment=ros, runs one)
    batch: int = 8
    faults: dict[str, float] = field(default_factory=lambda: dict(NO_FAULTS))  # sim.faults in eval episodes (sim)
    # observe like a robot (sim.perceived): objects from perception on the images, its obj_k names, no masks
    # (a robot, embodiment=ros, always does)
    perception: bool = False
    jitter: bool = False  # cameras moved (+-2 cm, +-3 deg) and relit per episode (sim.camera.Jitter)
    # a model trained on transition questions: oracle episodes per family x level (test seeds, with
    # eval.faults or else collect.faults) whose skill steps it is asked about (results.json "transitions")
    transition_episodes: int = 10

    def __post_init__(self) -> None:
        from sim.tasks import LEVELS, SEED_SPLITS, STYLES

        for k in ("episodes", "batch"):
            if getattr(self, k) < 1:
                raise ConfigError(f"eval.{k} must be >= 1, got {getattr(self, k)}")
        bad = [lv for lv in self.levels if lv not in LEVELS]
        if bad or not self.levels:
            raise ConfigError(f"eval.levels must be a non-empty subset of {list(LEVELS)}, got {self.levels}")
        check_families("eval.families", self.families or [])
        check_choice("eval.split", self.split, list(SEED_SPLITS))
        if self.refer is not None:
            check_choice("eval.refer", self.refer, STYLES)
        check_faults_config("eval.faults", self.faults)
        if self.transition_episodes < 0:
            raise ConfigError(f"eval.transition_episodes must be >= 0, got {self.transition_episodes}")


@dataclass
class SensorsConfig:
    name: str = "state"  # state | vit | object | pointcloud (sensors.ENCODERS)
    encoder: dict[str, Any] = field(default_factory=dict)  # the encoder config's fields (dim, camera, ...)
    relation_loss: float = 0.0  # weight of the colour-word anchor + pointer loss (sensors/relations.py)

    def __post_init__(self) -> None:
        from sensors import ENCODERS

        if self.name not in ENCODERS:
            raise ConfigError(f"sensors.name: unknown {self.name!r}; known: {', '.join(sorted(ENCODERS))}")
        if self.relation_loss < 0:
            raise ConfigError(f"sensors.relation_loss must be >= 0, got {self.relation_loss}")


@dataclass
class BackboneConfig:
    name: str = "smollm2"  # smollm2 | tiny | a local Hugging Face model directory
    # decoder layers kept (0 = all): the first layers-1 and the last (embodied_lm.backbones.truncate).
    # 20 of SmolLM2's 30 train a third faster and a much worse model at the main job's budget
    layers: int = 0

    def __post_init__(self) -> None:
        if self.layers < 0:
            raise ConfigError(f"backbone.layers must be >= 0 (0 = all), got {self.layers}")


@dataclass
class CollectConfig:
    episodes: int = 100  # oracle demonstrations per family (train seeds)
    families: list[str] = field(default_factory=lambda: list(TAMP_FAMILIES))
    levels: list[str] = field(default_factory=lambda: ["L1"])
    images: bool | None = None  # record camera images; None = only when the sensors need them (not `state`)
    refer: str = "mixed"  # how instructions name objects: entity (obj_k) | color ("the red block") | mixed
    # deliberate skill failures while collecting (sim.faults: slip | drop | topple -> probability per call):
    # the negatives success detection (train.transitions) learns from; the oracle recovers from them
    faults: dict[str, float] = field(default_factory=lambda: dict(NO_FAULTS))
    perception: bool = False  # demonstrations observed like a robot (eval.perception): perceived object rows
    jitter: bool = False  # cameras moved and relit per episode (eval.jitter)

    def __post_init__(self) -> None:
        from sim.tasks import STYLES

        check_faults_config("collect.faults", self.faults)
        check_families("collect.families", self.families, allow_empty=False)
        check_choice("collect.refer", self.refer, STYLES)
        if self.episodes < 1:
            raise ConfigError(f"collect.episodes must be >= 1, got {self.episodes}")


@dataclass
class TrainConfig:
    """How the embodied LM trains (embodied_lm.train) and the parameter-shaping choices it trains with."""

    mode: str = "lora"  # one of MODES
    steps: int = 180
    batch_size: int = 16
    micro_batches: int = 2  # a batch is sorted by length and run in this many parts: less padding, same loss
    lr: float = 1e-3  # LoRA / full LM parameters
    sensor_lr: float = 3e-3  # encoder + projector
    warmup: int = 20
    weight_decay: float = 0.0
    lora_r: int = 16  # LoRA alpha is 2 * r
    lora_targets: list[str] = field(default_factory=lambda: list(LORA_ALL_LINEAR))
    relation_steps: int = 150  # encoder-only steps on the relation loss first (sensors with relation_loss > 0)
    context: str = "step"  # one of CONTEXTS; the planner decodes in the context its checkpoint trained in
    # transition questions trained beside the plans (embodied_lm.transitions): success | change
    transitions: list[str] = field(default_factory=list)
    calls: str = "obj"  # one of CALLS: the plans it learns name objects obj_k, or by colour ("pick the red block")
    balance: str = "family"  # family: task families equally likely per batch | step: every example
    # balance=family: relative odds of each family in a batch (1 for a family not named)
    family_weights: dict[str, float] = field(default_factory=lambda: {"p2_stack": 3.0, "q2_on_table": 2.0})
    # one of PRECISIONS.  fp32, not auto: bf16 autocast trains 1.2x faster on a native-bf16 CPU but a worse
    # model (two seeds, 50 episodes per cell: held-out phrasings 84 vs 92 %; benchmarks/README.md)
    precision: str = "fp32"
    compile: bool = True  # torch.compile the LM's decoder layers while training (1.24x per step, ~10 s once)
    projector: str = "mlp"  # one of PROJECTORS
    checkpoint_every: int = 200
    resume: bool = False  # continue from `checkpoint` if it exists
    backend: str = "local"  # local | ray (Ray Train TorchTrainer, DDP over num_workers)
    num_workers: int = 1  # Ray Train workers (backend=ray)
    use_gpu: bool = False  # one GPU per Ray Train worker
    seed: int = 0  # batch sampling and relation pretraining; a run sets it from its `seed`

    def __post_init__(self) -> None:
        check_choice("train.mode", self.mode, MODES)
        check_choice("train.projector", self.projector, PROJECTORS)
        check_choice("train.precision", self.precision, PRECISIONS)
        check_choice("train.balance", self.balance, ("family", "step"))
        check_choice("train.context", self.context, CONTEXTS)
        for q in self.transitions:
            check_choice("train.transitions[]", q, TRANSITIONS)
        if self.transitions and self.context == "episode":
            raise ConfigError("train.transitions need train.context=step or scene")
        check_choice("train.calls", self.calls, CALLS)
        if self.transitions and self.calls != "obj":  # success answers name the called object obj_k
            raise ConfigError("train.transitions need train.calls=obj")
        check_choice("train.backend", self.backend, ("local", "ray"))
        for k in ("steps", "batch_size", "micro_batches", "checkpoint_every", "lora_r", "num_workers"):
            if getattr(self, k) < 1:
                raise ConfigError(f"train.{k} must be >= 1, got {getattr(self, k)}")
        if self.relation_steps < 0 or self.warmup < 0:
            raise ConfigError("train.relation_steps and train.warmup must be >= 0")
        if not (0 < self.lr < 1 and 0 < self.sensor_lr < 1):
            raise ConfigError("train.lr and train.sensor_lr must be in (0, 1)")
        unknown = [f for f in self.family_weights if f not in TRANSITIONS]
        if unknown:  # a transition question (success, change) is weighted like a family
            check_families("train.family_weights", unknown)
        for fam, w in self.family_weights.items():
            if not isinstance(w, (int, float)) or isinstance(w, bool) or w <= 0:
                raise ConfigError(f"train.family_weights.{fam} must be a positive number, got {w!r}")
        if any(w != 1 for w in self.family_weights.values()) and self.balance != "family":
            raise ConfigError("train.family_weights other than 1 need train.balance=family")


@dataclass
class RayConfig:
    num_workers: int = 0  # 0 = serial in this process; N = N Ray actors (collect, eval), each its own world
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
    precision: str = "fp32"  # the planner's: one of PRECISIONS (auto = bf16 where native: faster, less measured)
    # ask the model after each skill whether it worked, and replan a step judged failed: on | off | auto
    # (auto: on a robot, embodiment=ros, whose skills report no truthful verdict, if the model learned it)
    detect: str = "auto"
    # a skill the robot (or the sim) reports failed, e.g. a refused call, leaves "Done so far" and is replanned;
    # failed 3 times in a row it is barred until a skill succeeds (off, and in the episode context: kept as done)
    reports: bool = True

    def __post_init__(self) -> None:
        check_choice("decode.precision", self.precision, PRECISIONS)
        check_choice("decode.detect", self.detect, ("auto", "on", "off"))


@dataclass
class RunConfig:
    task: TaskConfig = field(default_factory=TaskConfig)
    planner: PlannerConfig = field(default_factory=PlannerConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    sensors: SensorsConfig = field(default_factory=SensorsConfig)
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    collect: CollectConfig = field(default_factory=CollectConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    decode: DecodeConfig = field(default_factory=DecodeConfig)
    ray: RayConfig = field(default_factory=RayConfig)
    # embodiment=sim | ros: {"kind": "sim"} or {"kind": "ros", **embodied_lm.ros.RosConfig fields}
    embodiment: dict[str, Any] = field(default_factory=lambda: {"kind": "sim"})
    stage: str = "all"  # all | collect | train | eval, or stages joined by "+" (train+eval)
    dataset: str | None = None  # zarr store of demonstrations (default: <run dir>/demos.zarr)
    checkpoint: str | None = None  # checkpoint directory (default: <run dir>/checkpoint)
    seed: int = 0  # evaluation/train seeds within their splits, model init, batch sampling
    record: str | None = None  # PATH.zarr: append every evaluated episode to a zarr store
    threads: int | None = None  # torch threads; None = the cores not already busy (pipeline.free_cores)

    def __post_init__(self) -> None:
        parts = self.stage.split("+")
        if self.stage != "all" and (not set(parts) <= set(STAGES) or len(set(parts)) != len(parts)):
            raise ConfigError(f"stage must be all, collect, train or eval, or several joined by '+' "
                              f"(train+eval), got {self.stage!r}")
        self.train.seed = self.seed  # one seed per run
        images_needed = self.sensors.name != "state" and {"collect", "train"} <= set(self.stages)
        if self.collect.images is False and images_needed:
            raise ConfigError(f"collect.images=false but sensors={self.sensors.name} trains on camera images")
        if self.decode.detect == "on" and "train" in self.stages and "success" not in self.train.transitions:
            raise ConfigError("decode.detect=on: the model this run trains needs train.transitions=[success]")
        kind = self.embodiment.get("kind", "sim")
        if kind == "ros" and any(self.eval.faults.values()):
            raise ConfigError("eval.faults are the sim's: a robot's faults are its own (the sim-backed endpoint "
                              "takes --fault KIND=P)")
        if self.sensors.name == "perceived" and (
                ("collect" in self.stages and not self.collect.perception)
                or ("eval" in self.stages and kind == "sim" and not self.eval.perception)):
            raise ConfigError("sensors=perceived plans from perception: it needs collect.perception=true and "
                              "eval.perception=true (the sensors=perceived group sets both)")
        if self.sensors.name == "object" and (self.collect.perception or self.eval.perception):
            raise ConfigError("sensors=object pools image features inside the sim's masks, which "
                              "collect/eval.perception hide: use sensors=perceived or pointcloud")
        if self.collect.jitter and self.sensors.name in ("object", "pointcloud"):
            raise ConfigError(f"collect.jitter moves the cameras per episode, but a store records one calibration "
                              f"and sensors={self.sensors.name} back-projects with it")
        if kind == "ros" and self.eval.jitter:
            raise ConfigError("eval.jitter moves the sim's cameras: a robot's cameras are its own")
        if self.collect.images is False and self.collect.perception and "collect" in self.stages:
            raise ConfigError("collect.perception reads camera images: it cannot run with collect.images=false")
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

    @property
    def stages(self) -> list[str]:
        """``all`` -> every stage; ``train+eval`` -> those, in pipeline order."""
        parts = STAGES if self.stage == "all" else self.stage.split("+")
        return [s for s in STAGES if s in parts]

    def model_config(self):
        """The ``ModelConfig`` this run trains (backbone, sensors and the parameter-shaping train keys)."""
        from embodied_lm.model import ModelConfig

        t = self.train
        return ModelConfig(backbone=self.backbone.name, backbone_layers=self.backbone.layers,
                           sensors=self.sensors.name,
                           encoder=dict(self.sensors.encoder), projector=t.projector, mode=t.mode,
                           lora_r=t.lora_r, lora_targets=list(t.lora_targets),
                           relation_loss=self.sensors.relation_loss, context=t.context,
                           transitions=list(t.transitions), calls=t.calls)


def register_configs() -> None:
    """Put the schema (``run_config``) and the Python-built group options into Hydra's ConfigStore;
    call before composing (experiments/run.py does)."""
    from hydra.core.config_store import ConfigStore

    from embodied_lm.ros.config import RosConfig

    cs = ConfigStore.instance()
    cs.store(name="run_config", node=RunConfig)
    # A robot behind rosbridge_server: RosConfig's own defaults, one robot run serially.
    ros = {"kind": "ros", **OmegaConf.to_container(OmegaConf.structured(RosConfig))}
    cs.store(group="embodiment", name="ros", package="_global_",
             node={"embodiment": ros, "ray": {"num_workers": 0}})


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
