"""Tabletop object segmentation from one RGB-D frame (open3d): no simulator needed.

RGB-D -> camera-frame point cloud -> world frame -> crop to the workspace box above the table ->
RANSAC table-plane removal -> DBSCAN clusters -> one ``Detection`` per object-sized cluster.

It takes arrays and camera parameters only, so a real camera (or the ROS bridge) feeds it the same
way as the sim.  Known limits: objects touching each other (a stacked tower, a block in a bowl)
merge into ONE cluster; objects closer than ~``eps`` in xy may merge too; clusters wider or taller
than ``max_extent``/``max_height`` (e.g. the robot arm reaching into view) are dropped, as are clusters
with fewer than ``min_points`` points; objects hidden under the arm are missed.  Depth from the sim is
exact: for a real sensor raise ``plane_threshold`` and ``voxel``.  With PyBullet's TinyRenderer the
centroids carry a ~half-pixel bias (about 3 mm at 128x128 from the top camera; none with EGL).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sensors.checks import check_array
from skills.vocab import OBJECT_FEATURES, Col

Box = tuple[tuple[float, float], tuple[float, float]]


@dataclass
class Detection:
    """One segmented object (or merged tower) in world coordinates (metres)."""

    points: np.ndarray  # (P, 3) float32, world frame
    colors: np.ndarray  # (P, 3) float32 in 0..1
    centroid: np.ndarray  # (3,) float32, mean of points
    extent: np.ndarray  # (3,) float32, axis-aligned max - min
    mean_rgb: np.ndarray  # (3,) float32 in 0..1


def backproject(depth: np.ndarray, K: np.ndarray, world_from_camera: np.ndarray) -> np.ndarray:
    """(H, W) depth along the optical axis -> (H, W, 3) world points (numpy; for per-pixel features)."""
    h, w = depth.shape
    v, u = np.mgrid[0:h, 0:w].astype(np.float32)
    z = depth.astype(np.float32)
    x = (u + 0.5 - K[0, 2]) * z / K[0, 0]  # pixel u spans [u, u+1): centre u + 0.5 (checked on EGL renders)
    y = (v + 0.5 - K[1, 2]) * z / K[1, 1]
    cam = np.stack([x, y, z], -1)  # (H, W, 3) OpenCV camera frame
    T = world_from_camera.astype(np.float32)
    return cam @ T[:3, :3].T + T[:3, 3]


def segment_objects(
    rgb: np.ndarray,
    depth: np.ndarray,
    K: np.ndarray | list,
    world_from_camera: np.ndarray | list,
    *,
    workspace: Box = ((0.30, 0.70), (-0.30, 0.30)),
    margin: float = 0.05,
    voxel: float = 0.004,
    table_z: float = 0.0,
    z_max: float = 0.30,
    plane_threshold: float = 0.003,  # sim depth is exact; raise it for a real sensor
    eps: float | None = None,
    min_points: int = 5,
    z_weight: float = 0.25,
    max_extent: float = 0.16,
    max_height: float = 0.25,  # < z_max, so anything cut by the crop ceiling (the arm) is dropped
    depth_trunc: float = 2.9,
) -> list[Detection]:
    """Segment objects on the table; returns detections sorted by centroid (x, then y).

    ``workspace`` is the (x, y) table region (grown by ``margin`` so objects at its edge stay whole);
    points below the table or above ``z_max`` are cropped before plane removal.  ``eps`` (DBSCAN radius)
    defaults to max(1.5 cm, 1.6 pixel footprints at the table) so coarse images still connect.  DBSCAN runs
    on (x, y, ``z_weight`` * z): objects rest on the table and are separated in xy, while a steeply viewed
    side face samples z sparsely (several cm between pixel rows) and would otherwise split off.
    """
    try:
        import open3d as o3d  # heavy import (~0.5 s): only when segmenting
    except ImportError as e:  # one line that says what to install
        raise ImportError(f"segment_objects needs open3d (pip install open3d-cpu; apt: libusb-1.0-0 libgl1 "
                          f"libegl1 libgomp1): {e}") from e

    check_array("rgb", rgb, (None, None, 3), (np.uint8,))
    h, w = rgb.shape[:2]
    check_array("depth", depth, (h, w), (np.float32, np.float64))
    K = check_array("K", np.asarray(K, np.float64), (3, 3), (np.float64,))
    T = check_array("world_from_camera", np.asarray(world_from_camera, np.float64), (4, 4), (np.float64,))
    if voxel <= 0 or (eps is not None and eps <= 0) or min_points < 1 or not 0 < z_weight <= 1:
        raise ValueError(f"segment_objects: need voxel > 0, eps > 0, min_points >= 1, 0 < z_weight <= 1; got "
                         f"{voxel}, {eps}, {min_points}, {z_weight}")
    if eps is None:  # neighbouring pixels must be within eps of each other on an object's surface
        valid = depth[(depth > 0) & (depth < depth_trunc)]
        eps = max(0.015, 1.6 * float(np.median(valid)) / K[0, 0]) if valid.size else 0.015

    # RGB-D -> camera-frame cloud (x right, y down, z forward), then to the world frame.  open3d puts
    # pixel centres at integer u, so its principal point is K's minus half a pixel.
    intr = o3d.camera.PinholeCameraIntrinsic(w, h, K[0, 0], K[1, 1], K[0, 2] - 0.5, K[1, 2] - 0.5)
    rgbd = o3d.geometry.RGBDImage.create_from_color_and_depth(
        o3d.geometry.Image(np.ascontiguousarray(rgb)), o3d.geometry.Image(np.ascontiguousarray(depth, np.float32)),
        depth_scale=1.0, depth_trunc=depth_trunc, convert_rgb_to_intensity=False)
    pcd = o3d.geometry.PointCloud.create_from_rgbd_image(rgbd, intr)
    pcd.transform(T)

    # Crop to the box over the workspace; a thin slab above the table keeps the plane for RANSAC.
    (x0, x1), (y0, y1) = workspace
    box = o3d.geometry.AxisAlignedBoundingBox(
        np.array([x0 - margin, y0 - margin, table_z - 0.02]), np.array([x1 + margin, y1 + margin, z_max]))
    pcd = pcd.crop(box)
    pcd = pcd.voxel_down_sample(voxel)
    if len(pcd.points) < max(3, min_points):
        return []

    # RANSAC plane removal (seeded so results are reproducible), then drop anything at table height
    # that RANSAC missed (e.g. if the plane fit picked a block top when the table is mostly hidden).
    o3d.utility.random.seed(0)
    plane, inliers = pcd.segment_plane(distance_threshold=plane_threshold, ransac_n=3, num_iterations=200)
    normal_z = abs(plane[2]) / max(np.linalg.norm(plane[:3]), 1e-9)
    if normal_z > 0.95 and abs(-plane[3] / plane[2] - table_z) < 0.02:  # it is the table, not a block top
        pcd = pcd.select_by_index(inliers, invert=True)
    pts = np.asarray(pcd.points)
    keep = np.flatnonzero(pts[:, 2] > table_z + plane_threshold)
    pcd = pcd.select_by_index(keep)
    if len(pcd.points) < min_points:
        return []

    pts = np.asarray(pcd.points, np.float32)
    squashed = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(pts * np.array([1.0, 1.0, z_weight])))
    labels = np.asarray(squashed.cluster_dbscan(eps=eps, min_points=min_points, print_progress=False))
    cols = np.asarray(pcd.colors, np.float32)
    dets: list[Detection] = []
    for lab in range(int(labels.max(initial=-1)) + 1):
        sel = labels == lab
        if sel.sum() < min_points:
            continue
        p, c = pts[sel], cols[sel]
        lo, hi = p.min(0), p.max(0)
        extent = hi - lo
        # Too wide or too tall for a tabletop object: the robot arm, or something not on the table.
        if max(extent[0], extent[1]) > max_extent or hi[2] > table_z + max_height:
            continue
        centroid = p.mean(0)
        if not (x0 <= centroid[0] <= x1 and y0 <= centroid[1] <= y1):
            continue
        dets.append(Detection(p, c, centroid.astype(np.float32), extent.astype(np.float32),
                              c.mean(0).astype(np.float32)))
    dets.sort(key=lambda d: (round(float(d.centroid[0]), 4), round(float(d.centroid[1]), 4)))
    return dets


def assign_to_slots(detections: list[Detection], objects: np.ndarray, max_dist: float = 0.05) -> list[int]:
    """EVALUATION ONLY (sim): match detections to the sim's object slots by nearest xy centroid.

    ``objects`` is the env's (16, 12) array (columns ``skills.vocab.Col``).  Returns, for each
    detection, the slot index j (so the detection plays ``obj_{j+1}``) or -1 when unmatched (no present
    object within ``max_dist`` metres, or more detections than objects).  A tower matches its top block's
    slot only if the xy fits; its other blocks stay unmatched.  Uses the Hungarian algorithm (scipy)
    when available, otherwise greedy nearest pairs.  A real robot has no ``objects`` array: there,
    slots are simply the detection order.
    """
    objects = check_array("objects", np.asarray(objects), (None, OBJECT_FEATURES), (np.float32, np.float64))
    present = np.flatnonzero(objects[:, Col.PRESENT] > 0.5)
    out = [-1] * len(detections)
    if not detections or present.size == 0:
        return out
    det_xy = np.stack([d.centroid[:2] for d in detections]).astype(np.float64)  # (D, 2)
    obj_xyz = objects[present, Col.XYZ].astype(np.float64)  # (O, 3)
    # xy distance, with height as a tie-breaker so a tower prefers its top block (the one seen from above).
    top_z = np.array([d.points[:, 2].max() for d in detections])
    cost = np.linalg.norm(det_xy[:, None] - obj_xyz[None, :, :2], axis=-1)  # (D, O)
    cost_tb = cost + 0.1 * np.abs(top_z[:, None] - obj_xyz[None, :, 2])
    try:
        from scipy.optimize import linear_sum_assignment

        rows, cols = linear_sum_assignment(cost_tb)
        pairs = list(zip(rows.tolist(), cols.tolist(), strict=True))
    except ImportError:  # greedy: repeatedly take the globally closest unused pair
        pairs, used_d, used_o = [], set(), set()
        for flat in np.argsort(cost_tb, axis=None, kind="stable"):
            d, o = divmod(int(flat), cost_tb.shape[1])
            if d not in used_d and o not in used_o:
                pairs.append((d, o))
                used_d.add(d)
                used_o.add(o)
    for d, o in pairs:
        if cost[d, o] <= max_dist:
            out[d] = int(present[o])
    return out
