"""Atomic outputs: a file or directory is written under a hidden temporary name beside its target and
renamed into place only when complete, so a killed run never leaves an output that looks valid."""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path


def _temp_beside(out: Path, make_dir: bool) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    while True:
        tmp = out.parent / f".{out.name}.{os.getpid()}.{secrets.token_hex(4)}.partial"
        try:
            if make_dir:
                tmp.mkdir()
            else:
                tmp.touch(exist_ok=False)
            return tmp
        except FileExistsError:
            continue


@contextlib.contextmanager
def staged_dir(out: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield an empty directory beside ``out``; on success it becomes ``out``, on failure it is removed.
    ``overwrite=False`` refuses an existing ``out`` (before and after the work); ``True`` replaces it,
    keeping the old one until the new one is in place."""
    out = Path(out)
    if not overwrite and os.path.lexists(out):
        raise FileExistsError(f"{out}: output exists; refusing to overwrite")
    tmp = _temp_beside(out, make_dir=True)
    try:
        yield tmp
        if os.path.lexists(out):
            if not overwrite:
                raise FileExistsError(f"{out}: output appeared while writing; refusing to overwrite")
            old = _temp_beside(out, make_dir=True)
            os.replace(out, old)
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # a no-op once renamed


@contextlib.contextmanager
def staged_file(out: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary file path beside ``out``; on success it replaces ``out``, on failure it goes."""
    out = Path(out)
    tmp = _temp_beside(out, make_dir=False)
    try:
        yield tmp
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` atomically."""
    with staged_file(path) as tmp:
        tmp.write_text(text)
    return Path(path)
