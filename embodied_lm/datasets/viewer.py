"""Render one recorded episode as an annotated MP4 or GIF.

Each frame is the camera image (nearest-neighbour upscaled) between a header (episode, task family,
step k/T, wrapped instruction) and a footer (the skill called at this step with a drawn check / cross
for its success; on the last step also the episode outcome). All frames of a clip share one size,
padded to multiples of 16 so H.264 needs no rescaling.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from embodied_lm.atomic import staged_file
from embodied_lm.datasets.zarr_store import Episode, ReplayReader

__all__ = ["render_episode", "render_frames"]

PathLike = str | os.PathLike[str]
_BG = (24, 26, 31)
_FG = (235, 235, 235)
_DIM = (150, 155, 165)
_OK = (46, 160, 67)
_BAD = (215, 58, 73)
_NONE = (110, 110, 110)


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)  # Pillow >= 10.1 with FreeType: scalable default font
    except (TypeError, OSError):
        return ImageFont.load_default()


def _wrap(text: str, font: Any, width: int, max_lines: int) -> list[str]:
    """Greedy word wrap by pixel width; the last kept line gets an ellipsis if text was cut."""
    words, lines, cur = text.split(), [], ""
    for word in words:
        trial = f"{cur} {word}".strip()
        if font.getlength(trial) <= width or not cur:
            cur = trial
        else:
            lines.append(cur)
            cur = word
    if cur:
        lines.append(cur)
    if len(lines) > max_lines:
        lines = lines[:max_lines]
        last = lines[-1]
        while last and font.getlength(last + "…") > width:
            last = last[:-1]
        lines[-1] = last.rstrip() + "…"
    for i, line in enumerate(lines):  # a single overlong word: hard-cut it
        while len(line) > 1 and font.getlength(line) > width:
            line = line[:-2] + "…"
        lines[i] = line
    return lines or [""]


def _badge(draw: Any, x: int, y: int, s: int, ok: bool | None) -> None:
    """A filled rounded square with a drawn check (ok), cross (failed) or dash (unknown)."""
    draw.rounded_rectangle(
        [x, y, x + s, y + s], radius=max(2, s // 5), fill=_OK if ok else _BAD if ok is False else _NONE
    )
    lw = max(2, s // 7)
    if ok:
        draw.line(
            [(x + 0.22 * s, y + 0.52 * s), (x + 0.42 * s, y + 0.72 * s), (x + 0.78 * s, y + 0.28 * s)],
            fill="white",
            width=lw,
            joint="curve",
        )
    elif ok is False:
        draw.line([(x + 0.28 * s, y + 0.28 * s), (x + 0.72 * s, y + 0.72 * s)], fill="white", width=lw)
        draw.line([(x + 0.72 * s, y + 0.28 * s), (x + 0.28 * s, y + 0.72 * s)], fill="white", width=lw)
    else:
        draw.line([(x + 0.28 * s, y + 0.5 * s), (x + 0.72 * s, y + 0.5 * s)], fill="white", width=lw)


def _frames_for(ep: Episode, index: int, camera: str, scale: int) -> list[np.ndarray]:
    from PIL import Image, ImageDraw

    key = f"rgb_{camera}"
    if key not in ep.data:
        cams = sorted(k[4:] for k in ep.data if k.startswith("rgb_"))
        raise ValueError(f"camera {camera!r} not in store (cameras: {', '.join(cams) or 'none'})")
    rgb = ep.data[key]
    if rgb.dtype != np.uint8 or rgb.ndim != 4 or rgb.shape[-1] not in (3, 4):
        raise ValueError(f"{key}: expected (T,H,W,3) uint8 frames, got {rgb.shape} {rgb.dtype}")
    n, h, w = rgb.shape[:3]
    img_w, img_h = w * scale, h * scale
    width = max(img_w, 320)
    fsize = max(11, min(22, 4 * scale + 3))
    font, small = _font(fsize), _font(max(10, fsize - 2))
    pad, line_h = max(4, fsize // 2), fsize + max(3, fsize // 4)
    text_w = width - 2 * pad

    skills = [str(s) for s in ep.data["action"]] if "action" in ep.data else [""] * n
    oks: list[bool | None] = (
        [bool(x) for x in ep.data["skill_success"]] if "skill_success" in ep.data else [None] * n
    )
    meta = ep.meta
    instruction = str(meta.get("instruction", "") or "")
    instr_lines = _wrap(instruction, font, text_w, 3) if instruction else []
    task = str(meta.get("task", "") or "")
    badge = fsize + 2
    skill_lines = [_wrap(s, font, text_w - badge - pad, 2) for s in skills]
    n_skill_lines = max(len(s) for s in skill_lines)
    header_h = pad + line_h * (1 + len(instr_lines)) + pad
    footer_h = pad + line_h * (n_skill_lines + ("success" in meta)) + pad
    H = -(-(header_h + img_h + footer_h) // 16) * 16
    W = -(-width // 16) * 16
    x_img = (W - img_w) // 2

    frames = []
    for k in range(n):
        canvas = Image.new("RGB", (W, H), _BG)
        up = Image.fromarray(rgb[k][..., :3]).resize((img_w, img_h), Image.Resampling.NEAREST)
        canvas.paste(up, (x_img, header_h))
        d = ImageDraw.Draw(canvas)
        y = pad
        head = f"episode {index}" + (f"  ·  {task}" if task else "") + f"  ·  {camera} camera"
        d.text((pad, y), head, font=small, fill=_DIM)
        step = f"step {k + 1}/{n}"
        d.text((W - pad - font.getlength(step), y), step, font=font, fill=_FG)
        y += line_h
        for line in instr_lines:
            d.text((pad, y), line, font=font, fill=_FG)
            y += line_h
        y = header_h + img_h + pad
        _badge(d, pad, y + (line_h - badge) // 2, badge, oks[k])
        for j, line in enumerate(skill_lines[k]):
            d.text((pad + badge + pad, y + j * line_h), line or "(no skill)", font=font, fill=_FG)
        if "success" in meta and k == n - 1:
            yy = y + n_skill_lines * line_h
            ok = bool(meta["success"])
            _badge(d, pad, yy + (line_h - badge) // 2, badge, ok)
            d.text(
                (pad + badge + pad, yy),
                "episode " + ("succeeded" if ok else "failed"),
                font=font,
                fill=_OK if ok else _BAD,
            )
        frames.append(np.asarray(canvas))
    return frames


def render_frames(
    store: PathLike | ReplayReader, index: int, *, camera: str = "top", scale: int = 3
) -> list[np.ndarray]:
    """The annotated (H, W, 3) uint8 frames of episode ``index``, one per step."""
    if isinstance(scale, bool) or not isinstance(scale, int) or not 1 <= scale <= 16:
        raise ValueError(f"scale must be an int in 1..16, got {scale!r}")
    reader = store if isinstance(store, ReplayReader) else ReplayReader(store)
    n = reader.n_episodes
    if not -n <= int(index) < n:
        raise IndexError(f"episode index {int(index)} out of range for a store with {n} episodes")
    i = int(index) % n
    return _frames_for(reader.episode(i), i, camera, scale)


def render_episode(
    store: PathLike | ReplayReader,
    index: int,
    out_path: PathLike,
    *,
    camera: str = "top",
    fps: float = 2,
    scale: int = 3,
    overwrite: bool = False,
) -> Path:
    """Write episode ``index`` as ``.mp4`` (H.264 via imageio-ffmpeg) or ``.gif`` (Pillow), one frame per
    step at ``fps``; refuses an existing ``out_path`` unless ``overwrite``. Returns ``out_path``."""
    import imageio.v2 as iio
    from imageio.v3 import imopen

    out = Path(out_path)
    ext = out.suffix.lower()
    if ext not in (".mp4", ".gif"):
        raise ValueError(f"{out}: output must end in .mp4 or .gif")
    if isinstance(fps, bool) or not isinstance(fps, (int, float)) or not 0 < fps <= 120:
        raise ValueError(f"fps must be in (0, 120], got {fps!r}")
    if os.path.lexists(out) and not overwrite:
        raise FileExistsError(f"{out}: output exists; refusing to overwrite")
    frames = render_frames(store, index, camera=camera, scale=scale)
    with staged_file(out) as tmp:  # the temp name has no .mp4 / .gif: format and container are named
        if ext == ".gif":
            iio.mimwrite(tmp, frames, format="GIF", duration=1000.0 / fps, loop=0)
        else:
            with imopen(tmp, "wI", plugin="FFMPEG", extension=".mp4", legacy_mode=True).legacy_get_writer(
                fps=fps,
                codec="libx264",
                quality=8,
                pixelformat="yuv420p",
                macro_block_size=16,
                ffmpeg_log_level="error",
                output_params=["-f", "mp4"],
            ) as w:
                for f in frames:
                    w.append_data(f)
    return out
