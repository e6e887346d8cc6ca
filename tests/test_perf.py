"""Functional tests of the measuring helpers (refusion.benchmarks.perf). No timing is ever asserted."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from refusion.benchmarks import perf
from refusion.models import NAFNet


def _tiny_nafnet() -> NAFNet:
    torch.manual_seed(0)
    return perf.activate_skip_gains(NAFNet(width=8, enc_blk_nums=[1, 1], middle_blk_num=1, dec_blk_nums=[1, 1]), 0.3)


def test_count_flops_matches_analytic_counts():
    linear = nn.Linear(64, 32, bias=False)
    x = torch.randn(5, 64)
    assert perf.count_flops(lambda: linear(x)) == 2 * 5 * 64 * 32
    conv = nn.Conv2d(3, 8, 3, padding=1, bias=False)
    img = torch.randn(2, 3, 10, 12)
    assert perf.count_flops(lambda: conv(img)) == 2 * 2 * 8 * 10 * 12 * 3 * 3 * 3
    # a backward costs twice the forward for a layer whose input needs a gradient (grad_input + grad_weight)
    img.requires_grad_(True)
    assert perf.count_flops(lambda: conv(img).sum().backward()) == 3 * 2 * 2 * 8 * 10 * 12 * 3 * 3 * 3
    # depthwise: each output channel sees one input channel (torch's stock backward formula ignores groups)
    depthwise = nn.Conv2d(16, 16, 3, padding=1, groups=16, bias=False)
    feat = torch.randn(1, 16, 8, 8, requires_grad=True)
    assert perf.count_flops(lambda: depthwise(feat)) == 2 * 16 * 8 * 8 * 9
    assert perf.count_flops(lambda: depthwise(feat).sum().backward()) == 3 * 2 * 16 * 8 * 8 * 9
    weight_only = torch.randn(1, 16, 8, 8)  # no input gradient: only the weight gradient is computed
    assert perf.count_flops(lambda: depthwise(weight_only).sum().backward()) == 2 * 2 * 16 * 8 * 8 * 9


def test_gemm_gflops_is_positive_and_validates():
    assert perf.gemm_gflops(torch.float32, size=64, repeats=1) > 0
    assert perf.gemm_gflops(torch.bfloat16, size=64, repeats=1) > 0
    with pytest.raises(ValueError, match="size"):
        perf.gemm_gflops(size=0)
    with pytest.raises(ValueError, match="repeats"):
        perf.gemm_gflops(size=8, repeats=0)


def test_gemm_probe_counts_what_it_runs():
    fn, flops = perf.gemm_probe(torch.float32, size=32, products=3)
    assert flops == 3 * 2 * 32 ** 3
    assert perf.count_flops(fn) == flops          # FlopCounterMode sees the same products
    with pytest.raises(ValueError, match="products"):
        perf.gemm_probe(products=0)


def test_time_side_by_side_interleaves_calls_and_reports_every_run():
    order = []
    result = perf.time_side_by_side({"a": lambda: order.append("a"), "b": lambda: order.append("b")},
                                    repeats=3, warmup=1)
    assert order == ["a", "b"] * 4  # one warm-up round, then three interleaved rounds
    for name in ("a", "b"):
        runs = result[name]["runs_s"]
        assert len(runs) == 3 and all(r >= 0 for r in runs)
        assert result[name]["min_s"] == min(runs)
        assert sorted(runs)[1] == result[name]["median_s"]
    with pytest.raises(ValueError, match="at least one"):
        perf.time_side_by_side({})
    with pytest.raises(ValueError, match="warmup"):
        perf.time_side_by_side({"a": lambda: None}, warmup=-1)


def test_prepare_for_inference_channels_last_keeps_outputs():
    net = _tiny_nafnet()
    x = torch.rand(1, 3, 20, 24)
    with torch.no_grad():
        expected = net(x)
    prepared = perf.prepare_for_inference(net, channels_last=True)
    assert prepared is net and not net.training
    assert all(not p.requires_grad for p in net.parameters())
    assert net.intro.weight.is_contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        got = prepared(x.to(memory_format=torch.channels_last))
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_prepare_for_inference_bfloat16_weights_close_to_float32():
    net = _tiny_nafnet()
    x = torch.rand(1, 3, 16, 16)
    with torch.no_grad():
        expected = net(x)
    prepared = perf.prepare_for_inference(net, dtype="bfloat16")
    assert {p.dtype for p in prepared.parameters()} == {torch.bfloat16}
    with torch.no_grad():
        got = prepared(x.bfloat16()).float()
    assert (got - expected).abs().max() < 0.1  # bf16 keeps 8 bits of mantissa
    assert (got - expected).abs().max() > 0     # and it really ran in bf16


def test_prepare_for_inference_rejects_bad_arguments():
    with pytest.raises(TypeError, match="nn.Module"):
        perf.prepare_for_inference(lambda x: x)
    with pytest.raises(ValueError, match="dtype"):
        perf.prepare_for_inference(nn.Linear(2, 2), dtype="half-ish")
    with pytest.raises(ValueError, match="dtype"):
        perf.prepare_for_inference(nn.Linear(2, 2), dtype=torch.int8)


def test_run_with_peak_rss_sees_a_large_allocation(tmp_path):
    script = tmp_path / "alloc.py"
    script.write_text("import torch\n"
                      "def linear(features):\n    return sum(p.numel() for p in torch.nn.Linear(features, features).parameters())\n")
    big = perf.run_with_peak_rss(f"{script}:linear", {"features": 8000})
    # an 8000x8000 float32 Linear holds 244 MiB of weights, allocated after the baseline was taken
    assert big["result"] == 8000 * 8000 + 8000
    assert 240 * 2 ** 20 < big["peak_rss_bytes"] - big["baseline_rss_bytes"] < 1024 * 2 ** 20
    assert big["wall_s"] > 0


def test_run_with_peak_rss_environment_and_failures(tmp_path, monkeypatch):
    script = tmp_path / "body.py"
    script.write_text("import os\ndef env(names):\n    return [os.environ.get(n) for n in names]\n"
                      "def boom():\n    raise KeyError('kaput')\n")
    monkeypatch.setenv("PERF_TEST_GONE", "1")
    report = perf.run_with_peak_rss(f"{script}:env", {"names": ["PERF_TEST_FLAG", "PERF_TEST_GONE"]},
                                    env={"PERF_TEST_FLAG": "on", "PERF_TEST_GONE": None})
    assert report["result"] == ["on", None]
    with pytest.raises(RuntimeError, match="kaput"):
        perf.run_with_peak_rss(f"{script}:boom")
    with pytest.raises(ValueError, match="module:function"):
        perf.run_with_peak_rss("no_colon_here")


def test_machine_info_and_parameter_count():
    info = perf.machine_info()
    assert info["torch"] == torch.__version__ and info["threads"] == torch.get_num_threads()
    assert isinstance(info["cpu_model"], str) and info["cpu_model"]
    assert perf.parameter_count(nn.Linear(3, 4)) == 16
    assert perf.peak_rss_bytes() > 0
    assert perf.as_dtype("bfloat16") is torch.bfloat16 and perf.dtype_name(torch.float32) == "float32"
    with pytest.raises(ValueError, match="dtype"):
        perf.as_dtype("float8")
    assert perf.summarize([3.0, 1.0, 2.0]) == {"median": 2.0, "min": 1.0, "max": 3.0}


def test_run_with_peak_rss_imports_a_module_by_name():
    # "package.module:function" (the benchmarks' subprocess bodies) as well as a file path
    assert perf.run_with_peak_rss("json:dumps", {"obj": [1, 2]})["result"] == "[1, 2]"


def test_layer_capture_sees_every_convolution_including_the_folded_one():
    """The layers benchmark re-runs each layer on its captured input: one image takes the
    attention fold (conv3 never called as a module), a batch of two does not; both must capture
    the same layers, each with an input of its own channel count."""
    from collections import Counter

    from refusion.benchmarks.layers import captured_layers

    net = _tiny_nafnet().eval()
    single = captured_layers(net, (torch.rand(1, 3, 32, 32),))
    batch = captured_layers(net, (torch.rand(2, 3, 32, 32),))
    count = lambda calls: Counter(id(module) for module, _ in calls)  # noqa: E731
    assert count(single) == count(batch)
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
    assert set(count(single)) >= {id(m) for m in convs} and all(count(single)[id(m)] == 1 for m in convs)
    for module, x in single:  # each captured input is one the layer can run on
        channels = module.in_channels if isinstance(module, nn.Conv2d) else module.weight.numel()
        assert x.shape[:2] == (1, channels), (module, x.shape)


def test_train_step_reports_each_variants_peak_memory_from_a_process_of_its_own(monkeypatch):
    from refusion.benchmarks import training

    # one variant: each probe is a fresh interpreter importing torch and diffusers (about 8 s here)
    monkeypatch.setattr(training, "_variants", lambda state: training.TRAIN_VARIANTS[:1])
    monkeypatch.setattr(training, "_loss_curves", lambda state: {})
    result = training.bench_train_step({"smoke": True, "full": False, "repeats": 1})
    (network,) = result["networks"].values()
    assert set(network["memory"]) == set(network["variants"]) == {"fp32"}
    memory = network["memory"]["fp32"]
    assert memory["steps"] == training.MEMORY_STEPS
    # import <= network, batch and optimizer < the peak of the steps
    assert 0 < memory["import_peak_rss_mib"] <= memory["pre_step_peak_rss_mib"] < memory["peak_rss_mib"]
    assert memory["step_rss_increase_mib"] == memory["peak_rss_mib"] - memory["pre_step_peak_rss_mib"] > 0
