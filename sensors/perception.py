"""From RGB-D images to the sim's object-centric observation, with no ground truth: the perception that
both a robot (``embodied_lm.ros``) and the sim observed like one (``EnvConfig.perception``) plan from.

``sensors.segmentation.segment_objects`` gives one cluster per connected blob seen by ONE camera.  A
robot needs more than that for the ``objects`` (16, 12) rows the sim provides, so this module fuses
the cameras (all pure numpy, unit-testable):

* a downward-looking camera (its optical axis points most steeply down) anchors each block's x, y and
  the height of its top face; side cameras add what it cannot see: the blocks under the top one of a
  tower (split into 4 cm layers, each coloured from the side view) and bowls (clusters lower than a
  block, i.e. the 3 cm walls and rims, merged per bowl);
* a cluster wider than one block is split: rim vs. the block inside a bowl (by height), touching blocks
  (by colour, then by footprint area), a tower's top face vs. its sides seen in perspective;
* colours are named by the closest ``skills.vocab.COLORS`` entry up to a brightness scale (shaded faces
  are the same colour, darker);
* a persistent slot per object over an episode (``SlotTracker``): obj_k keeps its name from step to
  step, the block in the gripper keeps the name it was picked with, and an object out of view for a
  while (hidden, toppled) gets its old name back when it is seen again;
* the support slot (what each object rests on) comes from geometry through ``skills.scene``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np

from skills import scene, vocab
from skills.robot import ObjectInfo, Workspace
from skills.vocab import BLOCK_SIZE, COLOR_NAMES, Col

_RGB = np.array([vocab.COLORS[c][:3] for c in COLOR_NAMES], np.float64)  # (C, 3)
LOW_TOP = 0.035  # a cluster whose top is below this is (a piece of) a bowl: 3 cm walls; block tops are at 4 cm
MIN_FACE_POINTS = 15  # a top-view block needs this many points on its top face
MIN_PART_POINTS = 15  # fewer are stray pixels at an edge (mixed depth): neither a block nor a bowl wall
SPLIT_EXTENT = 0.064  # a top-view cluster wider than one block (diagonal 5.7 cm) may be touching blocks
BOWL_MERGE = 0.14  # wall pieces whose union box fits in this square are one bowl
MATCH_XY = 0.035  # side-view cluster <-> top-view cluster association radius (m)
HELD_OFFSET = np.array([0.0, 0.0, -0.005])  # held block centre relative to the fingertip point


@dataclass(frozen=True)
class PerceivedObject:
    """One object as the robot's cameras see it (world frame, metres)."""

    kind: str  # "block" | "bowl"
    color: str
    position: np.ndarray  # (3,) centre (bowls: base centre, z = 0 on the table)
    size: float
    height: float
    held: bool = False
    rgb: tuple[float, float, float] | None = None  # measured mean colour, 0..1 (None: the named colour's)


def color_indices(rgb: np.ndarray) -> np.ndarray:
    """(N, 3) colours in 0..1 -> (N,) index of the closest named colour allowing a brightness scale
    (shading): argmin_c min_s |s * c - rgb|."""
    m = np.asarray(rgb, np.float64).reshape(-1, 3)
    s = np.clip(m @ _RGB.T / np.einsum("ij,ij->i", _RGB, _RGB), 0.25, 1.4)  # (N, C) best scale per colour
    resid = np.linalg.norm(s[:, :, None] * _RGB[None] - m[:, None], axis=-1)  # (N, C)
    return np.argmin(resid, axis=1)


def color_name(rgb: Sequence[float]) -> str:
    """The closest ``skills.vocab.COLORS`` name to one mean colour (see ``color_indices``)."""
    return COLOR_NAMES[int(color_indices(np.asarray(rgb))[0])]


def looks_down(world_from_camera: np.ndarray) -> float:
    """How steeply a camera looks down: -z of its optical axis in the world (1 = straight down)."""
    return float(-np.asarray(world_from_camera)[2, 2])


