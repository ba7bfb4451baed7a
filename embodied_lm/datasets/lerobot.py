"""Replay store <-> LeRobot dataset v3.0 (``codebase_version: "v3.0"``, lerobot >= 0.4), written with pyarrow.

Layout (names and path templates as in lerobot's ``datasets/utils.py``)::

    <root>/meta/info.json                         codebase_version, fps, features, path templates, totals
    <root>/meta/stats.json                        per-feature min/max/mean/std/count/q01..q99
    <root>/meta/tasks.parquet                     task string (pandas index "task") -> task_index
    <root>/meta/episodes/chunk-000/file-000.parquet   one row per episode (offsets, tasks, stats/...)
    <root>/meta/embodied_lm.json                  sidecar: store attrs + zarr key <-> feature map
    <root>/data/chunk-000/file-000.parquet        one row per step, one row group per episode

Feature mapping (zarr ``data`` key -> LeRobot column):

    rgb_<cam>      (T,H,W,3) uint8   -> observation.images.<cam>  dtype "image": struct{bytes: PNG, path: null}
    depth_<cam>    (T,H,W) float32   -> observation.depth.<cam>   float32 (H,W)   [metres]
    mask_<cam>     (T,H,W) int16     -> observation.mask.<cam>    int16 (H,W)
    robot          (T,16) float32    -> observation.state         names: panda joints, ee xyz, ee quat xyzw
    objects        (T,16,12) float32 -> observation.objects       (object slot, field)
    action         (T,) str          -> action.text               dtype "string" (the skill call)
    skill_success  (T,) bool         -> action.success            bool
    any other key                    -> observation.<key>
    (derived)                        -> action     float32 (16,): observation.state of the NEXT step, i.e. the
                                        robot state the skill reached; the final step (whose outcome was
                                        not observed) repeats its own state. Not imported back.
    (derived)                        -> next.done  bool, True on the last step of each episode.

Images are PNG bytes inside the parquet (LeRobot's ``dtype: "image"``, ``video_path: null``), not video:
PNG is lossless, so zarr -> LeRobot -> zarr returns byte-identical frames; LeRobot's AV1/H.264 videos
(yuv420p) are lossy. Depth stays raw float32 for the same reason. ``task`` (tasks.parquet / task_index)
is the episode's natural-language instruction. Steps are skill steps without wall-clock times, so
``timestamp = frame_index / fps`` with ``fps`` an int (store attr ``fps`` if present, else 1 Hz per step).
Episode meta (task, params, seed, plan, success, ...) is kept as JSON in the episodes column
``embodied_lm/meta``; store attrs and the key map in ``meta/embodied_lm.json``, so ``import_lerobot``
rebuilds the store exactly. Datasets from other sources are imported as far as their features allow.
"""

from __future__ import annotations

import io
import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from embodied_lm.atomic import staged_dir
from embodied_lm.datasets.zarr_store import Episode, ReplayReader, ReplayWriter, select_episodes
from embodied_lm.ros.messages import JOINT_NAMES

__all__ = [
    "CODEBASE_VERSION",
    "DEFAULT_DATA_PATH",
    "DEFAULT_EPISODES_PATH",
    "DEFAULT_FEATURES",
    "DEFAULT_VIDEO_PATH",
    "EPISODES_DIR",
    "INFO_PATH",
    "SIDECAR_PATH",
    "STATE_NAMES",
    "STATS_PATH",
    "TASKS_PATH",
    "export_lerobot",
    "import_lerobot",
]

