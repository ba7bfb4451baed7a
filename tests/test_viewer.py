"""Episode viewer: annotated GIF / MP4 of a recorded episode (real store from experiments/run.py)."""

from __future__ import annotations

from pathlib import Path

import imageio.v2 as iio
import numpy as np
import pytest
from conftest import record_oracle_store  # noqa: E402

from embodied_lm.datasets import ReplayReader
from embodied_lm.datasets.viewer import render_episode, render_frames

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("viewer")
    path = record_oracle_store(tmp, ["bowl_place"])
    assert ReplayReader(path).episode(0).n_steps >= 2
    return path


def _find_image(frame: np.ndarray, rgb: np.ndarray, scale: int) -> bool:
    """True if ``rgb`` upscaled by ``scale`` (nearest) sits horizontally centred somewhere in ``frame``."""
    h, w = rgb.shape[:2]
    x0 = (frame.shape[1] - w * scale) // 2
    up = rgb.repeat(scale, 0).repeat(scale, 1)
    return any(
        np.array_equal(frame[y : y + h * scale, x0 : x0 + w * scale], up)
        for y in range(frame.shape[0] - h * scale + 1)
    )


def test_frames_show_camera_and_overlay(store: Path) -> None:
    ep = ReplayReader(store).episode(0)
    frames = render_frames(store, 0, camera="top", scale=3)
    assert len(frames) == ep.n_steps
    H, W = frames[0].shape[:2]
    assert H % 16 == 0 and W % 16 == 0 and W >= 384 and H > 384
    assert all(f.shape == (H, W, 3) and f.dtype == np.uint8 for f in frames)
    for f, rgb in zip(frames, ep.data["rgb_top"], strict=True):
        assert _find_image(f, rgb, 3)  # the camera image, pixel exact
    # overlays change with the step (counter, skill text): the text bands differ between steps
    band = slice(0, 40)
    assert not np.array_equal(frames[0][band], frames[1][band])
    assert not np.array_equal(frames[0][-40:], frames[1][-40:])
    front = render_frames(store, -1, camera="front", scale=2)
    assert _find_image(front[0], ep.data["rgb_front"][0], 2)


@pytest.mark.parametrize("ext", [".gif", ".mp4"])
def test_render_writes_playable_clip(store: Path, tmp_path: Path, ext: str) -> None:
    n = ReplayReader(store).episode(0).n_steps
    out = render_episode(store, 0, tmp_path / f"ep0{ext}", fps=2, scale=3)
    assert out.is_file() and not [p for p in tmp_path.iterdir() if ".partial" in p.name]
    frames = render_frames(store, 0, scale=3)
    if ext == ".gif":
        got = iio.mimread(out)
        assert len(got) == n and got[0].shape[:2] == frames[0].shape[:2]
        assert iio.get_reader(out).get_meta_data()["duration"] == 500
        assert np.abs(got[0][..., :3].astype(int) - frames[0]).mean() < 3  # palette quantisation only
    else:
        reader = iio.get_reader(out, format="FFMPEG")
        meta = reader.get_meta_data()
        assert reader.count_frames() == n and meta["fps"] == 2.0 and meta["codec"] == "h264"
        assert tuple(meta["size"]) == (frames[0].shape[1], frames[0].shape[0])
        assert np.abs(reader.get_data(0).astype(int) - frames[0]).mean() < 8
        reader.close()


def test_render_errors(store: Path, tmp_path: Path) -> None:
    out = render_episode(store, 0, tmp_path / "a.gif")
    with pytest.raises(FileExistsError):
        render_episode(store, 0, out)
    assert render_episode(store, 0, out, overwrite=True, camera="front") == out
    with pytest.raises(ValueError, match=r"\.mp4 or \.gif"):
        render_episode(store, 0, tmp_path / "a.webm")
    with pytest.raises(IndexError):
        render_episode(store, 1, tmp_path / "b.gif")
    with pytest.raises(ValueError, match="camera 'side'"):
        render_episode(store, 0, tmp_path / "b.gif", camera="side")
    with pytest.raises(ValueError, match="scale"):
        render_frames(store, 0, scale=0)
    assert not (tmp_path / "b.gif").exists()
