"""Fixtures shared by several test modules."""
import pytest
import torch


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
