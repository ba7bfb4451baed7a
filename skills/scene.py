"""Geometry shared by skills, task predicates and oracles: what rests on what,
table regions (corners, sides), free spots.  Pure functions of ``ObjectInfo``."""

from __future__ import annotations

import numpy as np

from skills.robot import ObjectInfo, Workspace

TABLE = "table"
AIR = "air"  # held, falling or tipped over
REGION = 0.12  # depth of a corner / side region (m)
NEAR = 0.08  # "next to": centre distance of two blocks (m)
EDGE_MARGIN = 0.05  # push targets stop this far inside the workspace


def support_of(name: str, objects: dict[str, ObjectInfo]) -> str:
    """What ``name`` rests on: another object's name, "table", or "air"."""
    o = objects[name]
    if o.kind == "bowl":
        return TABLE
    best, best_dz = AIR, np.inf
    for other in objects.values():
        if other.name == name:
            continue
        d_xy = float(np.linalg.norm(o.position[:2] - other.position[:2]))
        dz = float(o.position[2] - other.position[2])
        if other.kind == "block":
            expected = (o.height + other.height) / 2
            if d_xy < 0.7 * other.size and abs(dz - expected) < 0.35 * o.height and dz < best_dz:
                best, best_dz = other.name, dz
        elif d_xy < other.size / 2 and o.position[2] < other.height + o.height / 2 + 0.01 and best == AIR:
            # Inside the bowl's footprint and below its rim: in the bowl (unless on a block in it).
            best, best_dz = other.name, dz
    if best != AIR:
        return best
    return TABLE if o.position[2] < o.height / 2 + 0.01 else AIR


def supports(objects: dict[str, ObjectInfo]) -> dict[str, str]:
    return {n: support_of(n, objects) for n in objects}


def on_top_of(name: str, objects: dict[str, ObjectInfo]) -> list[str]:
    """Objects resting directly on ``name``."""
    return sorted(n for n, s in supports(objects).items() if s == name)


def stack_above(name: str, objects: dict[str, ObjectInfo]) -> list[str]:
    """Everything stacked above ``name``, top first (the order to unstack)."""
    sup = supports(objects)
    chain, cur = [], name
    while True:
        above = [n for n, s in sup.items() if s == cur]
        if not above:
            return chain[::-1]
        cur = above[0]
        chain.append(cur)


def corner_point(corner: str, ws: Workspace) -> np.ndarray:
    vert, horiz = corner.split()
    x = ws.x[1] - EDGE_MARGIN if vert == "top" else ws.x[0] + EDGE_MARGIN
    y = ws.y[1] - EDGE_MARGIN if horiz == "left" else ws.y[0] + EDGE_MARGIN
    return np.array([x, y])


def in_corner(xy: np.ndarray, corner: str, ws: Workspace) -> bool:
    vert, horiz = corner.split()
    ok_x = xy[0] >= ws.x[1] - REGION if vert == "top" else xy[0] <= ws.x[0] + REGION
    ok_y = xy[1] >= ws.y[1] - REGION if horiz == "left" else xy[1] <= ws.y[0] + REGION
    return bool(ok_x and ok_y)


def side_point(side: str, xy: np.ndarray, ws: Workspace) -> np.ndarray:
    x, y = float(xy[0]), float(xy[1])
    if side == "left":
        y = ws.y[1] - EDGE_MARGIN
    elif side == "right":
        y = ws.y[0] + EDGE_MARGIN
    elif side == "top":
        x = ws.x[1] - EDGE_MARGIN
    else:
        x = ws.x[0] + EDGE_MARGIN
    return np.array([x, y])


def in_side(xy: np.ndarray, side: str, ws: Workspace) -> bool:
    return bool(
        {
            "left": xy[1] >= ws.y[1] - REGION,
            "right": xy[1] <= ws.y[0] + REGION,
            "top": xy[0] >= ws.x[1] - REGION,
            "bottom": xy[0] <= ws.x[0] + REGION,
        }[side]
    )


def near(a: ObjectInfo, b: ObjectInfo) -> bool:
    return float(np.linalg.norm(a.position[:2] - b.position[:2])) <= NEAR


DIRECTION_VECTORS = {
    "up": np.array([1.0, 0.0]),
    "down": np.array([-1.0, 0.0]),
    "left": np.array([0.0, 1.0]),
    "right": np.array([0.0, -1.0]),
}


def clearance(xy: np.ndarray, obj: ObjectInfo) -> float:
    """Free distance between point ``xy`` and the footprint of ``obj`` (approximate: circle)."""
    return float(np.linalg.norm(xy - obj.position[:2])) - obj.size * 0.71


def free_spot(
    objects: dict[str, ObjectInfo],
    ws: Workspace,
    near_xy: np.ndarray,
    radius: float,
    ignore: tuple[str, ...] = (),
) -> np.ndarray | None:
    """The free table point closest to ``near_xy`` keeping ``radius`` from every object."""
    xs = np.arange(ws.x[0] + 0.05, ws.x[1] - 0.05 + 1e-9, 0.02)
    ys = np.arange(ws.y[0] + 0.05, ws.y[1] - 0.05 + 1e-9, 0.02)
    grid = np.stack(np.meshgrid(xs, ys, indexing="ij"), -1).reshape(-1, 2)  # (G, 2)
    ok = np.ones(len(grid), dtype=bool)
    for o in objects.values():
        if o.name in ignore:
            continue
        ok &= np.linalg.norm(grid - o.position[:2], axis=1) - o.size * 0.71 >= radius
    if not ok.any():
        return None
    cand = grid[ok]
    return cand[np.argmin(np.linalg.norm(cand - near_xy, axis=1))]
