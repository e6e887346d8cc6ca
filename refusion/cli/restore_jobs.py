"""`refusion restore`'s batch: jobs split between processes, each output written once, resumable, summarised.

A plain run is one process doing every job. Under `accelerate launch` each process (one per GPU, or
several CPU processes) takes a contiguous share of the jobs (`refusion.inference.processes`, over
accelerate's `split_between_processes`); the records of every process are then gathered on every
process (`gather_object`), so all of them return the same exit status, and the main process prints the
counts and writes the --summary manifest.

Within a process, `run_share` restores several images at once on the CPU, each in its own thread with
its own copy of the model (refusion.inference.workers): threads of one image wait for each other after
every operation, workers never do.

Before any process writes, the main process removes the temporaries a killed run left in the output
folder (`image_io.remove_partial_files`) and, with --skip-existing, decides which jobs are done; that
decision is broadcast, so every process works from one plan and none starts before the folder is clean.
"""
from __future__ import annotations

import json
import sys
import time
from collections import Counter
from datetime import timedelta
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from accelerate import PartialState
from accelerate.utils import broadcast_object_list
from tqdm.auto import tqdm

from refusion.data.image_io import ImageReadError, atomic_output, remove_partial_files
from refusion.inference.processes import gather_in_order, process_share, process_state
from refusion.inference.workers import map_workers

RESTORED, FAILED, SKIPPED = "restored", "failed", "skipped-existing"
# Failures that cost their job only, never the batch: an unreadable file, an image too large for
# memory, a NaN/Inf network output, a full disk.
JOB_ERRORS = (ImageReadError, ValueError, RuntimeError, MemoryError, OSError, FloatingPointError)

Job = tuple[tuple[Path, ...], tuple[Path, ...]]   # (sources, targets): one image, or a stereo pair's two views
# The processes wait for one another only before the first image and at the gather after the last. On a
# big folder the first to finish its share can wait there far longer than torch's collective timeout
# (10 minutes over NCCL, 30 over gloo), which would end the launch in an error after every image is done.
WAIT_LIMIT = timedelta(hours=24)


def restore_state(device) -> PartialState:
    """accelerate's view of this process (index, number of processes; one process outside a launch),
    for work on `device`, its collectives waiting up to WAIT_LIMIT."""
    return process_state(str(device), timeout=WAIT_LIMIT)


def check_summary_path(summary: Path | None, inputs: list[Path], outputs: list[Path]) -> None:
    """Refuse a --summary that is a folder or would replace an input or an output image (ValueError)."""
    if summary is None:
        return
    if summary.is_dir():
        raise ValueError(f"--summary {str(summary)!r} is a folder; give a file name, e.g. restore-summary.json")
    where = summary.resolve()
    for kind, paths in (("input", inputs), ("output", outputs)):
        clash = next((p for p in paths if p.resolve() == where), None)
        if clash is not None:
            raise ValueError(f"--summary {str(summary)!r} is the {kind} image {str(clash)!r}; choose another file")


def prepare_output(jobs: list[Job], output: Path, *, skip_existing: bool,
                   state: PartialState) -> tuple[list[Job], list[Job]]:
    """(jobs to run, jobs skipped because every one of their outputs exists), the same on every process.

    Only the main process looks at the folder: it creates it, removes an interrupted run's temporaries
    and lists the finished outputs. A temporary is only ever renamed to its final name once complete, so
    an existing output is a whole image. The broadcast of the answer is the barrier after which writing
    may start."""
    done: list[Any] = [[]]
    if state.is_main_process:
        output.mkdir(parents=True, exist_ok=True)
        stray = remove_partial_files(output)
        if stray:
            print(f"restore: removed {len(stray)} partial file(s) an interrupted run left in {output}",
                  file=sys.stderr)
        if skip_existing:
            done = [[i for i, (_, targets) in enumerate(jobs) if all(t.is_file() for t in targets)]]
    broadcast_object_list(done)
    skipped = set(done[0])
    return ([job for i, job in enumerate(jobs) if i not in skipped],
            [job for i, job in enumerate(jobs) if i in skipped])


def image_record(source: Path, target: Path, status: str, *, rank: int, seconds: float,
                 error: str | None = None) -> dict:
    record = {"input": str(source), "output": str(target), "rank": rank, "seconds": seconds, "status": status}
    if error is not None:
        record["error"] = error
    return record


