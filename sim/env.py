"""``Tabletop-v0``: a gymnasium env whose action is one skill call in text.

Observation (dict): per camera ``rgb_<cam>`` (H,W,3) uint8, ``depth_<cam>`` (H,W) float32 metres,
``mask_<cam>`` (H,W) int16 (k for obj_k, -1 robot, 0 else); ``robot`` (16,) float32 = 9 joint
positions + end-effector xyz + quaternion xyzw; ``objects`` (16, 12) float32 (see
``World.object_array``); ``instruction`` text.

``EnvConfig.perception``: the sim observed like a robot (``sim.perceived``): ``objects`` are the
perception's rows from the RGB-D images (``object_rgb`` (16, 3): their measured colours), ``obj_k`` its
names (in calls and instructions), no ``mask_*``.
``EnvConfig.jitter``: cameras moved and relit per episode (``sim.camera.Jitter``).

A bad action (unparsable, unknown object, impossible now) is a failed step, never an exception.
The episode terminates on ``done`` or ``answer ...``; it is truncated at the family's step limit.
Reward is 1 on the terminating step if the task's success predicate holds.
"""

from __future__ import annotations

import string
from dataclasses import dataclass, field
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from sim.camera import Jitter
from sim.faults import Fault, check_faults, draw_fault
from sim.tasks import FAMILIES, LEVELS, SEED_SPLITS, EpisodeSpec, TaskEpisode, build_episode
from sim.world import World, WorldConfig
from skills import Answer, Done, Pick, Place, Push, SkillCall, SkillLibrary, SkillParseError, parse
from skills.calls import UnresolvedObject, colour_named, colour_refs, named_by_colour, resolve
from skills.vocab import MAX_OBJECTS, OBJECT_FEATURES, all_calls

CHARSET = string.ascii_letters + string.digits + " .,?!:;_-'()"
MAX_TEXT = 256
_VERB_RANK = {Done: 0, Pick: 1, Place: 2, Push: 3}


def _historical_rank(call: SkillCall, names: list[str]) -> tuple[int, int, bool]:
    """``valid_actions``' order before it used ``all_calls``: done, picks, places, then each block's
    pushes, "push a to b" after the fixed targets."""
    if isinstance(call, Push):
        return 3, names.index(call.obj), call.to_obj is not None
    return _VERB_RANK[type(call)], 0, False


@dataclass
class EnvConfig:
    families: tuple[str, ...] | None = None  # None = every registered family
    levels: tuple[str, ...] = ("L1",)
    world: WorldConfig = field(default_factory=WorldConfig)
    skills: dict[str, str] = field(default_factory=dict)  # verb -> implementation ("scripted", ...)
    observe_images: bool = True  # False: image keys hold zeros (state-only planners skip rendering)
    split: str = "train"  # seed range used when reset() samples an episode itself
    faults: dict[str, float] = field(default_factory=dict)  # sim.faults: fault -> probability per skill call
    perception: bool = False  # observe like a robot: objects from perception on the images (sim.perceived)
    jitter: Jitter | None = None  # cameras moved and relit per episode (a dict of Jitter fields works too)

    def __post_init__(self) -> None:
        if isinstance(self.jitter, dict):
            try:
                self.jitter = Jitter(**self.jitter)
            except TypeError as e:
                raise ValueError(f"EnvConfig.jitter: {e}") from None
        if self.perception and not self.observe_images:
            raise ValueError("EnvConfig.perception needs observe_images=True: perception reads the images")
        if self.families is not None:
            unknown = [f for f in self.families if f not in FAMILIES]
            if unknown:
                raise ValueError(f"unknown task family {unknown}; known: {', '.join(sorted(FAMILIES))}")
        bad = [lv for lv in self.levels if lv not in LEVELS]
        if bad or not self.levels:
            raise ValueError(f"levels must be a non-empty subset of {LEVELS}, got {self.levels}")
        if self.split not in SEED_SPLITS:
            raise ValueError(f"split must be one of {list(SEED_SPLITS)}, got {self.split!r}")
        check_faults(self.faults)