# --- constants mirrored from lerobot (src/lerobot/datasets/utils.py, lerobot 0.4.4 / main)
CODEBASE_VERSION = "v3.0"
DEFAULT_CHUNK_SIZE = 1000  # max files per chunk directory
DEFAULT_DATA_FILE_SIZE_IN_MB = 100
DEFAULT_VIDEO_FILE_SIZE_IN_MB = 200  # lerobot 0.4.4 (main raised it to 500); unused: no videos written
INFO_PATH = "meta/info.json"
STATS_PATH = "meta/stats.json"
TASKS_PATH = "meta/tasks.parquet"  # lerobot: DEFAULT_TASKS_PATH
EPISODES_DIR = "meta/episodes"
DATA_DIR = "data"
VIDEO_DIR = "videos"
CHUNK_FILE_PATTERN = "chunk-{chunk_index:03d}/file-{file_index:03d}"
DEFAULT_EPISODES_PATH = EPISODES_DIR + "/" + CHUNK_FILE_PATTERN + ".parquet"
DEFAULT_DATA_PATH = DATA_DIR + "/" + CHUNK_FILE_PATTERN + ".parquet"
DEFAULT_VIDEO_PATH = VIDEO_DIR + "/{video_key}/" + CHUNK_FILE_PATTERN + ".mp4"
DEFAULT_FEATURES: dict[str, dict[str, Any]] = {
    "timestamp": {"dtype": "float32", "shape": [1], "names": None},
    "frame_index": {"dtype": "int64", "shape": [1], "names": None},
    "episode_index": {"dtype": "int64", "shape": [1], "names": None},
    "index": {"dtype": "int64", "shape": [1], "names": None},
    "task_index": {"dtype": "int64", "shape": [1], "names": None},
}
QUANTILES = (0.01, 0.10, 0.50, 0.90, 0.99)  # lerobot's DEFAULT_QUANTILES -> q01 q10 q50 q90 q99

# --- ours
SIDECAR_PATH = "meta/embodied_lm.json"
SIDECAR_FORMAT = "embodied_lm.lerobot/1"
META_COLUMN = "embodied_lm/meta"  # episodes parquet: the store's per-episode meta as JSON
SOURCE_COLUMN = "embodied_lm/source_episode"  # episodes parquet: episode index in the source store
PANDA_JOINTS = list(JOINT_NAMES)
STATE_NAMES = [*PANDA_JOINTS, "ee_x", "ee_y", "ee_z", "ee_qx", "ee_qy", "ee_qz", "ee_qw"]
OBJECT_FIELDS = ["present", "kind", "color", "x", "y", "z", "qx", "qy", "qz", "qw", "support", "size"]
_STATS_ELEMENTWISE_MAX = 1024  # per-step arrays larger than this (depth, masks) get scalar stats
_MB = 1024 * 1024

PathLike = str | os.PathLike[str]


# ============================================================================ shared helpers


def _open_reader(store: PathLike | ReplayReader) -> ReplayReader:
    return store if isinstance(store, ReplayReader) else ReplayReader(store)


def _resolve_fps(fps: float | None, attrs: dict[str, Any]) -> int:
    value = attrs.get("fps", 1) if fps is None else fps
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ValueError(f"fps must be a positive integer, got {value!r}")
    if not math.isfinite(value) or value <= 0 or float(value) != int(value):
        raise ValueError(f"fps must be a positive integer for LeRobot (info.json 'fps' is an int), got {value!r}")
    return int(value)


# ============================================================================ features


def _feature_name(key: str, arr: np.ndarray) -> tuple[str, str]:
    """(LeRobot feature name, kind) for a zarr data key; kind in image|string|array."""
    step = arr.shape[1:]
    if key.startswith("rgb_") and arr.dtype == np.uint8 and len(step) == 3 and step[2] == 3:
        return f"observation.images.{key[4:]}", "image"
    if arr.dtype.kind == "T":
        return ("action.text" if key == "action" else f"observation.{key}"), "string"
    if key.startswith("depth_"):
        return f"observation.depth.{key[6:]}", "array"
    if key.startswith("mask_"):
        return f"observation.mask.{key[5:]}", "array"
    named = {"robot": "observation.state", "objects": "observation.objects", "skill_success": "action.success"}
    return named.get(key, f"observation.{key}"), "array"


def _feature_spec(key: str, name: str, kind: str, arr: np.ndarray) -> dict[str, Any]:
    step = [int(s) for s in arr.shape[1:]]
    if kind == "image":
        return {"dtype": "image", "shape": step, "names": ["height", "width", "channels"]}
    if kind == "string":
        return {"dtype": "string", "shape": [1], "names": None}
    names: Any = None
    if key == "robot" and step == [len(STATE_NAMES)]:
        names = list(STATE_NAMES)
    elif key == "objects" and len(step) == 2 and step[1] == len(OBJECT_FIELDS):
        names = ["object", "field"]
    elif key.startswith(("depth_", "mask_")) and len(step) == 2:
        names = ["height", "width"]
    return {"dtype": np.dtype(arr.dtype).name, "shape": step or [1], "names": names}


