"""Several images at once in one process: the worker choice, the job runner's threads, the model copies,
and `refusion restore --workers` writing exactly what one worker writes."""
from __future__ import annotations

import itertools
import json
import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from refusion.cli import restore as restore_tool
from refusion.cli.restore_jobs import FAILED, RESTORED, run_share
from refusion.data.image_io import image_pixels, write_image
from refusion.inference import threads
from refusion.inference.processes import process_state
from refusion.inference.workers import map_workers, worker_models
from refusion.models import NAFNet
from same_results import assert_same_folders, assert_same_state
from test_restore_cli import make_run


@pytest.fixture(autouse=True)
def keep_torch_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("jobs, budget, pixels, cpu, given, expected", [
    (10, 2, 256 * 256, True, None, (2, 1)),          # one worker per CPU, one thread each
    (10, 16, 256 * 256, True, None, (4, 4)),         # at most 4 automatically, the budget shared out
    (10, 6, 256 * 256, True, None, (4, 1)),
    (3, 8, 256 * 256, True, None, (3, 2)),           # never more workers than images
    (1, 8, 256 * 256, True, None, (1, 8)),           # one image: every thread on it
    (10, 1, 256 * 256, True, None, (1, 1)),
    (10, 8, 3000 * 3000, True, None, (1, 8)),        # large images run alone
    (10, 8, 256 * 256, False, None, (1, 8)),         # a GPU
    (10, 8, 3000 * 3000, True, 3, (3, 2)),           # --workers wins
    (2, 8, 256 * 256, False, 5, (2, 4)),
])
def test_image_workers(jobs, budget, pixels, cpu, given, expected):
    assert threads.image_workers(jobs, budget, largest_pixels=pixels, cpu=cpu, workers=given) == expected


def test_cpu_budget_ignores_the_busy_cpus_that_default_threads_leave(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3})
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(threads, "busy_cpus", lambda: 3.0)
    assert threads.cpu_budget() == (4, False) and threads.default_threads() == 1
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    assert threads.cpu_budget() == (2, True) and threads.default_threads() == 2
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert threads.cpu_budget() == (3, True) and threads.default_threads() == 3


def test_image_pixels_reads_the_header_only(tmp_path):
    Image.new("RGB", (40, 30)).save(tmp_path / "a.png")
    write_image(tmp_path / "deep.tif", np.zeros((12, 7, 3), np.float32), bit_depth=16)
    (tmp_path / "text.png").write_text("not an image")
    assert image_pixels(tmp_path / "a.png") == 1200
    assert image_pixels(tmp_path / "deep.tif") == 84
    assert image_pixels(tmp_path / "text.png") is None
    assert image_pixels(tmp_path / "missing.png") is None


def jobs_of(count: int) -> list:
    return [((Path(f"in{i}.png"),), (Path(f"out{i}.png"),)) for i in range(count)]


def test_run_share_runs_workers_at_once_each_job_once_in_order():
    meet = threading.Barrier(2, timeout=20)   # passes only when two jobs run at the same time
    entered = itertools.count()                # the first two jobs to start wait there for each other
    seen: dict[str, list[str]] = {"a": [], "b": []}

    def worker(name):
        def restore_job(sources, targets):
            if next(entered) < 2:
                meet.wait()
            seen[name].append(sources[0].name)
            if sources[0].name == "in3.png":
                raise ValueError("bad pixels")
        return restore_job

    done = run_share(jobs_of(7), [worker("a"), worker("b")], state=process_state(), progress=False)
    assert [index for index, _ in done] == list(range(7))
    assert sorted(seen["a"] + seen["b"]) == sorted(f"in{i}.png" for i in range(7))   # each job exactly once
    assert seen["a"] and seen["b"]
    statuses = {records[0]["input"]: records[0]["status"] for _, records in done}
    assert statuses.pop("in3.png") == FAILED and set(statuses.values()) == {RESTORED}
    assert "ValueError: bad pixels" in done[3][1][0]["error"]


def test_map_workers_gives_results_in_item_order_and_each_call_a_worker_of_its_own():
    busy, overlaps, lock = set(), [], threading.Lock()
    meet, entered = threading.Barrier(2, timeout=20), itertools.count()

    def square(worker, item):
        with lock:
            assert worker not in busy            # no two calls at once with one worker
            busy.add(worker)
            overlaps.append(len(busy))
        if next(entered) < 2:
            meet.wait()                          # the first two calls run at the same time
        time.sleep(0.01 * (item % 3))            # finish out of order
        with lock:
            busy.discard(worker)
        return worker, item * item

    done = []
    results = map_workers(square, list(range(12)), ["w0", "w1", "w2"], on_result=done.append)
    assert [value for _, value in results] == [i * i for i in range(12)]
    assert sorted(done, key=lambda r: r[1]) == sorted(results, key=lambda r: r[1])
    assert max(overlaps) > 1 and {worker for worker, _ in results} <= {"w0", "w1", "w2"}
    assert map_workers(square, [3, 4], ["only"]) == [("only", 9), ("only", 16)]