def _top(d) -> float:
    return float(np.percentile(d.points[:, 2], 98))


def _is_wall(d) -> bool:
    return _top(d) < LOW_TOP


@dataclass
class _Cluster:  # a (piece of a) detection: the fields fusion reads
    points: np.ndarray
    colors: np.ndarray

    @property
    def centroid(self) -> np.ndarray:
        return self.points.mean(0)

    @property
    def mean_rgb(self) -> np.ndarray:
        return self.colors.mean(0)


def _split(d, by_area: bool, min_share: float = 0.15) -> list[_Cluster]:
    """A cluster wider than one block is several things touching: a block in a bowl (its rim is lower
    than a block's top), blocks of different colours, or (``by_area``, for a top view) blocks of one
    colour.  Returns the parts; parts whose top is below ``LOW_TOP`` are bowl walls."""
    whole = _Cluster(np.asarray(d.points), np.asarray(d.colors))
    ext = whole.points.max(0) - whole.points.min(0)
    if max(float(ext[0]), float(ext[1])) <= SPLIT_EXTENT or len(whole.points) < 20:
        return [whole]
    high = whole.points[:, 2] >= LOW_TOP
    out = []
    # Low points away from every high point are a bowl's rim/walls; low points right under a high one
    # are the lower sides of blocks (touching blocks must not make a phantom bowl).
    cell = 0.005
    ij = np.floor(whole.points[:, :2] / cell).astype(np.int64)
    ring = range(-2, 3)
    near_high = {(int(a) + da, int(b) + db) for a, b in ij[high] for da in ring for db in ring}
    rim = ~high & np.array([(int(a), int(b)) not in near_high for a, b in ij], bool)
    low = _Cluster(whole.points[rim], whole.colors[rim])
    if len(low.points) >= 10 and np.ptp(low.points[:, :2], axis=0).max() > 0.05:
        out.append(low)
    if high.sum() < 10:
        return out or [whole]
    faces = _top_faces(_Cluster(whole.points[high], whole.colors[high])) if by_area else \
        [_Cluster(whole.points[high], whole.colors[high])]
    for face in faces:
        names = color_indices(face.colors)
        parts = [_Cluster(face.points[names == n], face.colors[names == n]) for n in np.unique(names)
                 if (names == n).mean() >= min_share] or [face]
        out += [q for part in parts for q in (_split_by_area(part) if by_area else [part])]
    return out or [whole]


def _top_faces(c: _Cluster, tol: float = 0.008, cell: float = 0.005) -> list[_Cluster]:
    """Seen from above, keep only horizontal faces at block-top heights (4 cm steps), highest first,
    dropping points under a higher face (a tower's sides seen in perspective)."""
    z = c.points[:, 2]
    level = np.round(z / BLOCK_SIZE).astype(int)
    on_face = (np.abs(z - level * BLOCK_SIZE) < tol) & (level >= 1)
    ij = np.floor(c.points[:, :2] / cell).astype(np.int64)
    covered: set[tuple[int, int]] = set()
    out = []
    for lv in sorted(set(level[on_face].tolist()), reverse=True):
        at = on_face & (level == lv)
        free = np.array([(int(a), int(b)) not in covered for a, b in ij], bool)
        sel = at & free
        if sel.sum() >= 10:
            out.append(_Cluster(c.points[sel], c.colors[sel]))
        for a, b in {(int(a), int(b)) for a, b in ij[at]}:  # dilate by 2 cells (1 cm)
            covered.update((a + da, b + db) for da in range(-2, 3) for db in range(-2, 3))
    return out or [c]


