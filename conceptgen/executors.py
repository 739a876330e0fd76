"""Where model work runs: in this process (the default) or on a Ray cluster.

An executor maps items (one video of an extraction run, one batch of TCAV clips)
over workers that each hold the model once:

    executor.map_unordered(make_worker, loaded, items) -> iterator of (item, result)

``make_worker(loaded)`` builds, once per worker, a callable ``worker(item) -> result``;
``make_worker`` must be picklable (a top-level class or a functools.partial of one).
Results come back in completion order, each exactly once.

:class:`RayExecutor` puts the model (weights and all) into Ray's object store ONCE,
starts one actor per worker slot (``cpus_per_worker`` CPUs, ``num_gpus_per_worker``
GPUs each, on any node), keeps at most ``in_flight_per_worker`` items queued per actor
(``ray.wait``) and, when a worker or its node dies, hands that worker's items to the
surviving workers. Results are written by the workers themselves (extraction: straight
to the database, guarded by claims), so the driver only schedules and reports.
"""
from __future__ import annotations

import socket
import sys
import time
import uuid
from abc import ABC, abstractmethod
from collections import deque
from dataclasses import replace
from typing import Any, Callable, Iterable, Iterator

from conceptgen.errors import ConceptgenError, ConfigError, UnreachableError
from conceptgen.ray_connection import RAY_CONNECT_TIMEOUT_S, connect_ray

EXECUTORS = ("inprocess", "ray")
MAX_ATTEMPTS = 3  # an item whose worker died this many times stops the run (it may be what kills them)
RESOURCE_NOTICE_S = 10.0  # workers still waiting for CPUs/GPUs after this long: say so


def notice(message: str) -> None:
    """One line for the operator on stderr, between progress bars (not silenced by --quiet)."""
    from tqdm import tqdm

    tqdm.write(message, file=sys.stderr)

class Executor(ABC):
    """Runs ``make_worker(loaded)``'s callable over items on some workers."""

    workers: int = 1
    device: str | None = None  # where workers put the model (None: where ``loaded`` already is)
    lost_workers: int = 0  # workers that died during this executor's maps (so far)
    requeued: int = 0      # items handed to another worker after theirs died (so far)

    @abstractmethod
    def map_unordered(self, make_worker: Callable[[Any], Callable[[Any], Any]], loaded,
                      items: Iterable[Any]) -> Iterator[tuple[Any, Any]]:
        """Yields ``(item, worker(item))`` as items finish. ``items`` is consumed lazily:
        at most the items in flight are drawn ahead of the results."""

    def close(self) -> None:
        """Releases what the executor started."""

    def __enter__(self) -> "Executor":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

class InProcessExecutor(Executor):
    """One worker: this process, one item at a time."""

    def map_unordered(self, make_worker, loaded, items):
        worker = make_worker(loaded)
        for item in items:
            yield item, worker(item)

def model_on(loaded, device: str | None):
    """``loaded`` with its model moved to ``device`` (unchanged when None or already there)."""
    import torch

    if device is None or torch.device(device) == torch.device(loaded.device):
        return loaded
    return replace(loaded, model=loaded.model.to(device), device=torch.device(device))

# --- Ray ----------------------------------------------------------------------------
class _ModelActor:
    """A Ray actor holding the model (loaded once) and the worker of the current map."""

    def __init__(self, loaded, device: str | None, threads: int):
        import cv2
        import torch

        # The worker's CPU share: Ray reserves ``threads`` CPUs for it; use no more.
        torch.set_num_threads(max(1, threads))
        cv2.setNumThreads(max(1, threads))
        self.loaded = model_on(loaded, device)
        self.key, self.worker = None, None

    def ready(self) -> str:
        return socket.gethostname()

    def run(self, key: str, make_worker, item):
        if key != self.key:  # a new map: build its worker once, over the same model
            self.key, self.worker = key, make_worker(self.loaded)
        return self.worker(item)