def test_an_interrupt_lets_running_jobs_finish_and_starts_no_other():
    started, finished = [], []

    def restore_job(sources, targets):
        started.append(sources[0].name)
        if sources[0].name == "in0.png":
            raise KeyboardInterrupt
        time.sleep(0.5)     # long beside the main thread's reaction: few jobs can start before it cancels
        finished.append(sources[0].name)

    with pytest.raises(KeyboardInterrupt):
        run_share(jobs_of(40), [restore_job, restore_job], state=process_state(), progress=False)
    assert len(started) <= 4 and sorted(finished) == sorted(set(started) - {"in0.png"})


def test_worker_models_are_copies_with_the_same_weights_and_a_share_of_the_threads():
    net = NAFNet(width=8, middle_blk_num=1, enc_blk_nums=[1], dec_blk_nums=[1])
    budget = threads.cpu_budget()[0]
    models, per_worker = worker_models(net, jobs=5, largest_pixels=64 * 64, workers=None, cpu=True)
    assert len(models) == min(budget, 4) and models[0] is net
    assert per_worker == (None if len(models) == 1 else max(1, budget // len(models)))
    models, per_worker = worker_models(net, jobs=5, largest_pixels=64 * 64, workers=3, cpu=True)
    assert len(models) == 3 and len({id(m) for m in models}) == 3 and per_worker == max(1, budget // 3)
    params = [{id(p) for p in m.parameters()} for m in models]
    assert not params[0] & params[1] and not params[1] & params[2]
    for copy in models[1:]:
        assert_same_state(copy, net)                   # deep copies: the same bits
    assert worker_models(net, jobs=5, largest_pixels=64 * 64, workers=None, cpu=False) == ([net], None)


def test_map_workers_sets_torch_threads_while_it_runs_and_restores_them():
    torch.set_num_threads(2)
    seen = map_workers(lambda worker, item: torch.get_num_threads(), [0, 1, 2, 3], ["a", "b"], threads=1)
    assert seen == [1, 1, 1, 1] and torch.get_num_threads() == 2
    with pytest.raises(ZeroDivisionError):
        map_workers(lambda worker, item: 1 / item, [1, 0], ["a", "b"], threads=1)
    assert torch.get_num_threads() == 2
    assert map_workers(lambda worker, item: torch.get_num_threads(), [0], ["a"]) == [2]


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(0)
    for i in range(5):
        write_image(folder / f"img{i}.png", rng.random((40, 56, 3)))
    return folder


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("runs")
    return {"regressor": make_run(base / "nafnet", "regressor"), "sde": make_run(base / "sde", "sde")}


@pytest.mark.parametrize("kind, extra", [("regressor", ["--tlc", "16"]),                 # TLC converts in place
                                         ("sde", ["--steps", "4", "--sampler", "mr_sde"])])  # noise seeded per image
def test_workers_write_what_one_worker_writes(photos, runs, tmp_path, capsys, kind, extra):
    outputs = {}
    for workers, threads_ in (("1", "1"), ("3", "3")):   # one thread per image in both
        out = tmp_path / f"out{workers}"
        summary = tmp_path / f"summary{workers}.json"
        status = restore_tool.main([str(photos), "-o", str(out), "--model", str(runs[kind]), "--workers", workers,
                                    "--threads", threads_, "--summary", str(summary), "--no-progress", *extra])
        assert status == 0, capsys.readouterr().err
        assert json.loads(summary.read_text())["settings"]["workers"] == int(workers)
        outputs[workers] = out
    # the workers' networks are deep copies: other instances, so the same images within one quantisation step
    assert len(list(outputs["1"].iterdir())) == 5
    assert_same_folders(outputs["3"], outputs["1"])


def test_workers_flag_is_checked(photos, runs, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        restore_tool.main([str(photos), "-o", str(tmp_path / "o"), "--model", str(runs["regressor"]),
                           "--workers", "0"])
    assert exit_.value.code == 2 and "--workers" in capsys.readouterr().err
