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

    def after(self, verb: str, slot: int | None, ok: bool) -> None:
        """A skill ran: the gripper's content changed after a pick (``slot``) or a place that worked."""
        if ok and verb == "pick":
            self.tracker.mark_held(slot)
        elif ok and verb == "place":
            self.tracker.mark_held(None)

    def to_sim(self, action: str, infos: dict, held: str | None) -> tuple[str | None, str]:
        """Perceived names -> sim names (nearest sim object to the perceived position; the held one is the
        sim's held one).  Returns (sim action, "ok") or (None, why)."""
        slots = self.tracker.slots
        names: dict[str, str] = {}
        for name in set(OBJ.findall(action)):
            k = int(name[4:]) - 1
            if k not in slots:
                known = ", ".join(f"obj_{j + 1}" for j in sorted(slots)) or "none"
                return None, f"there is no {name} (objects: {known})"
            if k == self.tracker.held and held is not None:
                names[name] = held
                continue
            p = np.asarray(slots[k].position, float)
            cands = [n for n in infos if n != held]
            best = min(cands, key=lambda n: float(np.linalg.norm(infos[n].position - p)), default=None)
            if best is None or float(np.linalg.norm(infos[best].position - p)) > self.match_tolerance:
                return None, f"no object within {self.match_tolerance} m of {name} at {p.round(3).tolist()}"
            names[name] = best
        return OBJ.sub(lambda m: names.get(m.group(), m.group()), action), "ok"

    def from_sim(self, text: str, infos: dict, held: str | None) -> str:
        """Sim names in ``text`` -> the perception's names for those objects (nearest perceived object of the
        same kind; the held one is the tracker's held one).  A sim object nobody perceives keeps its name."""
        slots = self.tracker.slots
        names: dict[str, str] = {}
        for name in set(OBJ.findall(text)):
            if name not in infos:
                continue
            if name == held and self.tracker.held is not None:
                names[name] = f"obj_{self.tracker.held + 1}"
                continue
            o = infos[name]
            cands = [k for k, s in slots.items() if not s.held and s.kind == o.kind]
            if cands:
                k = min(cands, key=lambda k: float(np.linalg.norm(slots[k].position - o.position)))
                names[name] = f"obj_{k + 1}"
        return OBJ.sub(lambda m: names.get(m.group(), m.group()), text)
