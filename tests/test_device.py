import pytest
import torch

from sft_lessons import device


def test_cpu_here_and_env_override(monkeypatch):
    monkeypatch.setenv("SFT_LESSONS_DEVICE", "cpu")
    assert device.get_device() == torch.device("cpu")


def test_bad_device_override_lists_valid(monkeypatch):
    monkeypatch.setenv("SFT_LESSONS_DEVICE", "tpu")
    with pytest.raises(ValueError, match="cuda"):
        device.get_device()


def test_set_seed_is_reproducible():
    device.set_seed(7)
    a = torch.rand(3)
    device.set_seed(7)
    assert torch.equal(a, torch.rand(3))


def test_describe_environment_prints_versions(capsys):
    report = device.describe_environment()
    for key in (
        "python",
        "torch",
        "transformers",
        "peft",
        "datasets",
        "deepspeed",
        "device",
        "deepspeed accelerator",
    ):
        assert key in report
    assert "transformers" in capsys.readouterr().out


def test_progress_yields_everything_and_can_be_hidden(monkeypatch, capsys):
    from sft_lessons.device import progress

    assert list(progress(range(5), "x")) == list(range(5))
    monkeypatch.setenv("SFT_LESSONS_PROGRESS", "0")
    assert list(progress(range(3), "hidden")) == [0, 1, 2]
    assert "hidden" not in capsys.readouterr().err
