"""Replay store interop: ROS 2 MCAP bag export, LeRobot v3.0 export/import, and the datasets CLI.

The source store is real: ``experiments/run.py`` records three oracle episodes (~5 s).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import record_oracle_store  # noqa: E402

from embodied_lm.datasets import Episode, ReplayReader, ReplayWriter
from embodied_lm.datasets.__main__ import main as cli_main
from embodied_lm.datasets.lerobot import (
    DEFAULT_DATA_PATH,
    DEFAULT_EPISODES_PATH,
    INFO_PATH,
    SIDECAR_PATH,
    STATE_NAMES,
    STATS_PATH,
    TASKS_PATH,
    export_lerobot,
    import_lerobot,
)
from embodied_lm.datasets.mcap import JOINT_NAMES, export_mcap

ROOT = Path(__file__).resolve().parents[1]
CAMS = ("front", "top")


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("interop")
    path = record_oracle_store(tmp, ["p2_stack", "bowl_place", "p1_grasp"])
    r = ReplayReader(path)
    assert r.n_episodes == 3 and r.n_steps >= 4
    return path


def _leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.endswith(".partial") or ".partial" in p.name)


def _assert_stores_equal(a: ReplayReader, b: ReplayReader, episodes: list[int]) -> None:
    assert b.n_episodes == len(episodes)
    assert sorted(a.keys) == sorted(b.keys) and sorted(a.meta_keys) == sorted(b.meta_keys)
    for j, i in enumerate(episodes):
        ea, eb = a.episode(i), b.episode(j)
        for k, x in ea.data.items():
            y = eb.data[k]
            assert y.dtype == x.dtype and y.shape == x.shape, k
            assert np.array_equal(x, y), k  # exact: images, float32 depth, int16 masks, strings, bools
        assert eb.meta == ea.meta
        assert {k: type(v) for k, v in eb.meta.items()} == {k: type(v) for k, v in ea.meta.items()}


# ============================================================================ MCAP


def _read_bag(path: Path) -> dict[str, list[tuple[int, object]]]:
    from rosbags.highlevel import AnyReader
    from rosbags.typesys import Stores, get_typestore

    msgs: dict[str, list[tuple[int, object]]] = {}
    with AnyReader([path], default_typestore=get_typestore(Stores.ROS2_HUMBLE)) as reader:
        for conn, t, raw in reader.messages():
            msgs.setdefault(conn.topic, []).append((t, reader.deserialize(raw, conn.msgtype)))
    return msgs


def _ns(stamp) -> int:
    return stamp.sec * 1_000_000_000 + stamp.nanosec


def _image(msg) -> np.ndarray:
    dtype = {"rgb8": np.uint8, "32FC1": "<f4", "16SC1": "<i2"}[msg.encoding]
    arr = np.frombuffer(bytes(msg.data), dtype=dtype)
    return (
        arr.reshape(msg.height, msg.width, -1).squeeze(-1)
        if msg.encoding != "rgb8"
        else arr.reshape(msg.height, msg.width, 3)
    )


def test_mcap_round_trip(store: Path, tmp_path: Path) -> None:
    src = ReplayReader(store)
    bag = export_mcap(store, tmp_path / "bag")
    meta_yaml = (bag / "metadata.yaml").read_text()
    assert "storage_identifier: mcap" in meta_yaml and (bag / "bag.mcap").is_file()
    assert _leftovers(tmp_path) == []
    msgs = _read_bag(bag)

    # every message: header stamp == bag timestamp, per-topic time strictly increasing
    for topic, items in msgs.items():
        times = [t for t, _ in items]
        assert times == sorted(set(times)), topic
        for t, m in items:
            hdr = getattr(m, "header", None)
            if hdr is not None:
                assert _ns(hdr.stamp) == t, topic

    eps = [json.loads(m.data) for _, m in msgs["/episode"]]
    assert [e["episode_index"] for e in eps] == list(range(src.n_episodes))
    step_times = [t for t, _ in msgs["/skill"]]
    g = 0
    for i, info in enumerate(eps):
        ep = src.episode(i)
        n = ep.n_steps
        assert info["steps"] == n and info["meta"] == ep.meta
        assert msgs["/instruction"][i][1].data == ep.meta["instruction"]
        times = step_times[g : g + n]
        assert times[0] == _ns_from(info["start"]) and times[-1] == _ns_from(info["end"])
        assert np.all(np.diff(times) == 1_000_000_000)  # default 1 Hz per skill step
        if i:
            assert times[0] - step_times[g - 1] == 2_000_000_000  # one empty slot between episodes
        for k in range(n):
            assert msgs["/skill"][g + k][1].data == str(ep.data["action"][k])
            assert msgs["/skill_success"][g + k][1].data == bool(ep.data["skill_success"][k])
            js = msgs["/joint_states"][g + k][1]
            assert list(js.name) == JOINT_NAMES
            assert np.array_equal(js.position.astype(np.float32), ep.data["robot"][k][:9])
            pose = msgs["/ee_pose"][g + k][1].pose
            ee = np.array(
                [
                    pose.position.x,
                    pose.position.y,
                    pose.position.z,
                    pose.orientation.x,
                    pose.orientation.y,
                    pose.orientation.z,
                    pose.orientation.w,
                ],
                dtype=np.float32,
            )
            assert np.array_equal(ee, ep.data["robot"][k][9:])
            obj = msgs["/objects"][g + k][1]
            assert [d.size for d in obj.layout.dim] == list(ep.data["objects"].shape[1:])
            assert np.array_equal(obj.data.reshape(ep.data["objects"].shape[1:]), ep.data["objects"][k])
            for cam in CAMS:
                t_img, rgb = msgs[f"/camera/{cam}/image"][g + k]
                assert t_img == times[k] and rgb.header.frame_id == f"{cam}_optical_frame"
                assert np.array_equal(_image(rgb), ep.data[f"rgb_{cam}"][k])
                depth = msgs[f"/camera/{cam}/depth"][g + k][1]
                assert np.array_equal(_image(depth), ep.data[f"depth_{cam}"][k])
                assert np.array_equal(_image(msgs[f"/camera/{cam}/mask"][g + k][1]), ep.data[f"mask_{cam}"][k])
                ci = msgs[f"/camera/{cam}/camera_info"][g + k][1]
                assert np.allclose(ci.k.reshape(3, 3), src.attrs["cameras"][cam]["K"])
                assert (ci.width, ci.height) == (128, 128)
        g += n
    assert g == src.n_steps

    # static transforms reproduce world_from_camera
    ((tf_t, tf),) = msgs["/tf_static"]
    for t in tf.transforms:
        cam = t.child_frame_id.removesuffix("_optical_frame")
        q = t.transform.rotation
        x, y, z, w = q.x, q.y, q.z, q.w
        R = np.array(
            [
                [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
                [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
                [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
            ]
        )
        M = np.array(src.attrs["cameras"][cam]["world_from_camera"])
        assert np.allclose(R, M[:3, :3], atol=1e-9)
        assert np.allclose(
            [t.transform.translation.x, t.transform.translation.y, t.transform.translation.z], M[:3, 3]
        )


def _ns_from(d: dict) -> int:
    return d["sec"] * 1_000_000_000 + d["nanosec"]


def test_mcap_subset_fps_and_refusals(store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bag = export_mcap(store, tmp_path / "sub", episodes=[2, 0], fps=4, start_time=10.0)
    msgs = _read_bag(bag)
    assert [json.loads(m.data)["episode_index"] for _, m in msgs["/episode"]] == [2, 0]
    times = [t for t, _ in msgs["/skill"]]
    assert times[0] == 10_000_000_000 and times[1] - times[0] == 250_000_000

    with pytest.raises(FileExistsError, match="exists"):
        export_mcap(store, bag)
    with pytest.raises(IndexError, match="out of range"):
        export_mcap(store, tmp_path / "bad", episodes=[3])
    with pytest.raises(ValueError, match="ROS 2"):
        export_mcap(store, tmp_path / "bad", distro="ROS1_NOETIC")

    # a failure half way leaves neither the bag nor a temp dir behind
    from rosbags.rosbag2 import Writer

    calls = {"n": 0}
    real_write = Writer.write

    def flaky(self, *a, **k):
        calls["n"] += 1
        if calls["n"] == 20:
            raise RuntimeError("disk full")
        return real_write(self, *a, **k)

    monkeypatch.setattr(Writer, "write", flaky)
    with pytest.raises(RuntimeError, match="disk full"):
        export_mcap(store, tmp_path / "broken")
    assert not (tmp_path / "broken").exists() and _leftovers(tmp_path) == []


# ============================================================================ LeRobot v3.0


def test_lerobot_round_trip_is_exact(store: Path, tmp_path: Path) -> None:
    src = ReplayReader(store)
    root = export_lerobot(store, tmp_path / "lr")
    back = import_lerobot(root, tmp_path / "back.zarr")
    dst = ReplayReader(back)
    _assert_stores_equal(src, dst, list(range(src.n_episodes)))
    attrs = dst.attrs
    assert attrs.pop("imported_from")["format"] == "lerobot_v3.0"
    assert attrs == src.attrs
    assert _leftovers(tmp_path) == []

    # a subset, reordered
    sub = import_lerobot(export_lerobot(store, tmp_path / "lr_sub", episodes=[2, 0]), tmp_path / "sub.zarr")
    _assert_stores_equal(src, ReplayReader(sub), [2, 0])


def test_lerobot_layout_matches_v3(store: Path, tmp_path: Path) -> None:
    src = ReplayReader(store)
    root = export_lerobot(store, tmp_path / "lr")
    files = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())
    assert files == sorted(
        [
            INFO_PATH,
            STATS_PATH,
            TASKS_PATH,
            SIDECAR_PATH,
            DEFAULT_EPISODES_PATH.format(chunk_index=0, file_index=0),
            DEFAULT_DATA_PATH.format(chunk_index=0, file_index=0),
        ]
    )
    assert files[0] == "data/chunk-000/file-000.parquet"

    info = json.loads((root / INFO_PATH).read_text())
    assert list(info) == [
        "codebase_version",
        "robot_type",
        "total_episodes",
        "total_frames",
        "total_tasks",
        "chunks_size",
        "data_files_size_in_mb",
        "video_files_size_in_mb",
        "fps",
        "splits",
        "data_path",
        "video_path",
        "features",
    ]
    assert info["codebase_version"] == "v3.0" and info["video_path"] is None
    assert info["data_path"] == "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
    assert (info["total_episodes"], info["total_frames"], info["fps"]) == (3, src.n_steps, 1)
    assert info["splits"] == {"train": "0:3"} and info["chunks_size"] == 1000
    feats = info["features"]
    expected = {
        "observation.images.front": ("image", [128, 128, 3]),
        "observation.images.top": ("image", [128, 128, 3]),
        "observation.depth.front": ("float32", [128, 128]),
        "observation.depth.top": ("float32", [128, 128]),
        "observation.mask.front": ("int16", [128, 128]),
        "observation.mask.top": ("int16", [128, 128]),
        "observation.state": ("float32", [16]),
        "observation.objects": ("float32", [16, 12]),
        "action.text": ("string", [1]),
        "action.success": ("bool", [1]),
        "action": ("float32", [16]),
        "next.done": ("bool", [1]),
        "timestamp": ("float32", [1]),
        "frame_index": ("int64", [1]),
        "episode_index": ("int64", [1]),
        "index": ("int64", [1]),
        "task_index": ("int64", [1]),
    }
    assert {k: (v["dtype"], v["shape"]) for k, v in feats.items()} == expected
    assert all(set(v) >= {"dtype", "shape", "names"} for v in feats.values())
    assert list(feats)[-5:] == ["timestamp", "frame_index", "episode_index", "index", "task_index"]
    assert feats["observation.state"]["names"] == STATE_NAMES and STATE_NAMES[:9] == JOINT_NAMES
    assert feats["observation.images.top"]["names"] == ["height", "width", "channels"]

    # data parquet: one column per feature, in info order, with HF-datasets storage types
    data = pq.read_table(root / DEFAULT_DATA_PATH.format(chunk_index=0, file_index=0))
    assert data.column_names == list(feats)
    image_t = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    types = {
        "observation.images.top": image_t,
        "observation.state": pa.list_(pa.float32(), 16),
        "observation.depth.top": pa.list_(pa.list_(pa.float32())),
        "observation.mask.top": pa.list_(pa.list_(pa.int16())),
        "observation.objects": pa.list_(pa.list_(pa.float32())),
        "action": pa.list_(pa.float32(), 16),
        "action.text": pa.string(),
        "action.success": pa.bool_(),
        "next.done": pa.bool_(),
        "timestamp": pa.float32(),
        "frame_index": pa.int64(),
        "episode_index": pa.int64(),
        "index": pa.int64(),
        "task_index": pa.int64(),
    }
    for name, t in types.items():
        assert data.schema.field(name).type == t, name
    hf = json.loads(data.schema.metadata[b"huggingface"])["info"]["features"]
    assert hf["observation.images.top"] == {"_type": "Image"}
    assert hf["observation.state"]["_type"] == "Sequence" and hf["observation.depth.top"]["_type"] == "Array2D"
    pf = pq.ParquetFile(root / DEFAULT_DATA_PATH.format(chunk_index=0, file_index=0))
    assert pf.metadata.num_row_groups == 3  # one row group per episode
    cell = data.column("observation.images.top")[0].as_py()
    assert cell["path"] is None and cell["bytes"][:8] == b"\x89PNG\r\n\x1a\n"

    # frame bookkeeping
    n = src.n_steps
    ends = src.episode_ends
    ep_idx = np.repeat(np.arange(3), np.diff(np.concatenate([[0], ends])))
    assert np.array_equal(data.column("index").to_numpy(), np.arange(n))
    assert np.array_equal(data.column("episode_index").to_numpy(), ep_idx)
    frame = np.concatenate([np.arange(e - s) for s, e in zip(np.concatenate([[0], ends[:-1]]), ends, strict=True)])
    assert np.array_equal(data.column("frame_index").to_numpy(), frame)
    assert np.array_equal(data.column("timestamp").to_numpy(), frame.astype(np.float32))
    done = data.column("next.done").to_numpy(zero_copy_only=False)
    assert np.array_equal(np.flatnonzero(done), ends - 1)
    state = np.stack(data.column("observation.state").to_numpy(zero_copy_only=False))
    action = np.stack(data.column("action").to_numpy(zero_copy_only=False))
    for s, e in zip(np.concatenate([[0], ends[:-1]]), ends, strict=True):  # action = next step's state
        assert np.array_equal(action[s : e - 1], state[s + 1 : e]) and np.array_equal(action[e - 1], state[e - 1])

    # tasks: instruction strings; task_index per frame points at them
    tasks = pq.read_table(root / TASKS_PATH)
    assert tasks.schema.field("task_index").type == pa.int64() and tasks.schema.field("task").type == pa.string()
    task_list = tasks.column("task").to_pylist()
    instructions = [src.episode(i).meta["instruction"] for i in range(3)]
    assert task_list == list(dict.fromkeys(instructions)) and info["total_tasks"] == len(task_list)
    ti = data.column("task_index").to_numpy()
    assert [task_list[ti[s]] for s in np.concatenate([[0], ends[:-1]])] == instructions
    pd = pytest.importorskip("pandas")
    df = pd.read_parquet(root / TASKS_PATH)  # what lerobot's load_tasks does: the task is the index
    assert (
        df.index.name == "task"
        and list(df.index) == task_list
        and list(df["task_index"]) == [0, 1, 2][: len(task_list)]
    )

    # episodes metadata
    eps = pq.read_table(root / DEFAULT_EPISODES_PATH.format(chunk_index=0, file_index=0))
    for col, t in {
        "episode_index": pa.int64(),
        "tasks": pa.list_(pa.string()),
        "length": pa.int64(),
        "data/chunk_index": pa.int64(),
        "data/file_index": pa.int64(),
        "dataset_from_index": pa.int64(),
        "dataset_to_index": pa.int64(),
        "meta/episodes/chunk_index": pa.int64(),
        "meta/episodes/file_index": pa.int64(),
    }.items():
        assert eps.schema.field(col).type == t, col
    rows = eps.to_pylist()
    assert [r["episode_index"] for r in rows] == [0, 1, 2]
    assert [r["dataset_to_index"] for r in rows] == ends.tolist()
    assert [r["dataset_from_index"] for r in rows] == [0, *ends[:-1].tolist()]
    assert [r["length"] for r in rows] == np.diff(np.concatenate([[0], ends])).tolist()
    assert [r["tasks"] for r in rows] == [[t] for t in instructions]
    assert json.loads(rows[1]["embodied_lm/meta"]) == src.episode(1).meta
    assert any(c.startswith("stats/observation.state/") for c in eps.column_names)

    # stats.json: lerobot keys and shapes
    stats = json.loads((root / STATS_PATH).read_text())
    assert "action.text" not in stats
    for name in ("observation.images.top", "observation.state", "observation.depth.top", "timestamp"):
        assert set(stats[name]) == {"min", "max", "mean", "std", "count", "q01", "q10", "q50", "q90", "q99"}, name
        assert stats[name]["count"] == [n]
    assert np.array(stats["observation.images.top"]["mean"]).shape == (3, 1, 1)
    assert np.array(stats["observation.state"]["max"]).shape == (16,)
    assert np.array(stats["observation.objects"]["min"]).shape == (16, 12)
    assert np.array(stats["observation.depth.top"]["min"]).shape == (1,)
    rgb = np.concatenate([src.episode(i).data["rgb_top"] for i in range(3)]) / 255.0
    assert np.allclose(np.array(stats["observation.images.top"]["mean"]).reshape(3), rgb.mean((0, 1, 2)))
    assert np.allclose(np.array(stats["observation.images.top"]["std"]).reshape(3), rgb.std((0, 1, 2)))


def test_lerobot_file_rotation(store: Path, tmp_path: Path) -> None:
    """Tiny file size + 2 files per chunk: each episode in its own file, chunk-001 used; import still exact."""
    root = export_lerobot(store, tmp_path / "lr", data_files_size_in_mb=0.01, chunks_size=2)
    files = sorted(str(p.relative_to(root)) for p in (root / "data").rglob("*.parquet"))
    assert files == [
        "data/chunk-000/file-000.parquet",
        "data/chunk-000/file-001.parquet",
        "data/chunk-001/file-000.parquet",
    ]
    rows = pq.read_table(root / DEFAULT_EPISODES_PATH.format(chunk_index=0, file_index=0)).to_pylist()
    assert [(r["data/chunk_index"], r["data/file_index"]) for r in rows] == [(0, 0), (0, 1), (1, 0)]
    src = ReplayReader(store)
    _assert_stores_equal(src, ReplayReader(import_lerobot(root, tmp_path / "back.zarr")), [0, 1, 2])


def test_lerobot_refusals_and_cleanup(store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = export_lerobot(store, tmp_path / "lr", episodes=[1])
    with pytest.raises(FileExistsError):
        export_lerobot(store, root)
    with pytest.raises(FileExistsError):
        import_lerobot(root, store)
    with pytest.raises(IndexError):
        export_lerobot(store, tmp_path / "x", episodes=[-4])
    with pytest.raises(ValueError, match="duplicate"):
        export_lerobot(store, tmp_path / "x", episodes=[0, 0])
    with pytest.raises(ValueError, match="integer"):
        export_lerobot(store, tmp_path / "x", fps=2.5)
    info = json.loads((root / INFO_PATH).read_text())
    old = tmp_path / "old"
    (old / "meta").mkdir(parents=True)
    (old / INFO_PATH).write_text(json.dumps({**info, "codebase_version": "v2.1"}))
    with pytest.raises(ValueError, match="v3"):
        import_lerobot(old, tmp_path / "x.zarr")

    import embodied_lm.datasets.lerobot as lr

    calls = {"n": 0}
    real_png = lr._png

    def flaky(frame):
        calls["n"] += 1
        if calls["n"] == 5:
            raise RuntimeError("boom")
        return real_png(frame)

    monkeypatch.setattr(lr, "_png", flaky)
    with pytest.raises(RuntimeError, match="boom"):
        export_lerobot(store, tmp_path / "broken")
    assert (
        not (tmp_path / "broken").exists() and not (tmp_path / "x").exists() and not (tmp_path / "x.zarr").exists()
    )
    assert _leftovers(tmp_path) == []


def _write_foreign_dataset(
    root: Path, fps: int = 10
) -> tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray]]:
    """A LeRobot v3 dataset as lerobot itself lays it out: state/action vectors, one camera as a video
    shard holding both episodes (from/to timestamps), one as parquet images; tasks.parquet written by
    pandas with an unnamed index (``__index_level_0__``, as lerobot 0.4 + pandas 2 produce)."""
    import imageio.v2 as iio
    from PIL import Image

    rng = np.random.default_rng(0)
    lengths = [4, 3]
    states = [rng.normal(size=(n, 4)).astype(np.float32) for n in lengths]
    actions = [rng.normal(size=(n, 2)).astype(np.float32) for n in lengths]
    frames = []
    for n in lengths:  # smooth images survive H.264 well
        yy, xx = np.mgrid[0:32, 0:32]
        frames.append(
            np.stack(
                [np.stack([(xx * 8 + 20 * t) % 256, yy * 8, np.full_like(xx, 60 * t)], -1) for t in range(n)]
            ).astype(np.uint8)
        )
    features = {
        "observation.state": {"dtype": "float32", "shape": [4], "names": ["a", "b", "c", "d"]},
        "action": {"dtype": "float32", "shape": [2], "names": ["x", "y"]},
        "observation.images.wrist": {
            "dtype": "image",
            "shape": [32, 32, 3],
            "names": ["height", "width", "channels"],
        },
        "observation.images.cam": {
            "dtype": "video",
            "shape": [32, 32, 3],
            "names": ["height", "width", "channels"],
        },
        "timestamp": {"dtype": "float32", "shape": [1], "names": None},
        "frame_index": {"dtype": "int64", "shape": [1], "names": None},
        "episode_index": {"dtype": "int64", "shape": [1], "names": None},
        "index": {"dtype": "int64", "shape": [1], "names": None},
        "task_index": {"dtype": "int64", "shape": [1], "names": None},
    }
    info = {
        "codebase_version": "v3.0",
        "robot_type": "so100",
        "total_episodes": 2,
        "total_frames": 7,
        "total_tasks": 2,
        "chunks_size": 1000,
        "data_files_size_in_mb": 100,
        "video_files_size_in_mb": 200,
        "fps": fps,
        "splits": {"train": "0:2"},
        "data_path": DEFAULT_DATA_PATH,
        "video_path": "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4",
        "features": features,
    }
    (root / "meta").mkdir(parents=True)
    (root / INFO_PATH).write_text(json.dumps(info))

    def png(a):
        import io

        b = io.BytesIO()
        Image.fromarray(a).save(b, format="PNG")
        return b.getvalue()

    cols: dict[str, list] = {k: [] for k in features if k != "observation.images.cam"}
    g = 0
    for e, n in enumerate(lengths):
        for t in range(n):
            cols["observation.state"].append(states[e][t].tolist())
            cols["action"].append(actions[e][t].tolist())
            cols["observation.images.wrist"].append({"bytes": png(255 - frames[e][t]), "path": None})
            cols["timestamp"].append(t / fps)
            cols["frame_index"].append(t)
            cols["episode_index"].append(e)
            cols["index"].append(g)
            cols["task_index"].append(e)
            g += 1
    table = pa.table(
        {
            "observation.state": pa.array(cols["observation.state"], pa.list_(pa.float32(), 4)),
            "action": pa.array(cols["action"], pa.list_(pa.float32(), 2)),
            "observation.images.wrist": pa.array(
                cols["observation.images.wrist"], pa.struct([("bytes", pa.binary()), ("path", pa.string())])
            ),
            "timestamp": pa.array(cols["timestamp"], pa.float32()),
            **{k: pa.array(cols[k], pa.int64()) for k in ("frame_index", "episode_index", "index", "task_index")},
        }
    )
    (root / "data/chunk-000").mkdir(parents=True)
    pq.write_table(table, root / "data/chunk-000/file-000.parquet")
    vid = root / "videos/observation.images.cam/chunk-000/file-000.mp4"
    vid.parent.mkdir(parents=True)
    with iio.get_writer(
        vid,
        format="FFMPEG",
        mode="I",
        fps=fps,
        codec="libx264",
        quality=10,
        macro_block_size=1,
        ffmpeg_log_level="error",
    ) as w:
        for f in np.concatenate(frames):
            w.append_data(f)
    pd = pytest.importorskip("pandas")
    pd.DataFrame({"task_index": [0, 1]}, index=["stack the cups", "open the drawer"]).to_parquet(root / TASKS_PATH)
    eps = pa.table(
        {
            "episode_index": pa.array([0, 1], pa.int64()),
            "tasks": pa.array([["stack the cups"], ["open the drawer"]]),
            "length": pa.array(lengths, pa.int64()),
            "data/chunk_index": pa.array([0, 0], pa.int64()),
            "data/file_index": pa.array([0, 0], pa.int64()),
            "dataset_from_index": pa.array([0, 4], pa.int64()),
            "dataset_to_index": pa.array([4, 7], pa.int64()),
            "videos/observation.images.cam/chunk_index": pa.array([0, 0], pa.int64()),
            "videos/observation.images.cam/file_index": pa.array([0, 0], pa.int64()),
            "videos/observation.images.cam/from_timestamp": pa.array([0.0, 4 / fps]),
            "videos/observation.images.cam/to_timestamp": pa.array([4 / fps, 7 / fps]),
        }
    )
    (root / "meta/episodes/chunk-000").mkdir(parents=True)
    pq.write_table(eps, root / "meta/episodes/chunk-000/file-000.parquet")
    return states, actions, frames


def test_import_foreign_lerobot_dataset(tmp_path: Path) -> None:
    root = tmp_path / "foreign"
    states, actions, frames = _write_foreign_dataset(root)
    r = ReplayReader(import_lerobot(root, tmp_path / "foreign.zarr"))
    assert r.n_episodes == 2 and r.n_steps == 7
    assert sorted(r.keys) == ["action", "observation.state", "rgb_cam", "rgb_wrist", "timestamp"]
    assert r.attrs["lerobot"]["robot_type"] == "so100"
    for e in range(2):
        ep = r.episode(e)
        assert np.array_equal(ep.data["observation.state"], states[e])
        assert np.array_equal(ep.data["action"], actions[e])
        assert np.array_equal(ep.data["rgb_wrist"], 255 - frames[e])  # PNG: exact
        assert ep.data["rgb_cam"].shape == frames[e].shape  # H.264: the right frames, lossy
        err = np.abs(ep.data["rgb_cam"].astype(int) - frames[e]).mean(axis=(1, 2, 3))
        assert err.max() < 12, err
        assert ep.meta["instruction"] == ["stack the cups", "open the drawer"][e]
        assert ep.meta["lerobot_episode_index"] == e


def test_import_our_export_without_sidecar_is_generic(store: Path, tmp_path: Path) -> None:
    root = export_lerobot(store, tmp_path / "lr", episodes=[1])
    (root / SIDECAR_PATH).unlink()
    r = ReplayReader(import_lerobot(root, tmp_path / "g.zarr"))
    src = ReplayReader(store).episode(1)
    ep = r.episode(0)
    assert np.array_equal(ep.data["rgb_top"], src.data["rgb_top"])
    assert np.array_equal(ep.data["observation.state"], src.data["robot"])
    assert [str(s) for s in ep.data["action.text"]] == [str(s) for s in src.data["action"]]
    assert ep.meta["instruction"] == src.meta["instruction"]


def test_lerobot_library_reads_export(store: Path, tmp_path: Path) -> None:
    """Where lerobot (>= 0.4, dataset v3.0) is installed: LeRobotDataset loads our export."""
    lerobot_dataset = pytest.importorskip("lerobot.datasets.lerobot_dataset")
    root = export_lerobot(store, tmp_path / "lr")
    ds = lerobot_dataset.LeRobotDataset("local/embodied_lm", root=root)
    src = ReplayReader(store)
    assert len(ds) == src.n_steps and ds.num_episodes == src.n_episodes
    item = ds[1]
    ep, t = src.locate(1)
    e = src.episode(ep)
    assert item["task"] == e.meta["instruction"] and item["action.text"] == str(e.data["action"][t])
    img = (item["observation.images.top"].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    assert np.array_equal(img, e.data["rgb_top"][t])


# ============================================================================ CLI


def _cli(capsys: pytest.CaptureFixture, *argv: str) -> tuple[int, str, str]:
    rc = cli_main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def test_cli(store: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    rc, out, err = _cli(capsys, "info", str(store))
    assert rc == 0 and err == ""
    assert "episodes  3" in out and "rgb_top" in out and "uint8" in out and "top 128x128" in out
    assert "bowl_place" in out

    rc, out, _ = _cli(capsys, "export", "--to", "mcap", str(store), str(tmp_path / "bag"), "--episodes", "0,2")
    assert rc == 0 and "bag" in out
    assert [json.loads(m.data)["episode_index"] for _, m in _read_bag(tmp_path / "bag")["/episode"]] == [0, 2]
    rc, _, _ = _cli(capsys, "export", "--to", "lerobot", str(store), str(tmp_path / "lr"), "--episodes", "1")
    assert rc == 0
    rc, out, _ = _cli(capsys, "import-lerobot", str(tmp_path / "lr"), str(tmp_path / "back.zarr"))
    assert rc == 0 and "1 episodes" in out
    _assert_stores_equal(ReplayReader(store), ReplayReader(tmp_path / "back.zarr"), [1])

    (tmp_path / "plain").mkdir()
    bad = [
        (["info", str(tmp_path / "missing.zarr")], "no such file"),
        (["info", str(tmp_path / "plain")], "not a zarr group"),
        (["export", "--to", "mcap", str(store), str(tmp_path / "bag")], "exists"),
        (["export", "--to", "lerobot", str(store), str(tmp_path / "lr2"), "--episodes", "7"], "out of range"),
        (["export", "--to", "lerobot", str(store), str(tmp_path / "lr2"), "--episodes", "one"], "integers"),
        (["export", "--to", "parquet", str(store), str(tmp_path / "lr2")], "invalid choice"),
        (["import-lerobot", str(tmp_path / "lr"), str(store)], "exists"),
        (["import-lerobot", str(tmp_path / "plain"), str(tmp_path / "x.zarr")], "info.json"),
        (["view", str(store), "9", str(tmp_path / "v.gif")], "out of range"),
        (["view", str(store), "0", str(tmp_path / "v.gif"), "--camera", "side"], "camera 'side'"),
        (["view", str(store), "0", str(tmp_path / "v.avi")], ".mp4 or .gif"),
    ]
    for argv, msg in bad:
        try:
            rc = cli_main(argv)
        except SystemExit as e:  # argparse usage errors
            rc = e.code
        out, err = capsys.readouterr()
        assert rc == 2, argv
        assert err.startswith("error: ") and err.count("\n") == 1 and msg in err, (argv, err)
    assert not (tmp_path / "lr2").exists() and not (tmp_path / "x.zarr").exists()


def test_cli_module_entry_point(tmp_path: Path) -> None:
    bad = subprocess.run(
        [sys.executable, "-m", "embodied_lm.datasets", "info", str(tmp_path / "nope.zarr")],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert bad.returncode == 2 and bad.stdout == ""
    assert bad.stderr == f"error: {tmp_path / 'nope.zarr'}: no such file or directory\n"


def test_non_sim_store_exports_and_round_trips(tmp_path: Path) -> None:
    """Stores that are not from the sim still export (keys map to observation.<key>) and round-trip."""
    path = tmp_path / "tiny.zarr"
    rng = np.random.default_rng(1)
    with ReplayWriter(path, {"note": "synthetic"}) as w:
        for n in (2, 3):
            w.append(
                Episode(
                    data={
                        "rgb_cam": rng.integers(0, 255, (n, 8, 8, 3), dtype=np.uint8),
                        "reward": rng.normal(size=n),
                        "count": np.arange(n, dtype=np.int32),
                        "action": np.array([f"a{i}" for i in range(n)]),
                    },
                    meta={"instruction": f"do {n}", "score": 0.5 * n},
                )
            )
    root = export_lerobot(path, tmp_path / "lr", robot_type=None)
    feats = json.loads((root / INFO_PATH).read_text())["features"]
    assert {"observation.images.cam", "observation.reward", "observation.count", "action.text"} <= set(feats)
    assert "action" not in feats  # no robot state to derive it from
    _assert_stores_equal(ReplayReader(path), ReplayReader(import_lerobot(root, tmp_path / "b.zarr")), [0, 1])
    bag = export_mcap(path, tmp_path / "bag")
    assert [m.data for _, m in _read_bag(bag)["/skill"]] == ["a0", "a1", "a0", "a1", "a2"]
