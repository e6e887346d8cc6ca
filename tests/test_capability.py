"""Native bfloat16 detection and the half path's float32 fallback on CPUs that emulate bf16."""
from __future__ import annotations

import warnings
from types import SimpleNamespace

import pytest
import torch

from refusion.inference import capability
from refusion.inference.precision import InferenceNetwork
from refusion.models import NAFNet


@pytest.fixture
def cpu_bf16(monkeypatch):
    def set_native(value: bool):
        monkeypatch.setattr(capability, "_cpu_native_bf16", lambda: value)
    return set_native


def small_net():
    torch.manual_seed(0)
    return NAFNet(width=8, enc_blk_nums=[1], middle_blk_num=1, dec_blk_nums=[1]).eval()


def test_flags_decide_where_cpuinfo_lists_them(monkeypatch):
    for name in ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA"):     # a cap in the caller's environment decides first
        monkeypatch.delenv(name, raising=False)
    capability._cpu_native_bf16.cache_clear()
    monkeypatch.setattr(capability, "cpu_bf16_flags", lambda: [])
    assert capability._cpu_native_bf16() is False
    capability._cpu_native_bf16.cache_clear()
    monkeypatch.setattr(capability, "cpu_bf16_flags", lambda: ["amx_bf16"])
    assert capability._cpu_native_bf16() is True
    capability._cpu_native_bf16.cache_clear()
    monkeypatch.setattr(capability, "cpu_bf16_flags", lambda: None)         # unknown: measure
    monkeypatch.setattr(capability, "_bf16_matmul_not_slower", lambda: False)
    assert capability._cpu_native_bf16() is False
    capability._cpu_native_bf16.cache_clear()


@pytest.mark.parametrize("cap, native", [(None, True), ("AVX2", False), ("avx512_core", False),
                                        ("AVX512_CORE_BF16", True), ("AVX512_CORE_AMX", True), ("ALL", True)])
def test_a_onednn_isa_cap_below_bf16_makes_a_bf16_cpu_emulate_it(monkeypatch, cap, native):
    monkeypatch.delenv("DNNL_MAX_CPU_ISA", raising=False)
    if cap is None:
        monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    else:
        monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", cap)
    monkeypatch.setattr(capability, "cpu_bf16_flags", lambda: ["avx512_bf16", "amx_bf16"])
    capability._cpu_native_bf16.cache_clear()
    try:
        assert capability.native_bf16("cpu") is native
        if not native:
            assert f"ONEDNN_MAX_CPU_ISA={cap.upper()}" in capability.bf16_reason("cpu")
    finally:
        capability._cpu_native_bf16.cache_clear()


def test_the_older_dnnl_name_of_the_cap_counts_too(monkeypatch):
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    monkeypatch.setenv("DNNL_MAX_CPU_ISA", "AVX2")
    assert capability.onednn_isa_cap() == "AVX2"


def test_half_on_a_cpu_without_native_bf16_runs_float32_with_one_warning(cpu_bf16):
    cpu_bf16(False)
    net = small_net()
    x = torch.rand(1, 3, 16, 16)
    with pytest.warns(RuntimeWarning, match="half=True ignored: this CPU has no native bfloat16"):
        runner = InferenceNetwork(net, "cpu", half=True)
    assert runner.half is False and runner.weights is None
    with torch.no_grad():
        torch.testing.assert_close(runner(x), net(x), rtol=0, atol=1e-6)


def test_half_on_a_cpu_with_native_bf16_casts_the_weights(cpu_bf16):
    cpu_bf16(True)
    net = small_net()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        runner = InferenceNetwork(net, "cpu", half=True)
    assert runner.half is True
    assert {t.dtype for t in runner.weights.values() if t.is_floating_point()} == {torch.bfloat16}


def test_restore_half_follows_the_capability(cpu_bf16):
    import refusion

    net = small_net()
    x = torch.rand(1, 3, 16, 16)
    full = refusion.restore(x, model=net, progress=False)
    cpu_bf16(False)
    with pytest.warns(RuntimeWarning, match="runs in float32"):
        emulated = refusion.restore(x, model=net, progress=False, half=True)
    torch.testing.assert_close(emulated, full, rtol=0, atol=1e-6)     # float32: the same result
    cpu_bf16(True)
    native = refusion.restore(x, model=net, progress=False, half=True)
    assert 1e-6 < (native - full).abs().max() < 0.05                    # bf16 really ran


