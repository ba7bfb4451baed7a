"""Rollouts on Ray actors: demonstration collection and evaluation over many processes or machines.

Each ``RolloutWorker`` actor (1 CPU) owns a ``TabletopEnv`` -- its own PyBullet client -- and a
planner built in the worker from a picklable spec (registry name + kwargs).  ``run_parallel``
is the driver: it hands specs to idle workers one at a time (``ray.wait``), so a slow episode
never holds up the others, and returns the rows in spec order.  Recorded episodes come back to
the driver and go through ONE writer, in spec order, so the store is identical to a serial run.

Determinism: an episode depends only on its spec.  ``build_episode`` resets the world from the
spec's seed, and planners are wrapped (``EpisodeSeeded``) so that a planner with a numpy
Generator (``random``) is reseeded at every reset from ``(planner seed, spec seed)``.  Which
worker runs an episode, in which order, or how often it was retried changes nothing.

Faults: a worker whose process dies (killed, OOM, node lost, timed out) is restarted by Ray (the
actor's ``max_restarts``) and the driver hands its episode out again, at most ``max_retries`` times
per episode.  Errors raised by the episode itself (a bug, a bad planner argument) are not retried:
they would repeat; they raise ``RolloutError``.
"""

from __future__ import annotations

import os
import re
import signal
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, is_dataclass
from typing import Any

import numpy as np

try:
    import ray
    from ray.exceptions import RayActorError, RayTaskError
except ModuleNotFoundError as e:  # pragma: no cover - depends on the install
    raise ModuleNotFoundError(
        "embodied_lm.distributed needs Ray: pip install 'ray[rllib]==2.60.*' (or 'ray==2.60.*')"
    ) from e

from embodied_lm.evaluate import EpisodeRow, act_each, run_episode, run_lockstep
from embodied_lm.planners import Planner, make_planner
from sim.env import EnvConfig, TabletopEnv
from sim.tasks import EpisodeSpec


class RolloutError(RuntimeError):
    """A rollout that cannot complete: an episode raised, or a worker kept dying past the retry bound."""


# ----------------------------------------------------------------------------- planners


class EpisodeSeeded:
    """Wraps a planner so its randomness depends on the episode, not on what ran before it.

    At every ``reset`` a planner that has ``reseed(seed)`` gets it called, and one holding a numpy
    ``Generator`` in ``.rng`` gets a fresh one, both from ``SeedSequence([seed, spec seed])``
    (``seed + spec_seed`` would make planner seed 1 on episode k equal seed 0 on episode k+1,
    since generated specs use consecutive seeds).  Planners without either pass through.
    """

    def __init__(self, planner: Planner, seed: int = 0):
        self.planner = planner
        self.seed = int(seed)
        self.name = planner.name
        self.needs_images = planner.needs_images

    def episode_seed(self, info: Mapping[str, Any]) -> np.random.SeedSequence:
        return np.random.SeedSequence([self.seed, int(info["spec"]["seed"])])

    def reset(self, env, obs, info) -> None:
        reseed = getattr(self.planner, "reseed", None)
        if callable(reseed):
            reseed(int(self.episode_seed(info).generate_state(1)[0]))
        elif isinstance(getattr(self.planner, "rng", None), np.random.Generator):
            self.planner.rng = np.random.default_rng(self.episode_seed(info))
        self.planner.reset(env, obs, info)

    def act(self, obs, info) -> str:
        return self.planner.act(obs, info)

    def __getattr__(self, name: str) -> Any:  # anything else the harness asks of the planner
        return getattr(self.planner, name)


def episode_planner(name: str, kwargs: Mapping[str, Any] | None = None) -> EpisodeSeeded:
    """``make_planner(name, **kwargs)`` wrapped in ``EpisodeSeeded`` -- use it for serial runs too,
    so that serial and parallel results agree."""
    kwargs = dict(kwargs or {})
    return EpisodeSeeded(make_planner(name, **kwargs), kwargs.get("seed", 0))