def run_share(jobs: list[Job], workers: Sequence[Callable[[tuple[Path, ...], tuple[Path, ...]], None]], *,
              state: PartialState, progress: bool, threads: int | None = None) -> list[tuple[int, list[dict]]]:
    """Run this process's share of `jobs`: [(index in `jobs`, its records: one per image)], in job order.

    Each of ``workers`` is a ``restore_job(sources, targets)`` that restores one job and writes its
    targets (each with `image_io.atomic_output`; a file written beside a target goes first, so a target
    on disk means a finished job for --skip-existing); with several, each runs in its own thread and
    takes the next job when it is free (`refusion.inference.workers.map_workers`; they must share no
    state: one model copy each; ``threads``: torch's threads meanwhile, each worker's share). A failure
    in `JOB_ERRORS` costs its job only. The progress bar (main process only) counts the main process's
    share. An interrupt lets the jobs under way finish (their outputs are whole) and starts no other."""
    share = process_share(jobs, state)
    desc = "images" if state.num_processes == 1 else f"images (process 0's share, of {state.num_processes})"
    bar = tqdm(total=len(share), desc=desc, unit="img", disable=not (progress and state.is_main_process))

    def run(restore_job, item: tuple[int, Job]) -> tuple[int, list[dict]]:
        index, job = item
        bar.set_postfix_str(job[0][0].name[-40:], refresh=False)
        return _run_job(restore_job, index, job, state.process_index)

    with bar:
        return map_workers(run, share, workers, threads=threads, on_result=lambda _: bar.update())


def _run_job(restore_job: Callable[[tuple[Path, ...], tuple[Path, ...]], None], index: int, job: Job,
             rank: int) -> tuple[int, list[dict]]:
    """(index, records) of one job: restored, or failed with the reason of a `JOB_ERRORS` failure."""
    sources, targets = job
    start = time.perf_counter()
    try:
        restore_job(sources, targets)
        status, error = RESTORED, None
    except JOB_ERRORS as exc:
        kind = ImageReadError.__name__ if isinstance(exc, ImageReadError) else type(exc).__name__
        status, error = FAILED, f"{kind}: {exc}"
        tqdm.write(f"restore: skipped {' + '.join(map(str, sources))}: {exc}", file=sys.stderr)
    seconds = round(time.perf_counter() - start, 3)
    return index, [image_record(src, dst, status, rank=rank, seconds=seconds, error=error)
                   for src, dst in zip(sources, targets)]


def gather_records(done: list[tuple[int, list[dict]]], skipped: list[Job], jobs: list[Job]) -> list[dict]:
    """Every process's records (`run_share`'s) and the skipped jobs' (decided by the main process,
    rank 0), in the order of `jobs`; the same list on every process."""
    everything = [record for records in gather_in_order(done) for record in records]
    everything += [image_record(src, dst, SKIPPED, rank=0, seconds=0.0)
                   for sources, targets in skipped for src, dst in zip(sources, targets)]
    order = {str(src): i for i, src in enumerate(src for sources, _ in jobs for src in sources)}
    return sorted(everything, key=lambda record: order[record["input"]])


def settings_of(args, **extra: Any) -> dict:
    """The command's settings (every parsed option) as JSON values, plus `extra`."""
    def plain(value):
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        return value if value is None or isinstance(value, (bool, int, float, str)) else str(value)

    return {key: plain(value) for key, value in {**vars(args), **extra}.items()}


def manifest(records: list[dict], settings: dict, *, processes: int, seconds: float) -> dict:
    """The --summary document: settings, totals, one entry per image (input order)."""
    counts = Counter(record["status"] for record in records)
    totals = {"images": len(records), "restored": counts[RESTORED], "failed": counts[FAILED],
              "skipped_existing": counts[SKIPPED], "seconds": round(seconds, 3)}
    return {"command": "refusion restore", "settings": settings, "processes": processes, "totals": totals,
            "images": records}


def write_summary(path: Path, document: dict) -> None:
    """Write the manifest atomically; an earlier run's leftover temporary of this file goes first."""
    remove_partial_files(path.parent, names=[path.name])
    with atomic_output(path) as tmp:
        tmp.write_text(json.dumps(document, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def report(records: Iterable[dict], output: Path, seconds: float) -> None:
    """The "N of M images restored" line over all processes, and each failure with its reason."""
    records = list(records)
    counts = Counter(record["status"] for record in records)
    line = (f"restore: {counts[RESTORED]} of {len(records)} images restored into {output} in {seconds:.1f} s; "
            f"{counts[FAILED]} failed")
    if counts[SKIPPED]:
        line += f"; {counts[SKIPPED]} skipped (output already there)"
    print(line)
    for record in records:
        if record["status"] == FAILED:
            print(f"  failed: {record['input']}: {record['error']}", file=sys.stderr)


def exit_status(records: Iterable[dict]) -> int:
    """1 when any image failed on any process, else 0."""
    return 1 if any(record["status"] == FAILED for record in records) else 0
