"""The precision and batch-size policy: what ``auto`` means on each device, and the CPU batch cap."""

from __future__ import annotations

import pytest
import torch

from autoseg.records.plans import Configuration
from autoseg.training.step import training_batch_size
from autoseg.utils import precision as precision_policy


@pytest.fixture
def cpu_bfloat16(monkeypatch):
    """Pretend the CPU does (``"1"``) or does not (``"0"``) have native bfloat16, whatever this machine has."""

    def set_flag(value: str) -> None:
        monkeypatch.setenv(precision_policy.CPU_BFLOAT16_VARIABLE, value)
        precision_policy.cpu_has_native_bfloat16.cache_clear()

    yield set_flag
    monkeypatch.delenv(precision_policy.CPU_BFLOAT16_VARIABLE, raising=False)
    precision_policy.cpu_has_native_bfloat16.cache_clear()


def test_auto_precision_is_bfloat16_only_on_cpus_with_native_bfloat16(cpu_bfloat16):
    cpu = torch.device("cpu")
    cpu_bfloat16("1")
    assert precision_policy.resolve_precision("auto", cpu) == "bfloat16"
    cpu_bfloat16("0")
    assert precision_policy.resolve_precision("auto", cpu) == "float32"
    assert precision_policy.resolve_precision("auto", torch.device("cuda", 0)) == "float16"
    assert precision_policy.resolve_precision("auto", torch.device("mps")) == "float32"


def test_an_explicit_precision_is_kept_and_a_wrong_one_refused():
    assert precision_policy.resolve_precision("float32", torch.device("cuda", 0)) == "float32"
    assert precision_policy.resolve_precision("bfloat16", torch.device("cpu")) == "bfloat16"
    with pytest.raises(ValueError, match="precision must be one of"):
        precision_policy.resolve_precision("half", torch.device("cpu"))


def test_only_float16_uses_loss_scaling():
    assert precision_policy.needs_loss_scaling("float16")
    assert not precision_policy.needs_loss_scaling("bfloat16")
    assert not precision_policy.needs_loss_scaling("float32")


def test_bfloat16_autocast_really_computes_convolutions_in_bfloat16():
    convolution = torch.nn.Conv3d(1, 2, 3)
    with precision_policy.autocast_for(torch.device("cpu"), "bfloat16"):
        output = convolution(torch.randn(1, 1, 5, 5, 5))
    assert output.dtype == torch.bfloat16
    with precision_policy.autocast_for(torch.device("cpu"), "float32"):
        assert convolution(torch.randn(1, 1, 5, 5, 5)).dtype == torch.float32


def planned(patch_size: tuple[int, ...], batch_size: int) -> Configuration:
    return Configuration(name="test", dimension=len(patch_size), spacing=(1.0,) * len(patch_size),
                         patch_size=patch_size, batch_size=batch_size, network={}, normalization=(), resampling={})


HIPPOCAMPUS_3D = planned((40, 56, 40), 7)
HC18_2D = planned((640, 896), 9)


def test_cpu_training_caps_large_batches_but_keeps_small_ones_and_gpus_use_the_plan():
    cpu, gpu = torch.device("cpu"), torch.device("cuda", 0)
    assert training_batch_size(HIPPOCAMPUS_3D, None, cpu) == 7
    assert training_batch_size(HC18_2D, None, cpu) == 2
    assert training_batch_size(HC18_2D, None, gpu) == 9
    huge_patch = planned((160, 160, 160), 2)
    assert training_batch_size(huge_patch, None, cpu) == 2  # never below 2
    assert training_batch_size(HC18_2D, 5, cpu) == 5  # --batch-size wins
    with pytest.raises(ValueError):
        training_batch_size(HC18_2D, 0, cpu)
