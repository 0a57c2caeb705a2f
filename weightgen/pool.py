"""The one Ray start-up and the one bounded task pool that collection, evaluation and batch sampling
share. Ray is imported here only, when a caller asks for it.

    with ray_session(address, workers) as ray:          # the cluster, or a local Ray
        task = ray.remote(num_cpus=1, max_retries=2)(fn)
        for item, ref in as_completed(ray, lambda it: task.remote(it), items, max_in_flight=8):
            ray.get(ref)                                 # raises what the task raised
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")


@contextlib.contextmanager
def ray_session(address: str | None = None, workers: int | None = None) -> Iterator[Any]:
    """Ray for the block: the cluster at `address` (default: RAY_ADDRESS, set inside
    `ray job submit`), else a local Ray with `workers` CPUs (default: all). A Ray already
    initialised in this process is used as it is and left running; one started here is shut down."""
    import ray

    if ray.is_initialized():
        yield ray
        return
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=False)
    else:
        ray.init(
            num_cpus=workers or os.cpu_count(),
            include_dashboard=False,
            log_to_driver=False,
            configure_logging=False,
        )
    try:
        yield ray
    finally:
        ray.shutdown()


def as_completed(
    ray, submit: Callable[[T], Any], items: Iterable[T], *, max_in_flight: int
) -> Iterator[tuple[T, Any]]:
    """(item, object ref) pairs as their tasks finish, with at most `max_in_flight` submitted and
    unfinished at any time (`submit(item)` returns the ref). The caller `ray.get`s each ref, so a
    task that failed after its retries raises there, for that item alone."""
    if max_in_flight < 1:
        raise ValueError(f"max_in_flight must be >= 1, got {max_in_flight}")
    pending: dict[Any, T] = {}
    queue = iter(items)
    while True:
        while len(pending) < max_in_flight:
            item = next(queue, _END)
            if item is _END:
                break
            pending[submit(item)] = item
        if not pending:
            return
        done, _ = ray.wait(list(pending), num_returns=1)
        for ref in done:
            yield pending.pop(ref), ref


_END = object()


def run_tasks(
    fn: Callable[..., T],
    jobs: list[dict],
    *,
    workers: int,
    desc: str,
    shared: tuple[str, ...] = ("base_state", "preset", "cfg"),
    on_result: Callable[[int, T], None] | None = None,
) -> list[T]:
    """[fn(**job) for job in jobs], in order: in this process, or one Ray task per job (1 CPU each,
    retried twice, at most twice the CPUs (`workers` or the cluster's) in flight) when workers > 1
    or RAY_ADDRESS names a cluster. `on_result(i, result)` runs as each job finishes (e.g. to save
    it, so an interrupted run resumes).
    A value under a `shared` key that is the same object in every job goes to the object store once."""
    if workers <= 1 and not os.environ.get("RAY_ADDRESS"):
        results = []
        for i, job in enumerate(tqdm(jobs, desc=desc, unit="task")):
            results.append(fn(**job))
            if on_result is not None:
                on_result(i, results[-1])
        return results
    with ray_session(workers=workers) as ray:
        common = {}
        for k in shared:
            if jobs and k in jobs[0] and all(j.get(k) is jobs[0][k] for j in jobs):
                common[k] = ray.put(jobs[0][k])
        remote = ray.remote(num_cpus=1, max_retries=2)(_call)
        keys, values = list(common), list(common.values())

        def submit(i: int):
            # object refs as top-level arguments: Ray resolves those (not refs nested in a dict)
            job = {k: v for k, v in jobs[i].items() if k not in common}
            return remote.remote(fn, job, keys, *values)

        cap = 2 * max(workers, int(ray.cluster_resources().get("CPU", 1)))
        results: list[Any] = [None] * len(jobs)
        with tqdm(total=len(jobs), desc=desc, unit="task") as bar:
            for i, ref in as_completed(ray, submit, range(len(jobs)), max_in_flight=cap):
                results[i] = ray.get(ref)
                if on_result is not None:
                    on_result(i, results[i])
                bar.update(1)
        return results


def _call(fn, job: dict, keys: list[str], *values):
    return fn(**dict(zip(keys, values)), **job)


def run_resumable(
    fn: Callable[..., T],
    jobs: list[dict],
    cached: list[T | None],
    *,
    save: Callable[[int, T], None],
    workers: int,
    desc: str,
) -> list[T]:
    """`run_tasks` for the jobs whose `cached[i]` is None, the others reused; each new result is
    passed to `save(i, result)` (i: its index in `jobs`) as it finishes, so an interrupted run
    resumes where it stopped."""
    results = list(cached)
    left = [i for i, r in enumerate(results) if r is None]
    if len(left) < len(jobs):
        print(f"  {desc}: reusing {len(jobs) - len(left)} finished of {len(jobs)}")

    def on_result(j: int, res: T) -> None:
        results[left[j]] = res
        save(left[j], res)

    if left:
        run_tasks(fn, [jobs[i] for i in left], workers=workers, desc=desc, on_result=on_result)
    return results
