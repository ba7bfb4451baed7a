"""Tests for embodied_lm.datasets.zarr_store (zarr 3 replay store)."""

from __future__ import annotations

import importlib.util
import os
import pickle
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr

from embodied_lm.datasets import (
    LAYOUT,
    Episode,
    InvalidStoreError,
    ReplayReader,
    ReplayWriter,
    StepDataset,
    StoreLockedError,
)
from embodied_lm.datasets.zarr_store import _prepare_data, _prepare_meta

CHILD = Path(__file__).with_name("_zarr_writer_child.py")
_spec = importlib.util.spec_from_file_location("_zarr_writer_child", CHILD)
child = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(child)


def make_episode(i: int, T: int | None = None) -> Episode:
    rng = np.random.default_rng(100 + i)
    T = T or 4 + i
    return Episode(
        data={
            "rgb": rng.integers(0, 256, (T, 32, 32, 3), dtype=np.uint8),
            "depth": rng.random((T, 32, 32), dtype=np.float32),
            "mask": rng.integers(-5, 50, (T, 32, 32), dtype=np.int16),
            "state": rng.standard_normal((T, 16)).astype(np.float32),
            "action": np.array([f"skill {i}.{t}: pick(ü{'x' * t})" for t in range(T)]),
            "grasped": rng.random(T) > 0.5,
        },
        meta={
            "task": f"task_{i}",
            "params": {"n": i, "colors": ["red", "blue"], "nested": {"k": 1.5}},
            "seed": 1000 + i,
            "instruction": f"put block {i} in the bowl",
            "plan": "pick(block)\nplace(bowl)",
            "success": i % 2 == 0,
            "n_objects": 3 + i,
            "level": "easy",
            "refer": "",
        },
    )


def assert_episode_equal(got: Episode, want: Episode) -> None:
    assert set(got.data) == set(want.data)
    for k, v in want.data.items():
        g = got.data[k]
        assert g.shape == v.shape, k
        if v.dtype.kind in "UT":
            assert g.dtype.kind == "T" and list(g) == list(v), k
        else:
            assert g.dtype == v.dtype, k
            np.testing.assert_array_equal(g, v, err_msg=k)
    assert got.meta == want.meta
    assert all(type(got.meta[k]) is type(v) for k, v in want.meta.items())


def write(path: Path, episodes: list[Episode], **kw) -> None:
    with ReplayWriter(path, **kw) as w:
        for ep in episodes:
            w.append(ep)


def snapshot(path: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(path)): p.read_bytes()
        for p in sorted(path.rglob("*"))
        if p.is_file() and p.name != ".writer.lock"
    }


# ----------------------------------------------------------------------------- round trip


def test_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "run.zarr"
    eps = [make_episode(i) for i in range(3)]
    attrs = {"versions": {"zarr": zarr.__version__}, "intrinsics": [[500.0, 0, 16], [0, 500.0, 16], [0, 0, 1]]}
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the string dtype must not warn
        with ReplayWriter(path, attrs=attrs) as w:
            assert [w.append(ep) for ep in eps] == [0, 1, 2]
            assert w.n_episodes == 3
        r = ReplayReader(path)
        got = list(r)
    assert r.n_episodes == 3 and len(r) == 3
    assert r.n_steps == sum(ep.n_steps for ep in eps)
    assert r.keys == sorted(eps[0].data)
    assert r.attrs == {**attrs, "format_version": 1, "layout": LAYOUT}
    for g, e in zip(got, eps, strict=True):
        assert_episode_equal(g, e)
    assert_episode_equal(r.episode(-1), eps[2])

    # step access across an episode boundary
    g = eps[0].n_steps + 1
    assert r.locate(g) == (1, 1)
    s = r.step(g)
    assert s["action"] == eps[1].data["action"][1]
    np.testing.assert_array_equal(s["rgb"], eps[1].data["rgb"][1])
    assert s["grasped"].shape == () and bool(s["grasped"]) == eps[1].data["grasped"][1]
    with pytest.raises(IndexError):
        r.step(r.n_steps)

    # on-disk layout as in diffusion_policy's replay buffer
    root = zarr.open_group(path, mode="r")
    ends = root["meta/episode_ends"]
    assert ends.dtype == np.int64
    np.testing.assert_array_equal(ends[:], np.cumsum([ep.n_steps for ep in eps]))
    rgb = root["data/rgb"]
    assert rgb.shape == (r.n_steps, 32, 32, 3) and rgb.chunks[1:] == (32, 32, 3) and rgb.chunks[0] >= 1
    blosc = rgb.compressors[0]
    assert isinstance(blosc, zarr.codecs.BloscCodec) and blosc.cname.value == "zstd"
    assert root["meta/params"][0].item() == '{"n": 0, "colors": ["red", "blue"], "nested": {"k": 1.5}}'
    assert root["meta/seed"].dtype == np.int64 and root["meta/success"].dtype == np.bool_
    assert not (path / ".writer.lock").exists()  # removed on close


