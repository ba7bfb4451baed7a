"""The sim observed like a robot (``EnvConfig.perception``): nothing privileged reaches the planner.

Objects come from the project's perception (``sensors.perception``: segmentation of the rendered RGB-D
images, multi-camera fusion, a slot tracker), so ``obs["objects"]`` holds the perceived rows (and
``obs["object_rgb"]`` their measured colours) and ``obj_k`` is the perception's name; segmentation masks
are not observed.  Between the planner and the sim:

* a call naming perceived objects is resolved to sim objects by position (what a robot acting on poses
  does; the ROS sim endpoint does the same), and a name the perception does not know fails the step;
* the oracle's calls (demonstrations) are renamed the other way;
* ``obj_k`` in an instruction is renamed to the perception's name for that object (a person pointing).
"""

from __future__ import annotations

import itertools
import re

import numpy as np

from sensors.perception import PerceivedRobot, SlotTracker, object_colors, objects_array, perceive
from skills.robot import Workspace

OBJ = re.compile(r"obj_\d+")


class PerceivedScene:
    """The perception state of one episode: the slot tracker and the name maps to and from the sim."""

    def __init__(self, workspace: Workspace, table: tuple[tuple[float, float], tuple[float, float]],
                 match_tolerance: float = 0.05):
        self.workspace, self.table, self.match_tolerance = workspace, table, match_tolerance
        self.tracker = SlotTracker()

    def reset(self) -> None:
        self.tracker.reset()

    def observe(self, frames: dict, ee: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``frames[cam]`` = (rgb, depth, K, world_from_camera) -> the perceived (16, 12) object rows and
        their measured colours (16, 3)."""
        slots = self.tracker.update(perceive(frames, self.table), ee)
        return objects_array(slots), object_colors(slots)

    def robot(self) -> PerceivedRobot:
        return PerceivedRobot.of(self.tracker, self.workspace)

    def after(self, verb: str, slot: int, holding: bool) -> None:
        """A pick or place ran; ``holding``: whether the gripper holds something now (its finger width, on a
        robot).  A pick that holds marks ``slot`` held; a place that let go (even a dropped or toppled
        block) releases it, so the next view finds it wherever it landed."""
        if verb == "pick" and holding:
            self.tracker.mark_held(slot)
        elif verb == "place" and not holding:
            self.tracker.mark_held(None)

    @staticmethod
    def rename(text: str, names: dict[str, str]) -> str:
        """``text`` with every ``obj_k`` in ``names`` replaced by its value."""
        return OBJ.sub(lambda m: names.get(m.group(), m.group()), text)

    def held_name(self) -> str | None:
        return f"obj_{self.tracker.held + 1}" if self.tracker.held is not None else None

    def to_sim(self, action: str, infos: dict, held: str | None) -> tuple[dict[str, str] | None, str]:
        """Perceived names in ``action`` -> sim names: the nearest sim object of the same kind to the
        perceived position; the held one is the sim's held one.  Returns (the map, "ok") or (None, why)."""
        slots = self.tracker.slots
        names: dict[str, str] = {}
        for name in sorted(set(OBJ.findall(action))):
            k = int(name[4:]) - 1
            if k not in slots:
                known = ", ".join(f"obj_{j + 1}" for j in sorted(slots)) or "none"
                return None, f"there is no {name} (objects: {known})"
            if k == self.tracker.held and held is not None:
                names[name] = held
                continue
            p = np.asarray(slots[k].position, float)
            cands = [n for n in infos if n != held and infos[n].kind == slots[k].kind]
            best = min(cands, key=lambda n: float(np.linalg.norm(infos[n].position - p)), default=None)
            if best is None or float(np.linalg.norm(infos[best].position - p)) > self.match_tolerance:
                return None, f"no object within {self.match_tolerance} m of {name} at {p.round(3).tolist()}"
            names[name] = best
        return names, "ok"

    def from_sim(self, text: str, infos: dict, held: str | None, known: dict[str, str] | None = None) -> str:
        """Sim names in ``text`` -> the perception's names for those objects: pairs of the same kind within
        ``match_tolerance``, nearest first, one to one; the held one is the tracker's held one; ``known``:
        sim -> perceived pairs already decided (a call's objects).  A sim object the perception has not
        found gets a name no perceived object has (its own sim name may be another object's perceived
        name: "place obj_1 on obj_1").  One pass: a renamed name is not renamed again."""
        slots = self.tracker.slots
        names: dict[str, str] = dict(known or {})
        wanted = [n for n in sorted(set(OBJ.findall(text))) if n in infos and n not in names]
        if held in wanted and self.tracker.held is not None:
            names[held] = self.held_name()
        pairs = sorted((float(np.linalg.norm(slots[k].position - infos[n].position)), n, k)
                       for n in wanted if n not in names for k, s in slots.items()
                       if not s.held and s.kind == infos[n].kind)
        used = {int(v[4:]) - 1 for v in names.values()}
        for d, n, k in pairs:
            if d <= self.match_tolerance and n not in names and k not in used:
                names[n] = f"obj_{k + 1}"
                used.add(k)
        unseen = (k for k in itertools.count() if k not in slots and k not in used)
        for n in wanted:
            if n not in names:  # the perception has not found it: a name that resolves to nothing
                names[n] = f"obj_{next(unseen) + 1}"
        return self.rename(text, names)
