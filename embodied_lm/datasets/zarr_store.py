"""Crash-safe trajectory logging to a zarr 3 store in diffusion_policy's replay-buffer layout.

On-disk layout (zarr v3 directory store)::

    <root>/zarr.json          attrs: format_version=1, layout="embodied_lm.replay/1", creator attrs,
                              optional appended_runs=[{"first_episode": n, "attrs": {...}}, ...]
    <root>/data/<key>         (N_steps, *step_shape): all episodes concatenated in time,
                              chunked (chunk_T, *step_shape), Blosc/zstd
    <root>/meta/episode_ends  int64 (N_episodes,): cumulative exclusive ends -- the commit marker
    <root>/meta/<key>         (N_episodes,): per-episode metadata, bool/int64/float64/str;
                              dict/list values as JSON str (array attrs {"encoding": "json"})

Strings (per-step ``data`` arrays and str meta) use zarr 3's native variable-length UTF-8
dtype (``dtype=str`` -> ``VariableLengthUTF8``, spec name "string", read back as numpy 2
``StringDType``). It round-trips any length without padding and, unlike fixed-width ``<U``
(``FixedLengthUTF32``), emits no "unstable v3 dtype" warning.

Crash safety: an append writes ``data/*`` (resize + write), then ``meta/*``, and only then
``meta/episode_ends``. Readers trust ``episode_ends`` alone (ignoring data beyond ``ends[-1]``
and meta beyond ``len(ends)``). Every file write of zarr's LocalStore is atomic (temp file +
rename), so a kill leaves each chunk either old or new. Growing ``episode_ends`` is a metadata
write (resize) followed by a chunk write; a kill between the two leaves a trailing fill value
(0), which can never be a real end (episodes have >= 1 step), so readers only trust the
strictly increasing prefix. A writer opening a store repairs all of this before appending.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import math
import os
import shutil
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import zarr
from zarr.codecs import BloscCodec
from zarr.storage import LocalStore

__all__ = [
    "FORMAT_VERSION",
    "LAYOUT",
    "Episode",
    "InvalidStoreError",
    "ReplayReader",
    "ReplayWriter",
    "StepDataset",
    "StoreLockedError",
]

FORMAT_VERSION = 1
LAYOUT = "embodied_lm.replay/1"
LOCK_NAME = ".writer.lock"
_RESERVED_ATTRS = ("format_version", "layout", "appended_runs")
_CHUNK_BYTES = 2 * 2**20  # target uncompressed chunk size
_MAX_CHUNK_STEPS = 1024  # keeps low-dim chunks small enough for cheap random step reads
_STR_BYTES_GUESS = 64  # per-string size estimate for chunking string arrays
_META_CHUNK = 1024  # episodes per chunk of meta arrays
_STR = "str"  # schema marker for variable-length string arrays
_META_DTYPES = {"bool": "bool", "int": "int64", "float": "float64", "str": str, "json": str}

PathLike = str | os.PathLike[str]
DataSchema = tuple[Any, tuple[int, ...]]  # (numpy dtype | "str", per-step shape)


class InvalidStoreError(ValueError):
    """The path is not a (valid) embodied_lm replay store."""


class StoreLockedError(RuntimeError):
    """Another ReplayWriter already holds the store's writer lock."""


@dataclass
class Episode:
    """One trajectory.

    ``data``: time-first arrays sharing the same T >= 1 (numeric, bool or str/object-of-str).
    ``meta``: per-episode values (str | int | float | bool | dict | list; dicts/lists stored as
    JSON). Conventional keys: task, params, seed, instruction, plan, success, n_objects, level,
    refer.
    """

    data: dict[str, np.ndarray]
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def n_steps(self) -> int:
        """Number of time steps (T)."""
        return len(next(iter(self.data.values()))) if self.data else 0


# ----------------------------------------------------------------------------- validation


def _check_key(key: object, where: str) -> None:
    if not isinstance(key, str) or not key or "/" in key or key.startswith("."):
        raise ValueError(f"{where} key {key!r}: must be a non-empty str without '/' or leading '.'")