def test_append_across_runs(tmp_path: Path) -> None:
    path = tmp_path / "run.zarr"
    eps = [make_episode(i) for i in range(3)]
    write(path, eps[:2], attrs={"run": 1})
    with ReplayWriter(path, attrs={"run": 2}) as w:
        assert w.n_episodes == 2
        assert w.append(eps[2]) == 2
    r = ReplayReader(path)
    assert r.n_episodes == 3
    for g, e in zip(r, eps, strict=True):
        assert_episode_equal(g, e)
    assert r.attrs["run"] == 1  # original attrs are kept
    assert r.attrs["appended_runs"] == [{"first_episode": 2, "attrs": {"run": 2}}]


def test_episode_reads_only_its_slice(tmp_path: Path) -> None:
    path = tmp_path / "many.zarr"
    eps = [make_episode(i % 4, T=2 + i % 3) for i in range(24)]
    write(path, eps, chunk_bytes=1)  # one step per chunk -> every episode has its own chunk files
    r = ReplayReader(path)
    k = 13
    s, e = int(r.episode_ends[k - 1]), int(r.episode_ends[k])
    # corrupt every data chunk outside episode k: reading any of them would fail to decode
    n_bad = 0
    for f in (path / "data").rglob("*"):
        parts = f.relative_to(path / "data").parts  # (key, "c", t, ...)
        if f.is_file() and parts[1:2] == ("c",) and not s <= int(parts[2]) < e:
            f.write_bytes(b"garbage")
            n_bad += 1
    assert n_bad > r.n_steps  # (all-fill chunks, e.g. all-False bools, are never written)
    r = ReplayReader(path)
    assert_episode_equal(r.episode(k), eps[k])
    assert r.step(s + 1)["action"] == eps[k].data["action"][1]
    with pytest.raises(RuntimeError):  # sanity: blosc fails on the corrupted chunks of other episodes
        r.episode(k + 1)


def test_step_dataset(tmp_path: Path) -> None:
    path = tmp_path / "run.zarr"
    eps = [make_episode(i) for i in range(3)]
    write(path, eps)
    ds = StepDataset(path)
    assert len(ds) == sum(ep.n_steps for ep in eps)
    item = ds[eps[0].n_steps + 2]
    assert item["episode_index"] == 1 and item["step_in_episode"] == 2
    assert item["action"] == eps[1].data["action"][2]
    assert item["rgb"].dtype == torch.uint8 and torch.equal(item["rgb"], torch.from_numpy(eps[1].data["rgb"][2]))
    assert item["grasped"].dtype == torch.bool and item["grasped"].shape == ()
    assert ds[-1]["step_in_episode"] == eps[2].n_steps - 1

    ds2 = pickle.loads(pickle.dumps(ds))  # picklable after first access (handle dropped)
    assert ds2._reader is None and ds2[0]["action"] == eps[0].data["action"][0]

    sub = StepDataset(path, keys=["state", "action"])
    loader = torch.utils.data.DataLoader(sub, batch_size=4, num_workers=0)
    batches = list(loader)
    states = torch.cat([b["state"] for b in batches])
    np.testing.assert_array_equal(states.numpy(), np.concatenate([ep.data["state"] for ep in eps]))
    assert sum((b["action"] for b in batches), []) == [a for ep in eps for a in ep.data["action"]]
    assert set(batches[0]) == {"state", "action", "episode_index", "step_in_episode"}
    with pytest.raises(ValueError, match="'nope'"):
        StepDataset(path, keys=["nope"])


# ----------------------------------------------------------------------------- rejection


def _mutate(kind: str) -> tuple[Episode, str]:
    ep = make_episode(5)
    d, m = ep.data, ep.meta
    if kind == "extra_data_key":
        d["extra"] = np.zeros(ep.n_steps)
        return ep, "extra"
    if kind == "missing_data_key":
        del d["depth"]
        return ep, "depth"
    if kind == "shape":
        d["state"] = np.zeros((ep.n_steps, 17), np.float32)
        return ep, "state"
    if kind == "dtype":
        d["mask"] = d["mask"].astype(np.int32)
        return ep, "mask"
    if kind == "str_to_num":
        d["action"] = np.zeros(ep.n_steps)
        return ep, "action"
    if kind == "extra_meta_key":
        m["camera"] = "front"
        return ep, "camera"
    if kind == "missing_meta_key":
        del m["level"]
        return ep, "level"
    if kind == "meta_type":
        m["seed"] = "not an int"
        return ep, "seed"
    if kind == "ragged_T":
        d["state"] = d["state"][:-1]
        return ep, "state"
    raise AssertionError(kind)


