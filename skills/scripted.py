"""Scripted pick / place / push through the ``Robot`` protocol (ravens-style
primitives: motions are straight end-effector lines, grasps are real contacts)."""

from __future__ import annotations

import math

import numpy as np

from skills import scene
from skills.calls import Pick, Place, Push
from skills.library import SkillImpossible, register_skill
from skills.robot import ObjectInfo, Robot

TRAVEL_Z = 0.26  # clear of a 4-block stack with a block in hand
PUSH_Z = 0.022  # fingertip height while pushing (block mid-height)
PUSH_SPEED = 0.15  # m/s: slow enough that blocks do not slide on after contact


def _wrap90(a: float) -> float:
    """Map an angle to [-45°, 45°): blocks look the same every 90°."""
    return (a + math.pi / 4) % (math.pi / 2) - math.pi / 4


REACH_MARGIN = 0.15  # m beyond the workspace an object can still be reached (a block dropped by the base)


def _get(robot: Robot, name: str) -> ObjectInfo:
    objs = robot.objects()
    if name not in objs:
        raise SkillImpossible(f"there is no {name} (objects: {', '.join(sorted(objs))})")
    o = objs[name]
    if o.position[2] < -0.03 or not robot.workspace.contains(o.position[:2], -REACH_MARGIN):
        # e.g. knocked off the table's edge: the arm would chase a falling body
        raise SkillImpossible(f"{name} is out of reach at {np.round(o.position, 2).tolist()}")
    return o


def _clear(robot: Robot, name: str) -> None:
    above = scene.on_top_of(name, robot.objects())
    if above:
        raise SkillImpossible(f"{name} has {', '.join(above)} on it")


def _fault(robot: Robot) -> str | None:
    """The fault injected into this call (``sim.faults``; a robot without the attribute has none)."""
    fault = getattr(robot, "fault", None)
    return fault.kind if fault is not None else None


def _travel(robot: Robot, xy: np.ndarray, yaw: float) -> bool:
    """Lift, cross over at travel height, arrive above ``xy``."""
    here = robot.ee_position()
    ok = robot.move_ee(np.array([here[0], here[1], TRAVEL_Z]), yaw)
    return robot.move_ee(np.array([xy[0], xy[1], TRAVEL_Z]), yaw) and ok


@register_skill("pick", "scripted")
class ScriptedPick:
    def check(self, call: Pick, robot: Robot) -> None:
        obj = _get(robot, call.obj)
        if robot.held() is not None:
            raise SkillImpossible(f"already holding {robot.held()}")
        if obj.kind != "block":
            raise SkillImpossible(f"{call.obj} is a {obj.kind}; only blocks can be picked")
        _clear(robot, call.obj)

    def execute(self, call: Pick, robot: Robot) -> bool:
        obj = robot.objects()[call.obj]
        yaw = _wrap90(obj.yaw)
        robot.release()
        _travel(robot, obj.position[:2], yaw)
        grasp_z = obj.position[2] + obj.height / 2 - 0.015  # fingertips 1.5 cm below the top face
        robot.move_ee(np.array([*obj.position[:2], grasp_z]), yaw, speed=0.25)
        robot.grasp(call.obj)
        if _fault(robot) == "slip":  # the grasp slips as the arm lifts: the block falls back
            robot.move_ee(np.array([*obj.position[:2], grasp_z + 0.03]), yaw)
            robot.release()
            robot.settle(0.3)
        robot.move_ee(np.array([*obj.position[:2], TRAVEL_Z]), yaw)
        return robot.held() == call.obj


