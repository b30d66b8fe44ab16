import re
from pathlib import Path

import pytest

import sft_lessons
from sft_lessons import settings
from sft_lessons.paths import project_root

PACKAGE = Path(sft_lessons.__file__).parent


def test_only_settings_reads_the_course_variables():
    for path in PACKAGE.rglob("*.py"):
        if path.name == "settings.py":
            continue
        text = path.read_text(encoding="utf-8")
        assert not re.search(r"environ(\.get)?\s*[\[(]\s*['\"]SFT_LESSONS_", text), path.name
        assert "getenv(\"SFT_LESSONS_" not in text, path.name


def test_every_variable_the_package_names_is_declared():
    named = set()
    for path in [*PACKAGE.rglob("*.py"), *(project_root() / "tests").glob("*.py"), project_root() / ".ci" / "run"]:
        named |= set(re.findall(r"SFT_LESSONS_[A-Z_]+[A-Z]", path.read_text(encoding="utf-8")))
    assert named <= set(settings.VARIABLES), named - set(settings.VARIABLES)


def test_readme_lists_exactly_the_variables():
    readme = (project_root() / "README.md").read_text(encoding="utf-8")
    section = readme.split("## 环境变量", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| `(SFT_LESSONS_\w+)` \|", section, re.M)
    assert rows == list(settings.VARIABLES)


def test_device_and_progress_and_hub(monkeypatch):
    monkeypatch.setenv("SFT_LESSONS_DEVICE", "cuda:1")
    assert settings.forced_device() == "cuda:1"
    monkeypatch.setenv("SFT_LESSONS_DEVICE", "tpu")
    with pytest.raises(settings.SettingError, match=r"SFT_LESSONS_DEVICE='tpu'; valid: cpu, cuda, mps"):
        settings.forced_device()
    monkeypatch.delenv("SFT_LESSONS_DEVICE")
    assert settings.forced_device() is None
    monkeypatch.setenv("SFT_LESSONS_PROGRESS", "0")
    assert not settings.progress_enabled()
    monkeypatch.setenv("SFT_LESSONS_PROGRESS", "1")
    assert settings.progress_enabled()
    for value, expected in [("1", True), ("yes", True), ("0", False), ("", False)]:
        monkeypatch.setenv("SFT_LESSONS_USE_HUB", value)
        assert settings.use_hub() is expected


def test_cache_below_a_file_names_the_variable(monkeypatch, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    monkeypatch.setenv("SFT_LESSONS_CACHE", str(blocker / "cache"))
    with pytest.raises(settings.SettingError, match="SFT_LESSONS_CACHE=.*is a file, not a folder"):
        settings.cache_root()
    monkeypatch.setenv("SFT_LESSONS_CACHE", str(tmp_path / "cache"))
    assert settings.cache_root() == tmp_path / "cache"


def test_unknown_setting_is_refused():
    with pytest.raises(KeyError, match="known: SFT_LESSONS_CACHE"):
        settings._get("SFT_LESSONS_" + "NOPE")
