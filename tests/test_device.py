import pytest
import torch

from lesion_harvester.device import DEVICE_CHOICES_HELP, resolve_device
from lesion_harvester.errors import ConfigError


@pytest.fixture
def cuda(monkeypatch):
    """Pretend ``n`` CUDA devices (0: none)."""

    def set_count(n: int) -> None:
        monkeypatch.setattr(torch.cuda, "is_available", lambda: n > 0)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: n)

    return set_count


def test_auto_picks_cuda_when_available(cuda):
    cuda(0)
    assert resolve_device("auto") == "cpu" and resolve_device() == "cpu"
    cuda(2)
    assert resolve_device("auto") == "cuda" and resolve_device() == "cuda"


def test_cpu_is_always_cpu(cuda):
    for n in (0, 1):
        cuda(n)
        assert resolve_device("cpu") == "cpu"


def test_cuda_when_available(cuda):
    cuda(2)
    assert resolve_device("cuda") == "cuda"
    assert resolve_device("cuda:0") == "cuda:0" and resolve_device("cuda:1") == "cuda:1"


def test_cuda_without_cuda_is_one_config_error(cuda):
    cuda(0)
    with pytest.raises(ConfigError) as err:
        resolve_device("cuda")
    assert str(err.value) == "--device cuda: no CUDA device is available; use --device cpu or auto"
    with pytest.raises(ConfigError, match=r"^--device cuda:0: no CUDA device is available"):
        resolve_device("cuda:0")


def test_a_gpu_that_is_not_there(cuda):
    cuda(1)
    with pytest.raises(ConfigError, match=r"^--device cuda:1: no such CUDA device; this machine has 1 \(cuda:0"):
        resolve_device("cuda:1")


@pytest.mark.parametrize("requested", ["gpu", "CPU", "cuda:", "cuda:x", "cuda1", "", "mps"])
def test_anything_else_lists_the_allowed_forms(cuda, requested):
    cuda(1)
    with pytest.raises(ConfigError) as err:
        resolve_device(requested)
    assert str(err.value) == f"--device {requested}: unknown device; expected auto, cpu, cuda, cuda:N"


def test_help_names_every_form():
    assert all(form in DEVICE_CHOICES_HELP for form in ("auto", "cpu", "cuda", "cuda:N"))