def _split_by_area(c: _Cluster, cell: float = 0.005) -> list[_Cluster]:
    """Touching blocks of one colour: as many k-means parts (in x, y) as block footprints fit its area."""
    xy = c.points[:, :2].astype(np.float64)
    cells = np.unique(np.floor(xy / cell).astype(np.int64), axis=0)
    n = int(round(len(cells) * cell * cell / (BLOCK_SIZE * BLOCK_SIZE)))
    if n <= 1 or len(xy) < 10 * n:
        return [c]
    centres = [xy[0]]
    for _ in range(n - 1):  # farthest-point initialisation, then Lloyd iterations (deterministic)
        d = np.min(np.linalg.norm(xy[:, None] - np.array(centres)[None], axis=-1), axis=1)
        centres.append(xy[int(np.argmax(d))])
    centres = np.array(centres)
    for _ in range(10):
        lab = np.argmin(np.linalg.norm(xy[:, None] - centres[None], axis=-1), axis=1)
        centres = np.array([xy[lab == k].mean(0) if np.any(lab == k) else centres[k] for k in range(n)])
    return [_Cluster(c.points[lab == k], c.colors[lab == k]) for k in range(n) if np.sum(lab == k) >= 5]


def _bowls(walls: list) -> list[PerceivedObject]:
    """Merge wall pieces (single linkage on the union box) into bowls."""
    groups: list[list] = []  # each: [lo, hi, members]
    for d in walls:
        merged = [d.points.min(0), d.points.max(0), [d]]
        rest = []
        for g in groups:
            ulo, uhi = np.minimum(g[0], merged[0]), np.maximum(g[1], merged[1])
            if max(uhi[0] - ulo[0], uhi[1] - ulo[1]) <= BOWL_MERGE:
                merged = [ulo, uhi, g[2] + merged[2]]
            else:
                rest.append(g)
        groups = rest + [merged]
    out = []
    for lo, hi, members in groups:
        cols = np.concatenate([m.colors for m in members])
        centre = (lo[:2] + hi[:2]) / 2
        color = color_name(cols.mean(0))
        out.append(PerceivedObject("bowl", color, np.array([*centre, 0.0]), vocab.BOWL_SIZE, vocab.BOWL_HEIGHT,
                                   rgb=_rgb(cols.mean(0))))
    return out


def _rgb(v) -> tuple[float, float, float]:
    return tuple(float(c) for c in np.clip(np.asarray(v, np.float64).reshape(3), 0.0, 1.0))


def fuse_detections(dets_by_camera: Mapping[str, Sequence],
                    down_score: Mapping[str, float]) -> list[PerceivedObject]:
    """Fuse per-camera detections (``sensors.segmentation.Detection``) into objects.

    ``down_score[cam]`` = ``looks_down(world_from_camera)``; the camera with the highest score anchors
    the blocks' x, y (if it looks down at all, score > 0.5); the others only add what it cannot see.
    """
    cams = sorted(dets_by_camera, key=lambda c: -down_score.get(c, 0.0))
    top = cams[0] if cams and down_score.get(cams[0], 0.0) > 0.5 else None
    walls, anchors, sides = [], [], []
    for cam in cams:
        for d in dets_by_camera[cam]:
            for part in _split(d, by_area=cam == top):
                if len(part.points) < MIN_PART_POINTS:
                    continue
                if _is_wall(part):
                    walls.append(part)
                elif cam != top:
                    sides.append(part)
                elif np.sum(part.points[:, 2] > _top(part) - 0.008) >= MIN_FACE_POINTS:
                    anchors.append(part)  # (a sliver of a tower's side seen from above has no top face)
    bowls = _bowls(walls)
    # Side-view clusters: attach to the nearest top-view cluster, else they become anchors themselves.
    attached: list[list] = [[] for _ in anchors]
    for d in sides:
        if anchors:
            dist = [float(np.linalg.norm(a.centroid[:2] - d.centroid[:2])) for a in anchors]
            j = int(np.argmin(dist))
            if dist[j] <= MATCH_XY:
                attached[j].append(d)
                continue
        anchors.append(d)
        attached.append([])
    blocks: list[PerceivedObject] = []
    for a, extra in zip(anchors, attached, strict=True):
        xy = a.centroid[:2].astype(np.float64)
        top_z = max(_top(d) for d in [a, *extra])
        base = 0.0
        for b in bowls:
            if np.all(np.abs(xy - b.position[:2]) < vocab.BOWL_SIZE / 2):
                base = 0.006  # bowl floor
        n = max(1, int(round((top_z - base) / BLOCK_SIZE)))
        side_pts = np.concatenate([d.points for d in extra]) if extra else np.zeros((0, 3), np.float32)
        side_col = np.concatenate([d.colors for d in extra]) if extra else np.zeros((0, 3), np.float32)
        for i in range(n):  # i = 0 is the top block
            zc = top_z - BLOCK_SIZE / 2 - i * BLOCK_SIZE
            if i == 0:
                face = a.points[:, 2] > top_z - 0.008
                rgb = a.colors[face].mean(0) if face.sum() >= 3 else a.mean_rgb
            else:
                band = np.abs(side_pts[:, 2] - zc) < 0.012
                fallback = side_col.mean(0) if len(side_col) else a.mean_rgb
                rgb = side_col[band].mean(0) if band.sum() >= 3 else fallback
            blocks.append(PerceivedObject("block", color_name(rgb), np.array([*xy, zc]), BLOCK_SIZE, BLOCK_SIZE,
                                          rgb=_rgb(rgb)))
    return bowls + blocks


