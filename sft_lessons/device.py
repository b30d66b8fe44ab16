"""Device choice, seeding, quiet logs and an environment report (第 0 章, notebooks/00_overview.ipynb)."""

from __future__ import annotations

import logging
import os
import platform
import random
import sys
import warnings
from importlib.metadata import version

import datasets
import numpy as np
import torch
from huggingface_hub.utils import disable_progress_bars
from tqdm.std import tqdm
from transformers.utils import logging as hf_logging

from .settings import VALID_DEVICES, forced_device, progress_enabled  # noqa: F401  (VALID_DEVICES: public here too)


def get_device():
    """torch.device: cuda > mps > cpu, or $SFT_LESSONS_DEVICE if set."""
    forced = forced_device()
    if forced:
        return torch.device(forced)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def set_seed(seed: int = 0) -> None:
    """Seed python, numpy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def tell_deepspeed(device=None) -> None:
    """Point DeepSpeed at our device (DS_ACCELERATOR) so it does not guess and warn; an explicit setting wins."""
    kind = (device or get_device()).type
    os.environ.setdefault("DS_ACCELERATOR", kind if kind in VALID_DEVICES else "cpu")


def quiet() -> None:
    """Silence library warnings and progress bars that teach nothing in a notebook."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    tell_deepspeed()
    warnings.filterwarnings("ignore")
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()

    disable_progress_bars()  # transformers 5 loads weights behind a huggingface_hub progress bar
    # kernels: bitsandbytes asks it for a hub CPU kernel at import; offline that only logs a warning
    for name in ("DeepSpeed", "deepspeed", "torch.distributed", "accelerate", "bitsandbytes", "datasets", "kernels"):
        logging.getLogger(name).setLevel(logging.ERROR)
    datasets.disable_progress_bars()
    datasets.utils.logging.set_verbosity_error()


def progress(iterable, desc: str | None = None, total: int | None = None, disable: bool = False):
    """A plain-text tqdm bar on stderr for long loops (dropped from committed outputs); SFT_LESSONS_PROGRESS=0 hides it."""
    off = disable or not progress_enabled()
    return tqdm(iterable, desc=desc, total=total, file=sys.stderr, leave=False, mininterval=1.0, disable=off)


def setup_notebook(seed: int = 0):
    """Quiet logs, fixed seeds; returns the device the lesson will use."""
    quiet()
    set_seed(seed)
    return get_device()


def _version(module: str) -> str:
    try:
        return version(module)
    except Exception:
        return "not installed"


def environment_report() -> dict[str, str]:
    """Versions, device and DeepSpeed's accelerator name as a dict."""
    report = {"python": platform.python_version()}
    for pkg in ("torch", "transformers", "peft", "datasets", "deepspeed", "bitsandbytes"):
        report[pkg] = _version(pkg)
    report["device"] = str(get_device())
    report["torch threads"] = str(torch.get_num_threads())
    try:
        tell_deepspeed()
        from deepspeed.accelerator import get_accelerator

        report["deepspeed accelerator"] = get_accelerator().device_name()
    except Exception as exc:  # deepspeed is optional at run time on exotic platforms
        report["deepspeed accelerator"] = f"unavailable ({type(exc).__name__})"
    return report


def describe_environment() -> dict[str, str]:
    """Print (and return) the versions of the main libraries and the device."""
    report = environment_report()
    width = max(map(len, report))
    for key, value in report.items():
        print(f"{key:<{width}}  {value}")
    return report
