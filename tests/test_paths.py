import pytest

from sft_lessons import paths


def test_project_root_has_notebooks():
    root = paths.project_root()
    assert (root / "notebooks").is_dir() and (root / "pyproject.toml").is_file()
    assert paths.images_dir().is_dir() and paths.checkout_root() == root


def test_an_installed_copy_writes_build_into_the_cache_not_the_current_folder(monkeypatch, tmp_path):
    monkeypatch.setattr(paths, "checkout_root", lambda: None)
    monkeypatch.setenv("SFT_LESSONS_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    assert paths.build_dir() == tmp_path / "cache" / "build"
    assert not (tmp_path / "build").exists()


def test_images_dir_is_not_created_by_asking():
    assert paths.images_dir() == paths.project_root() / "images"


def test_an_installed_copy_outside_a_checkout_never_targets_the_current_folder(monkeypatch, tmp_path):
    monkeypatch.setattr(paths, "checkout_root", lambda: None)
    monkeypatch.setenv("SFT_LESSONS_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    assert paths.find_checkout() is None
    assert paths.images_dir() == tmp_path / "cache" / "build" / "images"
    from sft_lessons.course.notebooks import select_notebooks

    with pytest.raises(SystemExit, match="not part of the installed package"):
        select_notebooks([], paths.notebooks_dir())