class TabletopEnv(gym.Env):
    """The simulated ``skills.embodiment.Embodiment``."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 4}

    def __init__(self, config: EnvConfig | dict | None = None, render_mode: str | None = None):
        if isinstance(config, dict):
            config = EnvConfig(**config)
        self.config = config or EnvConfig()
        self.render_mode = render_mode
        self.world = World(self.config.world)
        self.skills = SkillLibrary(self.config.skills)
        self.episode: TaskEpisode | None = None
        h, w = self.config.world.image_size
        obs: dict[str, spaces.Space] = {}
        for cam in self.config.world.cameras:
            obs[f"rgb_{cam}"] = spaces.Box(0, 255, (h, w, 3), np.uint8)
            obs[f"depth_{cam}"] = spaces.Box(0.0, np.inf, (h, w), np.float32)
            if not self.config.perception:
                obs[f"mask_{cam}"] = spaces.Box(-1, MAX_OBJECTS, (h, w), np.int16)
        obs["robot"] = spaces.Box(-np.inf, np.inf, (16,), np.float32)
        obs["objects"] = spaces.Box(-np.inf, np.inf, (MAX_OBJECTS, OBJECT_FEATURES), np.float32)
        if self.config.perception:
            obs["object_rgb"] = spaces.Box(0.0, 1.0, (MAX_OBJECTS, 3), np.float32)
        obs["instruction"] = spaces.Text(MAX_TEXT, charset=CHARSET)
        self.observation_space = spaces.Dict(obs)
        self.action_space = spaces.Text(128, charset=CHARSET)
        self._blank = {k: np.zeros(s.shape, s.dtype) for k, s in obs.items() if isinstance(s, spaces.Box)}
        self.perceived = None
        if self.config.perception:
            from sim.perceived import PerceivedScene

            ws = self.config.world.workspace
            self.perceived = PerceivedScene(ws, (ws.x, ws.y))

    # -- gymnasium API --------------------------------------------------------------------------
    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        spec = (options or {}).get("spec")
        if spec is None:
            spec = self._sample_spec()
        elif isinstance(spec, dict):
            spec = EpisodeSpec.from_dict(spec)
        self.episode = build_episode(self.world, spec)
        self._fault_rng = np.random.default_rng([spec.seed, 0xFA17])  # faults replay with their episode
        self.world.jitter(self.config.jitter, np.random.default_rng([spec.seed, 0xCA3]))
        self.steps = 0
        self.answer: str | None = None
        if self.perceived is not None:
            self.perceived.reset()
        self.instruction = self.episode.instruction
        obs = self._observe()  # (with perception: the first view names the objects the instruction mentions)
        self.instruction = obs["instruction"] = self._from_sim(self.episode.instruction)
        return obs, self._info()

    def step(self, action: str):
        if self.episode is None:
            raise RuntimeError("call reset() before step()")
        steps0 = self.world.steps
        try:
            action = self._resolve(action)
        except UnresolvedObject as e:  # "the red block" names no object, or several: nothing moves
            return self._refused(str(e))
        said, names = action, {}
        if self.perceived is not None:
            names, why = self.perceived.to_sim(action, self.world.object_infos(), self.world.robot.held())
            if names is None:  # a name the perception does not know: nothing moves
                return self._refused(f"{said}: {why}")
            action = self.perceived.rename(action, names)
        fault = self._draw_fault(action)
        self.world.robot.fault = fault
        try:
            result = self.skills.run(action, self.world.robot)
        finally:
            self.world.robot.fault = None
        self.steps += 1
        message = result.message
        if self.perceived is not None:
            if isinstance(result.call, (Pick, Place)):
                slot = int(said.split()[1][4:]) - 1
                self.perceived.after(type(result.call).__name__.lower(), slot, self.world.robot.held() is not None)
            message = self._from_sim(message, known={v: k for k, v in names.items()})  # the planner's names
        call = result.call
        terminated = isinstance(call, (Answer, Done))
        if isinstance(call, Answer):
            self.answer = call.text
        success = self.success()
        truncated = not terminated and self.steps >= self.episode.max_steps
        reward = 1.0 if terminated and success else 0.0
        info = self._info() | {"skill_success": result.success, "message": message,
                               "skill_time": result.sim_time, "success": success,
                               "physics_steps": self.world.steps - steps0,
                               "fault": fault.kind if fault is not None else None}
        return self._observe(), reward, terminated, truncated, info

    def _refused(self, message: str):
        """A step that moved nothing, with the reason in ``info["message"]``."""
        self.steps += 1
        info = self._info() | {"skill_success": False, "message": message, "skill_time": 0.0,
                               "success": self.success(), "physics_steps": 0, "fault": None}
        return self._observe(), 0.0, False, self.steps >= self.episode.max_steps, info

    def _resolve(self, action: str) -> str:
        """``action`` with colour references ("the red block") resolved in the observed scene."""
        try:
            call = parse(action)
        except SkillParseError:
            return action  # the skill library reports it
        if not named_by_colour(call):
            return action
        robot = self.world.robot if self.perceived is None else self.perceived.robot()  # as observed
        return str(resolve(call, robot.objects()))

    def render(self):
        if self.render_mode == "rgb_array":
            return self.world.render(self.config.world.cameras[0])["rgb"]
        return None

    def close(self) -> None:
        self.world.close()

    # -- for planners and harnesses ---------------------------------------------------------------
    def camera_params(self) -> dict[str, dict]:
        """Intrinsics ``K`` and extrinsics ``world_from_camera`` of every camera."""
        return {cam: self.world.camera_params(cam) for cam in self.config.world.cameras}

    def success(self) -> bool:
        ep = self.episode
        return ep.family.success(ep, self.world.object_infos(), self.world.robot.held(), self.answer)

    def oracle_action(self) -> str:
        """The oracle's next call from privileged state (in the perception's names with ``perception``)."""
        ep = self.episode
        return self._from_sim(ep.family.oracle(ep, self.world.object_infos(), self.world.robot.held()))

    def valid_actions(self, by_colour: bool = False) -> list[str]:
        """Every skill call (or answer) that is well-formed and possible right now (in the perceived scene
        with ``perception``).  ``by_colour``: objects named "the red block", only those no other object
        of their colour and kind shares (a colour reference that resolves)."""
        ep = self.episode
        if ep.family.kind == "question":
            return [f"answer {a}" for a in ep.family.answers()]
        robot = self.world.robot if self.perceived is None else self.perceived.robot()
        objs = robot.objects()
        names = sorted(objs, key=lambda n: int(n.split("_")[1]))
        calls = [parse(c) for c in all_calls(names, [objs[n].kind for n in names], robot.held(), answers=False)]
        ok = [c for c in calls if self.skills.check(c, robot) is None]
        # The random planner indexes this list with a seeded rng: keep its historical order so that its
        # results (README) stand.
        ok = sorted(ok, key=lambda c: _historical_rank(c, names))
        if not by_colour:
            return [str(c) for c in ok]
        refs = colour_refs(objs)
        return [str(named) for c in ok if (named := colour_named(c, refs)) is not None]

    # -- internals ---------------------------------------------------------------------------------
    def _draw_fault(self, action: str) -> Fault | None:
        """A deliberate failure for this call (``config.faults``), drawn only for a call that can run now
        and that the fault affects (``drop``: a place onto an object; ``topple``: onto a block)."""
        if not any(self.config.faults.values()):
            return None
        try:
            call = parse(action)
        except SkillParseError:
            return None
        if not isinstance(call, (Pick, Place)) or self.skills.check(call, self.world.robot) is not None:
            return None
        faults = dict(self.config.faults)
        if isinstance(call, Place) and call.target is None:  # "on table": wherever it lands, it is on the table
            faults.pop("drop", None)
        if not (isinstance(call, Place) and call.target is not None and not call.in_bowl):
            faults.pop("topple", None)
        return draw_fault(faults, type(call).__name__.lower(), self._fault_rng)

    def _sample_spec(self) -> EpisodeSpec:
        rng = self.np_random
        fams = list(self.config.families or FAMILIES)
        fam = FAMILIES[fams[int(rng.integers(len(fams)))]]
        levels = [lv for lv in self.config.levels if lv in fam.levels] or [fam.levels[0]]
        level = levels[int(rng.integers(len(levels)))]
        counts = fam.object_counts(level)
        n = counts[int(rng.integers(len(counts)))]
        lo, hi = SEED_SPLITS[self.config.split]
        seed = int(rng.integers(lo, hi))
        params = fam.sample_params(np.random.default_rng([seed, 1]), n, level)
        return EpisodeSpec(fam.name, params, n, seed, None, "entity", level)

    def _observe(self) -> dict[str, Any]:
        if self.perceived is not None:
            return self._perceive()
        obs: dict[str, Any] = {}
        for cam in self.config.world.cameras:
            if self.config.observe_images:
                frame = self.world.render(cam)
                obs |= {f"rgb_{cam}": frame["rgb"], f"depth_{cam}": frame["depth"], f"mask_{cam}": frame["mask"]}
            else:
                obs |= {k: self._blank[k] for k in (f"rgb_{cam}", f"depth_{cam}", f"mask_{cam}")}
        obs["robot"] = self.world.robot.state()
        obs["objects"] = self.world.object_array()
        obs["instruction"] = self.instruction
        return obs

    def _perceive(self) -> dict[str, Any]:
        """What a robot observes: images, joints, and the objects its perception finds in the images."""
        obs: dict[str, Any] = {}
        frames = {}
        for cam in self.config.world.cameras:
            frame, params = self.world.render(cam), self.world.camera_params(cam)
            obs |= {f"rgb_{cam}": frame["rgb"], f"depth_{cam}": frame["depth"]}
            frames[cam] = (frame["rgb"], frame["depth"], np.asarray(params["K"]),
                           np.asarray(params["world_from_camera"]))
        obs["robot"] = self.world.robot.state()
        obs["objects"], obs["object_rgb"] = self.perceived.observe(frames, obs["robot"][9:12])
        obs["instruction"] = self.instruction
        return obs

    def _from_sim(self, text: str, known: dict[str, str] | None = None) -> str:
        if self.perceived is None:
            return text
        return self.perceived.from_sim(text, self.world.object_infos(), self.world.robot.held(), known)

    def _info(self) -> dict[str, Any]:
        ep = self.episode
        return {"spec": ep.spec.to_dict(), "instruction": self.instruction, "step": self.steps,
                "max_steps": ep.max_steps, "sim_time": self.world.sim_time,
                "held": self.world.robot.held() if self.perceived is None else self.perceived.held_name()}
