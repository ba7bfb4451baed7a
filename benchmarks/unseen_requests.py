"""Questions phrased as requests, in no pool: does the planner answer them or act on them?

Every trained question ends in a question mark, and the held-out L3 requests ("Tell me the colour of
…", "Name the colour of …") are often read as commands and answered with a ``pick``.  The sentences
below were written for this measurement only, never enter training or L3 (tests/test_grounding.py
checks), and carry other verbs and frames than both pools; benchmarks/README.md has the figures.

Writes test-seed L1 specs whose ``instruction`` is one of them, both reference styles (q1's colour
style names the block by place, as its L1 does), for ``stage=eval eval.spec=...``::

    .venv/bin/python -m benchmarks.unseen_requests --out unseen_requests_L1.jsonl --episodes 25
    .venv/bin/python experiments/run.py stage=eval checkpoint=CK eval.spec=unseen_requests_L1.jsonl
"""

from __future__ import annotations

import argparse
from dataclasses import replace

from sim.tasks import FAMILIES, build_episode, generate_specs
from sim.world import World, WorldConfig

UNSEEN_REQUESTS = {
    "q1_color": ("Give me the colour of {obj}.", "I'd like to know which colour {obj} is.",
                 "Identify the colour of {obj}."),
    "q2_on_table": ("Let me know if {obj} is on the table.", "Find out whether {obj} lies on the table."),
    "q3_on_object": ("Let me know if {top} is on {bottom}.", "Find out whether {top} sits on {bottom}."),
    "q4_feasible": ("Let me know if {obj} can be picked up now.",
                    "Find out whether {obj} can be lifted at the moment."),
}


def unseen_specs(episodes: int, seed: int = 0):
    """``episodes`` test specs per question family, alternating the reference style, each with one of
    the family's unseen requests (in turn) filled for its own scene."""
    out = []
    world = World(WorldConfig())
    try:
        for family, templates in UNSEEN_REQUESTS.items():
            for i, spec in enumerate(generate_specs([family], ["L1"], episodes, seed=seed, split="test",
                                                    refer="mixed")):
                ep = build_episode(world, spec)  # L1: with the referring form its phrasing stream draws
                text = templates[i % len(templates)].format(**FAMILIES[family].fill(ep))
                out.append(replace(spec, instruction=text))
    finally:
        world.close()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--episodes", type=int, default=25, help="per question family")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    specs = unseen_specs(args.episodes, args.seed)
    with open(args.out, "w") as f:
        f.writelines(s.to_json() + "\n" for s in specs)
    print(f"{len(specs)} specs -> {args.out}")


if __name__ == "__main__":
    main()