def _prepare_data(data: dict[str, Any]) -> dict[str, np.ndarray]:
    """Validate episode data and normalise strings to StringDType."""
    if not data:
        raise ValueError("episode.data is empty")
    out: dict[str, np.ndarray] = {}
    n_steps: int | None = None
    for key, value in data.items():
        _check_key(key, "data")
        arr = np.asarray(value)
        if arr.ndim == 0:
            raise ValueError(f"data[{key!r}]: must be time-first (ndim >= 1), got a scalar")
        if arr.dtype.kind == "O" and not all(isinstance(x, str) for x in arr.flat):
            raise ValueError(f"data[{key!r}]: object arrays must contain only str")
        if arr.dtype.kind in "UTO":
            arr = arr.astype(np.dtypes.StringDType())
        elif arr.dtype.kind not in "biuf":
            raise ValueError(f"data[{key!r}]: unsupported dtype {arr.dtype}")
        elif arr.dtype.byteorder == ">":  # zarr stores little-endian; keep schemas comparable
            arr = arr.astype(arr.dtype.newbyteorder("<"))
        n_steps = len(arr) if n_steps is None else n_steps
        if len(arr) < 1 or len(arr) != n_steps:
            raise ValueError(
                f"data[{key!r}]: has {len(arr)} steps; all arrays need the same T >= 1 (first had {n_steps})"
            )
        out[key] = arr
    return out


def _data_schema(arr: np.ndarray | zarr.Array) -> DataSchema:
    dtype = _STR if arr.dtype.kind == "T" else np.dtype(arr.dtype)
    return dtype, tuple(arr.shape[1:])


def _encode_meta(key: str, value: Any) -> tuple[str, Any]:
    """Map a meta value to (kind, storable value)."""
    if isinstance(value, (bool, np.bool_)):
        return "bool", bool(value)
    if isinstance(value, (int, np.integer)):
        if not -(2**63) <= int(value) < 2**63:
            raise ValueError(f"meta[{key!r}]: int {value} does not fit int64")
        return "int", int(value)
    if isinstance(value, (float, np.floating)):
        return "float", float(value)
    if isinstance(value, str):
        return "str", value
    if isinstance(value, (dict, list, tuple)):
        try:
            return "json", json.dumps(value)
        except (TypeError, ValueError) as e:
            raise ValueError(f"meta[{key!r}]: not JSON-serialisable ({e})") from None
    raise ValueError(f"meta[{key!r}]: unsupported type {type(value).__name__}")


def _prepare_meta(meta: dict[str, Any]) -> dict[str, tuple[str, Any]]:
    out = {}
    for key, value in meta.items():
        _check_key(key, "meta")
        if key == "episode_ends":
            raise ValueError("meta key 'episode_ends' is reserved")
        out[key] = _encode_meta(key, value)
    return out


def _meta_kind(arr: zarr.Array) -> str:
    if arr.dtype.kind == "T":
        return "json" if arr.attrs.get("encoding") == "json" else "str"
    return {"b": "bool", "i": "int", "f": "float"}[arr.dtype.kind]


def _decode_meta(kind: str, raw: np.ndarray) -> Any:
    value = raw.item()
    return json.loads(value) if kind == "json" else value


def _committed_ends(raw: np.ndarray) -> np.ndarray:
    """Longest strictly increasing prefix (> 0) of episode_ends: what was actually committed."""
    raw = np.asarray(raw, dtype=np.int64)
    ok = raw > np.concatenate([[0], raw[:-1]])
    return raw if ok.all() else raw[: int(np.argmin(ok))]