@register_skill("place", "scripted")
class ScriptedPlace:
    def check(self, call: Place, robot: Robot) -> None:
        _get(robot, call.obj)
        if robot.held() != call.obj:
            held = robot.held()
            raise SkillImpossible(f"not holding {call.obj} (holding {held or 'nothing'})")
        if call.target is None:
            if call.at is not None and not robot.workspace.contains(np.array(call.at), 0.02):
                raise SkillImpossible(f"{call.at} is outside the workspace {robot.workspace}")
            return
        tgt = _get(robot, call.target)
        if tgt.kind == "bowl" and not call.in_bowl:
            raise SkillImpossible(f"{call.target} is a bowl: say 'place {call.obj} in {call.target}'")
        if tgt.kind == "block" and call.in_bowl:
            raise SkillImpossible(f"{call.target} is a block: say 'place {call.obj} on {call.target}'")
        if tgt.kind == "block":
            _clear(robot, call.target)

    def _goal(self, call: Place, robot: Robot) -> tuple[np.ndarray, float]:
        """Where the held block's centre should end up, and the target yaw."""
        objs = robot.objects()
        held = objs[call.obj]
        h = held.height
        if call.target is None:
            if call.at is not None:
                xy = np.array(call.at)
            else:
                xy = scene.free_spot(objs, robot.workspace, robot.ee_position()[:2], 0.045, ignore=(call.obj,))
                if xy is None:
                    raise SkillImpossible("no free spot on the table")
            return np.array([*xy, h / 2 + 0.004]), held.yaw
        tgt = objs[call.target]
        if tgt.kind == "block":
            return np.array([*tgt.position[:2], tgt.position[2] + tgt.height / 2 + h / 2 + 0.004]), tgt.yaw
        inside = [o for o in objs.values() if o.name != call.obj and scene.support_of(o.name, objs) == tgt.name]
        floor = max([o.position[2] + o.height / 2 for o in inside], default=0.006)
        return np.array([*tgt.position[:2], floor + h / 2 + 0.006]), tgt.yaw

    def execute(self, call: Place, robot: Robot) -> bool:
        try:
            goal, goal_yaw = self._goal(call, robot)
        except SkillImpossible:
            return False
        held = robot.objects()[call.obj]
        ee = robot.ee_position()
        offset = ee - held.position  # block hangs at a fixed offset from the fingertips
        yaw = _wrap90(robot.ee_yaw() + _wrap90(goal_yaw - held.yaw))  # turn the block to match
        fault = getattr(robot, "fault", None)
        if _fault(robot) == "drop":  # the block drops halfway there and lands where it falls
            _travel(robot, (ee[:2] + goal[:2] + offset[:2]) / 2, yaw)
            robot.release()
            robot.settle(0.5)
            return self._placed(call, robot, goal)
        if _fault(robot) == "topple" and call.target is not None:  # set down off-centre: it falls off
            goal = np.array([*(goal[:2] + fault.offset()), goal[2]])
        _travel(robot, goal[:2] + offset[:2], yaw)
        robot.move_ee(goal + offset, yaw, speed=0.2)
        robot.release()
        robot.settle(0.15)
        robot.move_ee(np.array([*robot.ee_position()[:2], TRAVEL_Z]), yaw)
        return self._placed(call, robot, goal)

    @staticmethod
    def _placed(call: Place, robot: Robot, goal: np.ndarray) -> bool:
        """On / in the target, or on the table within 3 cm of the spot."""
        objs = robot.objects()
        if call.target is not None:
            return scene.support_of(call.obj, objs) == call.target
        ok = scene.support_of(call.obj, objs) == scene.TABLE
        return ok and float(np.linalg.norm(objs[call.obj].position[:2] - goal[:2])) < 0.03


