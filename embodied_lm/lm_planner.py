"""Planners backed by a language model: the trained embodied LM, and the zero-shot SayCan baseline."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from embodied_lm.config import ConfigError, DecodeConfig
from embodied_lm.data import colour_names, episode_prompt, present_slots, step_prompt
from embodied_lm.decode import Trie, greedy, greedy_batch, greedy_in_context, score_candidates
from embodied_lm.model import autocast, decoding
from embodied_lm.planners import PlannerRefusal, register_planner
from skills.vocab import COLOR_NAMES, KINDS, Col, all_calls


def _scene_objects(objects: np.ndarray) -> tuple[list[str], list[str]]:
    slots = present_slots(objects)
    return [f"obj_{k}" for k in slots], [KINDS[int(objects[k - 1, Col.KIND])] for k in slots]


def _cameras(env) -> dict[str, dict[str, Any]]:
    params = env.camera_params()
    return {cam: {k: np.asarray(v, dtype=np.float64) if k in ("K", "world_from_camera") else v
                  for k, v in p.items()} for cam, p in params.items()}


BAR_AFTER = 3  # judged failures of one call in a row before it is barred (see _review_last)


@register_planner("embodied_lm")
class EmbodiedLMPlanner:
    """Closed loop: observe -> sentence (instruction + steps so far + observation tokens) -> next step.

    In the ``episode`` context (``model.cfg.context``) the episode is one growing sentence whose KV cache
    the planner keeps: each step adds only its observation's text and tokens and decodes the answer; the
    answer as training tokenized it (" <step></s>") enters the cache before the next step's text."""

    def __init__(self, model=None, checkpoint: str | None = None, constrained: bool = True, seed: int = 0,
                 precision: str = DecodeConfig.precision, detect: bool = False,
                 reports: bool = DecodeConfig.reports):
        if model is None:  # Ray workers get a checkpoint path, not a pickled model
            from embodied_lm.train import load_trained

            model = load_trained(checkpoint, seed=seed)
        if detect and "success" not in model.cfg.transitions:
            raise ConfigError("decode.detect=on needs a model trained with train.transitions=[success]")
        self.model = model.eval()
        model.merge_lora()
        self.constrained = constrained
        self.precision = precision  # fp32, or bf16 autocast (embodied_lm.model.autocast)
        self.needs_images = model.encoder.reads_images  # perceived: object rows + colours, as a robot sends
        self.detect = detect  # judge each skill from the observations before and after it
        self.reports = _reports(reports, model.cfg.context)  # a reported failure is one, without the judge
        self._tries: dict[tuple, Trie] = {}

    @classmethod
    def run_args(cls, cfg, model=None, checkpoint=None) -> tuple[dict[str, Any], bool]:
        """The model in this process, or (Ray workers, or no model yet) its checkpoint to load."""
        from embodied_lm.train import load_trained, read_checkpoint_config
        from sensors import ENCODERS

        decode = {"constrained": cfg.decode.constrained, "precision": cfg.decode.precision}
        if cfg.ray.enabled:
            model_cfg = read_checkpoint_config(checkpoint)["model"]
            decode["detect"] = _detect(cfg, model_cfg.get("transitions", []))
            decode["reports"] = _reports(cfg.decode.reports, model_cfg.get("context", "step"))
            return {"checkpoint": checkpoint, **decode}, ENCODERS[model_cfg["sensors"]].reads_images
        model = model if model is not None else load_trained(checkpoint, seed=cfg.seed)
        decode["detect"] = _detect(cfg, model.cfg.transitions)
        decode["reports"] = _reports(cfg.decode.reports, model.cfg.context)  # results.json says what ran
        return {"model": model, **decode}, model.encoder.reads_images

    def reset(self, env, obs, info) -> None:
        from transformers import DynamicCache

        self.env, self.history = env, []
        self.cameras = _cameras(env) if self.needs_images else {}
        self.cache, self.unfed = DynamicCache(), []  # episode context: the sentence so far; ids not yet in it
        self.last: tuple[str, dict] | None = None  # (the previous call, the observation it started from)
        self.judged_failed: list[str] = []
        self.answers: list[tuple[str, str]] = []  # (call, the judge's answer) for every skill judged
        self.failed_in_a_row: dict[str, int] = {}  # call -> times judged failed since a skill last succeeded
        self.barred: set[str] = set()  # calls constrained decoding leaves out until a skill succeeds
        if self.detect:
            from embodied_lm.transitions import TransitionJudge

            self.judge = TransitionJudge(self.model, self.cameras, self.precision)

    def episode_extra(self) -> dict[str, Any]:
        """What the episode's row records beside the plan: the steps judged failed and replanned, and the
        judge's answer for every skill it judged."""
        return {"judged_failed": list(self.judged_failed), "judge_answers": [list(a) for a in self.answers]} \
            if self.detect or self.reports else {}

    def _review_last(self, obs, info) -> None:
        """A skill judged failed (``detect``) or reported failed by the robot (``reports``) leaves "Done so
        far": the next decision replans it from what is seen.  A call failed ``BAR_AFTER`` times with no
        skill succeeding between is barred until one does: the scene it reads is unchanged, so the same
        decision would come again (a call the robot refuses would repeat to the step limit)."""
        from embodied_lm.transitions import SKILL_VERBS

        if self.last is None or self.last[0].split(" ")[0] not in SKILL_VERBS:
            return
        call, before = self.last
        if self.reports and info.get("skill_success") is False:
            ok = False
        elif self.detect:
            ok, answer = self.judge.judged(call, before, obs)
            self.answers.append((call, answer))
        elif self.reports:
            ok = True  # the robot says it worked; with no judge, that is all there is
        else:
            return
        if not ok:
            self.judged_failed.append(call)
            self.history.pop()
            self.failed_in_a_row[call] = self.failed_in_a_row.get(call, 0) + 1
            if self.failed_in_a_row[call] >= BAR_AFTER:
                self.barred.add(call)
        else:
            self.failed_in_a_row.clear()
            self.barred.clear()

    def spawn(self) -> EmbodiedLMPlanner:
        """Another planner for a concurrent episode: the same model, decoding settings and tries."""
        twin = object.__new__(type(self))
        twin.__dict__.update({k: v for k, v in self.__dict__.items() if k in (
            "model", "constrained", "precision", "needs_images", "detect", "reports", "_tries")})
        return twin

    @torch.no_grad()
    def act(self, obs, info) -> str:
        m = self.model
        self._review_last(obs, info)
        episode = m.cfg.context == "episode"
        embeds, trie = self._prompt(obs)
        with decoding(m, self.precision):
            if not episode:
                text = greedy(m, embeds, m.tok, trie)
            else:
                before = self.cache.get_seq_length() + embeds.shape[1]
                text, fed = greedy_in_context(m, embeds, m.tok, trie, self.cache)
                self.unfed = self._answer_ids(text, fed, before)
        self._took(text, obs)
        return text

    @staticmethod
    @torch.no_grad()
    def act_batch(planners: list[EmbodiedLMPlanner], obs: list[dict], infos: list[dict]) -> list[str | Exception]:
        """``act`` for several episodes at once (each planner its own episode, one shared model): the
        step-context decisions are decoded in one batch (``greedy_batch``); an episode-context planner
        acts alone (its cache is its own).  A planner's ``PlannerRefusal`` is its entry in the result."""
        out: list[str | Exception | None] = [None] * len(planners)
        batch = []
        for i, (p, o) in enumerate(zip(planners, obs)):
            if p.model.cfg.context == "episode":
                batch.append(None)
                continue
            try:
                p._review_last(o, infos[i])
                batch.append(p._prompt(o))
            except PlannerRefusal as e:
                out[i] = e
                batch.append(None)
        rows = [i for i, b in enumerate(batch) if b is not None]
        if rows:
            m, precision = planners[rows[0]].model, planners[rows[0]].precision
            with decoding(m, precision):
                texts = greedy_batch(m, [batch[i][0] for i in rows], m.tok, [batch[i][1] for i in rows])
            for i, text in zip(rows, texts):
                planners[i]._took(text, obs[i])
                out[i] = text
        for i, p in enumerate(planners):
            if out[i] is None:
                try:
                    out[i] = p.act(obs[i], infos[i])
                except PlannerRefusal as e:
                    out[i] = e
        return out

    def _prompt(self, obs) -> tuple[torch.Tensor, Trie | None]:
        """This step's prompt embeddings (1, T, D) and the grammar's trie for the scene (or None)."""
        m = self.model
        names, kinds = _scene_objects(obs["objects"])
        if m.cfg.calls == "colour":  # "the red block" for each object a colour picks out
            refs = colour_names(obs["objects"])
            kinds = [k for n, k in zip(names, kinds) if n in refs]
            names = [refs[n] for n in names if n in refs]
        episode = m.cfg.context == "episode"
        if episode:
            prompt = episode_prompt(obs["instruction"], len(self.history), m.kind, obs["objects"])
        else:
            prompt = step_prompt(m.cfg.context, obs["instruction"], self.history, m.kind, obs["objects"])
        sent = m.sentence(prompt, None)
        ids, slots = sent.ids, sent.slots
        if episode:  # the previous answer's tokens that are not in the cache yet come first
            ids, slots = self.unfed + ids, [-1] * len(self.unfed) + slots
        from sensors import collate

        sensors = collate([m.encoder.preprocess(obs, self.cameras)])
        trie = None
        if self.constrained:
            barred = tuple(sorted(self.barred))
            key = (tuple(names), tuple(kinds), barred)
            if key not in self._tries:
                self._tries[key] = Trie(m.tok, [c for c in all_calls(names, kinds) if c not in barred])
            trie = self._tries[key]
        with autocast("cpu", self.precision):
            return m.embed_sentence(torch.tensor([ids]), torch.tensor([slots]), sensors), trie  # (1, T, D)

    def _took(self, text: str, obs) -> None:
        self.history.append(text)
        self.last = (text, obs)

    def _answer_ids(self, text: str, fed: list[int], start: int) -> list[int]:
        """The answer as training writes it (" text" + eos) continues the cache: keep the decoded tokens
        that agree with it (constrained decoding: all), drop the rest, and return what is still to feed."""
        want = self.model.tok(" " + text, add_special_tokens=False)["input_ids"] + [self.model.tok.eos_token_id]
        keep = 0
        while keep < min(len(fed), len(want)) and fed[keep] == want[keep]:
            keep += 1
        extra = self.cache.get_seq_length() - (start + keep)
        if extra > 0:  # crop(-n) drops the last n positions (transformers 5)
            self.cache.crop(-extra)
        return want[keep:]