def _hf_feature(spec: dict[str, Any]) -> dict[str, Any]:
    """The HF ``datasets`` feature that lerobot's get_hf_features_from_features builds for ``spec``."""
    dtype, shape = spec["dtype"], list(spec["shape"])
    if dtype == "image":
        return {"_type": "Image"}
    if shape == [1]:
        return {"dtype": dtype, "_type": "Value"}
    if len(shape) == 1:
        return {"feature": {"dtype": dtype, "_type": "Value"}, "length": shape[0], "_type": "Sequence"}
    return {"shape": shape, "dtype": dtype, "_type": f"Array{len(shape)}D"}


def _arrow_type(spec: dict[str, Any]) -> pa.DataType:
    """Arrow storage type of a feature column (what HF datasets writes for that feature)."""
    dtype, shape = spec["dtype"], list(spec["shape"])
    if dtype == "image":
        return pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    if dtype == "string":
        return pa.string()
    value = pa.from_numpy_dtype(np.dtype(dtype))
    if shape == [1]:
        return value
    if len(shape) == 1:
        return pa.list_(value, shape[0])  # fixed_size_list, as datasets.Sequence(length=n)
    t = value
    for _ in shape:
        t = pa.list_(t)  # datasets.ArrayND storage: nested variable-size lists
    return t


def _png(frame: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(frame)).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def _arrow_column(values: Any, spec: dict[str, Any]) -> pa.Array:
    dtype, shape = spec["dtype"], list(spec["shape"])
    if dtype == "image":
        pngs = [_png(f) for f in values]
        return pa.StructArray.from_arrays(
            [pa.array(pngs, pa.binary()), pa.nulls(len(pngs), pa.string())], names=["bytes", "path"]
        )
    if dtype == "string":
        return pa.array([str(s) for s in values], pa.string())
    arr = np.ascontiguousarray(values, dtype=np.dtype(dtype))
    if shape == [1]:
        return pa.array(arr.reshape(-1))
    flat: pa.Array = pa.array(arr.reshape(-1))
    if len(shape) == 1:
        return pa.FixedSizeListArray.from_arrays(flat, shape[0])
    n_items = arr.size
    for size in reversed(shape):  # innermost axis first: nested variable-size lists
        n_lists = n_items // size
        flat = pa.ListArray.from_arrays(pa.array(np.arange(0, n_lists * size + 1, size, dtype=np.int32)), flat)
        n_items = n_lists
    return flat


def _column_numpy(col: pa.ChunkedArray | pa.Array, spec: dict[str, Any], root: Path | None = None) -> np.ndarray:
    """Inverse of _arrow_column (also accepts list/large_list/fixed_size_list storage and image paths)."""
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks()
    dtype, shape = spec["dtype"], [int(s) for s in spec["shape"]]
    if col.null_count:
        raise ValueError(f"column has {col.null_count} null values")
    n = len(col)
    if dtype == "image":
        return (
            np.stack([_decode_image(v, root) for v in col.to_pylist()]) if n else np.zeros((0, *shape), np.uint8)
        )
    if dtype == "string":
        return np.array(col.to_pylist(), dtype=np.dtypes.StringDType())
    np_dtype = np.dtype(dtype)
    if isinstance(col.type, pa.ExtensionType):
        col = col.storage
    while pa.types.is_list(col.type) or pa.types.is_large_list(col.type) or pa.types.is_fixed_size_list(col.type):
        col = col.flatten()
    flat = col.to_numpy(zero_copy_only=False).astype(np_dtype, copy=False)
    step = [] if shape == [1] else shape
    if flat.size != n * math.prod(step):
        raise ValueError(f"column holds {flat.size} values, expected {n} x {step}")
    return flat.reshape(n, *step)