@register_skill("push", "scripted")
class ScriptedPush:
    max_strokes = 6
    tolerance = 0.015

    def check(self, call: Push, robot: Robot) -> None:
        obj = _get(robot, call.obj)
        if robot.held() is not None:
            raise SkillImpossible(f"holding {robot.held()}; put it down before pushing")
        if obj.kind != "block":
            raise SkillImpossible(f"{call.obj} is a {obj.kind}; only blocks can be pushed")
        if call.to_obj is not None:
            _get(robot, call.to_obj)
        if scene.support_of(call.obj, robot.objects()) != scene.TABLE:
            raise SkillImpossible(f"{call.obj} is not on the table")
        _clear(robot, call.obj)

    def goal(self, call: Push, robot: Robot, start: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(next stroke target, final spot).  The final spot is the cheapest one that satisfies the call;
        when every straight corridor to it is blocked by other blocks, the next target is a detour point."""
        ws = robot.workspace
        objs = robot.objects()
        a = objs[call.obj].position[:2]
        if call.direction:
            g = self._clip(start + 0.10 * scene.DIRECTION_VECTORS[call.direction], ws)
            return g, g
        if call.corner:
            anchor = scene.corner_point(call.corner, ws)
            cands = [anchor + d for d in _GRID if scene.in_corner(anchor + d, call.corner, ws)]
        elif call.side:
            anchor = scene.side_point(call.side, a, ws)
            along = np.array([1.0, 0.0]) if call.side in ("left", "right") else np.array([0.0, 1.0])
            cands = [anchor + t * along for t in np.arange(-0.15, 0.151, 0.025)]
        else:
            anchor = objs[call.to_obj].position[:2]
            cands = [anchor + 0.055 * np.array([np.cos(t), np.sin(t)])
                     for t in np.linspace(0, 2 * np.pi, 16, endpoint=False)]
        cands = [self._clip(c, ws) for c in cands]
        others = [o.position[:2] for o in objs.values() if o.name != call.obj and o.kind == "block"]
        taken = lambda g: sum(float(np.linalg.norm(q - g)) < 0.05 for q in others)
        scored = sorted((_leg_cost(a, g, others) + taken(g) + 0.5 * float(np.linalg.norm(g - anchor)), i)
                        for i, g in enumerate(cands))
        best_cost, best = scored[0][0], cands[scored[0][1]]
        if best_cost < 1.0:
            return best, best
        # Every straight push is obstructed: try one detour point on a coarse table grid.
        detour = None
        for w in _TABLE_GRID(ws):
            if any(float(np.linalg.norm(q - w)) < 0.06 for q in others):
                continue
            for _, i in scored[:6]:
                g = cands[i]
                cost = (_leg_cost(a, w, others) + _leg_cost(w, g, others) + taken(g)
                        + 0.5 * float(np.linalg.norm(g - anchor)))
                if cost < best_cost:
                    best_cost, best, detour = cost, g, w
        return (detour if detour is not None else best), best

    @staticmethod
    def _clip(g: np.ndarray, ws) -> np.ndarray:
        return np.clip(g, [ws.x[0] + 0.03, ws.y[0] + 0.03], [ws.x[1] - 0.03, ws.y[1] - 0.03])

    def done(self, call: Push, robot: Robot, start: np.ndarray) -> bool:
        objs = robot.objects()
        xy = objs[call.obj].position[:2]
        if call.direction:
            return float((xy - start) @ scene.DIRECTION_VECTORS[call.direction]) >= 0.07
        if call.corner:
            return scene.in_corner(xy, call.corner, robot.workspace)
        if call.side:
            return scene.in_side(xy, call.side, robot.workspace)
        return scene.near(objs[call.obj], objs[call.to_obj])

    def execute(self, call: Push, robot: Robot) -> bool:
        start = robot.objects()[call.obj].position[:2].copy()
        for _ in range(self.max_strokes):
            target, final = self.goal(call, robot, start)  # re-chosen each stroke: blocks get nudged
            xy = robot.objects()[call.obj].position[:2]
            if self.done(call, robot, start) and float(np.linalg.norm(final - xy)) < 0.04:
                break
            if float(np.linalg.norm(target - xy)) < self.tolerance:
                target = final  # at the detour point (or the goal): head for the goal
            d = target - xy
            dist = float(np.linalg.norm(d))
            if dist < self.tolerance:
                break
            self._stroke(robot, call.obj, d / dist, dist)
        return self.done(call, robot, start)

    def _stroke(self, robot: Robot, name: str, u: np.ndarray, dist: float) -> None:
        """Drop the closed gripper behind the block and push it ``dist`` along ``u``."""
        obj = robot.objects()[name]
        yaw = _wrap90(math.atan2(u[1], u[0]) + math.pi / 2)  # fingers side by side across the stroke
        behind = obj.position[:2] - u * (obj.size / 2 + 0.025)
        end = obj.position[:2] + u * (dist - obj.size / 2 - 0.012)
        _travel(robot, behind, yaw)
        robot.close_gripper()
        robot.move_ee(np.array([*behind, PUSH_Z]), yaw, speed=0.3)
        robot.move_ee(np.array([*end, PUSH_Z]), yaw, speed=PUSH_SPEED)
        robot.move_ee(np.array([*end, TRAVEL_Z]), yaw)


_GRID = [np.array([dx, dy]) for dx in np.arange(-0.10, 0.101, 0.025) for dy in np.arange(-0.10, 0.101, 0.025)]


def _TABLE_GRID(ws) -> list[np.ndarray]:
    return [np.array([x, y]) for x in np.arange(ws.x[0] + 0.05, ws.x[1] - 0.049, 0.05)
            for y in np.arange(ws.y[0] + 0.05, ws.y[1] - 0.049, 0.05)]


def _leg_cost(a: np.ndarray, g: np.ndarray, others: list[np.ndarray]) -> float:
    """Length of a straight push from a to g, plus 1 per block in its corridor or where the pusher drops."""
    d = g - a
    n = float(np.linalg.norm(d))
    pusher = a - d / max(n, 1e-6) * 0.045
    hits = sum(_seg_dist(q, a, g) < 0.045 for q in others)
    hits += sum(float(np.linalg.norm(q - pusher)) < 0.045 for q in others)
    return n + hits


def _seg_dist(q: np.ndarray, a: np.ndarray, b: np.ndarray) -> float:
    """Distance from point q to segment ab (2D)."""
    d = b - a
    t = float(np.clip((q - a) @ d / max(float(d @ d), 1e-12), 0.0, 1.0))
    return float(np.linalg.norm(q - (a + t * d)))
