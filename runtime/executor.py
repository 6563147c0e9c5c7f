"""Per-video work on this machine's cores or on a Ray cluster: the one dispatcher of the stages that fan out per
video (``wsvs crawl``, ``wsvs segment-videos``).

``map_unordered(fn, items, config, setup)`` runs ``fn(context, item)`` for every item and yields the results as
they finish. ``setup`` builds the context (a model, typically) once in each worker process and is cached there,
whether the process is this one, a spawned local process or a Ray worker, which runs many tasks in turn. The
stages keep their own manifests on a filesystem every worker sees: a result yielded here is already on disk,
and a rerun after any crash (of a worker, of the Ray head, of this process) skips what is done.

Ray is imported only when the ``ray`` executor is used (``pip install wsvs[cluster]``); the runtime stays
Ray-free otherwise.
"""

from __future__ import annotations

import argparse
import logging
import multiprocessing
import os
import uuid
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from typing import Any, TypeVar

from .errors import InputError

EXECUTORS = ("local", "ray")

Context = TypeVar("Context")
Item = TypeVar("Item")
Result = TypeVar("Result")


@dataclass(frozen=True)
class ExecutorConfig:
    kind: str = "local"  # "local": this machine (this process for one worker, else spawned processes); "ray"
    workers: int = 1  # tasks run at once: local processes, or Ray tasks in flight (the cluster queues the rest)
    address: str | None = None  # ray: the head's HOST:PORT, or "auto"; None starts Ray on this machine
    cpus_per_task: float = 1.0  # ray: CPUs a task reserves
    gpus_per_task: float = 0.0  # ray: GPU fraction a task reserves (for scoring on a GPU)
    max_retries: int = 3  # ray: how often a task whose worker process or node died is run again

    def __post_init__(self) -> None:
        if self.kind not in EXECUTORS:
            raise InputError(None, f"executor must be one of {', '.join(EXECUTORS)}, got {self.kind!r}")
        if self.workers < 1:
            raise InputError(None, f"--workers must be at least 1, got {self.workers}")

    def threads_per_task(self) -> int | None:
        """CPU threads a task's model may use: the CPUs a Ray task reserved, or a local worker's share of this
        machine's cores; None when the tasks run in this process, which keeps its own setting."""
        if self.kind == "ray":
            return max(1, round(self.cpus_per_task))
        return None if self.workers <= 1 else max(1, (os.cpu_count() or 1) // self.workers)

    def device(self) -> str:
        """Where a task's model runs: the GPU share a Ray task reserved (Ray sets its CUDA_VISIBLE_DEVICES), or
        the CPU."""
        return "cuda" if self.gpus_per_task > 0 else "cpu"


def map_unordered(
    fn: Callable[[Context, Item], Result],
    items: Iterable[Item],
    config: ExecutorConfig,
    setup: Callable[[], Context],
) -> Iterator[Result]:
    """``fn(setup(), item)`` for each item, in completion order. ``fn`` and ``setup`` must be picklable (module
    functions or partials of them) unless everything runs in this process (local executor, one worker)."""
    items = list(items)
    if not items:
        return
    if config.kind == "ray":
        yield from _ray_map(fn, items, config, setup)
    elif config.workers <= 1:
        context = setup()
        for item in items:
            yield fn(context, item)
    else:
        token = uuid.uuid4().hex
        with ProcessPoolExecutor(max_workers=config.workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            futures = [pool.submit(_call, fn, setup, token, item) for item in items]
            try:
                for future in as_completed(futures):
                    yield future.result()
            finally:  # on an error or Ctrl-C, stop at once: the items not done are the next run's
                pool.shutdown(cancel_futures=True)


_cached: dict[str, Any] = {}  # this worker process's context, by the token of the map that set it up


def _call(fn: Callable[[Context, Item], Result], setup: Callable[[], Context], token: str, item: Item) -> Result:
    """One task in a worker process: the context is built by the first task of a map and kept for the rest."""
    if token not in _cached:
        _cached.clear()  # one context (model) per process at a time
        _cached[token] = setup()
    return fn(_cached[token], item)


def _ray_map(fn: Callable[[Context, Item], Result], items: list[Item], config: ExecutorConfig,
             setup: Callable[[], Context]) -> Iterator[Result]:
    """Ray tasks, at most ``workers`` in flight; a task whose worker dies is retried ``max_retries`` times."""
    try:
        import ray
    except ImportError:
        raise InputError(None, "the ray executor needs Ray: install wsvs[cluster]") from None
    try:
        ray.init(address=config.address, ignore_reinit_error=True, log_to_driver=False, logging_level=logging.WARNING)
    except ConnectionError as exc:
        raise InputError(None, f"cannot reach the Ray cluster at {config.address}: {exc}") from None
    task = ray.remote(_call).options(num_cpus=config.cpus_per_task, num_gpus=config.gpus_per_task,
                                     max_retries=config.max_retries)
    token = uuid.uuid4().hex
    setup_ref = ray.put(setup)
    queue = iter(items)
    in_flight = [task.remote(fn, setup_ref, token, item) for item in _take(queue, config.workers)]
    try:
        while in_flight:
            done, in_flight = ray.wait(in_flight, num_returns=1)
            in_flight += [task.remote(fn, setup_ref, token, item) for item in _take(queue, 1)]
            yield ray.get(done[0])
    finally:  # on an error or Ctrl-C, stop at once: the items not done are the next run's
        for ref in in_flight:
            ray.cancel(ref)


def _take(queue: Iterator[Item], count: int) -> list[Item]:
    return [item for _, item in zip(range(count), queue)]


def add_executor_arguments(parser: argparse.ArgumentParser) -> None:
    """The options that choose where per-video tasks run; ``--workers`` is each stage's own."""
    parser.add_argument("--executor", choices=EXECUTORS, default="local",
                        help="local: processes on this machine (default); ray: Ray tasks on a cluster "
                        "(pip install wsvs[cluster]), as many in flight as the stage's workers")
    parser.add_argument("--address", metavar="HOST:PORT",
                        help="the Ray head to join, or 'auto' on a cluster node; default: start Ray on this machine")
    parser.add_argument("--cpus-per-task", type=float, default=1.0, metavar="N",
                        help="CPUs a Ray task reserves (default 1)")
    parser.add_argument("--gpus-per-task", type=float, default=0.0, metavar="F",
                        help="GPU fraction a Ray task reserves, e.g. 0.25 for four tasks per GPU (default 0)")


def executor_from_args(args: argparse.Namespace, workers: int) -> ExecutorConfig:
    if args.executor != "ray" and args.address is not None:
        raise InputError(None, "--address is the Ray cluster's: add --executor ray")
    return ExecutorConfig(kind=args.executor, workers=workers, address=args.address,
                          cpus_per_task=args.cpus_per_task, gpus_per_task=args.gpus_per_task)
