"""Work split across the processes of `accelerate launch`: this process's share of a list, results gathered.

Each process takes a contiguous share of the items (accelerate's ``split_between_processes``) and keeps
every item's index in the whole list, so what depends on the item (a seed ``seed + index``) does not
depend on how many processes there are. The per-item results come back in list order:

    state = process_state(device)          # before anything else that asks accelerate about processes
    done = [(index, work(item)) for index, item in process_share(items, state)]
    results = gather_in_order(done)        # on every process: all items' results, in item order

A plain ``python`` run is a single process: its share is the whole list and gathering returns it.
"""
from __future__ import annotations

from datetime import timedelta
from typing import Any, Sequence

import torch
from accelerate import PartialState
from accelerate.utils import gather_object, parse_flag_from_env


def process_state(device: str = "cpu", *, timeout: timedelta | None = None) -> PartialState:
    """accelerate's (shared) state of this process, started for work on ``device``.

    ``timeout``: how long a collective (a gather, a barrier) waits for the other processes, instead of
    torch's default (10 minutes over NCCL, 30 over gloo); it applies when this call starts the state.

    Processes that work on the CPU (``device`` "cpu", no GPU at all, or ACCELERATE_USE_CPU as
    ``accelerate launch --cpu`` sets it) talk over gloo and must say so: PartialState reads no such flag
    itself, and a bare ``PartialState()`` under ``accelerate launch`` on a machine without GPUs would
    see one process alone, so that each process would do all the work.
    """
    on_cpu = torch.device(device).type == "cpu" or not torch.cuda.is_available()
    wait = {} if timeout is None else {"timeout": timeout}
    return PartialState(cpu=on_cpu or parse_flag_from_env("ACCELERATE_USE_CPU"), **wait)


def process_share(items: Sequence, state: PartialState | None = None) -> list[tuple[int, Any]]:
    """[(index in ``items``, item)] for this process's contiguous share (the first processes take one
    more item when the count does not divide; a process may get none)."""
    state = state or process_state()
    with state.split_between_processes(list(enumerate(items))) as share:
        return list(share)


def gather_in_order(done: Sequence[tuple[int, Any]]) -> list:
    """Every process's [(index, result)] -> all results ordered by index, on every process."""
    gathered = gather_object(list(done))
    return [result for _, result in sorted(gathered, key=lambda pair: pair[0])]


def process_device(device: str, state: PartialState | None = None) -> str:
    """The device this process works on: with several processes, ``"cuda"`` becomes this process's own
    GPU (accelerate's ``PartialState().device``); anything else is returned unchanged."""
    state = state or process_state()
    if device == "cuda" and state.num_processes > 1:
        return str(state.device)
    return device