@pytest.mark.parametrize(
    "kind",
    [
        "extra_data_key",
        "missing_data_key",
        "shape",
        "dtype",
        "str_to_num",
        "extra_meta_key",
        "missing_meta_key",
        "meta_type",
        "ragged_T",
    ],
)
def test_rejects_mismatch(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "run.zarr"
    with ReplayWriter(path) as w:
        w.append(make_episode(0))
        before = snapshot(path)
        bad, key = _mutate(kind)
        with pytest.raises(ValueError, match=repr(key)):
            w.append(bad)
        assert snapshot(path) == before  # nothing was written
        assert w.append(make_episode(1)) == 1  # writer still usable
    assert ReplayReader(path).n_episodes == 2


def test_rejects_bad_first_episode(tmp_path: Path) -> None:
    with ReplayWriter(tmp_path / "s.zarr") as w:
        with pytest.raises(ValueError, match="'x'"):
            w.append(Episode({"a": np.zeros(3), "x": np.zeros(2)}, {}))
        with pytest.raises(ValueError, match="'x'"):
            w.append(Episode({"x": np.float32(1.0)}, {}))
        with pytest.raises(ValueError, match="'o'"):
            w.append(Episode({"o": np.array([1, "a"], dtype=object)}, {}))
        with pytest.raises(ValueError, match="'m'"):
            w.append(Episode({"a": np.zeros(3)}, {"m": object()}))
        assert w.n_episodes == 0


def test_failed_append_rolls_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "run.zarr"
    with ReplayWriter(path) as w:
        w.append(make_episode(0))

        def boom(self, meta):
            raise OSError("disk full")

        monkeypatch.setattr(ReplayWriter, "_write_meta", boom)
        with pytest.raises(OSError):
            w.append(make_episode(1))
        monkeypatch.undo()
        assert zarr.open_group(path, mode="r")["data/rgb"].shape[0] == make_episode(0).n_steps
        assert w.append(make_episode(2)) == 1
    r = ReplayReader(path)
    assert_episode_equal(r.episode(1), make_episode(2))


@pytest.mark.parametrize("what", ["missing", "plain_dir", "file", "half_created", "zarr_array"])
def test_reader_invalid_store(tmp_path: Path, what: str) -> None:
    path = tmp_path / "x.zarr"
    if what == "plain_dir":
        path.mkdir()
        (path / "notes.txt").write_text("hi")
    elif what == "file":
        path.write_text("not a store")
    elif what == "half_created":
        zarr.open_group(path, mode="w").require_group("meta")
    elif what == "zarr_array":
        zarr.create_array(path, shape=(3,), dtype="int8")
    with pytest.raises(InvalidStoreError) as exc:
        ReplayReader(path)
    msg = str(exc.value)
    assert str(path) in msg and "\n" not in msg
    with pytest.raises(InvalidStoreError):
        StepDataset(path)


def test_writer_reinitialises_only_empty_half_created(tmp_path: Path) -> None:
    # killed during creation: group + empty episode_ends, but no layout marker yet
    half = tmp_path / "half.zarr"
    g = zarr.open_group(half, mode="w")
    g.require_group("meta").create_array("episode_ends", shape=(0,), dtype="int64")
    write(half, [make_episode(0)], attrs={"a": 1})
    assert ReplayReader(half).n_episodes == 1 and ReplayReader(half).attrs["a"] == 1

    # no marker but committed episodes: someone else's data, refuse
    foreign = tmp_path / "foreign.zarr"
    g = zarr.open_group(foreign, mode="w")
    g.require_group("meta").create_array("episode_ends", data=np.array([5], dtype=np.int64))
    with pytest.raises(InvalidStoreError, match="refusing"):
        ReplayWriter(foreign)

    # non-empty directory that is not a zarr store, or a file: refuse
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "keep.txt").write_text("x")
    with pytest.raises(InvalidStoreError, match="refusing"):
        ReplayWriter(plain)
    assert (plain / "keep.txt").exists()
    (tmp_path / "f").write_text("x")
    with pytest.raises(InvalidStoreError):
        ReplayWriter(tmp_path / "f")


def test_lock(tmp_path: Path) -> None:
    path = tmp_path / "run.zarr"
    w1 = ReplayWriter(path)
    with pytest.raises(StoreLockedError, match=f"pid {os.getpid()}"):
        ReplayWriter(path)
    w1.append(make_episode(0))
    assert ReplayReader(path).n_episodes == 1  # readers need no lock
    w1.close()
    with pytest.raises(RuntimeError, match="closed"):
        w1.append(make_episode(1))
    with ReplayWriter(path) as w2:
        assert w2.append(make_episode(1)) == 1


# ----------------------------------------------------------------------------- crash safety


