import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture
def tmp_cache(tmp_path, monkeypatch):
    """An empty, private asset cache."""
    monkeypatch.setenv("SFT_LESSONS_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def real_asset_cached(name: str) -> bool:
    from sft_lessons.assets import is_cached

    return is_cached(name)
