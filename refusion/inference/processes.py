"""Work split across the processes of `accelerate launch`: this process's share of a list, results gathered.

Each process takes a contiguous share of the items (accelerate's ``split_between_processes``) and keeps
every item's index in the whole list, so what depends on the item (a seed ``seed + index``) does not
depend on how many processes there are. The per-item results come back in list order:

    state = process_state(device)          # before anything else that asks accelerate about processes
    done = [(index, work(item)) for index, item in process_share(items, state)]
    results = gather_in_order(done)        # on every process: all items' results, in item order
    end_processes()                        # once the work is done: the processes meet, the group ends

A plain ``python`` run is a single process: its share is the whole list and gathering returns it.

Ending: a command that started the process group ends it itself (`end_processes`) rather than leave
it to the interpreter's exit, which tears the gloo group and its threads down in no set order: a
process was seen to abort there (SIGABRT, "terminate called without an active exception") after all
its work was done, failing a launch that had succeeded. A process that fails does not meet the others:
it exits with its error, and `accelerate launch` (torchrun) then ends the other processes and exits
non-zero, instead of one waiting at a barrier it alone reached. So `end_processes` is called after
the work, not in a ``finally``.
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


def end_processes(state: PartialState | None = None) -> None:
    """After the work of every process: wait for the others, then destroy the default process group.

    The barrier comes first so that no process tears down its end of the group (rank 0 also holds the
    rendezvous store) while another still has a collective or its own teardown under way. Nothing to do
    in a plain run, or when the group has already ended.

    Call it once the work is done, never on the way out of an exception: the other processes may be
    waiting in a collective that this one will never join, and a barrier here would wait for them as
    long as the state's timeout (a day for restore and evaluate). A failing process exits with its error
    at once instead, which is what ends a launch: torchrun stops the other processes when one fails, and
    one blocked in a collective with it sees the connection close.
    """
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return
    state = state or PartialState()   # the shared state that started the group
    state.wait_for_everyone()         # a barrier on the group's own device (gloo on CPU, each GPU with NCCL)
    state.destroy_process_group()


def process_device(device: str, state: PartialState | None = None) -> str:
    """The device this process works on: with several processes, ``"cuda"`` becomes this process's own
    GPU (accelerate's ``PartialState().device``); anything else is returned unchanged."""
    state = state or process_state()
    if device == "cuda" and state.num_processes > 1:
        return str(state.device)
    return device