class _DieAfter:
    """Fault injection: SIGKILL the current process once ``steps`` env steps of the episode ran."""

    def __init__(self, planner: Planner, steps: int):
        self.planner, self.steps, self.n = planner, int(steps), 0
        self.name, self.needs_images = planner.name, planner.needs_images

    def reset(self, env, obs, info) -> None:
        self.planner.reset(env, obs, info)

    def act(self, obs, info) -> str:
        if self.n >= self.steps:
            os.kill(os.getpid(), signal.SIGKILL)  # the real process dies, mid-episode
        self.n += 1
        return self.planner.act(obs, info)

    def __getattr__(self, name: str) -> Any:  # episode_extra etc.: the wrapped planner's
        return getattr(self.planner, name)


def _dying(act_batch):
    """Fault injection in a group: the process dies when a ``_DieAfter`` episode's planner would."""
    def act(planners, obs, infos):
        for p in planners:
            if isinstance(p, _DieAfter):
                if p.n >= p.steps:
                    os.kill(os.getpid(), signal.SIGKILL)
                p.n += 1
        return act_batch([p.planner if isinstance(p, _DieAfter) else p for p in planners], obs, infos)
    return act


class _Capture:
    """A recorder that keeps the episode instead of writing it (the driver writes)."""

    def __init__(self) -> None:
        self.episode = None

    def append(self, episode) -> None:
        self.episode = episode


# ----------------------------------------------------------------------------- the worker


class EpisodeRunner:
    """One env + one planner; runs episodes from specs, one at a time (``run``) or several side by side
    (``run_group``: one more env and planner per concurrent episode, the planner's steps decided in one
    batch).  In-process, or as a Ray actor (``RolloutWorker``)."""

    def __init__(self, env_config: EnvConfig | Mapping[str, Any] | None, planner_name: str,
                 planner_kwargs: Mapping[str, Any] | None = None):
        if isinstance(env_config, Mapping):
            env_config = EnvConfig(**env_config)
        self.env_config = env_config
        self.planner = episode_planner(planner_name, planner_kwargs)
        self.env = TabletopEnv(env_config)
        self.group: tuple[list[TabletopEnv], list[EpisodeSeeded]] = ([self.env], [self.planner])
        self.episodes = 0

    def info(self) -> dict[str, Any]:
        import socket

        return {"pid": os.getpid(), "host": socket.gethostname(), "node_ip": _node_ip(), "node_id": _node_id()}

    def run(self, spec: EpisodeSpec | Mapping[str, Any], record: bool = False,
            die_after_steps: int | None = None):
        """-> (EpisodeRow, Episode | None).  ``die_after_steps`` is fault injection for tests."""
        if not isinstance(spec, EpisodeSpec):
            spec = EpisodeSpec.from_dict(dict(spec))
        planner = self.planner if die_after_steps is None else _DieAfter(self.planner, die_after_steps)
        capture = _Capture() if record else None
        row = run_episode(self.env, planner, spec, capture)
        self.episodes += 1
        return row, (capture.episode if capture else None)

    def run_group(self, specs: Sequence[EpisodeSpec | Mapping[str, Any]], record: bool = False,
                  die_after_steps: Sequence[int | None] | None = None) -> list[tuple]:
        """``run`` for each spec, the episodes side by side (``run_lockstep``) when the planner can
        ``spawn`` twins; rows and episodes as ``run`` gives them, in spec order.  ``die_after_steps``:
        per spec, as ``run``'s."""
        specs = [s if isinstance(s, EpisodeSpec) else EpisodeSpec.from_dict(dict(s)) for s in specs]
        dies = list(die_after_steps or [None] * len(specs))
        if len(specs) == 1 or not hasattr(self.planner.planner, "spawn"):
            return [self.run(s, record, d) for s, d in zip(specs, dies)]
        envs, planners = self.group
        while len(envs) < len(specs):
            envs.append(TabletopEnv(self.env_config))
            planners.append(EpisodeSeeded(self.planner.planner.spawn(), self.planner.seed))
        act = getattr(self.planner.planner, "act_batch", None)
        act_batch = act_each if act is None else (lambda ps, obs, infos: act([p.planner for p in ps], obs, infos))
        if any(d is not None for d in dies):
            planners = [p if d is None else _DieAfter(p, d) for p, d in zip(planners, dies)]
            act_batch = _dying(act_batch)
        rows, episodes = run_lockstep(envs, planners, specs, act_batch, record)
        self.episodes += len(specs)
        return list(zip(rows, episodes or [None] * len(rows)))

    def close(self) -> None:
        for env in self.group[0]:
            env.close()


