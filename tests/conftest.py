"""Fixtures shared by several test modules."""
import pytest
import torch
from same_results import assert_close_outputs, assert_same_state


@pytest.fixture(scope="module")
def one_thread():
    """Torch on one thread for a module: the test networks and tensors are tiny, and on a shared,
    busy CPU several threads only add OpenMP spin and sync overhead."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture()
def empty_weight_cache(tmp_path, monkeypatch):
    """An empty project cache (REFUSION_CACHE_DIR) and an empty torchvision cache (TORCH_HOME)
    under tmp_path, which is returned."""
    monkeypatch.setenv("REFUSION_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    return tmp_path


@pytest.fixture()
def pretrained_round_trip(tmp_path):
    """``check(model, model_class, forward)``: ``model.save_pretrained`` then
    ``model_class.from_pretrained`` gives the same public config, bit for bit the same weights, and
    the same ``forward(net, x)`` on a random (2, 3, 16, 16) input at float32 tolerance (the two are
    different instances: tests/same_results.py)."""

    def check(model, model_class, forward) -> None:
        model.save_pretrained(tmp_path)
        assert (tmp_path / "diffusion_pytorch_model.safetensors").is_file()
        loaded = model_class.from_pretrained(tmp_path).eval()
        public = lambda config: {k: v for k, v in config.items() if not k.startswith("_")}  # noqa: E731
        assert public(loaded.config) == public(model.config)
        x = torch.rand(2, 3, 16, 16)
        assert_same_state(loaded, model)
        with torch.no_grad():
            assert_close_outputs(forward(loaded, x), forward(model, x))

    return check