def perceive(frames: Mapping[str, tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]],
             workspace: tuple[tuple[float, float], tuple[float, float]],
             segmentation: Mapping | None = None) -> list[PerceivedObject]:
    """Objects in one set of views: ``frames[cam]`` = (rgb (H, W, 3) uint8, depth (H, W) metres, NaN or 0 =
    no return, K (3, 3), world_from_camera (4, 4)); ``workspace`` the table's (x, y) ranges;
    ``segmentation`` extra ``segment_objects`` kwargs."""
    from sensors.segmentation import segment_objects

    dets, down = {}, {}
    for cam, (rgb, depth, K, T) in frames.items():
        kw = {"workspace": workspace} | dict(segmentation or {})
        dets[cam] = segment_objects(rgb, np.nan_to_num(depth, nan=0.0), K, T, **kw)
        down[cam] = looks_down(T)
    return fuse_detections(dets, down)


class PerceivedRobot:
    """``skills.robot.Robot`` over a perceived scene: enough for ``SkillLibrary.check`` (valid actions)."""

    def __init__(self, objects: dict[str, ObjectInfo], held: str | None, workspace: Workspace):
        self._objects, self._held, self.workspace = objects, held, workspace

    def objects(self) -> dict[str, ObjectInfo]:
        return self._objects

    def held(self) -> str | None:
        return self._held

    def __getattr__(self, name: str):  # motion is the robot's business, not the checker's
        raise NotImplementedError(f"PerceivedRobot.{name}: only checks are possible off the robot")

    @classmethod
    def of(cls, tracker: SlotTracker, workspace: Workspace) -> PerceivedRobot:
        """The tracker's scene: its objects on the table and the one it believes held."""
        slots = tracker.slots
        infos = object_infos({k: o for k, o in slots.items() if not o.held})
        held = f"obj_{tracker.held + 1}" if tracker.held is not None and tracker.held in slots else None
        if held is not None:
            h = slots[tracker.held]
            infos[held] = ObjectInfo(held, h.kind, h.color, np.asarray(h.position, float), 0.0, h.size, h.height)
        return cls(infos, held, workspace)


def object_infos(slots: Mapping[int, PerceivedObject]) -> dict[str, ObjectInfo]:
    """``skills`` view of the perceived objects: ``obj_{slot+1}`` -> ObjectInfo (yaw unknown: 0)."""
    return {f"obj_{k + 1}": ObjectInfo(f"obj_{k + 1}", o.kind, o.color, np.asarray(o.position, float), 0.0,
                                       o.size, o.height) for k, o in slots.items()}