def test_torn_write_in_process(tmp_path: Path) -> None:
    path = tmp_path / "run.zarr"
    eps = [make_episode(i) for i in range(4)]
    write(path, eps[:2])
    n_steps = eps[0].n_steps + eps[1].n_steps

    # torn append: data + meta of episode 2 written, then "killed" before the commit
    w = ReplayWriter(path)
    w._write_data(_prepare_data(eps[2].data))
    w._write_meta(_prepare_meta(eps[2].meta))
    # torn commit: episode_ends resized but its value never written (reads as fill value 0)
    w._ends.resize((3,))
    os.close(w._lock_fd)  # the "killed" process drops its lock without any cleanup
    w._lock_fd = None
    root = zarr.open_group(path, mode="r")
    assert root["data/rgb"].shape[0] == n_steps + eps[2].n_steps and root["meta/seed"].shape == (3,)
    assert root["meta/episode_ends"].shape == (3,)

    r = ReplayReader(path)
    assert r.n_episodes == 2 and r.n_steps == n_steps
    for g, e in zip(r, eps[:2], strict=True):
        assert_episode_equal(g, e)

    # a new writer truncates the leftovers and continues
    with ReplayWriter(path) as w2:
        root = zarr.open_group(path, mode="r")
        assert root["data/rgb"].shape[0] == n_steps and root["data/action"].shape[0] == n_steps
        assert root["meta/seed"].shape == (2,) and root["meta/episode_ends"].shape == (2,)
        assert w2.append(eps[3]) == 2
    r = ReplayReader(path)
    assert r.n_episodes == 3
    for g, e in zip(r, [eps[0], eps[1], eps[3]], strict=True):
        assert_episode_equal(g, e)


def test_killed_during_first_append(tmp_path: Path) -> None:
    path = tmp_path / "run.zarr"
    w = ReplayWriter(path)
    w._write_data({"only": np.zeros((3, 2))})  # killed before any commit
    os.close(w._lock_fd)
    w._lock_fd = None
    assert ReplayReader(path).n_episodes == 0
    write(path, [make_episode(0)])  # the uncommitted schema does not constrain the next run
    r = ReplayReader(path)
    assert r.keys == sorted(make_episode(0).data)
    assert_episode_equal(r.episode(0), make_episode(0))


def _spawn(path: Path, n: int, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, str(CHILD), str(path), str(n), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _read_until(proc: subprocess.Popen[str], want: str) -> list[str]:
    lines = []
    for line in proc.stdout:  # type: ignore[union-attr]
        lines.append(line.strip())
        if lines[-1] == want:
            return lines
    proc.wait()
    raise AssertionError(f"child exited ({proc.returncode}) before {want!r}: {lines}\n{proc.stderr.read()}")  # type: ignore[union-attr]


def _check_store(path: Path, n: int) -> None:
    r = ReplayReader(path)
    assert r.n_episodes == n
    for i, ep in enumerate(r):
        assert_episode_equal(ep, child.make_episode(i))


def _kill(proc: subprocess.Popen[str]) -> list[str]:
    proc.send_signal(signal.SIGKILL)
    rest, _ = proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    return rest.split()


def _resume(path: Path, n: int) -> None:
    with ReplayWriter(path) as w:  # the dead child's lock is gone with it
        assert w.n_episodes == n
        assert w.append(child.make_episode(n)) == n
    _check_store(path, n + 1)


def test_sigkill_mid_append_deterministic(tmp_path: Path) -> None:
    """Child writes episode 2's data and meta, then is SIGKILLed before committing it."""
    path = tmp_path / "run.zarr"
    proc = _spawn(path, 10, "--stall-after", "2")
    assert _read_until(proc, "stalled") == ["committed 1", "committed 2", "stalled"]
    _kill(proc)
    root = zarr.open_group(path, mode="r")
    committed_steps = sum(child.make_episode(i).data["rgb"].shape[0] for i in range(2))
    assert root["data/rgb"].shape[0] > committed_steps  # the torn episode really is on disk
    _check_store(path, 2)
    _resume(path, 2)


@pytest.mark.parametrize("delay", [0.0, 0.015, 0.035])
def test_sigkill_at_arbitrary_point(tmp_path: Path, delay: float) -> None:
    """Kill shortly after the 2nd commit is reported. An append takes ~30 ms here, so the delays
    spread the kill over: before any write, data partly written, meta written, torn commit."""
    path = tmp_path / "run.zarr"
    proc = _spawn(path, 1000)
    _read_until(proc, "committed 2")
    time.sleep(delay)
    rest = _kill(proc)
    printed = max([2] + [int(x) for x in rest if x.isdigit()])
    n = ReplayReader(path).n_episodes
    assert n in (printed, printed + 1)  # +1: killed between commit and print
    _check_store(path, n)
    _resume(path, n)
