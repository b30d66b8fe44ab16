"""Every `SFT_LESSONS_*` environment variable in one place; the README's table is `VARIABLES` (第 0 章, notebooks/00_overview.ipynb)."""

from __future__ import annotations

import os
from pathlib import Path

VALID_DEVICES = ("cpu", "cuda", "mps")
_TRUE = {"1", "true", "yes"}

# name -> (default, meaning); the README lists exactly these (tests/test_settings.py checks it)
VARIABLES = {
    "SFT_LESSONS_CACHE": (
        "~/.cache/sft-lessons",
        "cache folder: fetched weights, converted models, the slides' web libraries, build/ of a non-editable install",
    ),
    "SFT_LESSONS_DEVICE": ("cuda > mps > cpu", "force a device: cpu, cuda, cuda:N or mps"),
    "SFT_LESSONS_PROGRESS": ("1", "0 hides the text progress bars of long loops"),
    "SFT_LESSONS_USE_HUB": ("0", "1 loads the original models and IMDB from the Hugging Face hub (needs internet)"),
    "SFT_LESSONS_REQUIRE_BROWSER": ("0", "tests: 1 makes the slide tests fail instead of skip without Chromium"),
}


class SettingError(ValueError):
    """An SFT_LESSONS_* variable holds a value the course cannot use; the message names it and the valid values."""


def _get(name: str) -> str:
    if name not in VARIABLES:
        raise KeyError(f"unknown setting {name!r}; known: {', '.join(VARIABLES)}")
    return os.environ.get(name, "").strip()


def cache_root() -> Path:
    """$SFT_LESSONS_CACHE or ~/.cache/sft-lessons; an error names the variable if a file stands in the way."""
    raw = _get("SFT_LESSONS_CACHE")
    root = Path(raw or Path.home() / ".cache" / "sft-lessons").expanduser()
    for folder in (root, *root.parents):
        if folder.exists() and not folder.is_dir():
            source = f"SFT_LESSONS_CACHE={raw!r}" if raw else f"the default cache folder {root}"
            raise SettingError(f"{source}: {folder} is a file, not a folder; point SFT_LESSONS_CACHE at a folder")
    return root


def forced_device() -> str | None:
    """$SFT_LESSONS_DEVICE if set (validated), else None for the automatic choice."""
    forced = _get("SFT_LESSONS_DEVICE")
    if forced and forced.split(":")[0] not in VALID_DEVICES:
        raise SettingError(f"SFT_LESSONS_DEVICE={forced!r}; valid: {', '.join(VALID_DEVICES)} (e.g. cuda:1)")
    return forced or None


def progress_enabled() -> bool:
    """False when SFT_LESSONS_PROGRESS=0."""
    return _get("SFT_LESSONS_PROGRESS") != "0"


def use_hub() -> bool:
    """True when the user opted into the Hugging Face hub with SFT_LESSONS_USE_HUB=1."""
    return _get("SFT_LESSONS_USE_HUB").lower() in _TRUE


def require_browser() -> bool:
    """True when the slide tests may not skip for want of Chromium (CI sets SFT_LESSONS_REQUIRE_BROWSER=1)."""
    return _get("SFT_LESSONS_REQUIRE_BROWSER").lower() in _TRUE
