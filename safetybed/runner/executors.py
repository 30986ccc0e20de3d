"""Executors: where episodes run. All of them call :func:`~safetybed.runner.episode.run_episode` (batched backend:
:func:`~safetybed.runner.episode.run_episode_batch` on chunks of episodes).

* ``local`` (default): the calling process for ``workers == 1``, else a pool of ``workers`` spawned
  processes (``spawn``, so no simulator or torch state is shared through ``fork``).
* ``ray``: Ray tasks on the cluster at ``RAY_ADDRESS`` if set, else on a new local Ray instance started
  with ``workers`` CPUs. Requires the ``ray`` extra (``pip install 'safetybed[ray]'``).

An executor yields one :data:`Outcome` per task, as episodes finish, in any order: the episode's record, or
an :class:`EpisodeFailure` naming its index and error. The record of an episode never depends on the
executor or on the worker that ran it (seeds come from the episode index, see ``seeding``), so a task whose
worker died is simply run again:

* an episode that raises its own exception fails the same way on every try: it is reported at once, not
  retried;
* a task whose worker process or node died (SIGKILL, out of memory, a node leaving the cluster) is run again:
  Ray retries it :data:`RAY_RETRIES` times itself, then we submit it anew, :data:`MAX_SUBMISSIONS` times in all;
  the local pool is rebuilt after a dead worker process and its tasks in flight are submitted anew, up to
  :data:`MAX_SUBMISSIONS` times each. Past that the task is reported as lost.
"""

from __future__ import annotations

import itertools
import multiprocessing
import os
import socket
import tempfile
import traceback
from collections.abc import Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from dataclasses import dataclass

from safetybed.errors import InputError
from safetybed.runner.episode import BATCH_EPISODES, EpisodeTask, run_episode, run_episode_batch
from safetybed.sims.rollout import EpisodeRecord
from safetybed.threads import torch_threads

EXECUTORS = ("local", "ray")

#: Submissions per task whose worker died (not for an episode's own exception, which is deterministic).
MAX_SUBMISSIONS = 3
#: Ray's own re-runs of a task whose worker or node died, per submission.
RAY_RETRIES = 3
#: Tasks kept in flight per worker: enough to hide scheduling latency, few enough that an interrupt loses little.
IN_FLIGHT_PER_WORKER = 2


@dataclass(frozen=True)
class EpisodeFailure:
    """An episode that produced no record.

    ``kind`` is ``"exception"`` (the episode raised; it would raise again) or ``"lost"`` (its worker process or
    node died on every try). ``error`` is one line; ``detail`` the traceback where there is one.
    """

    index: int
    kind: str
    error: str
    submissions: int
    detail: str = ""


Outcome = EpisodeRecord | EpisodeFailure


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split())
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def _failed(task: EpisodeTask, error: BaseException, *, submissions: int) -> EpisodeFailure:
    return EpisodeFailure(task.index, "exception", _one_line(error), submissions,
                          "".join(traceback.format_exception(error)))


def _init_worker() -> None:
    # One simulator per process: keep torch / BLAS from oversubscribing the cores.
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:  # pragma: no cover - torch is a hard dependency
        pass


# -- local ------------------------------------------------------------------------------------------------------
def run_local(tasks: Iterable[EpisodeTask], *, workers: int) -> Iterator[Outcome]:
    tasks = list(tasks)
    if workers == 1:
        for task in tasks:
            try:
                yield run_episode(task)
            except Exception as error:  # the episode's own error: report it by index, go on with the others
                yield _failed(task, error, submissions=1)
        return
    queue = list(reversed(tasks))  # pop() from the end takes tasks in index order
    attempts = {task.index: 0 for task in tasks}
    context = multiprocessing.get_context("spawn")
    while queue:
        # A worker process that dies (SIGKILL, OOM) breaks the whole pool: every task in flight is put back
        # in the queue and a new pool takes over. Finished episodes were already yielded (and stored).
        pool = ProcessPoolExecutor(max_workers=workers, mp_context=context, initializer=_init_worker)
        pending: dict[Future, EpisodeTask] = {}
        broken = False
        try:
            while queue or pending:
                while queue and len(pending) < IN_FLIGHT_PER_WORKER * workers:
                    task = queue.pop()
                    attempts[task.index] += 1
                    pending[pool.submit(run_episode, task)] = task
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    task = pending.pop(future)
                    try:
                        yield future.result()
                    except BrokenProcessPool:
                        broken = True
                        queue.append(task)
                    except Exception as error:
                        yield _failed(task, error, submissions=attempts[task.index])
                if broken:
                    break
        finally:
            pool.shutdown(wait=not broken, cancel_futures=True)
        if broken:
            queue.extend(pending.values())
            for task in [t for t in queue if attempts[t.index] >= MAX_SUBMISSIONS]:
                queue.remove(task)
                yield EpisodeFailure(task.index, "lost", "its worker process died on every try",
                                     attempts[task.index])
            queue.sort(key=lambda t: -t.index)


