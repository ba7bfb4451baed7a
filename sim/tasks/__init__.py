"""The task suite: registry of families, episode specs (JSONL), levels and seeds."""

from __future__ import annotations

import json
import zlib
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from sim.tasks import bowls, language, push, tamp  # noqa: F401  (register the families)
from sim.tasks.base import FAMILIES, LEVELS, REFERS, STYLES, EpisodeSpec, SpecError, TaskEpisode, TaskFamily
from sim.world import World

__all__ = [
    "FAMILIES", "LEVELS", "REFERS", "STYLES", "EpisodeSpec", "SpecError", "TaskEpisode", "TaskFamily",
    "build_episode", "generate_specs", "load_specs", "save_specs", "SEED_SPLITS",
]

# Train and test seeds never overlap: each split owns a range.
SEED_SPLITS = {"train": (0, 1_000_000), "test": (1_000_000, 2_000_000)}


def build_episode(world: World, spec: EpisodeSpec) -> TaskEpisode:
    """Reset ``world`` to the spec's seed and build its scene and instruction (deterministic)."""
    family = FAMILIES[spec.task]
    world.reset(seed=spec.seed)
    ep = TaskEpisode(spec, family, roles={}, colors={}, kinds={})
    ep.scratch["workspace"] = world.config.workspace
    family.build_scene(world, ep, world.rng)
    if spec.instruction is not None:
        ep.instruction = spec.instruction
    elif spec.level == "L3":  # held-out paraphrases, as written
        pool = family.heldout_templates
        ep.instruction = pool[int(world.rng.integers(len(pool)))].format(**family.fill(ep))
    else:  # the train pool: a template, a referring form and a wrapper from the episode's phrasing stream
        pool = family.train_templates
        template = pool[int(world.rng.integers(len(pool)))]
        rng = language.phrasing_rng(spec.seed)
        ep.scratch["ref_form"] = language.ref_form(rng)
        ep.instruction = language.wrap(template.format(**family.fill(ep)), family.kind == "question", rng)
    return ep


def _seed_stream(split: str, family: str, level: str, seed: int) -> int:
    lo, hi = SEED_SPLITS[split]
    key = zlib.crc32(f"{family}/{level}/{seed}".encode())
    return lo + key % ((hi - lo) // 2)  # leaves room for consecutive episodes within the split


def generate_specs(
    families: Iterable[str] | None = None,
    levels: Iterable[str] = LEVELS,
    episodes: int = 20,
    seed: int = 0,
    split: str = "test",
    refer: str | None = None,
) -> list[EpisodeSpec]:
    """``episodes`` specs per family × level.  Seeds come from the split's range; params from the seed.

    L1: 3–5 objects, train templates, entity labels.  L2: 6 and 8 objects.  L3: held-out paraphrases,
    alternating entity labels and colour references.  L4: longer horizons / new compositions.
    ``refer``: entity | color | mixed (alternating) for every level; None = the level's own style.
    """
    if split not in SEED_SPLITS:
        raise ValueError(f"split must be one of {list(SEED_SPLITS)}, got {split!r}")
    if refer is not None and refer not in STYLES:
        raise ValueError(f"refer must be one of {list(STYLES)}, got {refer!r}")
    names = list(families) if families is not None else list(FAMILIES)
    unknown = [f for f in names if f not in FAMILIES]
    if unknown:
        raise SpecError(f"unknown task family {unknown}; known: {', '.join(sorted(FAMILIES))}")
    specs = []
    for name in names:
        fam = FAMILIES[name]
        for level in levels:
            if level not in fam.levels:
                continue
            base = _seed_stream(split, name, level, seed)
            counts = fam.object_counts(level)
            for i in range(episodes):
                s = base + i
                rng = np.random.default_rng([s, 1])  # params stream, separate from the scene stream
                n = counts[i % len(counts)]
                alternate = refer == "mixed" or (refer is None and level == "L3")
                style = ("color" if i % 2 else "entity") if alternate else (refer or "entity")
                specs.append(EpisodeSpec(name, fam.sample_params(rng, n, level), n, s, None, style, level))
    return specs


def load_specs(path: str | Path) -> list[EpisodeSpec]:
    """Read and validate a JSONL spec file; any bad line fails the whole file before anything runs."""
    path = Path(path)
    if not path.is_file():
        raise SpecError(f"{path}: spec file not found")
    specs, errors = [], []
    for i, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        try:
            specs.append(EpisodeSpec.from_dict(json.loads(line)))
        except json.JSONDecodeError as e:
            errors.append(f"{path}:{i}: not valid JSON ({e.msg})")
        except SpecError as e:
            errors.append(f"{path}:{i}: {e}")
    if errors:
        raise SpecError("; ".join(errors[:5]) + (f" (+{len(errors) - 5} more)" if len(errors) > 5 else ""))
    if not specs:
        raise SpecError(f"{path}: no episode specs in file")
    return specs


def save_specs(specs: Sequence[EpisodeSpec], path: str | Path) -> None:
    Path(path).write_text("".join(s.to_json() + "\n" for s in specs))
