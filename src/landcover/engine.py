"""Where map-style work runs: in-process, a local process pool, or a Ray cluster."""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass
from typing import Any

from landcover.errors import LandcoverError

ENGINES = ("local", "process", "ray")

_shared: Any = None  # the job's shared state inside a pool worker
RAY_NODES: dict[str, int] = {}
"""Tasks this process has had run on each Ray node (by node id): where a cluster's work went."""


@dataclass(frozen=True)
class Engine:
    """Where map-style work runs: 'local' (this process), 'process' (a pool of `workers`) or 'ray' (a Ray cluster at
    `ray_address`, or a local one). API functions also take it as a string: 'process:2', 'ray'."""

    name: str = "local"
    workers: int = 1
    ray_address: str | None = None
    threads: int | None = None
    """Threads a task may use (torch, onnxruntime, numba): default every core in-process, an equal share of the
    cores on a pool or a local Ray, one on a Ray cluster (it runs a task on each CPU of each node); a tile of
    `predict --tiles`, run in-process on a worker, is given its share."""

    @property
    def task_threads(self) -> int | None:
        """Threads per task (None: every core)."""
        if self.threads:
            return self.threads
        if self.name == "ray" and self.ray_address:
            return 1
        return None if self.name == "local" else max(1, (os.cpu_count() or 1) // self.workers)

    @classmethod
    def choose(cls, name: str | None, workers: int = 1, ray_address: str | None = None) -> Engine:
        """The engine a user asked for: `--workers N` alone means a process pool."""
        if workers < 1:
            raise LandcoverError(f"--workers {workers} must be >= 1")
        if name is None:
            name = "ray" if ray_address else ("process" if workers > 1 else "local")
        if name not in ENGINES:
            raise LandcoverError(f"unknown engine {name!r} (choose from {', '.join(ENGINES)})")
        return cls(name, workers, ray_address)

    @classmethod
    def of(cls, engine: Engine | str | None) -> Engine:
        """An engine from what an API caller passes: an Engine, None (in-process), or a name with an optional
        worker count: 'local', 'process:2', 'ray', 'ray:4'."""
        if engine is None or isinstance(engine, Engine):
            return engine or cls()
        name, _, workers = str(engine).partition(":")
        if workers and not workers.isdigit():
            raise LandcoverError(f"engine {engine!r}: the worker count after ':' must be a whole number")
        return cls.choose(name, int(workers or 1))

    def map(self, fn: Callable[[Any, Any], Any], shared: Any, tasks: Iterable[Any],
            spawn: bool = False) -> Iterator[Any]:
        """Run fn(shared, task) for every task; yield results as they finish (any order).

        `spawn`: pool workers start as fresh interpreters instead of forks (needed once this process has run torch:
        a forked OpenMP thread pool deadlocks)."""
        tasks = list(tasks)
        if not tasks:
            return iter(())
        if self.name == "local" or (self.name == "process" and self.workers == 1):
            return (fn(shared, t) for t in tasks)
        if self.name == "process":
            return _pool_map(fn, shared, tasks, self.workers, spawn)
        return _ray_map(fn, shared, tasks, self.workers, self.ray_address)


def use_threads(threads: int | None) -> None:
    """A pool's or Ray's task given its share of the cores (None: leave every core): numba's kernels (the pixel
    model's filters and trees, the CRF) then use that many threads, process-wide as torch's do."""
    if threads:
        import numba

        numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))


def in_order(results: Iterable[Any], first: int = 0) -> Iterator[Any]:
    """Results that carry an `index`, yielded in index order from `first` (engines finish tasks in any order, files
    are written in order); nothing is kept once yielded."""
    waiting: dict[int, Any] = {}
    for result in results:
        waiting[result.index] = result
        result = None  # the caller's reference is the only one left once it is yielded
        while first in waiting:
            yield waiting.pop(first)
            first += 1


def _init_worker(shared: Any) -> None:
    global _shared
    _shared = shared


def _call(fn: Callable[[Any, Any], Any], task: Any) -> Any:
    return fn(_shared, task)


def _pool_map(fn: Callable, shared: Any, tasks: list, workers: int, spawn: bool = False) -> Iterator[Any]:
    context = multiprocessing.get_context("fork" if os.name == "posix" and not spawn else "spawn")
    with ProcessPoolExecutor(workers, mp_context=context, initializer=_init_worker,
                             initargs=(shared,)) as pool:
        pending = {pool.submit(_call, fn, t) for t in tasks}
        try:
            while pending:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    yield future.result()
        finally:
            for future in pending:
                future.cancel()


def _on_node(fn: Callable[[Any, Any], Any], shared: Any, task: Any) -> tuple[str, Any]:
    """A Ray task: fn(shared, task), with the id of the node it ran on."""
    import ray

    return ray.get_runtime_context().get_node_id(), fn(shared, task)


def _ray_map(fn: Callable, shared: Any, tasks: list, workers: int, address: str | None) -> Iterator[Any]:
    try:
        import ray
    except ImportError:
        raise LandcoverError("--engine ray needs Ray: pip install 'ray[default]'") from None
    started = not ray.is_initialized()
    if started:
        options: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False,
                                   "configure_logging": False}
        if address:
            ray.init(address=address, **options)
        else:  # a local engine starts its own instance, never joins a cluster a past `ray start` left recorded
            ray.init(address="local", num_cpus=workers, **options)
    try:
        remote = ray.remote(num_cpus=1)(_on_node)
        shared_ref = ray.put(shared)
        pending = [remote.remote(fn, shared_ref, t) for t in tasks]
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            for ref in done:
                node, result = ray.get(ref)
                RAY_NODES[node] = RAY_NODES.get(node, 0) + 1
                yield result
    finally:
        if started:
            ray.shutdown()
