"""Executors: where episodes run. All of them call :func:`~safetybed.runner.episode.run_episode`.

* ``local`` (default): the calling process for ``workers == 1``, else a pool of ``workers`` spawned
  processes (``spawn``, so no simulator or torch state is shared through ``fork``).
* ``ray``: Ray tasks on the cluster at ``RAY_ADDRESS`` if set, else on a local Ray instance started
  with ``workers`` CPUs. Requires the ``ray`` extra (``pip install 'safetybed[ray]'``).

Results come back as episodes finish, in any order; the record of an episode never depends on the
executor or on the worker that ran it (seeds come from the episode index, see ``seeding``).
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

from safetybed.errors import InputError
from safetybed.runner.episode import EpisodeRecord, EpisodeTask, run_episode

EXECUTORS = ("local", "ray")


def _init_worker() -> None:
    # One simulator per process: keep torch / BLAS from oversubscribing the cores.
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:  # pragma: no cover - torch is a hard dependency
        pass


def run_local(tasks: Iterable[EpisodeTask], *, workers: int) -> Iterator[EpisodeRecord]:
    tasks = list(tasks)
    if workers == 1:
        for task in tasks:
            yield run_episode(task)
        return
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=workers, mp_context=context, initializer=_init_worker) as pool:
        # Keep at most 2 tasks per worker in flight so an interrupt loses little work.
        pending = set()
        queue = iter(tasks)
        for task in queue:
            pending.add(pool.submit(run_episode, task))
            if len(pending) >= 2 * workers:
                break
        while pending:
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                yield future.result()
                task = next(queue, None)
                if task is not None:
                    pending.add(pool.submit(run_episode, task))


def run_ray(tasks: Iterable[EpisodeTask], *, workers: int) -> Iterator[EpisodeRecord]:
    try:
        import ray
    except ImportError:
        raise InputError("--executor ray: Ray is not installed; install it with "
                         "pip install 'safetybed[ray]'") from None
    if not ray.is_initialized():
        address = os.environ.get("RAY_ADDRESS")
        if address:
            ray.init(address=address, log_to_driver=False)
        else:
            ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False,
                     runtime_env={"env_vars": {"OMP_NUM_THREADS": "1"}})
    remote_episode = ray.remote(num_cpus=1)(run_episode)
    tasks = list(tasks)
    queue = iter(tasks)
    pending = [remote_episode.remote(task) for task, _ in zip(queue, range(2 * workers), strict=False)]
    while pending:
        done, pending = ray.wait(pending, num_returns=1)
        for ref in done:
            yield ray.get(ref)
            task = next(queue, None)
            if task is not None:
                pending.append(remote_episode.remote(task))


def check_executor(executor: str, *, workers: int) -> None:
    """Raise :class:`InputError` before any work starts if the executor cannot run."""
    if workers < 1:
        raise InputError(f"--workers: expected >= 1, got {workers}")
    if executor not in EXECUTORS:
        raise InputError(f"--executor: expected one of {', '.join(EXECUTORS)}, got {executor!r}")
    if executor == "ray":
        try:
            import ray  # noqa: F401
        except ImportError:
            raise InputError("--executor ray: Ray is not installed; install it with "
                             "pip install 'safetybed[ray]'") from None


def execute(tasks: Iterable[EpisodeTask], *, executor: str, workers: int) -> Iterator[EpisodeRecord]:
    """Run ``tasks`` on the named executor, yielding records as episodes finish."""
    check_executor(executor, workers=workers)
    if executor == "local":
        return run_local(tasks, workers=workers)
    if executor == "ray":
        return run_ray(tasks, workers=workers)
    raise InputError(f"--executor: expected one of {', '.join(EXECUTORS)}, got {executor!r}")