def objects_array(slots: Mapping[int, PerceivedObject]) -> np.ndarray:
    """(MAX_OBJECTS, OBJECT_FEATURES) float32 object rows (``skills.vocab.Col``), as the sim gives them:
    quaternion identity (yaw is not estimated), support slot 0 table, k obj_k, -1 air/held."""
    arr = np.zeros((vocab.MAX_OBJECTS, vocab.OBJECT_FEATURES), np.float32)
    infos = object_infos({k: o for k, o in slots.items() if not o.held})
    sup = scene.supports(infos) if infos else {}
    for k, o in slots.items():
        on = "gripper" if o.held else sup[f"obj_{k + 1}"]
        support = 0 if on == scene.TABLE else -1 if on in (scene.AIR, "gripper") else int(on.split("_")[1])
        row = arr[k]
        row[Col.PRESENT], row[Col.KIND], row[Col.COLOR] = 1, vocab.KINDS.index(o.kind), COLOR_NAMES.index(o.color)
        row[Col.XYZ], row[Col.QUAT], row[Col.SUPPORT], row[Col.SIZE] = o.position, (0, 0, 0, 1), support, o.size
    return arr


def object_colors(slots: Mapping[int, PerceivedObject]) -> np.ndarray:
    """(MAX_OBJECTS, 3) float32: each perceived object's measured mean colour (0..1), row k = obj_{k+1}
    (``obs["object_rgb"]``: what an encoder that does not trust the colour names reads)."""
    arr = np.zeros((vocab.MAX_OBJECTS, 3), np.float32)
    for k, o in slots.items():
        arr[k] = o.rgb if o.rgb is not None else vocab.COLORS[o.color][:3]
    return arr