def _decode_image(value: dict[str, Any] | None, root: Path | None) -> np.ndarray:
    from PIL import Image

    if value and value.get("bytes") is not None:
        img = Image.open(io.BytesIO(value["bytes"]))
    elif value and value.get("path"):
        path = Path(value["path"])
        img = Image.open(path if path.is_absolute() or root is None else root / path)
    else:
        raise ValueError("image cell has neither bytes nor path")
    img.load()
    return np.asarray(img.convert("RGB") if img.mode not in ("RGB", "L") else img)


# ============================================================================ stats


def _episode_stats(values: np.ndarray, spec: dict[str, Any]) -> dict[str, np.ndarray] | None:
    """lerobot-style stats: images per channel in [0,1] with shape (3,1,1); vectors per element;
    per-step arrays above _STATS_ELEMENTWISE_MAX elements (depth, masks) one value, shape (1,)."""
    if spec["dtype"] == "string":
        return None
    n = len(values)
    if spec["dtype"] == "image":
        x = values.reshape(-1, values.shape[-1]).astype(np.float64) / 255.0
        keep = lambda s: s.reshape(-1, 1, 1)  # noqa: E731
    else:
        x = values.astype(np.float64).reshape(n, -1)
        step = list(values.shape[1:])
        if x.shape[1] > _STATS_ELEMENTWISE_MAX:
            x = x.reshape(-1, 1)
            keep = lambda s: s.reshape(1)  # noqa: E731
        else:
            keep = lambda s: s.reshape(step or [1])  # noqa: E731
    stats = {
        "min": keep(x.min(0)),
        "max": keep(x.max(0)),
        "mean": keep(x.mean(0)),
        "std": keep(x.std(0)),
        "count": np.array([n], dtype=np.int64),
    }
    qs = np.quantile(x, QUANTILES, axis=0)
    for q, v in zip(QUANTILES, qs, strict=True):
        stats[f"q{round(q * 100):02d}"] = keep(v)
    return stats


