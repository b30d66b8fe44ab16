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


# Launcher variables that the in-process DeepSpeed tests set (sft.init_distributed). They must not leak: the notebook
# kernels that nbval starts later in this same pytest process inherit os.environ, and accelerate / DeepSpeed in
# them would try to join the test's process group on a port that is still taken.
_DIST_VARS = ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_SIZE", "CROSS_RANK", "CROSS_SIZE")


@pytest.fixture(autouse=True)
def _no_leaked_launcher_variables():
    """Restore the launcher variables after each test (the process group itself stays: DeepSpeed caches its groups)."""
    before = {k: os.environ.get(k) for k in _DIST_VARS}
    yield
    for key, value in before.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