class RayExecutor(Executor):
    """Workers are Ray actors spread over the cluster, one per ``cpus_per_worker`` CPUs
    (or per ``num_gpus_per_worker`` GPUs when given), unless ``workers`` says how many."""

    def __init__(self, address: str | None = None, *, workers: int | None = None, cpus_per_worker: float = 1.0,
                 num_gpus_per_worker: float = 0.0, in_flight_per_worker: int = 2,
                 connect_timeout_s: float = RAY_CONNECT_TIMEOUT_S, notice_after_s: float = RESOURCE_NOTICE_S,
                 notify: Callable[[str], None] = notice):
        if cpus_per_worker <= 0 or num_gpus_per_worker < 0 or (workers is not None and workers < 1):
            raise ConfigError("Ray workers need > 0 CPUs each, >= 0 GPUs each and at least one worker")
        self._pool = None
        self.notice_after_s, self.notify = notice_after_s, notify
        # A private Ray (no address) gets the CPUs the asked-for workers need, else all cores.
        private_cpus = workers * cpus_per_worker if workers and not num_gpus_per_worker else None
        self._started = connect_ray(address, timeout_s=connect_timeout_s, num_cpus=private_cpus)
        import ray

        resources = ray.cluster_resources()
        if num_gpus_per_worker > 0:
            fit = int(resources.get("GPU", 0) // num_gpus_per_worker)
            if fit < 1:
                self.close()
                raise ConfigError(f"the Ray cluster has {resources.get('GPU', 0):g} GPUs; a worker needs "
                                  f"{num_gpus_per_worker:g}: lower --num-gpus-per-task or add GPU nodes")
        else:
            fit = int(resources.get("CPU", 0) // cpus_per_worker)
        self.workers = workers or fit
        if self.workers < 1:
            self.close()
            raise ConfigError(f"the Ray cluster has {resources.get('CPU', 0):g} CPUs, fewer than one worker's "
                              f"{cpus_per_worker:g}: add nodes or lower the CPUs per worker")
        self.cpus, self.gpus, self.in_flight = cpus_per_worker, num_gpus_per_worker, in_flight_per_worker
        self.device = "cuda" if num_gpus_per_worker > 0 else None
        self._pool: tuple[str, list] | None = None  # (model fingerprint, live actors)
        self.lost_workers = 0  # workers that died during this executor's maps
        self.requeued = 0      # items handed to another worker after theirs died

    def _actors_for(self, loaded) -> list:
        """The live actors holding ``loaded`` (started on first use; the model is put once)."""
        import ray

        if self._pool is not None and self._pool[0] == loaded.fingerprint and self._pool[1]:
            return self._pool[1]
        self._kill_pool()
        ref = ray.put(model_on(loaded, "cpu"))  # weights travel once, device-neutral
        actor_cls = ray.remote(num_cpus=self.cpus, num_gpus=self.gpus or None, max_restarts=0)(_ModelActor)
        actors = [actor_cls.remote(ref, self.device, max(1, int(self.cpus))) for _ in range(self.workers)]
        alive = []
        for actor, ready in zip(actors, self._wait_started({a.ready.remote(): a for a in actors})):
            try:
                ray.get(ready)
                alive.append(actor)
            except ray.exceptions.RayTaskError as err:
                raise _worker_error(err) from None
            except ray.exceptions.RayError:
                self.lost_workers += 1
        if not alive:
            raise UnreachableError("no Ray worker could start; see `ray status` on the head node")
        self._pool = (loaded.fingerprint, alive)
        return alive

    def _wait_started(self, readies: dict) -> list:
        """Waits until every actor answers (or died); says once, after ``notice_after_s``, when
        some are still waiting for the cluster's CPUs or GPUs, and what the cluster has."""
        import ray

        waiting, told, since = list(readies), False, time.monotonic()
        while waiting:
            timeout = None if told else max(0.0, self.notice_after_s - (time.monotonic() - since))
            _, waiting = ray.wait(waiting, num_returns=len(waiting), timeout=timeout)
            if waiting and not told:
                self.notify(self.resource_wait_message(len(waiting)))
                told = True
        return list(readies)

    def resource_wait_message(self, n_waiting: int) -> str:
        import ray

        total, free = ray.cluster_resources(), ray.available_resources()
        need = f"{self.cpus:g} CPU" + (f" and {self.gpus:g} GPU" if self.gpus else "")
        has = f"{free.get('CPU', 0):g} of {total.get('CPU', 0):g} CPUs free" + (
            f", {free.get('GPU', 0):g} of {total.get('GPU', 0):g} GPUs free" if self.gpus else "")
        return (f"waiting for Ray resources: {n_waiting} of {self.workers} workers cannot start yet (each needs "
                f"{need}; the cluster has {has}); another driver may hold them, or nodes are still joining; "
                "`ray status` on the head shows who")

    def map_unordered(self, make_worker, loaded, items):
        import ray

        pool = self._actors_for(loaded)
        key = uuid.uuid4().hex
        make_ref = ray.put(make_worker)
        pending: dict = {}  # object ref -> (actor, item, attempts)
        retry: deque = deque()
        source = iter(items)
        load = {a: 0 for a in pool}
        while True:
            # Fill every live worker up to its in-flight bound, retries first.
            while load:
                actor = min(load, key=load.get)
                if load[actor] >= self.in_flight:
                    break
                if retry:
                    item, attempts = retry.popleft()
                else:
                    item = next(source, _END)
                    if item is _END:
                        break
                    attempts = 0
                pending[actor.run.remote(key, make_ref, item)] = (actor, item, attempts)
                load[actor] += 1
            if not pending:
                if retry:
                    raise ConceptgenError(f"all {self.workers} Ray workers died; {len(retry)} item(s) undone. "
                                          "Run the same command again to resume")
                return
            (ref,), _ = ray.wait(list(pending), num_returns=1)
            actor, item, attempts = pending.pop(ref)
            if actor in load:
                load[actor] -= 1
            try:
                result = ray.get(ref)
            except ray.exceptions.RayTaskError as err:  # the work itself raised: the caller's error
                raise _worker_error(err) from None
            except ray.exceptions.RayError:  # the worker or its node died: hand the item on
                if actor in load:
                    del load[actor]
                    pool.remove(actor)
                    self.lost_workers += 1
                    self.notify(f"a Ray worker was lost (its process or node died); its items go to the "
                                f"{len(pool)} remaining worker(s)")
                if attempts + 1 >= MAX_ATTEMPTS:
                    raise ConceptgenError(f"{MAX_ATTEMPTS} Ray workers died on one item ({item!r:.80}); "
                                          "it may be too large for a worker's memory") from None
                retry.append((item, attempts + 1))
                self.requeued += 1
                continue
            yield item, result

    def _kill_pool(self) -> None:
        if self._pool is not None:
            import ray

            for actor in self._pool[1]:
                ray.kill(actor)
            self._pool = None

    def close(self) -> None:
        self._kill_pool()
        if self._started:
            import ray

            ray.shutdown()
            self._started = False

_END = object()


def _worker_error(err):
    """A worker's own exception for the driver: a ConceptgenError as itself (its str is the
    one line the CLI prints; Ray's wrapper would print the remote traceback), else Ray's
    wrapper that is also an instance of the cause's class."""
    return err.cause if isinstance(err.cause, ConceptgenError) else err.as_instanceof_cause()

def make_executor(name: str = "inprocess", *, address: str | None = None, workers: int | None = None,
                  num_gpus_per_task: float = 0.0, connect_timeout_s: float = RAY_CONNECT_TIMEOUT_S) -> Executor:
    """The executor named on the command line (``--executor``)."""
    if name == "inprocess":
        if address is not None or num_gpus_per_task or workers is not None:
            raise ConfigError("--address, --workers and --num-gpus-per-task need --executor ray")
        return InProcessExecutor()
    if name == "ray":
        return RayExecutor(address, workers=workers, num_gpus_per_worker=num_gpus_per_task,
                           connect_timeout_s=connect_timeout_s)
    raise ConfigError(f"--executor {name!r} unknown; use one of {', '.join(EXECUTORS)}")