def _node_ip() -> str | None:
    try:
        return ray.util.get_node_ip_address()
    except Exception:
        return None


def _node_id() -> str | None:
    try:
        return ray.get_runtime_context().get_node_id()
    except Exception:
        return None


RolloutWorker = ray.remote(num_cpus=1)(EpisodeRunner)
"""The Ray actor: ``RolloutWorker.remote(env_config, planner_name, planner_kwargs)``; methods
``run(spec, record, die_after_steps=None) -> (EpisodeRow, Episode | None)``, ``run_group(specs, record,
die_after_steps=None) -> [(EpisodeRow, Episode | None), ...]`` and ``info()``.
Override resources with ``RolloutWorker.options(num_cpus=..., num_gpus=...)``."""


# ----------------------------------------------------------------------------- Ray start-up


def init_ray(address: str | None = None, *, num_cpus: int | None = None, num_gpus: int | None = None,
             runtime_env: dict[str, Any] | None = None, **kwargs: Any) -> bool:
    """Connect to Ray unless already connected; returns True if this call started/joined it.

    address:
      None      start a private local instance sized to this machine (``num_cpus`` defaults to the
                CPUs this process may use), even when a ``ray start`` cluster runs on this host.
      "auto"    join the cluster started with ``ray start`` (``RAY_ADDRESS``, else the last one
                started on this host); "host:6379" joins that head.
      "ray://host:10001"  Ray Client to a remote head (needs ``ray[client]``).
    Since Ray 2.59 ``ray start`` clusters use token auth: a joining driver needs
    ``RAY_AUTH_MODE=token`` (verified with 2.60: the token file alone is not enough) and the token in
    ``RAY_AUTH_TOKEN`` or ``~/.ray/auth_token``.
    """
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if ray.is_initialized():
        return False
    opts: dict[str, Any] = {"log_to_driver": False, **kwargs}
    if runtime_env:
        opts["runtime_env"] = runtime_env
    if address is None:
        # "local", not None: ray.init() without an address would join a `ray start` cluster found via
        # RAY_ADDRESS or /tmp/ray/ray_current_cluster (and then refuse num_cpus) -- joining is opt-in
        cpus = num_cpus if num_cpus is not None else len(os.sched_getaffinity(0))
        opts = {"num_cpus": cpus, "include_dashboard": False, **opts}
        if num_gpus is not None:
            opts["num_gpus"] = num_gpus
        ray.init(address="local", **opts)
    else:
        try:
            ray.init(address=address, **opts)
        except ConnectionError as e:
            if os.environ.get("RAY_AUTH_MODE") != "token":
                raise ConnectionError(
                    f"{e}. Clusters started by Ray >= 2.59 use token auth: a joining process needs "
                    "RAY_AUTH_MODE=token and the token (RAY_AUTH_TOKEN=$(ray get-auth-token) on the head, "
                    "or ~/.ray/auth_token)"
                ) from e
            raise
    return True


# ----------------------------------------------------------------------------- the driver


@dataclass
class Dispatch:
    """What ``on_dispatch`` sees when an episode is handed to a worker."""

    spec_index: int
    attempt: int  # 0 = first try
    worker: int  # slot number, stable across replacements
    actor: Any
    info_ref: Any  # ObjectRef of the worker's info() (pid, host, node_ip)

    def pid(self, timeout: float | None = 60) -> int:
        return ray.get(self.info_ref, timeout=timeout)["pid"]


