"""Several images at once on the CPU: each worker a thread with its own copy of the model.

The threads that run one image meet after every operation, so one of them descheduled by another
program stalls the image; independent images on one thread each never wait for one another and keep
the CPUs' fair share on a busy machine (docs/performance.md, "Threads on a shared machine").

- :func:`worker_models`: the model once per worker (the count from
  refusion.inference.threads.image_workers) and each worker's share of the threads.
- :func:`map_workers`: ``fn(worker, item)`` for every item, each call with a free worker, results in
  item order, torch's threads set to each worker's share for the duration.

`refusion restore` runs a folder this way (refusion/cli/restore_jobs.py), `evaluate_runs` each method's
test set (refusion/evaluation/evaluate.py), and the ``contention`` benchmark its ``restore_folder``.
"""
from __future__ import annotations

import copy
import queue
from concurrent.futures import ThreadPoolExecutor, as_completed
from typing import Any, Callable, Sequence, TypeVar

import torch

from refusion.inference.threads import cpu_budget, image_workers

Item = TypeVar("Item")
Result = TypeVar("Result")


def worker_models(model, *, jobs: int, largest_pixels: int, workers: int | None, cpu: bool) -> tuple[list, int | None]:
    """(one model per worker, torch threads of each) for ``jobs`` images, the largest ``largest_pixels``
    pixels (``workers``: a count asked for, None for the automatic one; ``cpu``: whether they run on the
    CPU). The models are ``model`` and deep copies of it (anything deep-copyable: a network, a pipeline,
    a list of them), so that no two images share a module (TLC converts a network's pooling in place);
    with several, a pipeline's per-image step bars are turned off (they would interleave). The threads
    are each worker's share of this process's CPU budget; None with one worker (leave torch's as they
    are)."""
    from refusion.inference.pipeline import RefusionPipeline

    count, threads = image_workers(jobs, cpu_budget()[0], largest_pixels=largest_pixels, cpu=cpu, workers=workers)
    if count == 1:
        return [model], None
    if isinstance(model, RefusionPipeline):
        model.set_progress_bar_config(leave=False, desc="steps", disable=True)
    return [model] + [copy.deepcopy(model) for _ in range(count - 1)], threads


def map_workers(fn: Callable[[Any, Item], Result], items: Sequence[Item], workers: Sequence[Any], *,
                threads: int | None = None, on_result: Callable[[Result], None] | None = None) -> list[Result]:
    """``[fn(worker, item) for item in items]``, each call made with a worker no other call is using.

    One worker: the calls run one after the other in this thread. Several: one thread per worker, each
    taking the next item when it is free. ``threads``: torch's thread count while the calls run (it is
    process-wide: each worker's share), restored afterwards; None leaves it. ``on_result`` is called in
    this thread as each call finishes (a progress bar). An exception (an interrupt too) is raised here
    once the calls under way have finished; no other call starts."""
    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        return _map(fn, items, workers, on_result)
    finally:
        torch.set_num_threads(previous)


def _map(fn, items, workers, on_result) -> list:
    results: list[Any] = [None] * len(items)
    if len(workers) == 1:
        for i, item in enumerate(items):
            results[i] = fn(workers[0], item)
            if on_result is not None:
                on_result(results[i])
        return results
    free: queue.SimpleQueue = queue.SimpleQueue()
    for worker in workers:
        free.put(worker)

    def call(item: Item) -> Result:
        worker = free.get()    # as many pool threads as workers: one is always free here
        try:
            return fn(worker, item)
        finally:
            free.put(worker)

    pool = ThreadPoolExecutor(max_workers=len(workers), thread_name_prefix="refusion-worker")
    try:
        futures = {pool.submit(call, item): i for i, item in enumerate(items)}
        for future in as_completed(futures):
            results[futures[future]] = future.result()
            if on_result is not None:
                on_result(results[futures[future]])
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    return results