def _aggregate_stats(per_episode: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Exact min/max/mean/std/count over episodes; quantiles as count-weighted means (as lerobot does)."""
    counts = np.array([int(s["count"][0]) for s in per_episode], dtype=np.float64)
    w = counts / counts.sum()
    wb = lambda a: w.reshape(-1, *([1] * (a.ndim - 1)))  # noqa: E731
    means = np.stack([s["mean"] for s in per_episode])
    mean = (means * wb(means)).sum(0)
    var = (np.stack([s["std"] ** 2 for s in per_episode]) + (means - mean) ** 2) * wb(means)
    out = {
        "min": np.min(np.stack([s["min"] for s in per_episode]), 0),
        "max": np.max(np.stack([s["max"] for s in per_episode]), 0),
        "mean": mean,
        "std": np.sqrt(var.sum(0)),
        "count": np.array([int(counts.sum())], dtype=np.int64),
    }
    for key in per_episode[0]:
        if key.startswith("q"):
            qs = np.stack([s[key] for s in per_episode])
            out[key] = (qs * wb(qs)).sum(0)
    return out


# ============================================================================ export


def _write_json(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=4, ensure_ascii=False) + "\n", encoding="utf-8")


def _tasks_table(tasks: list[str]) -> pa.Table:
    """tasks.parquet as pandas writes ``DataFrame({"task_index": ...}, index=Index(tasks, name="task"))``,
    so lerobot's ``pd.read_parquet`` yields the task strings as the index."""
    pandas_meta = {
        "index_columns": ["task"],
        "column_indexes": [
            {
                "name": None,
                "field_name": None,
                "pandas_type": "unicode",
                "numpy_type": "object",
                "metadata": {"encoding": "UTF-8"},
            }
        ],
        "columns": [
            {
                "name": "task_index",
                "field_name": "task_index",
                "pandas_type": "int64",
                "numpy_type": "int64",
                "metadata": None,
            },
            {
                "name": "task",
                "field_name": "task",
                "pandas_type": "unicode",
                "numpy_type": "object",
                "metadata": None,
            },
        ],
        "creator": {"library": "pyarrow", "version": pa.__version__},
        "pandas_version": "2.2.3",
    }
    table = pa.table({"task_index": pa.array(range(len(tasks)), pa.int64()), "task": pa.array(tasks, pa.string())})
    return table.replace_schema_metadata({b"pandas": json.dumps(pandas_meta).encode()})


class _DataFileWriter:
    """Rolls data/chunk-XXX/file-YYY.parquet files by size; one row group per episode."""

    def __init__(self, root: Path, schema: pa.Schema, max_mb: float, chunks_size: int) -> None:
        self.root, self.schema, self.max_bytes, self.chunks_size = root, schema, max_mb * _MB, chunks_size
        self.chunk, self.file, self.bytes = 0, 0, 0
        self.writer: pq.ParquetWriter | None = None

    def write(self, table: pa.Table) -> tuple[int, int]:
        if self.writer is not None and self.bytes + table.nbytes > self.max_bytes:
            self.writer.close()
            self.writer, self.bytes = None, 0
            self.file += 1
            if self.file == self.chunks_size:
                self.chunk, self.file = self.chunk + 1, 0
        if self.writer is None:
            path = self.root / DEFAULT_DATA_PATH.format(chunk_index=self.chunk, file_index=self.file)
            path.parent.mkdir(parents=True, exist_ok=True)
            self.writer = pq.ParquetWriter(path, self.schema, compression="snappy")
        self.writer.write_table(table, row_group_size=max(1, table.num_rows))
        self.bytes += table.nbytes
        return self.chunk, self.file

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def _plan_features(reader: ReplayReader) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, Any]]]:
    """(features for info.json, key map for the sidecar) from the store's first episode."""
    first = reader.episode(0).data
    features: dict[str, dict[str, Any]] = {}
    keymap: dict[str, dict[str, Any]] = {}
    for key in sorted(first, key=lambda k: (not k.startswith("rgb_"), k)):
        arr = first[key]
        name, kind = _feature_name(key, arr)
        if name in features or "/" in name:
            raise ValueError(f"data key {key!r} maps to feature {name!r}, which is taken or invalid")
        features[name] = _feature_spec(key, name, kind, arr)
        keymap[key] = {
            "feature": name,
            "kind": kind,
            "dtype": "str" if kind == "string" else np.dtype(arr.dtype).name,
            "shape": [int(s) for s in arr.shape[1:]],
        }
    robot = first.get("robot")
    if robot is not None and robot.dtype.kind == "f" and robot.ndim == 2 and "action" not in features:
        features["action"] = {
            "dtype": "float32",
            "shape": [robot.shape[1]],
            "names": list(STATE_NAMES) if robot.shape[1] == len(STATE_NAMES) else None,
        }
    if "next.done" not in features:
        features["next.done"] = {"dtype": "bool", "shape": [1], "names": None}
    for name, spec in DEFAULT_FEATURES.items():
        features[name] = json.loads(json.dumps(spec))
    return features, keymap