# -- ray --------------------------------------------------------------------------------------------------------
_AUTH_HELP = ("if the cluster was started with token authentication (Ray >= 2.52), set RAY_AUTH_MODE=token on "
              "this machine and give it the cluster's token (RAY_AUTH_TOKEN=..., RAY_AUTH_TOKEN_PATH=FILE or "
              "~/.ray/auth_token); on a trusted network start every node and this client with "
              "RAY_AUTH_MODE=disabled instead (README: On a cluster)")


def _check_reachable(address: str) -> None:
    """Fail in a second, with one message, when nothing listens at ``RAY_ADDRESS`` (Ray itself retries ~80 s)."""
    target = address.removeprefix("ray://")
    host, sep, port_text = target.rpartition(":")
    if not sep or not host or not port_text.isdigit():
        raise InputError(f"RAY_ADDRESS={address!r}: expected HOST:PORT of a Ray head node (e.g. 10.0.0.5:6379), "
                         "or unset it to start a local Ray instance")
    try:
        with socket.create_connection((host.strip("[]"), int(port_text)), timeout=5.0):
            pass
    except OSError as error:
        raise InputError(f"RAY_ADDRESS={address}: no Ray head node answers there ({error.strerror or error}); "
                         "check the address and port printed by `ray start --head`") from None


@contextmanager
def _stderr_to_file():
    """Send fd 2 to a temporary file while Ray connects (its C++ core logs retries there), then restore it."""
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as log:
        os.dup2(log.fileno(), 2)
        try:
            yield log
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def connect_ray(*, workers: int):
    """Connect to ``RAY_ADDRESS`` (or start a local instance); bad address or credentials are :class:`InputError`."""
    try:
        import ray
    except ImportError:
        raise InputError("--executor ray: Ray is not installed; install it with "
                         "pip install 'safetybed[ray]'") from None
    if ray.is_initialized():
        return ray
    address = os.environ.get("RAY_ADDRESS", "").strip()
    if not address:
        # address="local": a new instance, never a stray cluster found through /tmp/ray/ray_current_cluster.
        ray.init(address="local", num_cpus=workers, include_dashboard=False, log_to_driver=False,
                 runtime_env={"env_vars": {"OMP_NUM_THREADS": "1"}})
        return ray
    _check_reachable(address)
    with _stderr_to_file() as log:
        try:
            ray.init(address=address, log_to_driver=False)
            return ray
        except ray.exceptions.AuthenticationError:
            reason = "token authentication is on (RAY_AUTH_MODE=token) but no token was found"
        except ConnectionError:
            log.seek(0)
            text = log.read().decode(errors="replace")
            if os.environ.get("RAY_AUTH_MODE", "").lower() == "token":
                reason = ("the cluster refused this client's token" if "auth" in text.lower() else
                          "the head node did not accept the connection")
            else:
                reason = ("the cluster refused a client without a token" if "auth" in text.lower() else
                          "the head node did not accept the connection")
    raise InputError(f"RAY_ADDRESS={address}: cannot connect to the Ray cluster: {reason}; {_AUTH_HELP}")


def run_unit(unit: tuple[EpisodeTask, ...], batched: bool) -> list[EpisodeRecord]:
    """A Ray task's work: one episode, or a chunk of a batched-backend run on the task's one CPU.

    Its name is the Ray worker's process title while it runs (``ray::run_unit``; the fault tests look for it).
    """
    if not batched:
        return [run_episode(unit[0])]
    with torch_threads(1):
        return run_episode_batch(list(unit))