def _reports(on: bool, context: str) -> bool:
    """``decode.reports`` resolved: never in the episode context, whose KV cache already holds the call
    (as training's sentence holds every step)."""
    return on and context != "episode"


def _detect(cfg, transitions: list[str]) -> bool:
    """``decode.detect`` resolved: auto = on a robot (its skills' verdicts are not the sim's truth) when
    the model learned success detection."""
    if cfg.decode.detect == "auto":
        return cfg.embodiment.get("kind", "sim") == "ros" and "success" in transitions
    if cfg.decode.detect == "on" and "success" not in transitions:
        raise ConfigError("decode.detect=on needs a model trained with train.transitions=[success]")
    return cfg.decode.detect == "on"


def describe_scene(objects: np.ndarray) -> str:
    """Text scene for SayCan: each object's colour, kind and position (no relations)."""
    parts = []
    for k in present_slots(objects):
        row = objects[k - 1]
        x, y, z = row[Col.XYZ]
        parts.append(f"obj_{k} is a {COLOR_NAMES[int(row[Col.COLOR])]} {KINDS[int(row[Col.KIND])]} at x {x:.2f} "
                     f"y {y:.2f} z {z:.2f}.")
    return " ".join(parts)


@register_planner("saycan")
class SayCanPlanner:
    """PaLM-E's SayCan comparison: the pretrained LM, zero-shot, scores every currently valid skill text by
    log-likelihood given a text description of the scene; the best one is executed."""

    needs_images = False

    @classmethod
    def run_args(cls, cfg, model=None, checkpoint=None) -> tuple[dict[str, Any], bool]:
        return {"backbone": cfg.backbone.name}, False

    def __init__(self, backbone: str = "smollm2", seed: int = 0):
        from embodied_lm.backbones import load_backbone

        lm, self.tok = load_backbone(backbone)
        lm.eval()
        self.body, self.head, self.embed = lm.model, lm.lm_head, lm.get_input_embeddings()

    def reset(self, env, obs, info) -> None:
        self.env, self.history = env, []

    @torch.no_grad()
    def act(self, obs, info) -> str:
        done = "; ".join(self.history) if self.history else "nothing"
        prompt = (f"Robot skills: pick, place, push, answer, done.\nScene: {describe_scene(obs['objects'])}\n"
                  f"Task: {obs['instruction']}\nDone so far: {done}.\nNext:")
        ids = self.tok(prompt, add_special_tokens=False, return_tensors="pt")["input_ids"]
        cands = self.env.valid_actions()
        scores = score_candidates(self, self.embed(ids), self.tok, cands)
        text = cands[int(torch.argmax(scores))]
        self.history.append(text)
        return text