def export_lerobot(
    store: PathLike | ReplayReader,
    out_dir: PathLike,
    *,
    episodes: Sequence[int] | None = None,
    fps: int | None = None,
    robot_type: str = "franka_panda",
    chunks_size: int = DEFAULT_CHUNK_SIZE,
    data_files_size_in_mb: float = DEFAULT_DATA_FILE_SIZE_IN_MB,
    stats: bool = True,
) -> Path:
    """Write ``episodes`` (default all) of a replay store as a LeRobot v3.0 dataset at ``out_dir``.

    ``out_dir`` must not exist; the dataset is built in a temp dir beside it and renamed into place at
    the end, so a failure leaves nothing behind. Episodes are renumbered 0..N-1 (their store index is
    kept in the episodes column ``embodied_lm/source_episode``). ``fps``: int, default store attr
    ``fps`` or 1 (one frame per skill step). Returns ``out_dir``.
    """
    reader = _open_reader(store)
    out = Path(out_dir)
    selected = select_episodes(reader.n_episodes, episodes)
    attrs = reader.attrs
    fps_i = _resolve_fps(fps, attrs)
    if chunks_size < 1 or data_files_size_in_mb <= 0:
        raise ValueError("chunks_size and data_files_size_in_mb must be positive")
    features, keymap = _plan_features(reader)
    columns = [k for k, s in features.items() if s["dtype"] != "video"]
    schema = pa.schema([(k, _arrow_type(features[k])) for k in columns]).with_metadata(
        {
            b"huggingface": json.dumps(
                {"info": {"features": {k: _hf_feature(features[k]) for k in columns}}}
            ).encode()
        }
    )
    by_feature = {m["feature"]: k for k, m in keymap.items()}

    with staged_dir(out) as root:
        tasks: dict[str, int] = {}
        ep_rows: list[dict[str, Any]] = []
        all_stats: dict[str, list[dict[str, np.ndarray]]] = {}
        writer = _DataFileWriter(root, schema, data_files_size_in_mb, chunks_size)
        total = 0
        try:
            for new_idx, src_idx in enumerate(selected):
                ep = reader.episode(src_idx)
                if set(ep.data) != set(keymap):
                    raise ValueError(f"episode {src_idx}: data keys {sorted(ep.data)} differ from episode 0's")
                T = ep.n_steps
                meta = ep.meta
                task = str(meta.get("instruction") or meta.get("task") or "")
                task_index = tasks.setdefault(task, len(tasks))
                values: dict[str, Any] = {name: ep.data[key] for name, key in by_feature.items()}
                if "action" in features and "action" not in by_feature:
                    robot = ep.data["robot"].astype(np.float32)
                    values["action"] = np.concatenate([robot[1:], robot[-1:]])
                values["next.done"] = np.arange(T) == T - 1
                values["timestamp"] = (np.arange(T, dtype=np.float64) / fps_i).astype(np.float32)
                values["frame_index"] = np.arange(T, dtype=np.int64)
                values["episode_index"] = np.full(T, new_idx, dtype=np.int64)
                values["index"] = np.arange(total, total + T, dtype=np.int64)
                values["task_index"] = np.full(T, task_index, dtype=np.int64)
                table = pa.Table.from_arrays(
                    [_arrow_column(values[k], features[k]) for k in columns], schema=schema
                )
                chunk_idx, file_idx = writer.write(table)
                row: dict[str, Any] = {
                    "episode_index": new_idx,
                    "tasks": [task],
                    "length": T,
                    "data/chunk_index": chunk_idx,
                    "data/file_index": file_idx,
                    "dataset_from_index": total,
                    "dataset_to_index": total + T,
                }
                if stats:
                    for name in columns:
                        st = _episode_stats(np.asarray(values[name]), features[name])
                        if st is not None:
                            all_stats.setdefault(name, []).append(st)
                            row.update({f"stats/{name}/{k}": v.tolist() for k, v in st.items()})
                row["meta/episodes/chunk_index"] = 0
                row["meta/episodes/file_index"] = 0
                row[SOURCE_COLUMN] = src_idx
                row[META_COLUMN] = json.dumps(meta, ensure_ascii=False)
                ep_rows.append(row)
                total += T
        finally:
            writer.close()

        # meta/episodes: one file is plenty (a row is ~ a few kB even with stats)
        ep_table = pa.Table.from_pylist(ep_rows)
        ep_path = root / DEFAULT_EPISODES_PATH.format(chunk_index=0, file_index=0)
        ep_path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(ep_table, ep_path, compression="snappy")
        pq.write_table(_tasks_table(list(tasks)), root / TASKS_PATH, compression="snappy")
        if stats:
            _write_json(
                root / STATS_PATH,
                {name: {k: v.tolist() for k, v in _aggregate_stats(s).items()} for name, s in all_stats.items()},
            )
        info = {
            "codebase_version": CODEBASE_VERSION,
            "robot_type": robot_type,
            "total_episodes": len(selected),
            "total_frames": total,
            "total_tasks": len(tasks),
            "chunks_size": int(chunks_size),
            "data_files_size_in_mb": data_files_size_in_mb,
            "video_files_size_in_mb": DEFAULT_VIDEO_FILE_SIZE_IN_MB,
            "fps": fps_i,
            "splits": {"train": f"0:{len(selected)}"},
            "data_path": DEFAULT_DATA_PATH,
            "video_path": None,
            "features": features,
        }
        _write_json(root / INFO_PATH, info)
        _write_json(
            root / SIDECAR_PATH,
            {
                "format": SIDECAR_FORMAT,
                "source_store": str(reader.path),
                "store_attrs": {k: v for k, v in attrs.items() if k not in ("format_version", "layout")},
                "keys": keymap,
                "derived_features": [k for k in ("action", "next.done") if k not in by_feature],
                "object_fields": OBJECT_FIELDS,
                "timestamps": f"frame_index / fps (fps={fps_i}: one frame per skill step, no wall clock stored)",
            },
        )
    return out