def test_bf16_mixed_precision_on_a_cpu_without_native_bf16_is_refused_before_step_1(cpu_bf16, tmp_path, capsys):
    import yaml

    from refusion.cli.train import main as train_main
    from test_training import make_pairs, tiny_recipe_dict

    cpu_bf16(False)
    data = make_pairs(tmp_path / "pairs", n_train=2, n_val=1)
    path = tmp_path / "recipe.yml"
    path.write_text(yaml.safe_dump(tiny_recipe_dict("regressor", data, tmp_path / "run", mixed_precision="bf16")))
    assert train_main([str(path)]) == 1
    err = capsys.readouterr().err
    assert "train.mixed_precision is 'bf16'" in err and "no native bfloat16" in err and str(path) in err
    assert not (tmp_path / "run").exists()           # nothing written


def test_every_benchmark_table_names_the_capability_it_was_measured_with(monkeypatch, capsys):
    from refusion.benchmarks.common import print_table

    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    monkeypatch.setattr(capability, "cpu_bf16_flags", lambda: ["amx_bf16"])
    capability._cpu_native_bf16.cache_clear()
    try:
        print_table("a figure", [{"case": "x", "s": 1.0}], ["case", "s"])
    finally:
        capability._cpu_native_bf16.cache_clear()
    title = capsys.readouterr().out.strip().splitlines()[0]
    assert title.startswith("== a figure  [")
    assert f"CPU {torch.backends.cpu.get_cpu_capability()}" in title
    assert "native bf16 no" in title and "ONEDNN_MAX_CPU_ISA=AVX2" in title
    assert f"{torch.get_num_threads()} threads" in title


class MatmulClock:
    """A clock for the bf16 benchmark that advances by a set time per matrix multiply of each dtype:
    the benchmark's decision is tested on known timings, whatever order it measures the dtypes in."""

    def __init__(self, seconds: dict):
        self.seconds, self.now, self.timed = seconds, 0.0, []

    def perf_counter(self) -> float:
        return self.now

    def matmul(self, a, b):
        self.timed.append(a.dtype)
        self.now += self.seconds[a.dtype]
        return a


def use_clock(monkeypatch, bf16_s: float, fp32_s: float) -> MatmulClock:
    clock = MatmulClock({torch.bfloat16: bf16_s, torch.float32: fp32_s})
    monkeypatch.setattr(capability, "time", SimpleNamespace(perf_counter=clock.perf_counter))
    monkeypatch.setattr(torch.Tensor, "__matmul__", lambda a, b: clock.matmul(a, b))
    return clock


# times are binary fractions, so the clock's differences are exact and "as fast" is really a tie
@pytest.mark.parametrize("bf16_s, fp32_s, native", [
    (2 ** -10, 2 ** -8, True),             # bf16 four times faster: hardware bf16
    (2 ** -9, 2 ** -9, True),              # as fast: not emulated
    (2 ** -4, 2 ** -10, False),            # 64x slower: oneDNN emulates bf16
    (2 ** -9 + 2 ** -12, 2 ** -9, False),  # any slower counts as emulated
])
def test_the_benchmark_calls_slow_bf16_emulated_and_fast_bf16_native(monkeypatch, bf16_s, fp32_s, native):
    clock = use_clock(monkeypatch, bf16_s, fp32_s)
    assert capability._bf16_matmul_not_slower() is native
    assert set(clock.timed) == {torch.bfloat16, torch.float32}     # both were measured


def test_unreadable_cpu_flags_leave_the_decision_to_the_benchmark(monkeypatch):
    # macOS, Windows and containers that hide /proc/cpuinfo: opening it fails
    def no_cpuinfo(path, *args, **kwargs):
        raise PermissionError(13, "Permission denied", path)

    monkeypatch.setattr(capability, "open", no_cpuinfo, raising=False)   # shadows the builtin in the module
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    monkeypatch.delenv("DNNL_MAX_CPU_ISA", raising=False)
    assert capability.cpu_bf16_flags() is None
    for bf16_s, native in ((2 ** -10, True), (2 ** -4, False)):
        use_clock(monkeypatch, bf16_s, 2 ** -9)
        capability._cpu_native_bf16.cache_clear()
        try:
            assert capability.native_bf16("cpu") is native
        finally:
            capability._cpu_native_bf16.cache_clear()


def test_cpu_flags_are_read_from_the_flags_line_of_cpuinfo(monkeypatch, tmp_path):
    import builtins

    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu sse avx2 amx_bf16 avx512f\nbogomips\t: 4000\n")
    monkeypatch.setattr(capability, "open", lambda path, *a, **kw: builtins.open(cpuinfo, *a, **kw), raising=False)
    assert capability.cpu_bf16_flags() == ["amx_bf16"]
    assert capability.cpu_flags(("avx2", "avx512_bf16")) == ["avx2"]
    cpuinfo.write_text("processor\t: 0\nFeatures\t: fp asimd bf16\n")     # no flags line (ARM): unknown
    assert capability.cpu_bf16_flags() is None