def _chunk_steps(step_shape: tuple[int, ...], itemsize: int, chunk_bytes: int) -> int:
    step_bytes = max(1, math.prod(step_shape) * itemsize)
    return int(min(_MAX_CHUNK_STEPS, max(1, chunk_bytes // step_bytes)))


def _compressor(itemsize: int | None) -> BloscCodec:
    # byte-shuffle helps multi-byte numerics; pointless for uint8 images/bools/strings
    shuffle = "shuffle" if itemsize and itemsize > 1 else "noshuffle"
    return BloscCodec(cname="zstd", clevel=3, shuffle=shuffle)


def _one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"


def _open_valid(path: Path) -> zarr.Group:
    """Open a replay store read-only, or raise a one-line InvalidStoreError."""
    if not path.exists():
        raise InvalidStoreError(f"{path}: no such file or directory")
    if not path.is_dir():
        raise InvalidStoreError(f"{path}: is a file, not a zarr store directory")
    try:
        root = zarr.open_group(LocalStore(path, read_only=True), mode="r")
    except Exception as e:
        raise InvalidStoreError(f"{path}: not a zarr group ({_one_line(e)})") from None
    layout = root.attrs.get("layout")
    if layout != LAYOUT:
        raise InvalidStoreError(
            f"{path}: not an embodied_lm replay store (root attrs layout={layout!r}, expected {LAYOUT!r}; "
            "half-created or foreign)"
        )
    if root.attrs.get("format_version") != FORMAT_VERSION:
        raise InvalidStoreError(
            f"{path}: unsupported format_version {root.attrs.get('format_version')!r} (expected {FORMAT_VERSION})"
        )
    for name in ("data", "meta", "meta/episode_ends"):
        if name not in root:
            raise InvalidStoreError(f"{path}: missing {name}")
    return root


# ----------------------------------------------------------------------------- locking


def _acquire_lock(lock_path: Path) -> int:
    """Exclusive non-blocking flock; returns the fd (released by closing it)."""
    while True:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 64).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise StoreLockedError(
                f"{lock_path.parent}: store is locked by another ReplayWriter "
                f"(pid {holder}, {lock_path.name}); one writer per store"
            ) from None
        # holders unlink the file on close; if we locked an unlinked inode, retry on the new file
        try:
            st, cur = os.fstat(fd), os.stat(lock_path)
            if (st.st_dev, st.st_ino) == (cur.st_dev, cur.st_ino):
                os.ftruncate(fd, 0)
                os.write(fd, f"{os.getpid()}\n".encode())
                return fd
        except FileNotFoundError:
            pass
        os.close(fd)


# ----------------------------------------------------------------------------- writer


class ReplayWriter:
    """Single writer that appends whole episodes to a replay store (created if needed).

    Opening an existing store resumes appending: leftovers of a killed writer (uncommitted data
    and meta, a torn ``episode_ends`` tail, temp files) are truncated first. A directory that
    exists without the layout marker (killed during creation) is re-initialised only if it holds
    no episodes; any other non-empty, non-store directory is refused.
    """

    def __init__(
        self, path: PathLike, attrs: dict[str, Any] | None = None, *, chunk_bytes: int = _CHUNK_BYTES
    ) -> None:
        """``attrs``: JSON-serialisable creator info (versions, intrinsics, env config). Stored at
        the root on creation; on an existing store the original attrs are kept and these are
        recorded in ``attrs["appended_runs"]``. ``chunk_bytes``: target uncompressed chunk size."""
        self.path = Path(path)
        self._chunk_bytes = int(chunk_bytes)
        if attrs is not None:
            bad = [k for k in _RESERVED_ATTRS if k in attrs]
            if bad:
                raise ValueError(f"attrs key {bad[0]!r} is reserved")
            try:
                attrs = json.loads(json.dumps(attrs))
            except (TypeError, ValueError) as e:
                raise ValueError(f"attrs are not JSON-serialisable ({e})") from None
        if self.path.exists() and not self.path.is_dir():
            raise InvalidStoreError(f"{self.path}: exists and is not a directory")
        self.path.mkdir(parents=True, exist_ok=True)
        self._lock_fd: int | None = _acquire_lock(self.path / LOCK_NAME)
        try:
            created = self._open_or_create(attrs)
            self._recover()
            if attrs is not None and not created:
                runs = list(self._root.attrs.get("appended_runs", []))
                self._root.attrs["appended_runs"] = [*runs, {"first_episode": self._n, "attrs": attrs}]
        except BaseException:
            self._release_lock()
            raise

    # -- opening / recovery

    def _open_or_create(self, attrs: dict[str, Any] | None) -> bool:
        """Open the store (validating it) or initialise it; returns True if created."""
        names = {p.name for p in self.path.iterdir() if p.name != LOCK_NAME and not p.name.endswith(".partial")}
        if names:
            if "zarr.json" not in names:
                raise InvalidStoreError(
                    f"{self.path}: non-empty directory that is not a zarr store; refusing to write into it"
                )
            try:
                root = zarr.open_group(LocalStore(self.path), mode="r+")
            except Exception as e:
                raise InvalidStoreError(f"{self.path}: not a zarr group ({_one_line(e)})") from None
            layout = root.attrs.get("layout")
            if layout == LAYOUT:
                _open_valid(self.path)  # checks format_version and required members
                self._bind(root)
                return False
            # no layout marker: only a half-created store of ours with zero episodes may be redone
            n_raw = root["meta/episode_ends"].shape[0] if "meta/episode_ends" in root else 0
            if layout is not None or not names <= {"zarr.json", "data", "meta"} or n_raw:
                raise InvalidStoreError(
                    f"{self.path}: zarr group without layout={LAYOUT!r} that is not an empty half-created "
                    "replay store; refusing to overwrite"
                )
            for name in names:
                p = self.path / name
                shutil.rmtree(p) if p.is_dir() else p.unlink()
        root = zarr.open_group(LocalStore(self.path), mode="a")
        root.require_group("data")
        root.require_group("meta").create_array("episode_ends", shape=(0,), chunks=(_META_CHUNK,), dtype="int64")
        # layout marker goes last: a store without it is recognisably half-created
        root.attrs.update({**(attrs or {}), "format_version": FORMAT_VERSION, "layout": LAYOUT})
        self._bind(root)
        return True

    def _bind(self, root: zarr.Group) -> None:
        self._root = root
        self._data: zarr.Group = root["data"]
        self._meta: zarr.Group = root["meta"]
        self._ends: zarr.Array = self._meta["episode_ends"]

    def _recover(self) -> None:
        """Bring the store to exactly its committed state and load the schema from it."""
        # LocalStore writes go via "<name>.<uuid>.partial" temp files; a kill can leave them behind
        for d, _, files in os.walk(self.path):
            for f in files:
                if f.endswith(".partial"):
                    os.unlink(os.path.join(d, f))
        raw = self._ends[:]
        ends = _committed_ends(raw)
        if len(ends) < len(raw):  # torn commit: resized but value never written
            self._ends.resize((len(ends),))
        self._n = len(ends)
        self._n_steps = int(ends[-1]) if len(ends) else 0
        metas = [k for k in self._meta.array_keys() if k != "episode_ends"]
        for name, group, keys, length in (
            ("data", self._data, list(self._data.array_keys()), self._n_steps),
            ("meta", self._meta, metas, self._n),
        ):
            for key in keys:
                arr = group[key]
                if self._n == 0:  # nothing committed: the next first episode fixes the schema anew
                    del group[key]
                elif arr.shape[0] > length:
                    arr.resize((length, *arr.shape[1:]))
                elif arr.shape[0] < length:
                    raise InvalidStoreError(
                        f"{self.path}: {name}/{key} has {arr.shape[0]} entries < committed {length}; "
                        "store is corrupt"
                    )
        self._data_schema = {k: _data_schema(a) for k, a in self._data.arrays()}
        self._meta_kind = {k: _meta_kind(a) for k, a in self._meta.arrays() if k != "episode_ends"}

    # -- appending

    @property
    def n_episodes(self) -> int:
        """Number of committed episodes."""
        return self._n

    @property
    def n_steps(self) -> int:
        """Number of committed steps."""
        return self._n_steps

    def append(self, episode: Episode) -> int:
        """Validate, write and commit one episode; returns its index.

        Raises ValueError (naming the key) before writing anything if the episode's data keys,
        per-step shapes, dtypes or meta keys/types differ from the store's (fixed by episode 0).
        """
        if self._lock_fd is None:
            raise RuntimeError(f"{self.path}: ReplayWriter is closed")
        data = _prepare_data(episode.data)
        meta = _prepare_meta(episode.meta)
        if self._n:
            self._check_schema(data, meta)
        try:
            self._write_data(data)
            self._write_meta(meta)
            self._commit(len(next(iter(data.values()))))
        except BaseException:
            # undo the partial append so this writer stays usable (else the next writer repairs it)
            with contextlib.suppress(Exception):
                self._recover()
            raise
        return self._n - 1

    def _check_schema(self, data: dict[str, np.ndarray], meta: dict[str, tuple[str, Any]]) -> None:
        for what, new, old in (("data", data, self._data_schema), ("meta", meta, self._meta_kind)):
            for key in sorted(set(new) ^ set(old)):
                state = "is missing from this episode" if key in old else "is not in the store"
                raise ValueError(f"{what} key {key!r} {state} (store {what} keys: {sorted(old)})")
        for key, arr in data.items():
            if _data_schema(arr) != self._data_schema[key]:
                (dt, shape), (sdt, sshape) = _data_schema(arr), self._data_schema[key]
                raise ValueError(
                    f"data[{key!r}]: dtype {dt}, step shape {shape} does not match store's {sdt}, {sshape}"
                )
        for key, (kind, value) in meta.items():
            stored = self._meta_kind[key]
            if kind == "int" and stored == "float":
                meta[key] = ("float", float(value))
            elif kind != stored:
                raise ValueError(f"meta[{key!r}]: type {kind} does not match store's {stored}")

    def _write_data(self, data: dict[str, np.ndarray]) -> None:
        start = self._n_steps
        for key, arr in data.items():
            if key in self._data_schema:
                z = self._data[key]
            else:
                dtype, step = _data_schema(arr)
                itemsize = None if dtype == _STR else dtype.itemsize
                z = self._data.create_array(
                    key,
                    shape=(0, *step),
                    chunks=(_chunk_steps(step, itemsize or _STR_BYTES_GUESS, self._chunk_bytes), *step),
                    dtype=str if dtype == _STR else dtype,
                    compressors=_compressor(itemsize),
                )
                self._data_schema[key] = (dtype, step)
            z.resize((start + len(arr), *arr.shape[1:]))
            z[start:] = arr

    def _write_meta(self, meta: dict[str, tuple[str, Any]]) -> None:
        n = self._n
        for key, (kind, value) in meta.items():
            if key in self._meta_kind:
                z = self._meta[key]
            else:
                z = self._meta.create_array(
                    key,
                    shape=(0,),
                    chunks=(_META_CHUNK,),
                    dtype=_META_DTYPES[kind],
                    attributes={"encoding": "json"} if kind == "json" else None,
                )
                self._meta_kind[key] = kind
            z.resize((n + 1,))
            z[n] = value

    def _commit(self, n_steps: int) -> None:
        end = self._n_steps + n_steps
        self._ends.resize((self._n + 1,))
        self._ends[self._n] = end  # this single chunk write is the commit
        self._n += 1
        self._n_steps = end

    # -- lifetime

    def _release_lock(self) -> None:
        if self._lock_fd is not None:
            (self.path / LOCK_NAME).unlink(missing_ok=True)  # before unlocking: see _acquire_lock
            os.close(self._lock_fd)
            self._lock_fd = None

    def close(self) -> None:
        """Release the writer lock (idempotent). All appended episodes are already durable."""
        self._release_lock()

    def __enter__(self) -> ReplayWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ----------------------------------------------------------------------------- reader


class ReplayReader:
    """Read-only view of the committed episodes of a replay store (snapshot taken at open).

    String arrays come back as numpy ``StringDType`` arrays; dict/list meta as Python objects.
    """

    def __init__(self, path: PathLike) -> None:
        """Raises InvalidStoreError for a missing path, non-zarr path or a store without layout marker."""
        self.path = Path(path)
        self._root = _open_valid(self.path)
        meta = self._root["meta"]
        self._ends = _committed_ends(meta["episode_ends"][:])
        self._starts = np.concatenate([[0], self._ends[:-1]]).astype(np.int64)
        self._data: dict[str, zarr.Array] = dict(sorted(self._root["data"].arrays()))
        self._meta: dict[str, zarr.Array] = dict(sorted((k, a) for k, a in meta.arrays() if k != "episode_ends"))
        self._meta_kind = {k: _meta_kind(a) for k, a in self._meta.items()}
        for group, arrays, length in (("data", self._data, self.n_steps), ("meta", self._meta, self.n_episodes)):
            for key, arr in arrays.items():
                if self.n_episodes and arr.shape[0] < length:
                    raise InvalidStoreError(
                        f"{self.path}: {group}/{key} has {arr.shape[0]} entries < committed {length}"
                    )

    @property
    def n_episodes(self) -> int:
        """Number of committed episodes."""
        return len(self._ends)

    @property
    def n_steps(self) -> int:
        """Total committed steps over all episodes."""
        return int(self._ends[-1]) if len(self._ends) else 0

    @property
    def keys(self) -> list[str]:
        """Names of the per-step ``data`` arrays."""
        return list(self._data)

    @property
    def meta_keys(self) -> list[str]:
        """Names of the per-episode ``meta`` arrays (without episode_ends)."""
        return list(self._meta)

    @property
    def attrs(self) -> dict[str, Any]:
        """Root attributes (copy)."""
        return dict(self._root.attrs)

    @property
    def episode_ends(self) -> np.ndarray:
        """Committed cumulative exclusive episode ends (copy)."""
        return self._ends.copy()

    def __len__(self) -> int:
        return self.n_episodes

    @staticmethod
    def _index(i: int, n: int, what: str) -> int:
        i = int(i)
        if not -n <= i < n:
            raise IndexError(f"{what} index {i} out of range for {n} {what}s")
        return i % n

    def episode(self, i: int) -> Episode:
        """Episode ``i`` (negative allowed), reading only its slice of each array."""
        i = self._index(i, self.n_episodes, "episode")
        s, e = int(self._starts[i]), int(self._ends[i])
        data = {k: z[s:e] for k, z in self._data.items()}
        meta = {k: _decode_meta(self._meta_kind[k], z[i]) for k, z in self._meta.items()}
        return Episode(data=data, meta=meta)

    def __iter__(self) -> Iterator[Episode]:
        for i in range(self.n_episodes):
            yield self.episode(i)

    def locate(self, global_index: int) -> tuple[int, int]:
        """(episode index, step within episode) of a global step index."""
        g = self._index(global_index, self.n_steps, "step")
        ep = int(np.searchsorted(self._ends, g, side="right"))
        return ep, g - int(self._starts[ep])

    def meta(self, i: int) -> dict[str, Any]:
        """Episode ``i``'s metadata only (no data arrays read)."""
        i = self._index(i, self.n_episodes, "episode")
        return {k: _decode_meta(self._meta_kind[k], z[i]) for k, z in self._meta.items()}

    def column(self, key: str) -> np.ndarray:
        """One data key over every committed step (one contiguous read; e.g. all ``objects`` rows)."""
        if key not in self._data:
            raise KeyError(f"{self.path}: no data key {key!r}; keys: {', '.join(self._data)}")
        return self._data[key][: self.n_steps]

    def step(self, global_index: int, keys: Sequence[str] | None = None) -> dict[str, np.ndarray | str]:
        """One step: numeric arrays (0-d for scalar-per-step keys) and str for string keys."""
        g = self._index(global_index, self.n_steps, "step")
        out: dict[str, np.ndarray | str] = {}
        for k in self.keys if keys is None else keys:
            v = self._data[k][g]
            out[k] = v.item() if v.dtype.kind == "T" else v
        return out


class StepDataset(torch.utils.data.Dataset):
    """Steps of a replay store as samples; the store is (re)opened lazily per process.

    Items: numeric arrays as torch tensors, strings as str, plus int ``episode_index`` and
    ``step_in_episode``. Length is fixed to the committed steps at construction.
    """

    def __init__(self, path: PathLike, keys: Sequence[str] | None = None) -> None:
        self.path = Path(path)
        reader = ReplayReader(self.path)  # validate eagerly, then drop the handle
        unknown = [k for k in keys or () if k not in reader.keys]
        if unknown:
            raise ValueError(f"data key {unknown[0]!r} not in store {self.path} (has {reader.keys})")
        self.keys = list(reader.keys if keys is None else keys)
        self._len = reader.n_steps
        self._reader: ReplayReader | None = None

    def __len__(self) -> int:
        return self._len

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_reader": None}  # workers reopen the store themselves

    def __getitem__(self, i: int) -> dict[str, Any]:
        if self._reader is None:
            self._reader = ReplayReader(self.path)
        g = ReplayReader._index(i, self._len, "step")
        ep, t = self._reader.locate(g)
        item: dict[str, Any] = {
            k: v if isinstance(v, str) else torch.from_numpy(np.require(v, requirements=["C", "W"]))
            for k, v in self._reader.step(g, self.keys).items()
        }
        item["episode_index"] = ep
        item["step_in_episode"] = t
        return item


def select_episodes(n: int, episodes: Sequence[int] | None) -> list[int]:
    """Validated, normalised (non-negative) episode indices of a store with ``n``; all when None."""
    if episodes is None:
        if n == 0:
            raise ValueError("store has no episodes")
        return list(range(n))
    out = []
    for e in episodes:
        if isinstance(e, bool) or not isinstance(e, (int, np.integer)):
            raise ValueError(f"episode index {e!r} is not an int")
        if not -n <= int(e) < n:
            raise IndexError(f"episode index {int(e)} out of range for a store with {n} episodes")
        out.append(int(e) % n)
    if not out:
        raise ValueError("no episodes selected")
    if len(set(out)) != len(out):
        raise ValueError(f"duplicate episode indices in {list(episodes)}")
    return out