# ============================================================================ import


def _load_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: missing (not a LeRobot v3 dataset?)") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: invalid JSON ({e})") from None


def _read_tasks(root: Path) -> list[str]:
    """Task strings ordered by task_index, from tasks.parquet written by pandas (index) or by hand."""
    table = pq.read_table(root / TASKS_PATH)
    names = table.column_names
    meta = json.loads((table.schema.metadata or {}).get(b"pandas", b"{}") or b"{}")
    index_cols = [c for c in meta.get("index_columns", []) if isinstance(c, str)]
    task_col = next(
        (c for c in ["task", *index_cols, "__index_level_0__"] if c in names and c != "task_index"), None
    )
    if task_col is None or "task_index" not in names:
        raise ValueError(f"{root / TASKS_PATH}: expected columns task_index and task (got {names})")
    pairs = sorted(zip(table.column("task_index").to_pylist(), table.column(task_col).to_pylist(), strict=True))
    return [t for _, t in pairs]


def _read_episodes(root: Path) -> list[dict[str, Any]]:
    paths = sorted((root / EPISODES_DIR).glob("*/*.parquet"))
    if not paths:
        raise FileNotFoundError(f"{root / EPISODES_DIR}: no episodes parquet files")
    rows: list[dict[str, Any]] = []
    for p in paths:
        t = pq.read_table(p)
        keep = [c for c in t.column_names if not c.startswith("stats/")]
        rows.extend(t.select(keep).to_pylist())
    return sorted(rows, key=lambda r: r["episode_index"])


class _VideoFrames:
    """Decode frames of LeRobot v3 mp4 shards by timestamp (imageio-ffmpeg); one file cached."""

    def __init__(self, root: Path, info: dict[str, Any]) -> None:
        self.root, self.info = root, info
        self._path: Path | None = None
        self._frames: list[np.ndarray] = []
        self._fps = 0.0

    def frames(self, key: str, row: dict[str, Any], timestamps: np.ndarray) -> np.ndarray:
        import imageio.v2 as iio

        if not self.info.get("video_path"):
            raise ValueError(f"feature {key!r} is a video but info.json has no video_path")
        path = self.root / self.info["video_path"].format(
            video_key=key,
            chunk_index=int(row[f"videos/{key}/chunk_index"]),
            file_index=int(row[f"videos/{key}/file_index"]),
        )
        if path != self._path:
            with iio.get_reader(path, format="FFMPEG") as r:
                self._fps = float(r.get_meta_data().get("fps") or self.info["fps"])
                self._frames = [np.asarray(f) for f in r]
            self._path = path
        start = float(row.get(f"videos/{key}/from_timestamp", 0.0))
        idx = np.rint((start + timestamps.astype(np.float64)) * self._fps).astype(int)
        if len(idx) and (idx.min() < 0 or idx.max() >= len(self._frames)):
            raise ValueError(f"{path}: frames {idx.min()}..{idx.max()} requested, file has {len(self._frames)}")
        return np.stack([self._frames[i] for i in idx])