@dataclass
class _Slot:
    index: int
    actor: Any  # the same handle for the whole run: Ray restarts its process when it dies
    info_ref: Any  # info() of its current process
    busy: list[int] | None = None  # spec indices in flight (one group)
    since: float = 0.0
    timed_out: bool = False
    infos: list[Any] = field(default_factory=list)  # info() of its earlier processes


def run_parallel(
    specs: Sequence[EpisodeSpec | Mapping[str, Any]],
    planner_name: str,
    planner_kwargs: Mapping[str, Any] | None,
    env_config: EnvConfig | Mapping[str, Any] | None,
    *,
    num_workers: int | None = None,
    address: str | None = None,
    recorder=None,
    progress: bool = True,
    max_retries: int = 3,
    num_cpus_per_worker: float = 1,
    num_gpus_per_worker: float = 0,
    episode_timeout_s: float | None = None,
    on_dispatch: Callable[[Dispatch], None] | None = None,
    fault_injection: Mapping[int, int] | None = None,
    batch: int = 1,
) -> tuple[list[EpisodeRow], dict[str, Any]]:
    """Run every spec on Ray workers; returns (rows in spec order, stats).

    num_workers      actors to start (None = cluster CPUs / ``num_cpus_per_worker``), capped at
                     ``len(specs)``; a request the cluster cannot hold raises instead of hanging.
    address          if Ray is already initialised in this process it is used as is and left
                     running; else None starts a private local Ray, "auto" / "host:port" /
                     "ray://..." join a cluster (see ``init_ray``), and Ray is shut down (local)
                     or disconnected (cluster) at the end.
    recorder         anything with ``append(Episode)`` (a ``ReplayWriter``): episodes are
                     appended in spec order as soon as every earlier one is in.
    max_retries      re-runs of one episode after its worker died (Ray restarts the worker).
    episode_timeout_s  kill (and so restart) a worker whose episode runs longer (a group of k: k times
                     longer; counted as retries).
    on_dispatch      called with a ``Dispatch`` after each hand-out.
    fault_injection  ``{spec_index: steps}``: on its first attempt that episode's worker SIGKILLs
                     its own process after ``steps`` steps (tests, cluster drills).
    batch            consecutive specs a worker runs side by side (``EpisodeRunner.run_group``; the
                     embodied LM decodes their steps in one batch); fewer near the end, so that every
                     worker keeps a share.  A worker that dies re-runs its whole group (each episode
                     counted against its retries).

    stats: episodes, workers, workers_started (incl. restarts), retries, retried_specs,
    worker_deaths, timeouts, out_of_order (episodes that finished before an earlier spec),
    max_buffered (recorded episodes held back for in-order writing), startup_s (until every
    worker built its env and planner), run_s (first dispatch to last result), episodes_per_s
    (over run_s), utilization (time workers held episodes / (run_s x workers)), wall_s (incl. Ray start and
    stop), ray_init_s, nodes, cluster_cpus, address, worker_hosts ({"node ip/node id prefix":
    workers started there}).
    """
    t_start = time.perf_counter()
    specs = [s if isinstance(s, EpisodeSpec) else EpisodeSpec.from_dict(dict(s)) for s in specs]
    planner_kwargs = dict(planner_kwargs or {})
    if isinstance(env_config, Mapping):
        env_config = EnvConfig(**env_config)
    if max_retries < 0:
        raise ValueError(f"max_retries must be >= 0, got {max_retries}")
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    if not specs:
        return [], {"episodes": 0, "workers": 0, "retries": 0, "retried_specs": [], "wall_s": 0.0}
    record = recorder is not None
    faults = dict(fault_injection or {})

    started = init_ray(address, num_gpus=None)
    ray_init_s = time.perf_counter() - t_start
    try:
        cluster = ray.cluster_resources()
        cpus, gpus = cluster.get("CPU", 0.0), cluster.get("GPU", 0.0)
        if num_workers is None:
            num_workers = max(1, int(cpus // num_cpus_per_worker)) if num_cpus_per_worker else 1
        if num_workers < 1:
            raise ValueError(f"num_workers must be >= 1, got {num_workers}")
        num_workers = min(num_workers, max(len(specs), 1))
        if num_workers * num_cpus_per_worker > cpus + 1e-9 or num_workers * num_gpus_per_worker > gpus + 1e-9:
            raise ValueError(
                f"{num_workers} workers x ({num_cpus_per_worker} CPU, {num_gpus_per_worker} GPU) do not fit the "
                f"Ray cluster ({cpus:g} CPU, {gpus:g} GPU): lower num_workers or the per-worker resources "
                "(Ray would wait for them forever)"
            )
        rows, stats = _drive(specs, planner_name, planner_kwargs, env_config, num_workers, record, recorder,
                             progress, max_retries, num_cpus_per_worker, num_gpus_per_worker, episode_timeout_s,
                             on_dispatch, faults, batch)
        stats.update(ray_init_s=round(ray_init_s, 3), cluster_cpus=cpus,
                     address=ray.get_runtime_context().gcs_address,
                     nodes=len([n for n in ray.nodes() if n.get("Alive")]))
    finally:
        if started:  # a local instance stops; a joined cluster keeps running (we only disconnect)
            ray.shutdown()
    stats["wall_s"] = round(time.perf_counter() - t_start, 3)
    stats["episodes_per_s"] = round(len(rows) / max(stats["run_s"], 1e-9), 3)
    return rows, stats


def _drive(specs, planner_name, planner_kwargs, env_config, num_workers, record, recorder, progress,
           max_retries, cpus_per_worker, gpus_per_worker, timeout_s, on_dispatch, faults, batch=1):
    from tqdm import tqdm

    # Ray restarts a worker whose process died (max_restarts=-1: as often as it takes; each episode's
    # re-runs are bounded by max_retries below).  The episode in flight then fails (max_task_retries=0:
    # Ray would re-run it unseen, fault injection included) and the driver hands it out again, counted.
    actor_cls = RolloutWorker.options(num_cpus=cpus_per_worker, num_gpus=gpus_per_worker, max_restarts=-1,
                                      max_task_retries=0)

    def probe(actor) -> Any:  # info() of the worker's live process: Ray holds it through a restart
        return actor.info.options(max_task_retries=-1).remote()

    def init_failed(e: RayActorError) -> RolloutError:
        return RolloutError(f"worker could not start (env or planner {planner_name!r}): {_plain(e)}")

    stats: dict[str, Any] = {"episodes": len(specs), "workers": num_workers, "workers_started": num_workers,
                             "retries": 0, "retried_specs": [], "worker_deaths": 0, "timeouts": 0,
                             "out_of_order": 0, "max_buffered": 0}
    queue: deque[int] = deque(range(len(specs)))
    attempts = [0] * len(specs)
    inflight: dict[Any, _Slot] = {}  # ObjectRef of run() (or of a restart's probe()) -> its worker
    rows: list[EpisodeRow | None] = [None] * len(specs)
    held: dict[int, Any] = {}  # recorded episodes waiting for an earlier spec
    next_write = n_ok = n_done = first_pending = 0
    busy_s = 0.0  # dispatch to result, summed over groups: episodes of one group overlap

    def dispatch(slot: _Slot) -> None:
        n = min(batch, -(-len(queue) // num_workers))  # near the end: every worker a share
        group = [queue.popleft() for _ in range(n)]
        dies = [faults.get(i) if attempts[i] == 0 else None for i in group]
        ref = slot.actor.run_group.remote([specs[i] for i in group], record, dies)
        slot.busy, slot.since, slot.timed_out = group, time.perf_counter(), False
        inflight[ref] = slot
        if on_dispatch is not None:
            for i in group:
                on_dispatch(Dispatch(i, attempts[i], slot.index, slot.actor, slot.info_ref))

    t_boot = time.perf_counter()
    actors = [actor_cls.remote(env_config, planner_name, planner_kwargs) for _ in range(num_workers)]
    slots = [_Slot(i, a, probe(a)) for i, a in enumerate(actors)]
    bar = None
    try:
        try:  # wait until every worker has built env + planner: start-up is not rollout time
            ray.get([slot.info_ref for slot in slots])
        except RayActorError as e:  # its constructor raised: not retried, it would fail again
            raise init_failed(e) from e
        t0 = time.perf_counter()
        bar = tqdm(total=len(specs), desc=f"rollouts {planner_name} x{num_workers}", unit="ep",
                   disable=not progress, dynamic_ncols=True)
        for slot in slots:
            if queue:
                dispatch(slot)
        while queue or any(slot.busy is not None for slot in inflight.values()):
            ready, _ = ray.wait(list(inflight), num_returns=1, timeout=1.0 if timeout_s else None)
            if not ready:  # only with a timeout: kill workers stuck in one episode
                now = time.perf_counter()
                for slot in inflight.values():  # a group of k episodes side by side takes about k times one
                    late = slot.busy is not None and now - slot.since > timeout_s * len(slot.busy)
                    if late and not slot.timed_out:
                        slot.timed_out = True
                        stats["timeouts"] += 1
                        ray.kill(slot.actor, no_restart=False)  # restarted; its ref fails -> retried below
                continue
            ref = ready[0]
            slot = inflight.pop(ref)
            group, slot.busy = slot.busy, None
            if group is None:  # a restarted worker is back: it takes the next episodes
                if queue:
                    dispatch(slot)
                continue
            try:
                results = ray.get(ref)
            except RayActorError as e:  # the worker process is gone (killed, OOM, node lost)
                if e.actor_init_failed:
                    raise init_failed(e) from e
                stats["worker_deaths"] += 1
                for i in group:
                    attempts[i] += 1
                    if attempts[i] > max_retries:
                        raise RolloutError(
                            f"spec {i} ({specs[i].task}, seed {specs[i].seed}): worker died {attempts[i]} times "
                            f"(max_retries={max_retries}); last error: {_plain(e).splitlines()[0]}"
                        ) from e
                stats["retries"] += len(group)
                stats["retried_specs"] += group
                stats["workers_started"] += 1  # Ray restarts it
                queue.extendleft(reversed(group))  # re-run them next, so in-order writing is not held up
                # a call sent before the new process is up could fail too: its next episode waits for this
                slot.infos.append(slot.info_ref)
                slot.info_ref = probe(slot.actor)
                inflight[slot.info_ref] = slot
                continue
            except RayTaskError as e:  # an episode itself raised: deterministic, do not retry
                which = ", ".join(f"{i} ({specs[i].task}, seed {specs[i].seed})" for i in group)
                raise RolloutError(f"spec{'s' * (len(group) > 1)} {which} failed: {_plain(e)}") from e
            else:
                busy_s += time.perf_counter() - slot.since
                for i, (row, episode) in zip(group, results):
                    rows[i] = row
                    n_ok += row.success
                    n_done += 1
                    stats["out_of_order"] += i != first_pending  # finished before an earlier spec
                    while first_pending < len(rows) and rows[first_pending] is not None:
                        first_pending += 1
                    if record:
                        held[i] = episode
                        stats["max_buffered"] = max(stats["max_buffered"], len(held))
                        while next_write in held:  # one writer, spec order
                            recorder.append(held.pop(next_write))
                            next_write += 1
                bar.update(len(group))
            bar.set_postfix(success=f"{n_ok / max(n_done, 1):.0%}", retries=stats["retries"], refresh=False)
            if queue:
                dispatch(slot)
        run_s = time.perf_counter() - t0
    finally:
        if bar is not None:
            bar.close()
        for slot in slots:
            ray.kill(slot.actor, no_restart=True)  # frees their CPUs for the next run at once
    stats["startup_s"] = round(t0 - t_boot, 3)
    stats["run_s"] = round(run_s, 3)
    # time inside episodes / worker time available: well below 1 = workers waited on the driver
    stats["utilization"] = round(busy_s / max(run_s * num_workers, 1e-9), 3)
    stats["worker_hosts"] = _hosts([r for s in slots for r in (*s.infos, s.info_ref)])
    assert all(r is not None for r in rows) and (not record or next_write == len(specs))
    return rows, stats


def _plain(e: BaseException) -> str:
    return re.sub(r"\x1b\[[0-9;]*m", "", str(e))  # Ray colours its tracebacks


def _hosts(info_refs: list[Any]) -> dict[str, int]:
    """{"node ip/node id prefix": workers started there} from the workers' info()."""
    out: dict[str, int] = {}
    ready, _ = ray.wait(info_refs, num_returns=len(info_refs), timeout=2.0)
    for ref in ready:
        try:
            info = ray.get(ref, timeout=1.0)
        except Exception:  # a worker that died before it answered
            continue
        key = f"{info['node_ip'] or '?'}/{(info['node_id'] or '?')[:8]}"
        out[key] = out.get(key, 0) + 1
    return out


def row_trace(row: EpisodeRow) -> tuple:
    """What must agree between two runs of the same spec (everything but wall-clock timings)."""
    d = asdict(row) if is_dataclass(row) else dict(row)
    return (d["spec"], d["instruction"], d["plan"], d["skill_success"], d["messages"], d["success"],
            d["plan_success"], d["steps"], d["sim_time"], d["physics_steps"])


# ----------------------------------------------------------------------------- command line


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m embodied_lm.distributed.rollouts``: run generated specs on Ray, print stats."""
    import argparse
    import json

    from embodied_lm.evaluate import summarize
    from sim.tasks import generate_specs

    ap = argparse.ArgumentParser(prog="python -m embodied_lm.distributed.rollouts", description=main.__doc__)
    ap.add_argument("--address", default=None, help='None: private local Ray; "auto" / host:port: join a cluster')
    ap.add_argument("--workers", type=int, default=None, help="default: one per cluster CPU")
    ap.add_argument("--planner", default="oracle")
    ap.add_argument("--planner-seed", type=int, default=0)
    ap.add_argument("--families", nargs="*", default=None)
    ap.add_argument("--levels", nargs="*", default=["L1"])
    ap.add_argument("--episodes", type=int, default=2, help="per family and level")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--images", action="store_true", help="render camera images (implied by --record)")
    ap.add_argument("--record", default=None, help="zarr store to append every episode to")
    ap.add_argument("--gpus-per-worker", type=float, default=0)
    ap.add_argument("--max-retries", type=int, default=3)
    ap.add_argument("--kill", nargs="*", default=[], metavar="SPEC:STEPS",
                    help="fault drill: that spec's worker SIGKILLs itself after STEPS steps (first attempt)")
    args = ap.parse_args(argv)
    faults = {int(a): int(b) for a, b in (k.split(":") for k in args.kill)}

    specs = generate_specs(args.families, args.levels, args.episodes, args.seed)
    cfg = EnvConfig(observe_images=args.images or bool(args.record))
    writer = None
    if args.record:
        from embodied_lm.datasets import ReplayWriter

        writer = ReplayWriter(args.record, attrs={"env_config": {"observe_images": cfg.observe_images}})
    try:
        rows, stats = run_parallel(specs, args.planner, {"seed": args.planner_seed}, cfg, num_workers=args.workers,
                                   address=args.address, recorder=writer, num_gpus_per_worker=args.gpus_per_worker,
                                   max_retries=args.max_retries, fault_injection=faults)
    finally:
        if writer is not None:
            writer.close()
    _, summary = summarize(rows)
    print(f"success {summary['success_rate']:.1%} over {summary['episodes']} episodes")
    print(json.dumps(stats))
    return 0


if __name__ == "__main__":
    import sys

    # re-import under the package name: actor classes pickled from ``__main__`` cannot be found by workers
    from embodied_lm.distributed.rollouts import main as _main

    sys.exit(_main())