def run_ray(tasks: Iterable[EpisodeTask], *, workers: int, batch_episodes: int | None = None) -> Iterator[Outcome]:
    """Ray tasks of one episode each, or (``batch_episodes``, the batched backend) of chunks of that many."""
    ray = connect_ray(workers=workers)
    from ray.exceptions import RayError, RayTaskError

    # Ray re-runs a task whose worker or node died (max_retries) but not one that raised (retry_exceptions=False).
    remote_unit = ray.remote(num_cpus=1, max_retries=RAY_RETRIES, retry_exceptions=False)(run_unit)
    if batch_episodes is None:
        queue = ((task,) for task in tasks)
    else:
        listed = list(tasks)
        queue = (tuple(listed[i:i + batch_episodes]) for i in range(0, len(listed), batch_episodes))
    attempts: dict[int, int] = {}
    pending: dict = {}

    def submit(unit: tuple[EpisodeTask, ...]) -> None:
        attempts[unit[0].index] = attempts.get(unit[0].index, 0) + 1
        pending[remote_unit.remote(unit, batch_episodes is not None)] = unit

    # islice, not zip(queue, range(...)): zip pulls one task from the queue before range stops it, and that
    # task was never submitted (the lost episode 2 * workers of issue 11).
    for unit in itertools.islice(queue, IN_FLIGHT_PER_WORKER * workers):
        submit(unit)
    while pending:
        done, _ = ray.wait(list(pending), num_returns=1)
        for ref in done:
            unit = pending.pop(ref)
            tries = attempts[unit[0].index]
            try:
                yield from ray.get(ref)
            except RayTaskError as error:  # the episode's own exception: deterministic, report it
                cause = error.cause if getattr(error, "cause", None) is not None else error
                for task in unit:
                    yield EpisodeFailure(task.index, "exception", _one_line(cause), tries, str(error))
            except RayError as error:  # worker or node died and Ray's own retries ran out
                if tries < MAX_SUBMISSIONS:
                    submit(unit)
                    continue
                for task in unit:
                    yield EpisodeFailure(task.index, "lost", _one_line(error), tries, str(error))
            following = next(queue, None)
            if following is not None:
                submit(following)


def check_executor(executor: str, *, workers: int) -> None:
    """Raise :class:`InputError` before any work starts if the executor cannot run."""
    if workers < 1:
        raise InputError(f"--workers: expected >= 1, got {workers}")
    if executor not in EXECUTORS:
        raise InputError(f"--executor: expected one of {', '.join(EXECUTORS)}, got {executor!r}")
    if executor == "ray":
        connect_ray(workers=workers)


def run_batched(tasks: Iterable[EpisodeTask], *, workers: int = 1,
                batch_episodes: int = BATCH_EPISODES) -> Iterator[Outcome]:
    """The batched backend in the calling process: chunks of ``batch_episodes`` tasks, in index order.

    ``workers`` is torch's intra-op thread count for the batch (records do not depend on it). A chunk that raises
    reports every one of its episodes as failed with that error (one batch, one error).
    """
    tasks = list(tasks)
    for start in range(0, len(tasks), batch_episodes):
        chunk = tasks[start:start + batch_episodes]
        try:
            with torch_threads(workers):
                records = run_episode_batch(chunk)
        except Exception as error:
            for task in chunk:
                yield _failed(task, error, submissions=1)
            continue
        yield from records


def _backend(tasks: list[EpisodeTask]) -> str:
    if not tasks:
        return "highway-env"
    from safetybed.spec import ScenarioSpec

    return ScenarioSpec.model_validate_json(tasks[0].scenario_json).backend


def execute(tasks: Iterable[EpisodeTask], *, executor: str, workers: int) -> Iterator[Outcome]:
    """Run ``tasks`` on the named executor, yielding one record or failure per task as episodes finish.

    A scenario on the batched backend runs its episodes in batches: in the calling process with ``workers`` torch
    threads (``local``), or as Ray tasks of one chunk each on one CPU (``ray``; at least one chunk per worker).
    """
    check_executor(executor, workers=workers)
    tasks = list(tasks)
    if _backend(tasks) == "batched":
        if executor == "local":
            return run_batched(tasks, workers=workers)
        # chunks of up to BATCH_EPISODES, at least one per worker
        per_worker = -(-len(tasks) // workers) if tasks else 1
        return run_ray(tasks, workers=workers, batch_episodes=max(1, min(BATCH_EPISODES, per_worker)))
    return run_local(tasks, workers=workers) if executor == "local" else run_ray(tasks, workers=workers)