class SlotTracker:
    """Persistent obj_k names within an episode: each new view is matched to the previous one.  An object
    the view loses (hidden, toppled out of a segment) is remembered: when one of its kind and colour shows
    up again within ``recall`` of where it was last seen, it gets its old name back, not a new one."""

    def __init__(self, max_objects: int = vocab.MAX_OBJECTS, radius: float = 0.06, recall: float = 0.3):
        self.max_objects = max_objects
        self.radius = radius
        self.recall = recall
        self.reset()

    def reset(self) -> None:
        self.slots: dict[int, PerceivedObject] = {}
        self.used: set[int] = set()
        self.held: int | None = None
        self.released: PerceivedObject | None = None  # let go since the last update: keeps its slot
        self.released_slot: int | None = None
        self.grasped: PerceivedObject | None = None  # picked since the last update, as last seen on the table
        self.lost: dict[int, PerceivedObject] = {}  # slot -> as last seen, for objects out of view

    def update(self, objects: Sequence[PerceivedObject],
               ee_position: np.ndarray | None = None) -> dict[int, PerceivedObject]:
        prev = {k: o for k, o in self.slots.items() if k != self.held}
        cost = np.full((len(objects), max(len(prev), 1)), np.inf)
        keys = list(prev)
        for i, o in enumerate(objects):
            for j, k in enumerate(keys):
                p = prev[k]
                if p.kind != o.kind:
                    continue
                d = float(np.linalg.norm(o.position - p.position))
                cost[i, j] = d + (0.0 if p.color == o.color else 0.05)
        new: dict[int, PerceivedObject] = {}
        taken_i: set[int] = set()
        for flat in np.argsort(cost, axis=None, kind="stable"):  # greedy nearest pairs
            i, j = divmod(int(flat), cost.shape[1])
            if not np.isfinite(cost[i, j]) or cost[i, j] > self.radius:
                break
            if i in taken_i or (j < len(keys) and keys[j] in new):
                continue
            new[keys[j]] = objects[i]
            taken_i.add(i)
        order = sorted((i for i in range(len(objects)) if i not in taken_i),
                       key=lambda i: tuple(round(float(v), 3) for v in objects[i].position[:2]))
        grasped = self.grasped
        if grasped is not None and self.held is not None:
            # A pick the robot reported done, but its block is still seen where it stood: the grasp slipped
            # (a gripper without a sensor cannot tell).  It keeps its name and is not held.
            left = [i for i in order if objects[i].kind == grasped.kind and objects[i].color == grasped.color
                    and float(np.linalg.norm(objects[i].position - grasped.position)) <= self.radius]
            if left:
                i = min(left, key=lambda i: float(np.linalg.norm(objects[i].position - grasped.position)))
                new[self.held] = objects[i]
                order.remove(i)
                self.held = None
        self.grasped = None
        rel, gone = self.released, {**self.lost, **prev}
        if rel is not None:
            gone[self.released_slot] = rel
        if rel is not None and self.released_slot not in new:
            # The block just let go of reappears elsewhere: the unmatched one of its colour nearest the gripper.
            same = [i for i in order if objects[i].kind == rel.kind and objects[i].color == rel.color]
            if same:
                i = min(same, key=lambda i: float(np.linalg.norm(objects[i].position - rel.position)))
                new[self.released_slot] = objects[i]
                order.remove(i)
        self.released = self.released_slot = None
        for i in list(order):  # back in view: the nearest lost object of its kind and colour
            o = objects[i]
            back = [k for k, p in self.lost.items() if k not in new and p.kind == o.kind and p.color == o.color
                    and float(np.linalg.norm(p.position - o.position)) <= self.recall]
            if back:
                new[min(back, key=lambda k: float(np.linalg.norm(self.lost[k].position - o.position)))] = o
                order.remove(i)
        for i in order:
            free = [k for k in range(self.max_objects) if k not in self.used and k not in new and k != self.held]
            if not free:
                free = [k for k in range(self.max_objects) if k not in new and k != self.held]
            if not free:
                break  # more objects than rows: the rest are dropped, like a full sim scene
            new[free[0]] = objects[i]
        if self.held is not None and self.held in self.slots:
            h = self.slots[self.held]
            pos = h.position if ee_position is None else np.asarray(ee_position, float) + HELD_OFFSET
            new[self.held] = replace(h, position=np.asarray(pos, float), held=True)
        self.lost = {k: o for k, o in gone.items() if k not in new}
        self.slots = dict(sorted(new.items()))
        self.used |= set(new)
        return self.slots

    def mark_held(self, slot: int | None) -> None:
        """After a successful pick (``slot``) or a place (None): the gripper's content changed."""
        if slot is not None and slot in self.slots:
            self.grasped = self.slots[slot]  # checked against the next view (a slipped grasp leaves it there)
            self.slots[slot] = replace(self.slots[slot], held=True)
        elif slot is None and self.held is not None and self.held in self.slots:
            self.released, self.released_slot = self.slots.pop(self.held), self.held  # back in view next update
        self.held = slot


def render_mask(depth: np.ndarray, K: np.ndarray, world_from_camera: np.ndarray,
                slots: Mapping[int, PerceivedObject], margin: float = 0.006) -> np.ndarray:
    """(H, W) int16: k+1 where the pixel's 3-D point lies in obj_{k+1}'s box, else 0 (sim convention)."""
    from sensors.segmentation import backproject

    pts = backproject(depth, np.asarray(K, np.float64), np.asarray(world_from_camera, np.float64))  # (H, W, 3)
    mask = np.zeros(depth.shape, np.int16)
    order = sorted(slots.items(), key=lambda kv: kv[1].kind != "bowl")  # bowls first: blocks in them win
    for k, o in order:
        if o.held:
            continue
        half = np.array([o.size / 2, o.size / 2, o.height / 2]) + margin
        c = np.asarray(o.position, float) + (np.array([0, 0, o.height / 2]) if o.kind == "bowl" else 0.0)
        inside = np.all(np.abs(pts - c) <= half, axis=-1) & (pts[..., 2] > 0.002)
        mask[inside] = k + 1
    return mask