def import_lerobot(root: PathLike, store_path: PathLike, *, episodes: Sequence[int] | None = None) -> Path:
    """Read a LeRobot v3.0 dataset into a (new) replay store; returns ``store_path``.

    Our own exports (``meta/embodied_lm.json`` present) come back exactly: same data keys, dtypes,
    arrays, episode meta and store attrs (plus ``imported_from``). Other v3 datasets: image/video
    features become ``rgb_<name>`` (``observation.images.`` prefix dropped), every other feature keeps
    its name as the data key (``observation.state``, ``action``, ``timestamp``, ...); episode meta is
    {instruction, task, tasks, lerobot_episode_index}. ``store_path`` must not exist.
    """
    root = Path(root)
    out = Path(store_path)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such dataset directory")
    info = _load_json(root / INFO_PATH)
    version = str(info.get("codebase_version", "?"))
    if not version.startswith("v3."):
        raise ValueError(f"{root}: codebase_version {version!r}; only LeRobot v3.x datasets are supported")
    features: dict[str, dict[str, Any]] = info["features"]
    sidecar_path = root / SIDECAR_PATH
    sidecar = _load_json(sidecar_path) if sidecar_path.exists() else None
    if sidecar is not None and sidecar.get("format") != SIDECAR_FORMAT:
        raise ValueError(f"{sidecar_path}: unknown format {sidecar.get('format')!r}")
    rows = _read_episodes(root)
    tasks = _read_tasks(root)
    selected = [rows[i]["episode_index"] for i in select_episodes(len(rows), episodes)]
    rows_by_idx = {r["episode_index"]: r for r in rows}
    if sidecar is not None:
        keymap = sidecar["keys"]
        columns = {m["feature"]: key for key, m in keymap.items()}
        attrs = dict(sidecar.get("store_attrs", {}))
        attrs.pop("appended_runs", None)
        if "appended_runs" in sidecar.get("store_attrs", {}):
            attrs["source_appended_runs"] = sidecar["store_attrs"]["appended_runs"]
    else:
        columns = {}
        for name, spec in features.items():
            if name in DEFAULT_FEATURES and name != "timestamp":
                continue
            if spec["dtype"] in ("image", "video"):
                columns[name] = "rgb_" + name.removeprefix("observation.images.").replace("/", "_")
            else:
                columns[name] = name.replace("/", "_")
        attrs = {
            "lerobot": {k: info.get(k) for k in ("codebase_version", "robot_type", "fps")},
            "lerobot_features": features,
        }
    attrs["imported_from"] = {"format": f"lerobot_{version}", "path": str(root)}

    video = _VideoFrames(root, info)
    cache: dict[tuple[int, int], pa.Table] = {}
    with staged_dir(out) as store_tmp, ReplayWriter(store_tmp, attrs) as writer:
        for ep_idx in selected:
            row = rows_by_idx[ep_idx]
            file_key = (int(row["data/chunk_index"]), int(row["data/file_index"]))
            if file_key not in cache:
                cache.clear()
                path = root / info["data_path"].format(chunk_index=file_key[0], file_index=file_key[1])
                cache[file_key] = pq.read_table(path)
            table = cache[file_key]
            ep_col = table.column("episode_index").to_numpy()
            pos = np.flatnonzero(ep_col == ep_idx)
            if len(pos) != int(row["length"]) or (len(pos) and pos[-1] - pos[0] + 1 != len(pos)):
                raise ValueError(
                    f"episode {ep_idx}: {len(pos)} rows in its data file, length says {row['length']}"
                )
            part = table.slice(int(pos[0]), len(pos))
            timestamps = _column_numpy(part.column("timestamp"), DEFAULT_FEATURES["timestamp"])
            data: dict[str, np.ndarray] = {}
            for name, key in columns.items():
                spec = features[name]
                if spec["dtype"] == "video":
                    data[key] = video.frames(name, row, timestamps)
                else:
                    data[key] = _column_numpy(part.column(name), spec, root)
            if sidecar is not None:
                for key, m in keymap.items():
                    want = np.dtypes.StringDType() if m["dtype"] == "str" else np.dtype(m["dtype"])
                    data[key] = data[key].astype(want, copy=False).reshape(len(pos), *m["shape"])
                meta = json.loads(row[META_COLUMN])
            else:
                ep_tasks = list(row.get("tasks") or [])
                first = ep_tasks[0] if ep_tasks else tasks[int(part.column("task_index")[0].as_py())]
                meta = {
                    "instruction": first,
                    "task": first,
                    "tasks": ep_tasks or [first],
                    "lerobot_episode_index": int(ep_idx),
                }
            writer.append(Episode(data=data, meta=meta))
    return out
